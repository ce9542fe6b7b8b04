"""Text for CLIP: tokenisation with the `tokenizers` package and the user's tokenizer file.

    tokenizer = text.ClipTokenizer("clip-vit-base-patch16/tokenizer.json")
    ids = tokenizer(["The scene type of this photo is beach.", ...])     # int32 [N, 77]

Each row is `<|startoftext|>`, the text's tokens, `<|endoftext|>`, then zeros to the context length, as OpenAI's
`clip.tokenize` builds it; a text that does not fit is an error naming it (`truncate=False`, as UniEmoX calls
it). The tokenizer file is transformers' / the hub's `tokenizer.json` for CLIP (its normaliser lowercases and
cleans the text as OpenAI's BPE does); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

START, END = "<|startoftext|>", "<|endoftext|>"


class ClipTokenizer:
    def __init__(self, path: str, context_length: int = 77, start: str = START, end: str = END):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such tokenizer file (CLIP's tokenizer.json)")
        import tokenizers

        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(path)
        except Exception as error:
            raise ValueError(f"{path}: not a readable tokenizers file ({type(error).__name__}: {error})") from error
        self.path, self.context_length = path, context_length
        ids = {token: self.tokenizer.token_to_id(token) for token in (start, end)}
        missing = [token for token, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"{path}: the vocabulary has no {missing} token(s)")
        self.start_id, self.end_id = ids[start], ids[end]

    @property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer file and the context length (a cache key)."""
        with open(self.path, "rb") as f:
            return hashlib.sha256(f.read() + str(self.context_length).encode()).hexdigest()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), np.int32)
        for row, (text, encoding) in enumerate(zip(texts, self.tokenizer.encode_batch(list(texts),
                                                                                      add_special_tokens=False))):
            ids = [self.start_id, *encoding.ids, self.end_id]
            if len(ids) > self.context_length:
                raise ValueError(f"text {row} has {len(ids)} tokens with start and end, more than the context "
                                 f"length {self.context_length}: {text[:80]!r}")
            out[row, :len(ids)] = ids
        return out


def train_bpe_tokenizer(texts: Sequence[str], path: str, vocab_size: int = 512) -> str:
    """Trains a lowercasing byte-pair tokenizer with CLIP's special tokens on `texts` and saves it to `path`
    (a `tokenizers` file `ClipTokenizer` reads). For synthetic data and tests, where no CLIP tokenizer file is
    available; real runs use the teacher's own tokenizer.json."""
    import tokenizers
    from tokenizers import models, normalizers, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", START, END], show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    tokenizer.save(tmp)
    os.replace(tmp, path)
    return path
