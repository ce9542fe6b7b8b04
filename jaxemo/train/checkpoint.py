"""Orbax checkpoints, kept plain so that other JAX code can read them with Orbax alone.

Layout of `<directory>/<step>/`:
    params/       the model parameters as one plain nested dict of arrays (the model's own tree)
    train_state/  {"opt_state", "step", "rng", "nonfinite_steps", "nonfinite_streak"}
    data/         the data iterator state (JSON)
    config/       the run's config (JSON)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxemo.train import optim
from jaxemo.train.state import TrainState

logger = logging.getLogger(__name__)

ITEMS = ("params", "train_state", "data", "config")


def _train_state_tree(state: TrainState) -> dict:
    return {"opt_state": state.opt_state, "step": state.step, "rng": state.rng,
            "nonfinite_steps": state.nonfinite_steps, "nonfinite_streak": state.nonfinite_streak}


class Checkpointer:
    """Async save every `save_every` steps (and when forced), keep the last `keep`, restore the newest
    readable one. A checkpoint that fails to restore is moved to `<directory>_corrupt/` and reported."""

    def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            # Exactly every `save_every` steps (Orbax's interval alone also saves the first step).
            should_save_fn=lambda step, _last: step % save_every == 0,
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def save(self, step: int, state: TrainState, data_state: dict, config: dict, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or `force`) and not saved already; returns whether it did."""
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train_state=ocp.args.StandardSave(_train_state_tree(state)),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config),
        )
        return self.manager.save(int(step), args=args, force=force)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def restore_latest(self, abstract: TrainState) -> Optional[tuple[TrainState, dict]]:
        """(state, data_state) from the newest readable checkpoint, or None if there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, abstract)
            except Exception as error:  # Orbax raises many types for truncated / corrupt files
                self._quarantine(step, error)
        return None

    def restore(self, step: int, abstract: TrainState) -> tuple[TrainState, dict]:
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract.params),
            train_state=ocp.args.StandardRestore(_train_state_tree(abstract)),
            data=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=args)
        trainable, frozen = _split_like(restored["params"], abstract)
        tree = restored["train_state"]
        state = TrainState(trainable=trainable, frozen=frozen, **tree)
        if int(state.step) != step:
            raise ValueError(f"checkpoint {self.directory}/{step}: train_state.step is {int(state.step)}")
        return state, restored["data"]

    def _quarantine(self, step: int, error: Exception) -> None:
        path = os.path.join(self.directory, str(step))
        target = os.path.join(self.directory + "_corrupt", f"{step}-{int(time.time())}")
        logger.warning("checkpoint %s is unreadable (%s: %s); moved it to %s and falling back to the "
                       "previous checkpoint", path, type(error).__name__, str(error)[:500], target)
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(path, target)
        multihost_utils.sync_global_devices(f"jaxemo_quarantine_{step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class BestCheckpoint:
    """Keeps, beside the regular checkpoints, the one of the best evaluation (as `early_stopping.BestTracker`
    decides): `<directory>/<step>/` plus `<directory>.json` holding {"step", "metric", "value"}."""

    def __init__(self, directory: str):
        self.checkpointer = Checkpointer(directory, save_every=1, keep=1, async_save=False)
        self.record_path = self.checkpointer.directory + ".json"
        self.best = json.load(open(self.record_path)) if os.path.exists(self.record_path) else None

    def save(self, step: int, state: TrainState, data_state: dict, config: dict, record: dict) -> None:
        """Saves `state` as the best one; `record` is {"step", "metric", "value"}."""
        self.checkpointer.save(step, state, data_state, config, force=True)
        self.checkpointer.wait()
        self.best = dict(record)
        if jax.process_index() == 0:
            with open(self.record_path, "w") as f:
                json.dump(self.best, f)

    def close(self) -> None:
        self.checkpointer.close()


def _split_like(params: dict, abstract: TrainState) -> tuple[dict, dict]:
    trainable_paths = {path for path, _ in _flat(abstract.trainable)}
    return optim.split_params(params, lambda path: path in trainable_paths)


def _flat(tree):
    from flax import traverse_util

    return traverse_util.flatten_dict(tree).items()


def step_directory(path: str, step: Optional[int] = None) -> str:
    """`path` itself if it is one step's directory, else `<path>/<step>` (the newest step by default)."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if os.path.isdir(os.path.join(path, "params")):
        return path
    steps = sorted(int(name) for name in os.listdir(path) if name.isdigit())
    if not steps:
        raise FileNotFoundError(f"{path} holds no checkpoint steps (expected <step>/params)")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{path} has no step {step}; it has {steps}")
    return os.path.join(path, str(step if step is not None else steps[-1]))


def save_params(path: str, params, step: int = 0, overwrite: bool = False) -> str:
    """`params` as step `step` of a jaxemo checkpoint directory (`<path>/<step>/params`, what `load_params`
    reads); returns the step's directory. An existing one is an error unless `overwrite`."""
    target = os.path.join(os.path.abspath(path), str(step), "params")
    if os.path.exists(target):
        if not overwrite:
            raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
        shutil.rmtree(target)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target, params)
    checkpointer.wait_until_finished()
    return os.path.dirname(target)


def load_params(path: str, step: Optional[int] = None, sharding: Optional[jax.sharding.Sharding] = None) -> dict:
    """The params of a jaxemo checkpoint as a plain nested dict of arrays.

    `path` is a run's checkpoint directory (the newest step is used unless `step` is given) or one step's
    directory. Arrays are placed with `sharding` (default: replicated on this process's first device).
    """
    params_dir = os.path.join(step_directory(path, step), "params")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(params_dir).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
    return checkpointer.restore(params_dir, target)


class PreemptionWatcher:
    """True once the run should save and stop.

    One process: after SIGTERM (preemption) or a first Ctrl-C; a second Ctrl-C aborts at once. Several
    processes: JAX's preemption sync point, so that every process agrees on the step to save.
    """

    def __init__(self):
        self._signalled = threading.Event()
        self._previous = {}
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame):
        self._signalled.set()
        if signum == signal.SIGINT:
            logger.warning("Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again aborts)")
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled.is_set()

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
