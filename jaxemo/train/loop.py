"""The generic training loop: mesh, sharded state, jitted step, checkpoints, metrics, preemption.

`train_and_evaluate(config, workdir, task, train_source, eval_source)` runs the whole job and resumes from
the newest readable checkpoint in `workdir/checkpoints`, so a killed run restarted with the same command
ends with the same parameters as one that was never interrupted.

Sources are `DataSource`s (`jaxemo.data.datasource`); `Trainer` and `Evaluator` convert the ones they are
given once (`as_data_source`), so a third-party random-access object works with the default capabilities.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Optional, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxemo import layers, perf
from jaxemo.data import pipeline
from jaxemo.data.datasource import as_data_source
from jaxemo.train import checkpoint as checkpoint_lib
from jaxemo.train import tasks
from jaxemo.train import metrics as metrics_lib
from jaxemo.train import early_stopping, optim, sharding, state as state_lib, step as step_lib

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
    stopped_step: Optional[int] = None  # the step at which early stopping ended the run, if it did


def check_workdir(workdir: str) -> str:
    workdir = os.path.abspath(workdir)
    parent = os.path.dirname(workdir)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"--workdir {workdir}: its parent directory {parent} does not exist")
    os.makedirs(workdir, exist_ok=True)
    return workdir


def total_steps(config, num_train_examples: int) -> tuple[int, int]:
    """(total steps, steps per epoch) from `config.total_steps` or `config.num_epochs`; an epoch is
    `config.steps_per_epoch` steps if set, else one pass over the examples (the last partial batch dropped)."""
    steps_per_epoch = int(config.get("steps_per_epoch") or max(num_train_examples // config.batch_size, 1))
    if config.get("total_steps"):
        return int(config.total_steps), steps_per_epoch
    return int(math.ceil(config.num_epochs * steps_per_epoch)), steps_per_epoch


@dataclasses.dataclass
class StepSetup:
    """What a jitted train step needs, built from the config: the optimizer, the rules, the abstract sharded
    state and the step itself. The trainer and the benchmarks build it the same way."""

    optimizer: optim.Optimizer
    rules: tuple
    frozen_dtype: object
    abstract: state_lib.TrainState
    shardings: state_lib.TrainState
    train_step: object  # the jitted `step_lib.make_train_step`

    @property
    def tx(self):
        return self.optimizer.tx


def check_accumulation(config, mesh) -> int:
    accum = int(config.optimizer.get("grad_accum_steps", 1))
    if config.batch_size % (accum * sharding.batch_divisor(mesh)):
        raise ValueError(f"batch_size={config.batch_size} must split into grad_accum_steps={accum} "
                         f"microbatches that each divide over {sharding.batch_divisor(mesh)} devices")
    return accum


def setup_train_step(config, task, example_batch, mesh, total_steps: int, steps_per_epoch: int) -> StepSetup:
    optimizer = optim.make_optimizer(config.optimizer, total_steps, steps_per_epoch)
    rules = sharding.rules_from_config(config)
    frozen_dtype = layers.dtype_from_name(config.get("frozen_dtype", "float32"))
    min_size = int((config.get("sharding") or {}).get("min_sharded_size") or 0)
    abstract, shardings = state_lib.abstract_state(task, optimizer.tx, example_batch, mesh, rules, frozen_dtype,
                                                   min_size)
    train_step = step_lib.make_train_step(task, optimizer, check_accumulation(config, mesh))
    return StepSetup(optimizer, rules, frozen_dtype, abstract, shardings,
                     step_lib.jit_train_step(train_step, shardings, mesh, rules))


class Trainer:
    """Everything built from the config before the first step: mesh, optimizer, shardings, jitted steps."""

    def __init__(self, config, task: tasks.Task, train_source, eval_source=None, mesh=None):
        self.config, self.task = config, task
        self.mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
        sharding.check_batch_size(config.batch_size, self.mesh)
        self.train_source, self.eval_source = as_data_source(train_source, "train_source"), None
        if eval_source is not None:
            sharding.check_batch_size(config.eval_batch_size, self.mesh)
            self.eval_source = as_data_source(eval_source, "eval_source")
        self.total_steps, self.steps_per_epoch = total_steps(config, len(self.train_source))
        self.example_batch = example_batch(task, self.train_source)
        self.setup = setup_train_step(config, task, self.example_batch, self.mesh, self.total_steps,
                                      self.steps_per_epoch)
        self.optimizer, self.tx = self.setup.optimizer, self.setup.tx
        self.abstract, self.shardings = self.setup.abstract, self.setup.shardings
        self.frozen_dtype, self.train_step = self.setup.frozen_dtype, self.setup.train_step
        self.evaluator = Evaluator(config, task, self.eval_source, self.mesh, self.shardings.params) \
            if self.eval_source is not None else None

    def init_state(self, init_params=None) -> state_lib.TrainState:
        """A fresh state; `init_params(params) -> params` (host numpy trees) may replace the initial params,
        e.g. with pretrained encoders. Optimizer moments start at zero either way."""
        rng = jax.random.key(self.config.seed)
        state, _ = state_lib.create_train_state(self.task, self.tx, self.example_batch, rng, self.mesh,
                                                self.setup.rules, self.frozen_dtype)
        if init_params is None:
            return state
        params = jax.device_put(init_params(jax.device_get(state.params)), self.shardings.params)
        trainable, frozen = optim.split_params(params, self.task.is_trainable)
        return state.replace(trainable=trainable,
                             frozen=jax.tree.map(lambda x: x.astype(self.frozen_dtype), frozen))

    @property
    def eval_every_steps(self) -> int:
        return eval_every_steps(self.config, self.steps_per_epoch)

    def train_iterator(self):
        return iter(pipeline.train_dataset(
            self.train_source, self.config.batch_size, self.config.seed,
            worker_count=self.config.get("data_workers", 0), transform=self.task.host_transform(True),
            pad_spec=self.task.pad_spec))

    def evaluate_stats(self, state) -> dict:
        return self.evaluator.stats(state.params)

    def evaluate(self, state) -> dict:
        return self.task.summarize(self.evaluate_stats(state))


def eval_every_steps(config, steps_per_epoch: int) -> int:
    """`config.eval_every_epochs` (in steps) or `config.eval_every_steps`; 0 = only at the end."""
    epochs = config.get("eval_every_epochs")
    return int(epochs * steps_per_epoch) if epochs else int(config.get("eval_every_steps") or 0)


def is_eval_step(step: int, every: int, total: int) -> bool:
    """Whether a run evaluates after `step`: every `every` steps, and always after its last step."""
    return step == total or bool(every and step % every == 0)


class Evaluator:
    """Runs the task's eval statistics over a whole source for given params (a trainer's, or a checkpoint's)."""

    def __init__(self, config, task, source, mesh, param_shardings):
        sharding.check_batch_size(config.eval_batch_size, mesh)
        self.config, self.task, self.source, self.mesh = config, task, as_data_source(source, "eval source"), mesh
        self.param_shardings = param_shardings
        self.eval_step = step_lib.jit_eval_step(task, param_shardings, mesh, sharding.rules_from_config(config))

    def stats(self, params) -> dict:
        """The task's evaluation statistics summed over the whole source (host numpy)."""
        totals = None
        batches = pipeline.eval_batches(self.source, self.config.eval_batch_size,
                                        transform=self.task.host_transform(False), pad_spec=self.task.pad_spec)
        for batch in batches:
            stats = self.eval_step(params, sharding.shard_batch(batch, self.mesh))
            totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
        return jax.device_get(totals)


def evaluate_params(config, task, params, eval_source, mesh=None) -> tuple[dict, dict]:
    """(metrics, summed statistics) of `params` (e.g. from `checkpoint.load_params`) on `eval_source`."""
    mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
    boxed = jax.eval_shape(task.init, jax.random.key(0), example_batch(task, eval_source))["params"]
    shardings = sharding.tree_shardings(boxed, mesh, sharding.rules_from_config(config))
    evaluator = Evaluator(config, task, eval_source, mesh, shardings)
    stats = evaluator.stats(jax.device_put(params, shardings))
    return task.summarize(stats), stats


@runtime_checkable
class EvalHook(Protocol):
    """What `train_and_evaluate` calls after every evaluation (a learning rate cut on a plateau, say):
    `hook(state, step, metrics) -> state` returns the train state to go on with. Its host state goes into every
    checkpoint under `name` (`state_dict()`) and comes back on resume (`load_state_dict`)."""

    name: str

    def __call__(self, state, step: int, metrics: dict): ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, values: dict) -> None: ...


def train_and_evaluate(config, workdir: str, task: tasks.Task, train_source, eval_source=None, mesh=None,
                       init_params=None, eval_hook: Optional[EvalHook] = None) -> TrainResult:
    """Trains `task` on `train_source` (a `DataSource`, or any random-access object: len and [i]), evaluating
    on `eval_source`.

    `mesh` defaults to one built from `config.mesh` over all devices. `init_params(params) -> params` adjusts
    the initial parameters of a fresh run (not of a resumed one). With `config.best.metric` set, the best
    evaluation's state is kept in `checkpoints_best/` and `config.best.patience` > 0 stops the run after that
    many evaluations without improvement (`early_stopping`). `eval_hook` (`EvalHook`) sees every evaluation
    and may change the train state.
    """
    if eval_hook is not None and eval_source is None:
        raise ValueError(f"eval_hook {eval_hook.name!r} acts on evaluations: it needs an evaluation source")
    workdir = check_workdir(workdir)
    trainer = Trainer(config, task, train_source, eval_source, mesh)
    _write_config(config, workdir)
    logger.info("training %s: %s trainable + %s frozen params; %d steps of batch %d (%d per epoch) on mesh %s; "
                "writing to %s", type(task.model).__name__, f"{optim.count_params(trainer.abstract.trainable):,}",
                f"{optim.count_params(trainer.abstract.frozen):,}", trainer.total_steps, config.batch_size,
                trainer.steps_per_epoch, dict(trainer.mesh.shape), workdir)
    tracker = early_stopping.BestTracker(early_stopping.BestConfig.from_config(config))
    if tracker.config.enabled and eval_source is None:
        raise ValueError(f"best.metric={tracker.config.metric!r} needs an evaluation source")
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint.every_steps,
                                       config.checkpoint.keep, config.checkpoint.get("async_save", True))
    train_iter = trainer.train_iterator()
    restored = ckpt.restore_latest(trainer.abstract)
    if restored is not None:
        state, data_state = restored
        train_iter.set_state(data_state)
        if "best" in data_state:
            tracker.load_state_dict(data_state["best"])
        if eval_hook is not None:
            if eval_hook.name not in data_state:
                raise ValueError(f"{ckpt.directory} holds a run trained without {eval_hook.name!r}: resume it "
                                 f"as it was trained, or start in a new workdir")
            eval_hook.load_state_dict(data_state[eval_hook.name])
        logger.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    else:
        state = trainer.init_state(init_params)
    writer = metrics_lib.MetricWriter(workdir)
    best = (checkpoint_lib.BestCheckpoint(os.path.join(workdir, "checkpoints_best"))
            if tracker.config.enabled else None)
    run = _Run(trainer, config, train_iter, ckpt, writer, best, tracker, eval_hook)
    try:
        return run(state)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        if best is not None:
            best.close()


class _Run:
    """The loop of `train_and_evaluate` and what it threads through: checkpoints, metrics, the best tracker."""

    def __init__(self, trainer: Trainer, config, train_iter, ckpt, writer, best, tracker, eval_hook=None):
        self.trainer, self.config, self.train_iter = trainer, config, train_iter
        self.ckpt, self.writer, self.best, self.tracker = ckpt, writer, best, tracker
        self.eval_hook = eval_hook
        self.config_json = json.loads(config.to_json_best_effort())

    def throughput(self, rates: dict) -> dict:
        """samples/s, and with the task's FLOP count the achieved TFLOP/s and MFU against `perf.peak_flops`
        (or `config.peak_flops`, FLOP/s of the whole job)."""
        flops = self.trainer.task.flops_per_example
        if not flops or "samples_per_sec" not in rates:
            return rates
        dtype = (self.config.get("model") or {}).get("dtype", "float32")
        peak = self.config.get("peak_flops") or perf.peak_flops(dtype)[0]
        achieved = rates["samples_per_sec"] * flops
        return {**rates, "achieved_tflops": achieved / 1e12, "mfu": achieved / peak}

    def run_state(self) -> dict:
        """The host state that goes with a train state: the data iterator's position, the best tracker and
        the eval hook's state."""
        hook = {self.eval_hook.name: self.eval_hook.state_dict()} if self.eval_hook is not None else {}
        return {**self.train_iter.get_state(), "best": self.tracker.state_dict(), **hook}

    def after_eval(self, state, step: int, metrics: dict):
        return state if self.eval_hook is None else self.eval_hook(state, step, metrics)

    def evaluate(self, state, step: int, track: bool = True) -> tuple[dict, dict]:
        stats = self.trainer.evaluate_stats(state)
        metrics = self.trainer.task.summarize(stats)
        self.writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
        logger.info("eval at step %d: %s", step, _format(metrics))
        if track and self.tracker.config.enabled:
            if self.tracker.update(step, self.tracker.values(metrics))[0]:
                record = self.tracker.record()
                logger.info("new best %s=%.4f at step %d", record["metric"], record["value"], step)
                self.best.save(step, state, self.run_state(), self.config_json, record)
            if self.tracker.stopped[0]:
                logger.info("early stopping at step %d: no improvement of %s in %d evaluations (best %.4f at "
                            "step %d)", step, self.tracker.config.metric, self.tracker.config.patience,
                            self.tracker.best_value[0], self.tracker.best_step[0])
        return metrics, stats

    def result(self, state, eval_metrics, steps_run, eval_stats=None, preempted=False) -> TrainResult:
        stopped = int(self.tracker.stopped_step[0])
        return TrainResult(state, eval_metrics, steps_run, preempted=preempted, eval_stats=eval_stats,
                           best=self.tracker.record(), stopped_step=stopped if stopped >= 0 else None)

    def __call__(self, state) -> TrainResult:
        trainer, config = self.trainer, self.config
        start, total = int(state.step), trainer.total_steps
        if self.tracker.stopped[0] or start >= total:  # resumed after early stopping or the end: report only
            if trainer.eval_source is None:
                return self.result(state, {}, 0)
            eval_metrics, eval_stats = self.evaluate(state, start, track=False)
            return self.result(state, eval_metrics, 0, eval_stats)
        watcher = checkpoint_lib.PreemptionWatcher()
        progress = _Progress(total, start, config.batch_size, enabled=jax.process_index() == 0)
        eval_metrics: dict = {}
        try:
            for step in range(start + 1, total + 1):
                batch = sharding.shard_batch(next(self.train_iter), trainer.mesh)
                state, metrics = trainer.train_step(state, batch)
                if step % config.log_every_steps == 0 or step == total:
                    scalars = metrics_lib.to_python(jax.device_get(metrics))
                    scalars.update(self.throughput(progress.rates(step)))
                    self.writer.write(step, {f"train/{k}": v for k, v in scalars.items()})
                    progress.show(step, scalars)
                    _check_nonfinite(state, step, config)
                if trainer.eval_source is not None and step != total and \
                        is_eval_step(step, trainer.eval_every_steps, total):
                    eval_metrics, eval_stats = self.evaluate(state, step)
                    state = self.after_eval(state, step, eval_metrics)
                    if self.tracker.stopped[0]:
                        self.ckpt.save(step, state, self.run_state(), self.config_json, force=True)
                        return self.result(state, eval_metrics, step - start, eval_stats)
                self.ckpt.save(step, state, self.run_state(), self.config_json)
                if watcher.reached(step):
                    self.ckpt.save(step, state, self.run_state(), self.config_json, force=True)
                    self.ckpt.wait()
                    logger.warning("preemption signal: saved step %d to %s; rerun the same command to resume",
                                   step, self.ckpt.directory)  # SIGTERM, Ctrl-C, or JAX's multi-host notice
                    return self.result(state, eval_metrics, step - start, preempted=True)
        finally:
            progress.close()
            watcher.close()
        eval_stats = None
        if trainer.eval_source is not None:  # before the last save: a longer rerun resumes with this evaluation
            eval_metrics, eval_stats = self.evaluate(state, total)
            state = self.after_eval(state, total, eval_metrics)
        self.ckpt.save(total, state, self.run_state(), self.config_json, force=True)
        return self.result(state, eval_metrics, total - start, eval_stats)


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


def example_batch(task: tasks.Task, source) -> dict:
    """One example as the model sees it (after the task's eval transform), for shapes at init."""
    example = task.host_transform(False)(source[0], np.random.default_rng(0))
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
        shown = {k: scalars[k] for k in ("loss", "accuracy", "samples_per_sec", "mfu") if k in scalars}
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)

    def close(self) -> None:
        self.bar.close()
