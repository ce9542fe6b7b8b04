"""The generic training loop: mesh, sharded state, jitted step, checkpoints, metrics, preemption.

`train_and_evaluate(config, workdir, task, train_source, eval_source)` runs the whole job and resumes from
the newest readable checkpoint in `workdir/checkpoints`, so a killed run restarted with the same command
ends with the same parameters as one that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxemo.data import pipeline
from jaxemo.train import checkpoint as checkpoint_lib
from jaxemo.train import metrics as metrics_lib
from jaxemo.train import optim, sharding, state as state_lib, step as step_lib

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass
class TrainResult:
    state: state_lib.TrainState
    eval_metrics: dict
    steps_run: int
    preempted: bool = False
    eval_stats: Optional[dict] = None  # the final evaluation's summed statistics (e.g. a confusion matrix)
    best: Optional[dict] = None  # {"step", "metric", "value"} of the best evaluation, if one is tracked


def check_workdir(workdir: str) -> str:
    workdir = os.path.abspath(workdir)
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"--workdir {workdir}: its parent directory {parent} does not exist")
    os.makedirs(workdir, exist_ok=True)
    return workdir


def total_steps(config, num_train_examples: int) -> tuple[int, int]:
    """(total steps, steps per epoch) from `config.total_steps` or `config.num_epochs`."""
    steps_per_epoch = max(num_train_examples // config.batch_size, 1)
    if config.get("total_steps"):
        return int(config.total_steps), steps_per_epoch
    return int(math.ceil(config.num_epochs * steps_per_epoch)), steps_per_epoch


class Trainer:
    """Everything built from the config before the first step: mesh, optimizer, shardings, jitted steps."""

    def __init__(self, config, task, train_source, eval_source=None, mesh=None):
        self.config, self.task = config, task
        self.mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
        sharding.check_batch_size(config.batch_size, self.mesh)
        if eval_source is not None:
            sharding.check_batch_size(config.eval_batch_size, self.mesh)
        self.train_source, self.eval_source = train_source, eval_source
        self.total_steps, self.steps_per_epoch = total_steps(config, len(train_source))
        self.tx, self.schedule = optim.make_optimizer(config.optimizer, self.total_steps, self.steps_per_epoch)
        self.example_batch = _example_batch(task, train_source)
        self.frozen_dtype = state_lib.dtype_from_name(config.get("frozen_dtype", "float32"))
        self.abstract, self.shardings = state_lib.abstract_state(
            task, self.tx, self.example_batch, self.mesh, frozen_dtype=self.frozen_dtype)
        accum = int(config.optimizer.get("grad_accum_steps", 1))
        if config.batch_size % (accum * sharding.batch_divisor(self.mesh)):
            raise ValueError(f"batch_size={config.batch_size} must split into grad_accum_steps={accum} "
                             f"microbatches that each divide over {sharding.batch_divisor(self.mesh)} devices")
        train_step = step_lib.make_train_step(task, self.tx, self.schedule, accum)
        self.train_step = step_lib.jit_train_step(train_step, self.shardings, self.mesh)
        self.evaluator = Evaluator(config, task, eval_source, self.mesh, self.shardings.params) \
            if eval_source is not None else None

    def init_state(self, init_params=None) -> state_lib.TrainState:
        """A fresh state; `init_params(params) -> params` (host numpy trees) may replace the initial params,
        e.g. with pretrained encoders. Optimizer moments start at zero either way."""
        rng = jax.random.key(self.config.seed)
        state, _ = state_lib.create_train_state(self.task, self.tx, self.example_batch, rng, self.mesh,
                                                frozen_dtype=self.frozen_dtype)
        if init_params is None:
            return state
        params = jax.device_put(init_params(jax.device_get(state.params)), self.shardings.params)
        trainable, frozen = optim.split_params(params, self.task.is_trainable)
        return state.replace(trainable=trainable,
                             frozen=jax.tree.map(lambda x: x.astype(self.frozen_dtype), frozen))

    @property
    def eval_every_steps(self) -> int:
        epochs = self.config.get("eval_every_epochs")
        return int(epochs * self.steps_per_epoch) if epochs else int(self.config.get("eval_every_steps") or 0)

    def train_iterator(self):
        return iter(pipeline.train_dataset(
            self.train_source, self.config.batch_size, self.config.seed,
            worker_count=self.config.get("data_workers", 0), transform=host_transform(self.task, train=True),
            pad_spec=getattr(self.task, "pad_spec", None)))

    def evaluate_stats(self, state) -> dict:
        return self.evaluator.stats(state.params)

    def evaluate(self, state) -> dict:
        return self.task.summarize(self.evaluate_stats(state))


class Evaluator:
    """Runs the task's eval statistics over a whole source for given params (a trainer's, or a checkpoint's)."""

    def __init__(self, config, task, source, mesh, param_shardings):
        sharding.check_batch_size(config.eval_batch_size, mesh)
        self.config, self.task, self.source, self.mesh = config, task, source, mesh
        self.param_shardings = param_shardings
        self.eval_step = step_lib.jit_eval_step(task, param_shardings, mesh)

    def stats(self, params) -> dict:
        """The task's evaluation statistics summed over the whole source (host numpy)."""
        totals = None
        batches = pipeline.eval_batches(self.source, self.config.eval_batch_size,
                                        transform=host_transform(self.task, train=False),
                                        pad_spec=getattr(self.task, "pad_spec", None))
        for batch in batches:
            stats = self.eval_step(params, sharding.shard_batch(batch, self.mesh))
            totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
        return jax.device_get(totals)


def evaluate_params(config, task, params, eval_source, mesh=None) -> tuple[dict, dict]:
    """(metrics, summed statistics) of `params` (e.g. from `checkpoint.load_params`) on `eval_source`."""
    mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
    boxed = jax.eval_shape(task.init, jax.random.key(0), _example_batch(task, eval_source))["params"]
    shardings = sharding.tree_shardings(boxed, mesh)
    evaluator = Evaluator(config, task, eval_source, mesh, shardings)
    stats = evaluator.stats(jax.device_put(params, shardings))
    return task.summarize(stats), stats


def train_and_evaluate(config, workdir: str, task, train_source, eval_source=None, mesh=None,
                       init_params=None) -> TrainResult:
    """Trains `task` on `train_source` (random access: len and [i]), evaluating on `eval_source`.

    `mesh` defaults to one built from `config.mesh` over all devices. `init_params(params) -> params` adjusts
    the initial parameters of a fresh run (not of a resumed one).
    """
    workdir = check_workdir(workdir)
    trainer = Trainer(config, task, train_source, eval_source, mesh)
    _write_config(config, workdir)
    logger.info("training %s: %s trainable + %s frozen params; %d steps of batch %d (%d per epoch) on mesh %s; "
                "writing to %s", type(task.model).__name__, f"{optim.count_params(trainer.abstract.trainable):,}",
                f"{optim.count_params(trainer.abstract.frozen):,}", trainer.total_steps, config.batch_size,
                trainer.steps_per_epoch, dict(trainer.mesh.shape), workdir)
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint.every_steps,
                                       config.checkpoint.keep, config.checkpoint.get("async_save", True))
    train_iter = trainer.train_iterator()
    restored = ckpt.restore_latest(trainer.abstract)
    if restored is not None:
        state, data_state = restored
        train_iter.set_state(data_state)
        logger.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    else:
        state = trainer.init_state(init_params)
    writer = metrics_lib.MetricWriter(workdir)
    best_metric = config.checkpoint.get("best_metric")
    best = checkpoint_lib.BestCheckpoint(os.path.join(workdir, "checkpoints_best"), best_metric) if best_metric else None
    try:
        return _run(trainer, config, state, train_iter, ckpt, writer, best)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        if best is not None:
            best.close()


def _evaluate(trainer: Trainer, state, step: int, writer, best, data_state, config_json) -> tuple[dict, dict]:
    stats = trainer.evaluate_stats(state)
    metrics = trainer.task.summarize(stats)
    writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
    logger.info("eval at step %d: %s", step, _format(metrics))
    if best is not None and best.update(step, state, metrics, data_state, config_json):
        logger.info("new best %s=%.4f at step %d", best.metric, best.best["value"], step)
    return metrics, stats


def _run(trainer: Trainer, config, state, train_iter, ckpt, writer, best) -> TrainResult:
    start = int(state.step)
    total = trainer.total_steps
    config_json = json.loads(config.to_json_best_effort())
    watcher = checkpoint_lib.PreemptionWatcher()
    progress = _Progress(total, start, config.batch_size, enabled=jax.process_index() == 0)
    eval_metrics: dict = {}
    data_state = train_iter.get_state()  # always the iterator state that matches `state`
    try:
        for step in range(start + 1, total + 1):
            batch = sharding.shard_batch(next(train_iter), trainer.mesh)
            state, metrics = trainer.train_step(state, batch)
            data_state = train_iter.get_state()
            if step % config.log_every_steps == 0 or step == total:
                scalars = metrics_lib.to_python(jax.device_get(metrics))
                scalars.update(progress.rates(step))
                writer.write(step, {f"train/{k}": v for k, v in scalars.items()})
                progress.show(step, scalars)
                _check_nonfinite(state, step, config)
            every = trainer.eval_every_steps
            if trainer.eval_source is not None and every and step % every == 0 and step != total:
                eval_metrics, _ = _evaluate(trainer, state, step, writer, best, data_state, config_json)
            ckpt.save(step, state, data_state, config_json)
            if watcher.reached(step):
                ckpt.save(step, state, data_state, config_json, force=True)
                ckpt.wait()
                logger.warning("preemption signal: saved step %d to %s; rerun the same command to resume",
                               step, ckpt.directory)  # SIGTERM, Ctrl-C, or JAX's multi-host preemption notice
                return TrainResult(state, eval_metrics, step - start, preempted=True)
    finally:
        progress.close()
        watcher.close()
    ckpt.save(total, state, data_state, config_json, force=True)
    eval_stats = None
    if trainer.eval_source is not None:
        eval_metrics, eval_stats = _evaluate(trainer, state, total, writer, best, data_state, config_json)
    return TrainResult(state, eval_metrics, total - start, eval_stats=eval_stats,
                       best=best.best if best is not None else None)


def _check_nonfinite(state, step: int, config) -> None:
    streak = int(state.nonfinite_streak)
    if streak >= config.get("max_consecutive_nonfinite", 10):
        raise NonFiniteLossError(
            f"the last {streak} steps up to step {step} all had a non-finite loss or gradient; their "
            f"updates were skipped, so the newest checkpoint holds finite parameters. Lower the learning "
            f"rate or check the data, then resume."
        )


def _write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def host_transform(task, train: bool):
    """The task's per-example host transform (see `tasks`), if it has one."""
    return task.host_transform(train) if hasattr(task, "host_transform") else None


def _example_batch(task, source) -> dict:
    """One example as the model sees it (after the task's eval transform), for shapes at init."""
    transform = host_transform(task, train=False)
    example = source[0] if transform is None else transform(source[0], np.random.default_rng(0))
    return state_lib.example_batch_like(_stack([example]))


def _stack(rows) -> dict:
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def _format(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


class _Progress:
    """tqdm bar with samples/s and ETA; rates exclude the first step (compilation)."""

    def __init__(self, total: int, start: int, batch_size: int, enabled: bool):
        self.batch_size = batch_size
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=not enabled,
                        mininterval=1.0)
        self._last_step, self._last_time = start, None

    def rates(self, step: int) -> dict:
        now = time.perf_counter()
        rates = {}
        if self._last_time is not None and step > self._last_step:
            rates["samples_per_sec"] = (step - self._last_step) * self.batch_size / (now - self._last_time)
        self._last_step, self._last_time = step, now
        return rates

    def show(self, step: int, scalars: dict) -> None:
        self.bar.n = step
        shown = {k: scalars[k] for k in ("loss", "accuracy", "samples_per_sec") if k in scalars}
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)

    def close(self) -> None:
        self.bar.close()
