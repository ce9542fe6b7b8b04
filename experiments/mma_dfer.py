"""Train and evaluate MMA-DFER on every fold in one run (jaxemo's main job).

    python -m experiments.mma_dfer                                            # tiny, synthetic clips
    python -m experiments.mma_dfer --config=experiments/configs/mma_dfer.py:dfew \
        --config.data.manual_dir=/data/DFEW --workdir=runs/mma_dfer_dfew

Each fold trains in `<workdir>/fold<k>/`: its checkpoints, the best epoch's checkpoint beside them, metrics and
`confusion.png`. The last-epoch checkpoint is the reported one, as in the paper. `<workdir>/results.json`
holds UAR and WAR per fold and averaged over folds. Rerunning the command resumes an interrupted fold and
re-evaluates finished ones.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments import cli
from jaxemo.systems import mma_dfer
from jaxemo.train import loop, metrics


def run_fold(config, workdir: str, fold: int, mesh=None) -> dict:
    """One fold trained and evaluated on `mesh` (default: `config.mesh` over all devices)."""
    fold_dir = os.path.join(workdir, f"fold{fold}")
    train_source, test_source = mma_dfer.fold_sources(config, fold)
    result = loop.train_and_evaluate(config, fold_dir, mma_dfer.build_task(config), train_source, test_source,
                                     mesh=mesh, init_params=mma_dfer.pretrained_params(config))
    if result.preempted:
        return {"fold": fold, "preempted": True}
    metrics.save_confusion_matrix(os.path.join(fold_dir, "confusion.png"), result.eval_stats["confusion"],
                                  mma_dfer.class_names(config), f"fold {fold}: UAR {result.eval_metrics['uar']:.4f}, "
                                  f"WAR {result.eval_metrics['war']:.4f} (last epoch)")
    return {"fold": fold, "uar": result.eval_metrics["uar"], "war": result.eval_metrics["war"],
            "loss": result.eval_metrics["loss"], "best": result.best}


def summarize(per_fold: list[dict]) -> dict:
    return {"folds": per_fold, "mean_uar": float(np.mean([r["uar"] for r in per_fold])),
            "mean_war": float(np.mean([r["war"] for r in per_fold]))}


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("mma_dfer")
    workdir = loop.check_workdir(workdir)
    per_fold = []
    for fold in config.data.folds:
        result = run_fold(config, workdir, int(fold))
        if result.get("preempted"):
            print(f"stopped during fold {fold}; rerun the same command to resume from {workdir}")
            return
        per_fold.append(result)
        print(f"fold {fold}: UAR {result['uar']:.4f}  WAR {result['war']:.4f}  (last epoch)")
    summary = summarize(per_fold)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"mean over {len(per_fold)} folds: UAR {summary['mean_uar']:.4f}  WAR {summary['mean_war']:.4f}\n"
          f"results: {workdir}/results.json")


if __name__ == "__main__":
    cli.define_experiment_flags("mma_dfer", "tiny, dfew, mafw")
    cli.run(main)
