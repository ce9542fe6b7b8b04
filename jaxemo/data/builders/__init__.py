"""TFDS builders for every dataset the papers use, looked up by name.

    builders.prepare("dfew", manual_dir="/data/DFEW", config="frames224")    # once: writes array_record
    source = builders.data_source("dfew", "fold1_train", manual_dir="/data/DFEW", config="frames224")
    len(source), source[0]                                                   # random access, no TensorFlow

Configs choose how a corpus is stored (DFEW: `frames224`, `frames112`, `frames32`); splits choose rows.
DFEW's folds are virtual splits (`fold1_train`, ..., `fold5_test`): index lists into the stored split
`clips`, so `data_source` returns a `Subset` of it. Every builder is a `base.ManualShardBuilder`.

`data_dir` defaults to TFDS's (`~/tensorflow_datasets`, or $TFDS_DATA_DIR).
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import tensorflow_datasets as tfds

from jaxemo.data.builders.base import DataError, Subset
from jaxemo.data.datasource import RandomAccessSource

# name -> "module:Class". Every name here is a TFDS builder reading the corpus's native layout.
REGISTRY = {
    "dfew": "jaxemo.data.builders.video_emotion:Dfew",
    "mafw": "jaxemo.data.builders.video_emotion:Mafw",
    "cmu_mosi": "jaxemo.data.builders.sentiment:CmuMosi",
    "cmu_mosei": "jaxemo.data.builders.sentiment:CmuMosei",
    "ch_sims": "jaxemo.data.builders.sentiment:ChSims",
    "mer2024": "jaxemo.data.builders.mer2024:Mer2024",
    "esd": "jaxemo.data.builders.speech:Esd",
    "iemocap": "jaxemo.data.builders.speech:Iemocap",
    "msp_podcast": "jaxemo.data.builders.speech:MspPodcast",
    "msp_improv": "jaxemo.data.builders.speech:MspImprov",
    "mandarin_affective_speech": "jaxemo.data.builders.speech:MandarinAffectiveSpeech",
    "speech_manifest": "jaxemo.data.builders.speech:SpeechManifest",
    "emoset": "jaxemo.data.builders.visual_emotion:EmoSet",
    "emo8": "jaxemo.data.builders.visual_emotion:Emo8",
    "emotion6": "jaxemo.data.builders.visual_emotion:Emotion6",
    "fi": "jaxemo.data.builders.visual_emotion:Fi",
    "unbiased_emo": "jaxemo.data.builders.visual_emotion:UnbiasedEmo",
    "caer_s": "jaxemo.data.builders.visual_emotion:CaerS",
    "heco": "jaxemo.data.builders.visual_emotion:Heco",
}

__all__ = ["DataError", "REGISTRY", "builder_class", "make_builder", "prepare", "data_source"]


def builder_class(name: str):
    if name not in REGISTRY:
        raise ValueError(f"data.name={name!r} is not a dataset builder; expected one of {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_builder(name: str, config: Optional[str] = None, data_dir: Optional[str] = None):
    kwargs = {"file_format": "array_record"}
    if config:
        kwargs["config"] = config
    if data_dir:
        kwargs["data_dir"] = os.path.expanduser(data_dir)
    return builder_class(name)(**kwargs)


def prepare(name: str, manual_dir: Optional[str], config: Optional[str] = None, data_dir: Optional[str] = None):
    """Builds the dataset from `manual_dir` unless it is already built; returns the builder."""
    builder = make_builder(name, config, data_dir)
    if builder.is_prepared():
        return builder
    if not manual_dir:
        raise DataError(builder.data_dir, "manual_dir", f"{name} is not built yet and no manual_dir was given; "
                        f"set --config.data.manual_dir to the corpus folder ({builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()})")
    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
        raise DataError(manual_dir, "manual_dir", f"missing or empty; {name} expects: "
                        f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def data_source(name: str, split: str, manual_dir: Optional[str] = None, config: Optional[str] = None,
                data_dir: Optional[str] = None):
    """A `DataSource` (`len`, `[i]` -> dict of numpy arrays) of one split, building it first if needed: TFDS's
    array_record source wrapped with the default capabilities, or a `Subset` of it for a virtual split."""
    builder = prepare(name, manual_dir, config, data_dir)
    virtual = builder.virtual_splits()
    if split in virtual:
        stored, indices = virtual[split]
        return Subset(builder.as_data_source(split=stored), indices, f"{name}/{split}")
    if split not in builder.info.splits:
        available = sorted(set(builder.info.splits) | set(virtual))
        raise DataError(builder.data_dir, "split", f"{split!r} not in {name}; it has {available}")
    return RandomAccessSource(builder.as_data_source(split=split))
