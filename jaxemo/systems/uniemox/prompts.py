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


def _objects(value) -> str:
    """"dog ball toy" or ["dog", "ball", "toy"] -> "dog, ball and toy" (the reference splits on whitespace)."""
    objects = list(value) if isinstance(value, (list, tuple)) else str(value).split()
    return objects[0] if len(objects) == 1 else f"{', '.join(objects[:-1])} and {objects[-1]}"


def as_text(value) -> str:
    """A stored text field (bytes, as TFDS gives it, or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def emotion_prompt(attributes: Mapping[str, object], emotion: str) -> str:
    """The reference's prompt for one image from its attributes (values as EmoSet stores them) and emotion.
    An attribute that is absent, empty or "-1" is skipped."""
    sentences = []
    for key, sentence in ATTRIBUTE_SENTENCES:
        value = attributes.get(key)
        if value is None or (not isinstance(value, (list, tuple)) and as_text(value) in (MISSING, "")):
            continue
        value = value if isinstance(value, (list, tuple)) else as_text(value)
        sentences.append(sentence.format(_objects(value) if key == "object" else value))
    sentences.append(EMOTION_SENTENCE.format(emotion))
    return " ".join(sentences)


def example_prompt(example: Mapping[str, object], class_names: Sequence[str]) -> str:
    """The prompt of a stored EmoSet-like element (the builder's or `synthetic_scenes`'): its attributes as
    text (objects joined by "|") and the name of its label."""
    attributes = {key: example[key] for key, _ in ATTRIBUTE_SENTENCES if key in example}
    if "object" in attributes:
        attributes["object"] = [o for o in as_text(attributes["object"]).split(OBJECT_SEPARATOR) if o]
        attributes["object"] = attributes["object"] or None
    label = int(example["label"])
    if not 0 <= label < len(class_names):
        raise ValueError(f"element {as_text(example.get('id', '?'))!r}: label {label} is outside the "
                         f"{len(class_names)} classes {list(class_names)}")
    return emotion_prompt(attributes, class_names[label])


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
