"""The train state, born sharded: shapes from `jax.eval_shape`, then a jitted init with `out_shardings`."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxemo.train import optim, sharding

@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates taken (including skipped non-finite ones)
    trainable: Any  # fp32 master copy of what trains
    frozen: Any  # the rest; may be bf16
    opt_state: Any  # exists only for `trainable`
    rng: jax.Array  # raw uint32 key data (checkpointable)
    nonfinite_steps: jax.Array  # int32: updates skipped because the loss or a gradient was NaN/Inf
    nonfinite_streak: jax.Array  # int32: how many of the latest steps in a row were skipped

    @property
    def params(self) -> dict:
        return optim.merge_params(self.trainable, self.frozen)

    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


def init_fn(task, tx, example_batch, frozen_dtype=jnp.float32):
    """`init(rng) -> TrainState` with boxed params (logical axis names); `create_train_state` runs it."""

    def init(rng):
        init_rng, state_rng = jax.random.split(rng)
        params = task.init(init_rng, example_batch)["params"]
        trainable, frozen = optim.split_params(params, task.is_trainable)
        frozen = jax.tree.map(lambda x: x.astype(frozen_dtype), frozen)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            trainable=trainable,
            frozen=frozen,
            opt_state=tx.init(trainable),
            rng=jax.random.key_data(state_rng),
            nonfinite_steps=jnp.zeros((), jnp.int32),
            nonfinite_streak=jnp.zeros((), jnp.int32),
        )

    return init


def abstract_state(task, tx, example_batch, mesh, rules=sharding.DEFAULT_RULES, frozen_dtype=jnp.float32,
                   min_sharded_size: int = 0):
    """(abstract unboxed state with shardings attached, sharding tree) without allocating anything.

    With `min_sharded_size` > 0 and fsdp > 1, a parameter of at least that many elements that the rules leave
    replicated is an error naming it (`sharding.check_large_params_sharded`).
    """
    init = init_fn(task, tx, example_batch, frozen_dtype)
    boxed = jax.eval_shape(init, jax.random.key(0))
    sharding.check_large_params_sharded({"trainable": boxed.trainable, "frozen": boxed.frozen}, mesh, rules,
                                        min_sharded_size)
    shardings = sharding.tree_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
    )
    return abstract, shardings


def create_train_state(task, tx, example_batch, rng, mesh, rules=sharding.DEFAULT_RULES,
                       frozen_dtype=jnp.float32, min_sharded_size: int = 0):
    """A freshly initialised state, every array created directly with its sharding."""
    init = init_fn(task, tx, example_batch, frozen_dtype)
    _, shardings = abstract_state(task, tx, example_batch, mesh, rules, frozen_dtype, min_sharded_size)

    def init_sharded(rng):
        return nn.unbox(init(rng))

    state = jax.jit(init_sharded, out_shardings=shardings)(rng)
    return state, shardings


def example_batch_like(local_batch: dict) -> dict:
    """One-row numpy batch with the dtypes of `local_batch`, used only for shapes at init."""
    return {k: np.zeros((1, *np.shape(v)[1:]), np.asarray(v).dtype) for k, v in local_batch.items()}
