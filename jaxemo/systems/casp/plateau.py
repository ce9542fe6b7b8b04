"""CASP's learning-rate schedule in source training: torch's `ReduceLROnPlateau` on the source-valid L1 loss,
stepped once per epoch, as the released code does (`utils/base_model_train.py`, CASP eb0255a:
`ReduceLROnPlateau(optimizer, mode="min", patience=hyp_params.when, factor=0.1)`, `--when` 10, torch's
default threshold 1e-4, relative). The rule is optax's `optax.contrib.reduce_on_plateau` (`Plateau`). It
watches the source-valid MAE (`lr_plateau.metric="loss"`); the reference's valid loss is the sum of per-batch
mean L1 losses over the sample count, which (the threshold being relative) differs only in that a shorter
last batch weighs more.

jaxemo's generic trainer (`jaxemo.train.loop.train_and_evaluate`) has no path from an evaluation back to the
optimizer, so with `config.lr_plateau.enabled` the source model is trained by `train_and_evaluate` here. It
uses the generic trainer's parts (`loop.Trainer`: initialisation, data order, the jitted step, the evaluator),
its checkpoints (resumable, the plateau's state included) and its best checkpoint; after every evaluation
the plateau rule sets the learning rate injected into the optimizer state. Until the first cut it takes the
generic loop's steps (the same initial state, batches and compiled step).

CASP's adaptation stages step the same scheduler on the *target*-valid L1 loss, i.e. on target labels;
jaxemo's adaptation reads none, so it has no such signal and keeps its rate constant.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import optax

from jaxemo.train import checkpoint as checkpoint_lib
from jaxemo.train import early_stopping, loop, optim, sharding
from jaxemo.train import metrics as metrics_lib

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Plateau:
    """torch `ReduceLROnPlateau(mode="min", factor, patience, threshold, threshold_mode="rel", cooldown=0,
    min_lr=0, eps)` of a base learning rate, fed one value per evaluation (`step`).

    optax's `reduce_on_plateau` decides (one value per update, `accumulation_size=1`): a value improves on
    the best when it is below best * (1 - threshold). torch cuts once *more than* `patience` evaluations in
    a row brought no improvement, optax once `patience` did, so optax is given patience + 1. torch also
    keeps the old rate where a cut would change it by `eps` or less; that is applied on top.
    """

    base_lr: float
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    eps: float = 1e-8

    def __post_init__(self):
        self.tx = optax.contrib.reduce_on_plateau(factor=self.factor, patience=self.patience + 1,
                                                  rtol=self.threshold, atol=0.0)
        self.state = self.tx.init(jnp.zeros((), jnp.float32))
        self._update = jax.jit(lambda state, value: self.tx.update(jnp.zeros(()), state, value=value)[1])

    @classmethod
    def from_config(cls, config) -> "Plateau":
        """From the CASP recipe: `config.lr_plateau` (factor, patience, threshold) on `optimizer.learning_rate`."""
        p = config.lr_plateau
        return cls(float(config.optimizer.learning_rate), float(p.factor), int(p.patience), float(p.threshold))

    @property
    def learning_rate(self) -> float:
        return self.base_lr * float(self.state.scale)

    def step(self, value: float) -> float:
        """Records one evaluation's value; returns the learning rate from now on."""
        before = self.state
        after = self._update(before, jnp.asarray(value, jnp.float32))
        if self.base_lr * float(before.scale - after.scale) <= self.eps:  # torch's eps (and no cut at all)
            after = after._replace(scale=before.scale)
        self.state = after
        return self.learning_rate

    def state_dict(self) -> dict:
        return {k: float(v) for k, v in self.state._asdict().items()}

    def load_state_dict(self, values: dict) -> None:
        self.state = type(self.state)(**{k: jnp.asarray(values[k], v.dtype)
                                         for k, v in self.state._asdict().items()})


def with_learning_rate(state, learning_rate: float):
    """The train state with the optimizer's injected peak learning rate replaced, placed as the old one."""
    old = state.opt_state.hyperparams["learning_rate"]
    value = jax.device_put(jnp.asarray(learning_rate, old.dtype), old.sharding)
    return state.replace(opt_state=optim.with_hyperparams(state.opt_state, learning_rate=value))


def train_and_evaluate(config, workdir: str, task, train_source, eval_source, mesh=None) -> loop.TrainResult:
    """`loop.train_and_evaluate` (no `init_params`) with `Plateau` stepped on the eval metric
    `config.lr_plateau.metric` after every evaluation. Resumes from `workdir/checkpoints` as the generic loop
    does; the best evaluation by `config.best` goes to `workdir/checkpoints_best`."""
    if eval_source is None:
        raise ValueError("lr_plateau steps on an evaluation metric: it needs an evaluation source")
    workdir = loop.check_workdir(workdir)
    trainer = loop.Trainer(config, task, train_source, eval_source, mesh)
    plateau, metric = Plateau.from_config(config), config.lr_plateau.metric
    tracker = early_stopping.BestTracker(early_stopping.BestConfig.from_config(config))
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint.every_steps,
                                       config.checkpoint.keep, config.checkpoint.get("async_save", True))
    best = (checkpoint_lib.BestCheckpoint(os.path.join(workdir, "checkpoints_best"))
            if tracker.config.enabled else None)
    writer = metrics_lib.MetricWriter(workdir)
    config_json = json.loads(config.to_json_best_effort())
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    train_iter = trainer.train_iterator()
    restored = ckpt.restore_latest(trainer.abstract)
    if restored is None:
        state = trainer.init_state()
    else:
        state, data_state = restored
        train_iter.set_state(data_state)
        tracker.load_state_dict(data_state["best"])
        if "plateau" not in data_state:
            raise ValueError(f"{ckpt.directory} holds a run trained without lr_plateau; resume it without "
                             "--config.lr_plateau.enabled, or start in a new workdir")
        plateau.load_state_dict(data_state["plateau"])
        logger.info("resumed from %s at step %d (learning rate %.3g)", ckpt.directory, int(state.step),
                    plateau.learning_rate)

    def run_state():
        return {**train_iter.get_state(), "best": tracker.state_dict(), "plateau": plateau.state_dict()}

    def evaluate(state, step: int) -> dict:
        metrics = trainer.evaluate(state)
        writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
        if metric not in metrics:
            raise KeyError(f"lr_plateau.metric={metric!r} is not among the eval metrics {sorted(metrics)}")
        if tracker.config.enabled and tracker.update(step, tracker.values(metrics))[0]:
            best.save(step, state, run_state(), config_json, tracker.record())
        return metrics

    start, total = int(state.step), trainer.total_steps
    watcher = checkpoint_lib.PreemptionWatcher()
    eval_metrics, step = {}, start
    last = start if tracker.stopped[0] else total  # resumed after early stopping: no more steps
    try:
        for step in range(start + 1, last + 1):
            state, metrics = trainer.train_step(state, sharding.shard_batch(next(train_iter), trainer.mesh))
            if step % config.log_every_steps == 0 or step == total:
                scalars = metrics_lib.to_python(jax.device_get(metrics))
                writer.write(step, {f"train/{k}": v for k, v in scalars.items()})
                if int(state.nonfinite_streak) >= config.get("max_consecutive_nonfinite", 10):
                    raise loop.NonFiniteLossError(
                        f"the last {int(state.nonfinite_streak)} steps up to step {step} had a non-finite loss or "
                        "gradient; their updates were skipped. Lower the learning rate, then resume.")
            if loop.is_eval_step(step, trainer.eval_every_steps, total):
                eval_metrics = evaluate(state, step)
                before = plateau.learning_rate
                if plateau.step(eval_metrics[metric]) != before:
                    logger.info("step %d: %s has not improved for %d evaluations; learning rate %.3g -> %.3g",
                                step, metric, plateau.patience + 1, before, plateau.learning_rate)
                    state = with_learning_rate(state, plateau.learning_rate)
            stop, preempted = tracker.stopped[0], watcher.reached(step)
            ckpt.save(step, state, run_state(), config_json, force=stop or preempted or step == total)
            if preempted:
                ckpt.wait()
                logger.warning("preemption signal: saved step %d; rerun the same command to resume", step)
                return loop.TrainResult(state, eval_metrics, step - start, preempted=True, best=tracker.record())
            if stop:
                break
    finally:
        watcher.close()
        ckpt.wait()
        ckpt.close()
        writer.close()
        if best is not None:
            best.close()
    if not eval_metrics:  # resumed after the last step (or after early stopping): report, do not train
        eval_metrics = trainer.evaluate(state)
    stopped = int(tracker.stopped_step[0])
    return loop.TrainResult(state, eval_metrics, step - start, best=tracker.record(),
                            stopped_step=stopped if stopped >= 0 else None)
