"""Command-line plumbing shared by every `python -m experiments.<name>` module (and the benchmark drivers)."""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_dict, config_flags

from experiments.configs import config_path
from jaxemo.train import checkpoint


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


def stored_config(path: str, step: int | None) -> config_dict.ConfigDict:
    """The recipe config a jaxemo checkpoint stored beside its params (`path`: a run's checkpoints or one step)."""
    step_dir = checkpoint.step_directory(path, step)
    config_file = os.path.join(step_dir, "config", "metadata")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{step_dir} has no stored config ({config_file}); is it a jaxemo checkpoint?")
    with open(config_file) as f:
        return config_dict.ConfigDict(json.load(f))


def apply_overrides(config: config_dict.ConfigDict, overrides) -> None:
    """`field.sub=value` strings applied to `config`, each value cast to the type the field has."""
    for item in overrides:
        key, _, value = item.partition("=")
        target = config
        *parents, leaf = key.split(".")
        for name in parents:
            target = target[name]
        target[leaf] = type(target[leaf])(value) if target.get(leaf) is not None else value



def run(main) -> None:
    """absl entry point: logging to stderr at INFO; the config's `host_devices` and multi-host initialisation
    before anything else."""

    def wrapped(argv):
        logging.getLogger().setLevel(logging.INFO)
        for noisy in ("absl", "orbax", "jax._src", "grain"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from jaxemo.train import sharding

        if "config" in flags.FLAGS and "host_devices" in flags.FLAGS.config:
            sharding.use_host_devices(int(flags.FLAGS.config.host_devices))
        sharding.maybe_initialize_distributed()
        return main(argv)

    flags.FLAGS.set_default("logtostderr", True) if "logtostderr" in flags.FLAGS else None
    app.run(wrapped, argv=sys.argv)
