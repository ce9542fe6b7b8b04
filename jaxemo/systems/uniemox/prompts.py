"""UniEmoX's prompts and the teacher's text features of them (computed once and cached).

Prompts follow the reference's `ClipSematicModel._generate_prompt`: one sentence per EmoSet attribute the image
has (scene, objects, brightness, colourfulness, facial expression, human action; an attribute of "-1" or absent
is skipped), then the emotion, joined by spaces:

    "The scene type of this photo is beach. The main subjects are dog and ball. The image has a brightness of 0.6
     and color saturation of 0.4. ... The overall emotion conveyed is amusement."
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping, Optional, Sequence

import jax
import numpy as np

from jaxemo.data import text as text_lib
from jaxemo.models import clip

ATTRIBUTE_SENTENCES = (
    ("scene", "The scene type of this photo is {}."),
    ("object", "The main subjects are {}."),
    ("brightness", "The image has a brightness of {}"),
    ("colorfulness", "and color saturation of {}."),
    ("facial_expression", "Human facial expression is {}."),
    ("human_action", "The action being performed is {}."),
)
EMOTION_SENTENCE = "The overall emotion conveyed is {}."
MISSING = "-1"
OBJECT_SEPARATOR = "|"  # how the EmoSet builder stores an image's objects


# How an image's object names become the list the prompt enumerates. "names" (jaxemo's default): each name
# whole, so ["Alarm clock", "Car"] reads "Alarm clock and Car". "words" (the reference's): u-emo's EmoSet
# loader joins the names with spaces and `_generate_prompt` splits on whitespace, so the same image reads
# "Alarm, clock and Car" (EmoSet has many multi-word names: "Baseball bat", "Bell pepper", ...).
OBJECT_LISTS = ("names", "words")


def _objects(value, objects: str = "names") -> str:
    """["dog", "ball", "toy"] -> "dog, ball and toy"; a str is split on whitespace (the reference's own
    string); with `objects="words"` every name is split into its words first (see OBJECT_LISTS)."""
    if objects not in OBJECT_LISTS:
        raise ValueError(f"prompt objects: {objects!r}; expected one of {OBJECT_LISTS}")
    names = list(value) if isinstance(value, (list, tuple)) else str(value).split()
    if objects == "words":
        names = " ".join(names).split()
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def as_text(value) -> str:
    """A stored text field (bytes, as TFDS gives it, or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def emotion_prompt(attributes: Mapping[str, object], emotion: str, objects: str = "names") -> str:
    """The reference's prompt for one image from its attributes (values as EmoSet stores them) and emotion.
    An attribute that is absent, empty or "-1" is skipped; `objects`: how object names are listed
    (OBJECT_LISTS)."""
    sentences = []
    for key, sentence in ATTRIBUTE_SENTENCES:
        value = attributes.get(key)
        if value is None or (not isinstance(value, (list, tuple)) and as_text(value) in (MISSING, "")):
            continue
        value = value if isinstance(value, (list, tuple)) else as_text(value)
        sentences.append(sentence.format(_objects(value, objects) if key == "object" else value))
    sentences.append(EMOTION_SENTENCE.format(emotion))
    return " ".join(sentences)


def example_prompt(example: Mapping[str, object], class_names: Sequence[str], objects: str = "names") -> str:
    """The prompt of a stored EmoSet-like element (the builder's or `synthetic_scenes`'): its attributes as
    text (objects joined by "|") and the name of its label; `objects` as in `emotion_prompt`."""
    attributes = {key: example[key] for key, _ in ATTRIBUTE_SENTENCES if key in example}
    if "object" in attributes:
        attributes["object"] = [o for o in as_text(attributes["object"]).split(OBJECT_SEPARATOR) if o]
        attributes["object"] = attributes["object"] or None
    label = int(example["label"])
    if not 0 <= label < len(class_names):
        raise ValueError(f"element {as_text(example.get('id', '?'))!r}: label {label} is outside the "
                         f"{len(class_names)} classes {list(class_names)}")
    return emotion_prompt(attributes, class_names[label], objects)


def text_features(model: clip.CLIP, params, tokenizer: text_lib.ClipTokenizer, prompts: Sequence[str],
                  cache_dir: Optional[str] = None, teacher_id: str = "", batch_size: int = 256) -> np.ndarray:
    """L2-normalised CLIP text embeddings `[N, E]` of `prompts` (float32), computed in batches of `batch_size`.

    With `cache_dir`, they are saved there as `text_features-<key>.npy` and read back on the next call; the
    key hashes the prompts, the tokenizer file and `teacher_id` (name the teacher checkpoint there: a
    different teacher must not reuse the features). A cache file of the wrong shape is recomputed.
    """
    path = None
    if cache_dir:
        digest = hashlib.sha256(json.dumps([list(prompts), tokenizer.fingerprint, teacher_id]).encode()).hexdigest()
        path = os.path.join(cache_dir, f"text_features-{digest[:16]}.npy")
        if os.path.isfile(path):
            cached = np.load(path)
            if cached.shape[0] == len(prompts) and cached.shape[1] == model.embed_dim:
                return cached
    encode = jax.jit(lambda p, ids: clip.normalize(model.apply({"params": p}, ids, method=clip.CLIP.encode_text)))
    chunks = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start:start + batch_size])
        chunks.append(np.asarray(encode(params, ids), np.float32))
    features = np.concatenate(chunks) if chunks else np.zeros((0, model.embed_dim), np.float32)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npy"
        np.save(tmp, features)
        os.replace(tmp, path)  # a killed run leaves no half-written cache
    return features
