"""The one update step, and the trainer's sharded train and eval steps built on it.

`update` is the only place where jaxemo turns a loss into new parameters: loss and gradients (optionally
accumulated over microbatches), the optimizer update, and the non-finite guard. The trainer
(`make_train_step`), test-time adaptation (`jaxemo.tta.core.adapt_step`), population training
(`jaxemo.train.population`, a `vmap` of `make_train_step`) and the benchmarks all call it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxemo import layers
from jaxemo.train import optim, sharding
from jaxemo.train.state import TrainState

LossFn = Callable  # (params, batch, rng) -> (scalar loss, {name: scalar})


def all_finite(*trees) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for tree in trees for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def microbatches(batch, accum_steps: int):
    """[B, ...] -> [accum, B / accum, ...] such that every microbatch spans all batch shards."""

    def split(x):
        micro = x.shape[0] // accum_steps
        return x.reshape(micro, accum_steps, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def loss_and_grads(loss_fn: LossFn, params, batch, rng, accum_steps: int = 1):
    """(loss, metrics, grads) of `loss_fn` at `params`; with `accum_steps` > 1 the mean over that many
    microbatches (a `lax.scan`, microbatch i gets `fold_in(rng, i)`)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, metrics), grads = grad_fn(params, batch, rng)
        return loss, metrics, grads

    def accumulate(carry, inputs):
        micro, index = inputs
        (loss, metrics), grads = grad_fn(params, micro, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    micro = microbatches(batch, accum_steps)
    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (loss, metrics), grads = zeros
    total, _ = jax.lax.scan(accumulate, (loss, metrics, grads), (micro, jnp.arange(accum_steps)),
                            unroll=layers.scan_unroll(accum_steps))
    return jax.tree.map(lambda x: x / accum_steps, total)


def update(loss_fn: LossFn, tx: optax.GradientTransformation, params, opt_state, batch, rng,
           accum_steps: int = 1):
    """One optimizer update of `params` on `loss_fn(params, batch, rng) -> (loss, metrics)`.

    Returns (params, opt_state, finite, metrics). A non-finite loss or gradient skips the update: params and
    optimizer state come back unchanged (so a schedule's count follows the updates actually applied),
    `finite` is False and `metrics["update_skipped"]` is 1. `metrics` also holds `loss` and `grad_norm`.
    """
    loss, metrics, grads = loss_and_grads(loss_fn, params, batch, rng, accum_steps)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = all_finite(loss, grads)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "update_skipped": (~finite).astype(jnp.float32)}
    return keep_if_finite(new_params, params), keep_if_finite(new_opt_state, opt_state), finite, metrics


def make_train_step(task, optimizer: optim.Optimizer, accum_steps: int = 1):
    """`step(state, batch) -> (state, metrics)`: `update` on `task.loss` over the trainable params.

    The step's randomness is `fold_in(state.rng, state.step)`. `metrics["learning_rate"]` is the rate this
    update used (the state's injected peak times the schedule at the count of applied updates).
    """

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.key(), state.step)

        def loss_fn(trainable, batch, rng):
            return task.loss(optim.merge_params(trainable, state.frozen), batch, rng, train=True)

        learning_rate = optimizer.current_learning_rate(state.opt_state)
        trainable, opt_state, finite, metrics = update(loss_fn, optimizer.tx, state.trainable, state.opt_state,
                                                       batch, rng, accum_steps)
        new_state = state.replace(
            step=state.step + 1,
            trainable=trainable,
            opt_state=opt_state,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
        )
        return new_state, {**metrics, "learning_rate": learning_rate}

    return train_step


def jit_train_step(train_step, state_shardings, mesh, rules=sharding.DEFAULT_RULES):
    """The train step jitted for `mesh`: state and batch placed by their shardings, the state donated, the
    activations split over the batch axes (`sharding.activation_rules`)."""

    def sharded_step(state, batch):
        with sharding.activation_rules(mesh, rules):
            return train_step(state, batch)

    return jax.jit(
        sharded_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def jit_eval_step(task, param_shardings, mesh, rules=sharding.DEFAULT_RULES):
    """`eval(params, batch) -> summable statistics` (see `tasks`); params is the merged model tree."""

    def eval_step(params, batch):
        with sharding.activation_rules(mesh, rules):
            return task.eval_stats(params, batch)

    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
