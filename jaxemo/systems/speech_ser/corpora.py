"""The speech corpora of pre-finetuning and of the few-shot protocol, real or synthetic, and the views on them.

Each corpus is a data config (`config.corpora.<name>`): a builder of `jaxemo.data.builders.speech` read from
`manual_dir`, or `synthetic_speech` with its own voices (`speaker_seed`) and, optionally, a subset of the
emotions (`emotions`), so that the synthetic stand-ins differ in speakers and label sets as the real corpora
do. Splits are `train`, `validation` and `test`.

    MultiCorpusSource   pre-finetuning batches: each block of `block` consecutive examples (a micro-batch)
                        from one corpus, the blocks of all corpora shuffled together every epoch, so a corpus
                        is drawn in proportion to its size (the reference's `MultitaskDataloader`)
    Relabelled          a synthetic corpus restricted to some emotions, relabelled 0..n-1
    Tagged              an example with its corpus index (the evaluation sets)
    BinaryTarget        few-shot labels: 1 for the target emotion, 0 for the rest
    Cached              keeps the examples it has read (a trial reads its few shots every epoch)
    PaddedToLongest     the released scripts' padding (`model.padding="reference"`): each example's
                        `padded_length`, the longest clip of its chunk of the split

All are `DataSource`s (`jaxemo.data.datasource`). The per-speaker few-shot sets are drawn from a split's
`{'label', 'speaker'}` of every row without reading audio: the source's `row_index` where it has one
(synthetic corpora), else the builder's `index(split)` (metadata written at build time).
"""

from __future__ import annotations

import itertools
import threading
from typing import Optional, Sequence

import numpy as np

from jaxemo.data import builders, sources
from jaxemo.data import synthetic_speech
from jaxemo.data.datasource import DataSource, SourceBase, as_data_source

# The four pre-finetuning corpora of Chen & Yu (2023), in the order of the paper's README.
PREFINETUNE_CORPORA = ("iemocap", "msp_podcast", "msp_improv", "mandarin_affective_speech")
SHORT_NAMES = {"iemocap": "iemocap", "msp_podcast": "podcast", "msp_improv": "improv",
               "mandarin_affective_speech": "mandarin"}


def subsets(corpora: Sequence[str] = PREFINETUNE_CORPORA) -> list[tuple[str, ...]]:
    """The 15 non-empty subsets of the four corpora ("every permutation" of the paper), smallest first."""
    return [combo for r in range(1, len(corpora) + 1) for combo in itertools.combinations(corpora, r)]


def subset_name(corpora: Sequence[str]) -> str:
    return "+".join(SHORT_NAMES.get(c, c) for c in corpora)


def parse_subset(name: str) -> tuple[str, ...]:
    """`"iemocap+improv"` (short or long names, any order) -> the corpora in `PREFINETUNE_CORPORA` order."""
    long_names = {**{v: k for k, v in SHORT_NAMES.items()}, **{k: k for k in SHORT_NAMES}}
    parts = [p for p in name.split("+") if p]
    unknown = [p for p in parts if p not in long_names]
    if unknown or not parts:
        raise ValueError(f"corpus subset {name!r}: {unknown or 'empty'}; use names from "
                         f"{sorted(long_names)} joined by '+'")
    chosen = {long_names[p] for p in parts}
    return tuple(c for c in PREFINETUNE_CORPORA if c in chosen) + tuple(sorted(chosen - set(PREFINETUNE_CORPORA)))


# ------------------------------------------------------------------------------------------------ sources


def make_split(data_config, split: str, seed: int = 0) -> DataSource:
    """One split of a corpus: synthetic (restricted to `data_config.emotions` and relabelled 0..n-1 if given)
    or read through its builder."""
    source = sources.make_source(data_config, split, seed)
    emotions = tuple(data_config.get("emotions") or ())
    if data_config.name == "synthetic_speech" and emotions:
        unknown = [e for e in emotions if e not in synthetic_speech.EMOTIONS]
        if unknown:
            raise ValueError(f"emotions {unknown} are not synthetic_speech's {synthetic_speech.EMOTIONS}")
        keep = [synthetic_speech.EMOTIONS.index(e) for e in emotions]
        return Relabelled(source, keep)
    return source


def label_names(data_config) -> tuple[str, ...]:
    """The class names of a corpus (its builder's label feature, or the synthetic emotions kept)."""
    if data_config.name == "synthetic_speech":
        return tuple(data_config.get("emotions") or synthetic_speech.EMOTIONS)
    builder = builders.prepare(data_config.name, data_config.get("manual_dir") or None,
                               data_config.get("builder_config") or None, data_config.get("data_dir") or None)
    return tuple(builder.info.features["label"].names)


def split_index(data_config, split: str, source: DataSource) -> dict[str, np.ndarray]:
    """{'label', 'speaker'} of every row of a split (`make_split`'s source) without reading audio."""
    if source.row_index is not None:
        return dict(source.row_index)
    builder = builders.prepare(data_config.name, data_config.get("manual_dir") or None,
                               data_config.get("builder_config") or None, data_config.get("data_dir") or None)
    return builder.index(split)


class Relabelled(SourceBase):
    """The rows of `source` whose label is in `keep`, labelled by their position in `keep`; `source` needs a
    `row_index` (its labels without reading examples)."""

    def __init__(self, source, keep: Sequence[int]):
        source = as_data_source(source, "Relabelled's source")
        index = source.row_index
        if index is None:
            raise ValueError(f"Relabelled: {type(source).__name__} has no row_index to find the labels "
                             f"{list(keep)} in")
        self.source, self.keep = source, [int(k) for k in keep]
        self.rows = np.flatnonzero(np.isin(index["label"], self.keep))
        lookup = {k: i for i, k in enumerate(self.keep)}
        self.row_index = {"label": np.asarray([lookup[int(v)] for v in index["label"][self.rows]], np.int32),
                          "speaker": index["speaker"][self.rows]}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        example = dict(self.source[int(self.rows[i])])
        example["label"] = np.int32(self.row_index["label"][i])
        return example


class Tagged(SourceBase):
    """`source` with a `corpus` field (int32) on every example."""

    def __init__(self, source, corpus: int):
        self.source, self.corpus = source, np.int32(corpus)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return {**self.source[i], "corpus": self.corpus}


class BinaryTarget(SourceBase):
    """Rows `rows` of `source` with label 1 for `target` (an emotion index) and 0 otherwise."""

    def __init__(self, source, rows: Sequence[int], target: int, name: str = ""):
        self.source, self.rows, self.target, self.name = source, np.asarray(rows, np.int64), int(target), name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        example = dict(self.source[int(self.rows[i])])
        example["label"] = np.int32(int(example["label"]) == self.target)
        return example

    def __repr__(self) -> str:
        return f"BinaryTarget({self.name or 'rows'}: {len(self)} rows, target {self.target})"


class Cached(SourceBase):
    """Keeps every example of `source` it has returned (thread-safe), keeping only `keys` of it; the same
    `row_index` as `source`."""

    def __init__(self, source, keys: Optional[Sequence[str]] = ("waveform", "label")):
        self.source = as_data_source(source, "Cached's source")
        self.keys = tuple(keys) if keys else None
        self.row_index = self.source.row_index
        self._cache: dict[int, dict] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        found = self._cache.get(i)
        if found is None:
            example = self.source[i]
            found = {k: example[k] for k in self.keys} if self.keys else dict(example)
            with self._lock:
                self._cache[i] = found
        return found


REFERENCE_PAD_CHUNK = 1000  # datasets' `map(batched=True)` default batch_size, which the released scripts keep


class PaddedToLongest(SourceBase):
    """`source` with `padded_length` on every example: the longest clip (capped at `max_samples`) among the
    `chunk` consecutive rows it belongs to, i.e. the length the released scripts' feature extractor pads it to
    (`padding=True` over each batch of `datasets.map`). Few-shot splits (k shots, a speaker's evaluation or
    test folder) fit in one chunk; a larger split's chunks follow the source's row order, which need not be the
    reference's. Reads every clip once to measure it (`row_index` passes through)."""

    def __init__(self, source, max_samples: int, chunk: int = REFERENCE_PAD_CHUNK):
        self.source = as_data_source(source, "PaddedToLongest's source")
        self.row_index = self.source.row_index
        if max_samples <= 0 or chunk <= 0:
            raise ValueError(f"max_samples={max_samples}, chunk={chunk}: must be positive")
        lengths = np.asarray([min(np.shape(self.source[i]["waveform"])[-1], max_samples)
                              for i in range(len(self.source))], np.int32)
        self.padded = np.empty_like(lengths)
        for start in range(0, len(lengths), chunk):
            self.padded[start:start + chunk] = lengths[start:start + chunk].max()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return {**self.source[i], "padded_length": np.int32(self.padded[int(i)])}


def padded_as_configured(source, padding: str, max_samples: int):
    """`source` as `model.padding` wants it: unchanged for "clip", `PaddedToLongest` for "reference"."""
    return PaddedToLongest(source, max_samples) if padding == "reference" else source


class MultiCorpusSource(SourceBase):
    """Pre-finetuning examples of several corpora for `epochs` epochs, read in order (`orders_itself`).

    Every epoch, each corpus is shuffled and cut into blocks of `block` examples (a last partial block is left
    out of that epoch); the blocks of all corpora are shuffled together. With `block` = the micro-batch, every
    micro-batch comes from one corpus and corpora are drawn in proportion to their size. A batch of
    `block x interleave` rows holds `interleave` blocks laid out as `step.microbatches` splits it (micro-batch j
    is rows j, j + interleave, ...). Example i depends only on (seed, i). Examples carry `corpus`, the corpus's
    index in `parts`. An epoch is `epoch_length` examples (whole batches).
    """

    orders_itself = True

    def __init__(self, parts: Sequence, block: int, seed: int, epochs: int, interleave: int = 1):
        if block <= 0 or interleave <= 0:
            raise ValueError(f"block={block}, interleave={interleave}: must be positive")
        self.parts, self.block, self.seed, self.epochs = list(parts), int(block), int(seed), max(int(epochs), 1)
        self.interleave = int(interleave)
        blocks = sum(len(p) // self.block for p in self.parts)
        self.blocks_per_epoch = blocks - blocks % self.interleave
        if not self.blocks_per_epoch:
            raise ValueError(f"the corpora (sizes {[len(p) for p in self.parts]}) do not fill one batch of "
                             f"{interleave} blocks of {block} examples")
        self.epoch_length = self.blocks_per_epoch * self.block
        self._layout: tuple[int, np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.epochs * self.epoch_length

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(corpus of each block, rows of each block [blocks, block]) of one epoch."""
        layout = self._layout
        if layout is not None and layout[0] == epoch:
            return layout[1], layout[2]
        rng = np.random.default_rng((self.seed, epoch))
        corpus, rows = [], []
        for c, part in enumerate(self.parts):
            count = len(part) // self.block
            order = rng.permutation(len(part))[:count * self.block].reshape(count, self.block)
            corpus.append(np.full(count, c)), rows.append(order)
        corpus, rows = np.concatenate(corpus), np.concatenate(rows)
        order = rng.permutation(len(corpus))
        with self._lock:
            self._layout = (epoch, corpus[order], rows[order])
        return corpus[order], rows[order]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        epoch, position = divmod(int(i), self.epoch_length)
        corpus, rows = self._epoch(epoch)
        batch, within = divmod(position, self.block * self.interleave)
        r, j = divmod(within, self.interleave)
        b = batch * self.interleave + j
        c = int(corpus[b])
        return {**self.parts[c][int(rows[b, r])], "corpus": np.int32(c)}


def speaker_rows(index: dict, speaker: str) -> np.ndarray:
    rows = np.flatnonzero(np.asarray(index["speaker"]).astype(str) == speaker)
    if not rows.size:
        raise ValueError(f"speaker {speaker!r} has no utterances (speakers: {sorted(set(index['speaker']))[:10]})")
    return rows
