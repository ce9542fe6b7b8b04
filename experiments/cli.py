"""Command-line plumbing shared by every `python -m experiments.<name>` module (and the benchmark drivers)."""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments.configs import config_path


def default_workdir(experiment: str, variant: str) -> str:
    """`runs/<experiment>-<variant>` under the current directory (its parent is created)."""
    path = os.path.abspath(os.path.join("runs", f"{experiment}-{variant}"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def define_experiment_flags(experiment: str, variants: str) -> None:
    """`--config` (default `experiments/configs/<experiment>.py:tiny`) and `--workdir`.

    Called under `if __name__ == "__main__"`, never at import time: absl flags are process-global, so
    two experiment modules imported into one process (a test session) would otherwise collide.
    """
    config_flags.DEFINE_config_file("config", config_path(experiment) + ":tiny",
                                    f"config file and variant ({variants})")
    flags.DEFINE_string("workdir", None, f"output directory (default: runs/{experiment}-<variant>)")


def experiment_config_and_workdir(experiment: str):
    """The parsed `--config` and `--workdir` (defaulting to `runs/<experiment>-<variant>`)."""
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or default_workdir(experiment, config.get("variant", "custom"))
    return config, workdir


def run(main) -> None:
    """absl entry point: logging to stderr at INFO, multi-host initialisation before anything else."""

    def wrapped(argv):
        logging.getLogger().setLevel(logging.INFO)
        for noisy in ("absl", "orbax", "jax._src", "grain"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from jaxemo.train import sharding

        sharding.maybe_initialize_distributed()
        return main(argv)

    flags.FLAGS.set_default("logtostderr", True) if "logtostderr" in flags.FLAGS else None
    app.run(wrapped, argv=sys.argv)
