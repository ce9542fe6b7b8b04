"""The sharded train step (jit, donated state, gradient accumulation, NaN/Inf guard) and eval step."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxemo.train import optim, sharding
from jaxemo.train.state import TrainState


def _all_finite(*trees) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for tree in trees for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all()


def _microbatches(batch, accum_steps: int):
    """[B, ...] -> [accum, B / accum, ...] such that every microbatch spans all batch shards."""

    def split(x):
        micro = x.shape[0] // accum_steps
        return x.reshape(micro, accum_steps, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def _loss_and_grads(task, trainable, frozen, batch, rng, accum_steps: int):
    def loss_fn(trainable, batch, rng):
        return task.loss(optim.merge_params(trainable, frozen), batch, rng, train=True)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, metrics), grads = grad_fn(trainable, batch, rng)
        return loss, metrics, grads

    def accumulate(carry, inputs):
        micro, index = inputs
        (loss, metrics), grads = grad_fn(trainable, micro, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    micro = _microbatches(batch, accum_steps)
    shapes = jax.eval_shape(grad_fn, trainable, jax.tree.map(lambda x: x[0], micro), rng)
    (loss, metrics), grads = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(accumulate, (loss, metrics, grads), (micro, jnp.arange(accum_steps)))
    return jax.tree.map(lambda x: x / accum_steps, total)


def make_train_step(task, tx, schedule: Callable, accum_steps: int = 1):
    """`step(state, batch) -> (state, metrics)`; a non-finite loss or gradient skips the update.

    A skipped update leaves the optimizer state, and so its schedule's count, untouched: the learning rate
    follows the updates actually applied.
    """

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.key(), state.step)
        loss, metrics, grads = _loss_and_grads(task, state.trainable, state.frozen, batch, rng, accum_steps)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        finite = _all_finite(loss, grads)
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = state.replace(
            step=state.step + 1,
            trainable=keep_if_finite(trainable, state.trainable),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
        )
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state.step - state.nonfinite_steps), "update_skipped": (~finite).astype(jnp.float32)}
        return new_state, metrics

    return train_step


def jit_train_step(train_step, state_shardings, mesh):
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def jit_eval_step(task, param_shardings, mesh):
    """`eval(params, batch) -> summable statistics` (see `tasks`); params is the merged model tree."""

    def eval_step(params, batch):
        return task.eval_stats(params, batch)

    return jax.jit(
        eval_step,
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
