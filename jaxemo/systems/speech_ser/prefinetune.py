"""Pre-finetuning: one head per corpus on a shared backbone and projector (Chen & Yu 2023, `prefinetune.py`).

Every micro-batch comes from one corpus, corpora drawn in proportion to their size (`MultiCorpusSource`);
the loss is the cross-entropy of the corpus's head divided by ln(its number of classes); AdamW (lr 3e-5,
10% linear warm-up, linear decay); the best epoch by the pooled validation accuracy of all corpora (any strict
improvement, as the released run's `load_best_model_at_end`), stopping after 3 evaluations without an
improvement above 0.02 (transformers' `EarlyStoppingCallback`; the threshold decides only when to stop).

`heads`: `"all"` trains every head with the backbone (the method as described). `"reference"` leaves the
heads at their random initialisation, as the released code does: it keeps them in a Python dict that is
never handed to the optimizer.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

from jaxemo.systems import speech_ser
from jaxemo.systems.speech_ser import corpora as corpora_lib
from jaxemo.train import loop

logger = logging.getLogger(__name__)

HEADS = ("all", "reference")


def stage_config(config, corpora: tuple[str, ...]):
    """The trainer's config: the recipe with `prefinetune.*` at the top level."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.update(out.prefinetune)
    if out.heads not in HEADS:
        raise ValueError(f"heads={out.heads!r}: expected one of {HEADS}")
    missing = [c for c in corpora if c not in out.corpora]
    if missing:
        raise ValueError(f"corpora {missing} have no data config under config.corpora (it has {sorted(out.corpora)})")
    return out


def load_corpora(config, corpora: tuple[str, ...]):
    """(train sources, validation sources, heads ((name, classes), ...)) of the chosen corpora."""
    train, validation, heads = [], [], []
    for name in corpora:
        data = config.corpora[name]
        train.append(corpora_lib.make_split(data, "train", config.seed))
        validation.append(corpora_lib.make_split(data, "validation", config.seed))
        heads.append((name, len(corpora_lib.label_names(data))))
    return train, validation, tuple(heads)


def build(config, corpora: tuple[str, ...]):
    """(stage config, task, train source, eval source) of pre-finetuning on `corpora`."""
    stage = stage_config(config, corpora)
    train, validation, heads = load_corpora(stage, corpora)
    stage.classifier_heads = heads
    task = speech_ser.build_task(stage)
    accum = int(stage.optimizer.get("grad_accum_steps", 1))
    micro = stage.batch_size // accum
    if stage.get("cache_audio"):
        train = [corpora_lib.Cached(s) for s in train]
    samples = speech_ser.max_samples(stage)  # model.padding="reference": each split padded to its longest clip
    train = [corpora_lib.padded_as_configured(s, stage.model.padding, samples) for s in train]
    validation = [corpora_lib.padded_as_configured(s, stage.model.padding, samples) for s in validation]
    train_source = corpora_lib.MultiCorpusSource(train, micro, stage.seed, epochs=int(math.ceil(stage.num_epochs)),
                                                 interleave=accum)
    with stage.unlocked():
        stage.steps_per_epoch = train_source.epoch_length // stage.batch_size
    eval_source = _concat([corpora_lib.Tagged(s, i) for i, s in enumerate(validation)])
    logger.info("pre-finetuning on %s: %s train utterances (%d per epoch in batches of one corpus), %d validation",
                corpora_lib.subset_name(corpora), [len(s) for s in train], train_source.epoch_length,
                len(eval_source))
    return stage, task, train_source, eval_source


def run(config, workdir: str, corpora: tuple[str, ...], start: Optional[dict] = None):
    """Pre-finetunes from `start` (backbone and projector; default `speech_ser.start_params(config)`) and
    returns the trainer's result; the best params are in `<workdir>/checkpoints_best`. Rerunning resumes."""
    stage, task, train_source, eval_source = build(config, corpora)
    start = start if start is not None else speech_ser.start_params(stage)
    os.makedirs(workdir, exist_ok=True)
    return loop.train_and_evaluate(stage, workdir, task, train_source, eval_source,
                                   init_params=lambda params: speech_ser.with_start(params, start))


def best_params_path(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints_best")


def _concat(parts):
    from jaxemo.data.sources import ConcatSource

    return ConcatSource(parts)
