"""Train and evaluate a ViT classifier; the default data is the learnable synthetic image set.

    python -m experiments.vit_classifier                                   # tiny config, ~1 min on CPU
    python -m experiments.vit_classifier --config=experiments/configs/vit_classifier.py:paper \
        --config.batch_size=256 --workdir=/tmp/vit_b16
"""

from __future__ import annotations

import logging

from experiments import cli
from jaxemo.systems import vit_classifier
from jaxemo.train import loop


def train(config, workdir: str) -> loop.TrainResult:
    task = vit_classifier.build_task(config)
    train_source, eval_source = vit_classifier.build_data(config)
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
