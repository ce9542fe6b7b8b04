"""CASP test-time adaptation: train a sentiment regressor on the source, adapt it to the target without labels.

    python -m experiments.casp                                             # tiny synthetic shift, minutes on CPU
    python -m experiments.casp --config=experiments/configs/casp.py:mosei2sims_late \
        --config.data.manual_dir=/data/MOSEI --config.target.manual_dir=/data/SIMS --workdir=runs/casp_m2s

1. Source training (`<workdir>/source/`): the trainer on the source train split, the checkpoint with the best
   source-valid Acc-2 kept; rerunning resumes or reuses it. `--config.lr_plateau.enabled=true` adds CASP's
   ReduceLROnPlateau on the source-valid L1 loss. `--config.source_checkpoint=<file>` skips source training
   and starts from a source model trained with CASP's reference code (its state dict, `jaxemo.convert.casp`).
2. Every method in `config.tta.methods` (source_only, casp, dropout_variance, feature_alignment) in every
   mode in `config.tta.modes`: `offline` (CASP's protocol: epochs over the unlabelled target adapt split,
   then the test split is scored), `online` (the test split as a stream: adapt on a batch, then predict it),
   `episodic` (each test sample adapted on its own from the source weights, vmapped).
3. `<workdir>/results.json`: MAE, correlation, Acc-2/F1 (has-0, non-0, reference), the F1 CASP prints
   (`f1_reference_swapped`), Acc-7, Acc-5 and wall time per method and mode; a table is printed.
"""

from __future__ import annotations

import json
import logging
import os

import jax

from experiments import cli
from jaxemo.data import sources
from jaxemo.systems import casp
from jaxemo.systems.casp import plateau
from jaxemo.train import checkpoint, loop

logger = logging.getLogger(__name__)


def reference_source(config) -> dict:
    """The params of `config.source_checkpoint`, a CASP reference source model (its state dict), checked
    against `config.model` (fusion, depth and projection width; the heads are taken from the config)."""
    from jaxemo.convert import casp as casp_convert

    path = config.source_checkpoint
    params, fusion, info = casp_convert.load_reference_checkpoint(path, num_heads=config.model.num_heads)
    if fusion != config.model.fusion:
        raise ValueError(
            f"source_checkpoint {path} is a CASP {'Latefusion' if fusion == 'late' else 'Earlyfusion'} model "
            f"({fusion!r} fusion), but config.model.fusion={config.model.fusion!r}: set "
            f"--config.model.fusion={fusion} (or pick the matching variant)")
    for field, value in (("depth", info["depth"]), ("proj_dim", info["proj_dim"])):
        if config.model[field] != value:
            raise ValueError(f"source_checkpoint {path} has {field}={value}, but config.model.{field}="
                             f"{config.model[field]}: set --config.model.{field}={value}")
    logger.info("source model: CASP reference checkpoint %s (%s fusion, depth %d, input dims %s); source "
                "training skipped", path, fusion, info["depth"], info["dims"])
    return params


def train_source(config, workdir: str, mesh=None) -> dict:
    """Source training (resumed if interrupted, reused if finished); the best source-valid params. With
    `config.source_checkpoint` set, the converted params of that CASP reference model instead (no training).
    `mesh`: the trainer's (default: `config.mesh` over all devices)."""
    if config.get("source_checkpoint"):
        return reference_source(config)
    source_dir = os.path.join(loop.check_workdir(workdir), "source")
    os.makedirs(source_dir, exist_ok=True)
    train, valid = sources.make_sources(config.data, config.seed)
    hook = plateau.Plateau.from_config(config) if config.lr_plateau.enabled else None
    result = loop.train_and_evaluate(config, source_dir, casp.build_task(config), train, valid, mesh=mesh,
                                     eval_hook=hook)
    if result.preempted:
        raise KeyboardInterrupt(f"source training stopped at step {int(result.state.step)}; rerun to resume")
    best = result.best
    if best is None:
        return jax.device_get(result.state.params)
    logger.info("source model: step %d, source-valid %s = %.4f", best["step"], best["metric"], best["value"])
    return checkpoint.load_params(os.path.join(source_dir, "checkpoints_best"), best["step"])


def results_table(summary: dict) -> str:
    columns = ("method", "mode", "mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5",
               "seconds")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in summary["results"]:
        cells = [row[c] if isinstance(row[c], str) else f"{row[c]:.4f}" if c != "seconds" else f"{row[c]:.1f}"
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(config, workdir: str, mesh=None) -> dict:
    """Source training (or reuse) on `mesh`, then every method in every mode; the summary goes to
    results.json."""
    params = train_source(config, workdir, mesh)
    summary = casp.run_adaptation(config, params)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("casp")
    summary = run(config, workdir)
    print(f"{summary['source']} -> {summary['target']} ({summary['backbone']} fusion), test split:\n"
          f"{results_table(summary)}\nresults: {workdir}/results.json")


if __name__ == "__main__":
    cli.define_experiment_flags("casp", "tiny, synthetic, <src>2<tgt>_<late|early>")
    cli.run(main)
