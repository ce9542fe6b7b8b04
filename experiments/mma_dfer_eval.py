"""Evaluate an MMA-DFER checkpoint on one fold's test split: UAR, WAR and a confusion matrix.

    python -m experiments.mma_dfer_eval --checkpoint=runs/mma_dfer-tiny/fold1/checkpoints --fold=1
    python -m experiments.mma_dfer_eval --checkpoint=runs/mma_dfer_dfew/fold3/checkpoints_best --fold=3 \
        --config_override=data.manual_dir=/data/DFEW

The model and data settings come from the config stored in the checkpoint; `--config_override=field=value`
(repeatable) changes any of them, e.g. where the data lives on this machine.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments import cli
from jaxemo.systems import mma_dfer
from jaxemo.train import checkpoint, loop, metrics

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "a run's checkpoint directory, or one step's directory",
                                  required=True)
_FOLD = flags.DEFINE_integer("fold", 1, "the fold whose test split to evaluate (1-based)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_OUTPUT = flags.DEFINE_string("output", None, "where to write confusion.png and eval.json (default: beside "
                              "the checkpoint)")
_OVERRIDES = flags.DEFINE_multi_string("config_override", [], "field=value, applied to the stored config")


def main(argv):
    del argv
    config = cli.stored_config(_CHECKPOINT.value, _STEP.value)
    cli.apply_overrides(config, _OVERRIDES.value)
    params = checkpoint.load_params(_CHECKPOINT.value, step=_STEP.value)
    _, test_source = mma_dfer.fold_sources(config, _FOLD.value)
    scores, stats = loop.evaluate_params(config, mma_dfer.build_task(config), params, test_source)
    output = _OUTPUT.value or os.path.dirname(checkpoint.step_directory(_CHECKPOINT.value, _STEP.value))
    os.makedirs(output, exist_ok=True)
    metrics.save_confusion_matrix(os.path.join(output, f"confusion_fold{_FOLD.value}.png"), stats["confusion"],
                                  mma_dfer.class_names(config),
                                  f"fold {_FOLD.value}: UAR {scores['uar']:.4f}, WAR {scores['war']:.4f}")
    with open(os.path.join(output, f"eval_fold{_FOLD.value}.json"), "w") as f:
        json.dump({"fold": _FOLD.value, **scores}, f, indent=2)
    print(f"fold {_FOLD.value}: UAR {scores['uar']:.4f}  WAR {scores['war']:.4f}  loss {scores['loss']:.4f}\n"
          f"confusion matrix and scores in {output}")


if __name__ == "__main__":
    cli.run(main)
