"""Train and evaluate a ViT classifier; the default data is the learnable synthetic image set.

    python -m experiments.vit_classifier                                   # tiny config, ~1 min on CPU
    python -m experiments.vit_classifier --config=experiments/configs/vit_classifier.py:paper \
        --config.batch_size=256 --workdir=/tmp/vit_b16
"""

from __future__ import annotations

import logging

from jaxemo import cli, vit
from jaxemo.data import sources
from jaxemo.train import loop, state as state_lib, tasks


def build_model(config) -> vit.ViT:
    m = config.model
    overrides = {k: m[k] for k in ("width", "depth", "num_heads", "mlp_dim") if m.get(k) is not None}
    return vit.create_vit(
        m.variant,
        image_size=(m.image_size, m.image_size),
        in_channels=m.in_channels,
        num_classes=config.data.num_classes,
        pool=m.pool,
        pos_embedding=m.pos_embedding,
        drop_path_rate=m.drop_path_rate,
        dropout_rate=m.dropout_rate,
        scan_layers=m.scan_layers,
        remat_policy=m.remat_policy,
        dtype=state_lib.dtype_from_name(m.dtype),
        **overrides,
    )


def build_data(config):
    """(train source, eval source) for `config.data` (synthetic by default, or a dataset builder)."""
    return sources.make_sources(config.data, config.seed)


def train(config, workdir: str) -> loop.TrainResult:
    task = tasks.ClassificationTask(build_model(config), config.data.num_classes)
    train_source, eval_source = build_data(config)
    return loop.train_and_evaluate(config, workdir, task, train_source, eval_source)


def main(argv):
    del argv
    config, workdir = cli.experiment_config_and_workdir("vit_classifier")
    result = train(config, workdir)
    if result.preempted:
        print(f"stopped at step {int(result.state.step)}; rerun the same command to resume from {workdir}")
        return
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.eval_metrics.items()))
    logging.info("done: %d steps; eval %s; checkpoints in %s/checkpoints", result.steps_run, metrics, workdir)
    print(f"final eval: {metrics}\nworkdir: {workdir}")


if __name__ == "__main__":
    cli.define_experiment_flags("vit_classifier", "tiny, paper")
    cli.run(main)
