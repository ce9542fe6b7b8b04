"""CASP test-time adaptation: train a sentiment regressor on the source, adapt it to the target without labels.

    python -m experiments.casp                                             # tiny synthetic shift, minutes on CPU
    python -m experiments.casp --config=experiments/configs/casp.py:mosei2sims_late \
        --config.data.manual_dir=/data/MOSEI --config.target.manual_dir=/data/SIMS --workdir=runs/casp_m2s

1. Source training (`<workdir>/source/`): the trainer on the source train split, the checkpoint with the best
   source-valid Acc-2 kept; rerunning resumes or reuses it.
2. Every method in `config.tta.methods` (source_only, casp, dropout_variance, feature_alignment) in every
   mode in `config.tta.modes`: `offline` (CASP's protocol: epochs over the unlabelled target adapt split,
   then the test split is scored), `online` (the test split as a stream: adapt on a batch, then predict it),
   `episodic` (each test sample adapted on its own from the source weights, vmapped).
3. `<workdir>/results.json`: MAE, correlation, Acc-2/F1 (has-0, non-0, reference), Acc-7, Acc-5 and wall time
   per method and mode; a table is printed.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

from jaxemo import cli
from jaxemo.data import sources
from jaxemo.models import msa
from jaxemo.train import checkpoint, loop, metrics, tasks
from jaxemo.train import state as state_lib
from jaxemo.tta import core, methods, modes

logger = logging.getLogger(__name__)


def build_model(config) -> msa.SentimentRegressor:
    fields = {k: v for k, v in config.model.items() if k != "dtype"}
    return msa.SentimentRegressor(dtype=state_lib.dtype_from_name(config.model.dtype), **fields)


def build_task(config) -> tasks.SentimentRegressionTask:
    return tasks.SentimentRegressionTask(build_model(config))


def train_source(config, workdir: str) -> dict:
    """Source training (resumed if interrupted, reused if finished); the best source-valid params."""
    source_dir = os.path.join(loop.check_workdir(workdir), "source")
    os.makedirs(source_dir, exist_ok=True)
    train, valid = sources.make_sources(config.data, config.seed)
    result = loop.train_and_evaluate(config, source_dir, build_task(config), train, valid)
    if result.preempted:
        raise KeyboardInterrupt(f"source training stopped at step {int(result.state.step)}; rerun to resume")
    best = result.best
    if best is None:
        return jax.device_get(result.state.params)
    logger.info("source model: step %d, source-valid %s = %.4f", best["step"], best["metric"], best["value"])
    return checkpoint.load_params(os.path.join(source_dir, "checkpoints_best"), best["step"])


def target_arrays(config, split: str, dims: dict) -> dict:
    """A target split as host arrays, its feature dims checked against (or aligned to) the source's."""
    arrays = modes.stack_source(sources.make_source(config.target, split, config.seed))
    for m in core.MODALITIES:
        have, want = arrays[m].shape[-1], dims[m]
        if have == want:
            continue
        if config.target.align_features != "pad":
            raise ValueError(
                f"target {config.target.name}/{split}: {m} features have {have} dims, the source model's "
                f"{config.data.name} {m} projection takes {want}. Use features from one extraction for both "
                f"(CASP's `casp` pickles), or --config.target.align_features=pad (zero-pad / truncate; not "
                f"CASP's setting)")
        x = arrays[m][..., :want]
        arrays[m] = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, want - x.shape[-1])])
    return arrays


def make_method(name: str, config, source_stats=None):
    t = config.tta
    if name == "source_only":
        return methods.SourceOnly()
    if name == "casp":
        return methods.Contrastive(t.temperature, per_sample_drop=t.per_sample_drop)
    if name == "dropout_variance":
        return methods.DropoutVariance(t.dropout_samples)
    if name == "feature_alignment":
        return methods.FeatureAlignment(source_stats)
    raise ValueError(f"tta.methods: {name!r} is unknown; expected one of {sorted(methods.METHODS)}")


def source_feature_stats(config, model, params) -> dict:
    """Per-layer hidden-state statistics on the source train split (all FeatureAlignment keeps of it)."""
    arrays = modes.stack_source(sources.make_source(config.data, config.data.get("train_split", "train"),
                                                    config.seed))
    batches = modes.batched({k: v for k, v in arrays.items() if k in core.INPUT_KEYS}, config.tta.batch_size)
    return methods.feature_statistics(model, params, (
        {k: v[b] for k, v in batches.items()} for b in range(len(batches["mask"]))))


def offline_config(config) -> modes.OfflineConfig:
    t = config.tta
    return modes.OfflineConfig(t.epochs, t.snapshot_every, t.pseudo_epochs, t.quantile, t.selection, t.batch_size,
                               t.shuffle, core.OptimizerConfig(t.learning_rate, t.clip_norm))


def run_mode(mode: str, method, model, frozen, adapted, adapt_data, test_data, config, rng) -> np.ndarray:
    """Test-split predictions of one method in one mode."""
    t = config.tta
    test_inputs = {k: v for k, v in test_data.items() if k in core.INPUT_KEYS}
    if isinstance(method, methods.SourceOnly):
        batches = modes.batched(test_inputs, t.batch_size)
        return modes.unbatch(modes.predict_batches(model, frozen, adapted, batches), len(test_data["label"]))
    optimizer = core.OptimizerConfig(t.learning_rate, t.clip_norm)
    if mode == "offline":
        unlabelled = {k: v for k, v in adapt_data.items() if k in core.INPUT_KEYS}
        if isinstance(method, methods.Contrastive):
            result = modes.casp_offline(model, frozen, adapted, unlabelled, offline_config(config), rng, method)
        else:
            result = modes.adapt_offline(method, model, frozen, adapted, unlabelled, offline_config(config), rng)
        batches = modes.batched(test_inputs, t.batch_size)
        return modes.unbatch(modes.predict_batches(model, frozen, result.adapted, batches), len(test_data["label"]))
    if mode == "online":
        return modes.adapt_online(method, model, frozen, adapted, test_inputs, t.batch_size, rng, t.online_steps,
                                  optimizer)[0]
    if mode == "episodic":
        episodic = modes.EpisodicConfig(t.episodic_steps, t.episodic_views, optimizer)
        return modes.episodic_predict(method, model, frozen, adapted, test_inputs, rng, episodic, t.episodic_batch)
    raise ValueError(f"tta.modes: {mode!r} is unknown; expected offline, online or episodic")


def run_adaptation(config, params: dict, workdir: str) -> dict:
    model = build_model(config)
    frozen, adapted = core.split(params, tuple(config.tta.adapted))
    dims = {m: int(params[f"proj_{m}"]["kernel"].shape[0]) for m in core.MODALITIES}
    adapt_data = target_arrays(config, config.target.adapt_split, dims)
    test_data = target_arrays(config, config.target.test_split, dims)
    source_stats = (source_feature_stats(config, model, params)
                    if "feature_alignment" in config.tta.methods else None)
    results = []
    for name in config.tta.methods:
        method = make_method(name, config, source_stats)
        for mode in (["-"] if name == "source_only" else config.tta.modes):
            start = time.perf_counter()
            rng = jax.random.key(config.seed)
            predictions = run_mode(mode, method, model, frozen, adapted, adapt_data, test_data, config, rng)
            row = {"method": name, "mode": mode, "seconds": time.perf_counter() - start,
                   **metrics.sentiment_metrics(predictions, test_data["label"])}
            logger.info("%s / %s: MAE %.4f, corr %.4f (%.1f s)", name, mode, row["mae"], row["corr"], row["seconds"])
            results.append(row)
    summary = {"source": config.data.name, "target": config.target.name, "backbone": config.model.fusion,
               "results": results}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def results_table(summary: dict) -> str:
    columns = ("method", "mode", "mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5",
               "seconds")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in summary["results"]:
        cells = [row[c] if isinstance(row[c], str) else f"{row[c]:.4f}" if c != "seconds" else f"{row[c]:.1f}"
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("casp")
    params = train_source(config, workdir)
    summary = run_adaptation(config, params, workdir)
    print(f"{summary['source']} -> {summary['target']} ({summary['backbone']} fusion), test split:\n"
          f"{results_table(summary)}\nresults: {workdir}/results.json")


if __name__ == "__main__":
    cli.define_experiment_flags("casp", "tiny, synthetic, <src>2<tgt>_<late|early>")
    cli.run(main)
