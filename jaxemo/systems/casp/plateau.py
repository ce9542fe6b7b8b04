"""CASP's learning-rate schedule in source training: torch's `ReduceLROnPlateau` on the source-valid L1 loss,
stepped once per epoch, as the released code does (`utils/base_model_train.py`, CASP eb0255a:
`ReduceLROnPlateau(optimizer, mode="min", patience=hyp_params.when, factor=0.1)`, `--when` 10, torch's
default threshold 1e-4, relative). The rule is optax's `optax.contrib.reduce_on_plateau` (`Plateau`). It
watches the source-valid MAE (`lr_plateau.metric="loss"`); the reference's valid loss is the sum of per-batch
mean L1 losses over the sample count, which (the threshold being relative) differs only in that a shorter
last batch weighs more.

`Plateau` is an `jaxemo.train.loop.EvalHook`: with `config.lr_plateau.enabled` the generic trainer
(`loop.train_and_evaluate(..., eval_hook=Plateau.from_config(config))`) hands it every evaluation, and it
sets the learning rate injected into the optimizer state; its count goes into every checkpoint, so a resumed
run goes on with it. Until the first cut the run takes exactly the steps it takes without it.

CASP's adaptation stages step the same scheduler on the *target*-valid L1 loss, i.e. on target labels;
jaxemo's adaptation reads none, so it has no such signal and keeps its rate constant.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import optax

from jaxemo.train import optim

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
    metric: str = "loss"  # the evaluation metric it watches (lower is better)
    name = "plateau"  # its key in a checkpoint's host state

    def __post_init__(self):
        self.tx = optax.contrib.reduce_on_plateau(factor=self.factor, patience=self.patience + 1,
                                                  rtol=self.threshold, atol=0.0)
        self.state = self.tx.init(jnp.zeros((), jnp.float32))
        self._update = jax.jit(lambda state, value: self.tx.update(jnp.zeros(()), state, value=value)[1])

    @classmethod
    def from_config(cls, config) -> "Plateau":
        """From the CASP recipe: `config.lr_plateau` (factor, patience, threshold) on `optimizer.learning_rate`."""
        p = config.lr_plateau
        return cls(float(config.optimizer.learning_rate), float(p.factor), int(p.patience), float(p.threshold),
                   metric=str(p.metric))

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

    def __call__(self, state, step: int, metrics: dict):
        """The `EvalHook`: one evaluation's `metric` in; the train state with the rate from now on out."""
        if self.metric not in metrics:
            raise KeyError(f"lr_plateau.metric={self.metric!r} is not among the eval metrics {sorted(metrics)}")
        before = self.learning_rate
        if self.step(metrics[self.metric]) == before:
            return state
        logger.info("step %d: %s has not improved for %d evaluations; learning rate %.3g -> %.3g", step,
                    self.metric, self.patience + 1, before, self.learning_rate)
        return with_learning_rate(state, self.learning_rate)

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
