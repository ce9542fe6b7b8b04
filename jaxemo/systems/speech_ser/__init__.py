"""Pre-finetuned few-shot speech emotion recognition (Chen & Yu, Interspeech 2023).

wav2vec 2.0 (`jaxemo/models/wav2vec2.py`) is first pre-finetuned on emotional speech corpora with one head per
corpus (`prefinetune`), then fine-tuned per ESD speaker to detect one emotion from k shots (`fewshot`): 20
speakers x 5 emotions x 7 values of k x 3 trials = 2,100 trials per starting model, 33,600 for the plain start
and the 15 pre-finetuned ones. The trials run as population groups (`jaxemo.train.population`).

    corpora     the corpora (real builders or synthetic stand-ins), subsets, the multi-corpus source, views
    task        the classifier's task (the classifier: `jaxemo/models/speech_classifier.py`)
    prefinetune the multi-corpus stage
    fewshot     shot sampling, the protocol as populations, the report (CSV, JSON, F1-vs-k plot)

Recipes: `experiments/configs/prefinetune_ser.py`, `experiments/configs/fewshot_ser.py`; runs:
`python -m experiments.prefinetune_ser`, `python -m experiments.fewshot_ser`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import numpy as np

from jaxemo.convert import wav2vec2 as wav2vec2_convert
from jaxemo import perf
from jaxemo.models import wav2vec2
from jaxemo.models import speech_classifier
from jaxemo.models.speech_classifier import SpeechEmotionClassifier
from jaxemo.systems.base import Flops, GpuRun, System
from jaxemo.systems.speech_ser.task import SpeechEmotionTask
from jaxemo.train import checkpoint

__all__ = ["model_config", "build_task", "flops", "start_params", "SpeechEmotionClassifier", "SpeechEmotionTask",
           "SYSTEM"]

START_PARTS = ("backbone", "projector")  # what a starting model gives a new classifier; heads are new


def model_config(model) -> wav2vec2.Wav2Vec2Config:
    """The backbone's config: a converted checkpoint's own (`model.checkpoint`), else `model.preset`; then
    `model.overrides` (e.g. dropout, LayerDrop, masking) and `model.dtype`."""
    if model.get("checkpoint"):
        config, _ = wav2vec2_convert.load(model.checkpoint, params=False)
    else:
        config = wav2vec2.Wav2Vec2Config.preset(model.preset)
    overrides = dict(model.get("overrides") or {})
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise ValueError(f"model.overrides {unknown} are not Wav2Vec2Config fields")
    if model.get("dtype"):
        overrides["dtype"] = model.dtype
    return dataclasses.replace(config, **overrides)


def max_samples(config) -> int:
    return int(round(config.max_seconds * config.sample_rate))


def classifier_heads(config) -> tuple:
    """`config.classifier_heads` ((name, classes), ...): a few-shot trial's one 2-class `target` head, or one head
    per corpus (the pre-finetuning stage sets them from its corpora)."""
    heads = tuple((str(n), int(c)) for n, c in (config.get("classifier_heads") or ()))
    if not heads:
        raise ValueError("config.classifier_heads is empty: give ((name, classes), ...); the pre-finetuning stage "
                         "sets one head per corpus (prefinetune.build)")
    return heads


def build_task(config) -> SpeechEmotionTask:
    """The task of a classifier with `config.classifier_heads` on `config.model`'s backbone; the loss is divided
    by ln(classes) with `config.scale_loss`, and `config.heads == "reference"` leaves the heads untrained (the
    released pre-finetuning code). `config.model.eval_conv_impl` evaluates with other convolutions than the
    backbone's `conv_impl` trains with (the same params); `config.model.padding` is "clip" or "reference"
    (`task` module docstring; the sources then need `corpora.padded_as_configured`)."""
    backbone = model_config(config.model)
    create = functools.partial(speech_classifier.create, heads=classifier_heads(config),
                               normalize=bool(config.model.get("normalize", True)))
    eval_impl = config.model.get("eval_conv_impl") or backbone.conv_impl
    eval_model = None if eval_impl == backbone.conv_impl else create(config=backbone.replace(conv_impl=eval_impl))
    trainable = ("^backbone/", "^projector/") if config.get("heads") == "reference" else None
    padding = config.model.padding
    if padding == "reference" and backbone.feat_extract_norm == "group" and not backbone.feature_norm_mask:
        raise ValueError("model.padding='reference' masks what lies beyond each split's longest clip, which the "
                         "first conv layer's group norm must not see: set model.overrides.feature_norm_mask=true")
    return SpeechEmotionTask(create(config=backbone), max_samples(config), bool(config.get("scale_loss")),
                             trainable, flops(config).train, eval_model, padding)


def flops(config) -> Flops:
    """One clip of `max_seconds`: the backbone (`perf.wav2vec2_forward_flops`) and the projector on every frame;
    the heads' few FLOPs on the pooled vector are left out. Training is 3x the forward."""
    backbone = model_config(config.model)
    samples = max_samples(config)
    projector = 2 * backbone.hidden_size * backbone.classifier_proj_size * \
        int(wav2vec2.conv_output_length(backbone, samples))
    forward = perf.wav2vec2_forward_flops(backbone, samples) + projector
    return Flops(forward=forward, train=perf.train_flops(forward))


def start_params(config, path: str = "") -> dict:
    """A starting model's backbone and projector as host arrays: from `path` (a pre-finetuned run's
    `checkpoints_best`, or any jaxemo checkpoint of the classifier or of a converted wav2vec2), else from
    `config.model.checkpoint`, else a random initialisation from `config.seed` (the synthetic runs' plain
    start). A converted backbone without a projector keeps a random projector, as transformers does when it
    adds a classification head to `facebook/wav2vec2-base`."""
    task = build_task(with_target_head(config))
    samples = task.max_samples
    example = {"waveform": np.zeros((1, samples), np.float32), "waveform_mask": np.ones((1, samples), bool)}
    init = jax.jit(lambda key: task.init(key, example))
    params = jax.device_get(_unbox(init(jax.random.key(config.seed))["params"]))
    path = path or config.model.get("checkpoint") or ""
    if path:
        loaded = checkpoint.load_params(path)
        missing = [k for k in ("backbone",) if k not in loaded]
        if missing:
            raise ValueError(f"{path}: the checkpoint has no {missing} (it has {sorted(loaded)}); expected a "
                             f"converted wav2vec2/HuBERT (python -m jaxemo.convert wav2vec2) or a jaxemo run")
        for part in START_PARTS:
            if part in loaded:
                _check_shapes(params[part], loaded[part], f"{path}: {part}")
                params[part] = jax.device_get(loaded[part])
    return {k: params[k] for k in START_PARTS}


def _unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def _check_shapes(expected, found, where: str) -> None:
    from flax import traverse_util

    e, f = traverse_util.flatten_dict(expected), traverse_util.flatten_dict(found)
    missing, extra = sorted(set(e) - set(f)), sorted(set(f) - set(e))
    if missing or extra:
        raise ValueError(f"{where}: parameters missing {['/'.join(k) for k in missing][:5]}, unexpected "
                         f"{['/'.join(k) for k in extra][:5]}: the checkpoint's model differs from config.model")
    for key in e:
        if tuple(e[key].shape) != tuple(f[key].shape):
            raise ValueError(f"{where}/{'/'.join(key)}: shape {tuple(f[key].shape)} in the checkpoint, "
                             f"{tuple(e[key].shape)} for config.model")


def with_target_head(config):
    """A copy of `config` whose classifier has the few-shot trials' one 2-class `target` head."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.classifier_heads = (("target", 2),)
    return out


def with_start(params: dict, start: dict) -> dict:
    """`params` (a classifier's) with the backbone and projector of `start`; the heads stay as they are."""
    return {**params, **{k: start[k] for k in START_PARTS}}


def write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


SYSTEM = System(
    name="speech_ser",
    title="Pre-finetuned few-shot speech emotion recognition (Chen & Yu, Interspeech 2023)",
    configs=("prefinetune_ser", "fewshot_ser"),
    build_task=build_task,
    flops=flops,
    workloads=(
        GpuRun("fewshot", "benchmarks.fewshot",
               ("--preset=base", "--seconds=5", "--dtype=bfloat16", "--trials=100", "--group_size=50",
                "--sequential_trials=2", "--epochs=2", "--k=8", "--conv_impl=xla"), ("--tiny",), 60,
               "few-shot trials per hour, wav2vec2-base on 5 s clips, population vs one at a time, and the "
               "projected wall time of the 33,600 trials"),
    ),
)
