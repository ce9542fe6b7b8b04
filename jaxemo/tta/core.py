"""What every test-time adaptation method shares: the frozen/adapted split, augmentation, one update step.

A batch is a dict of arrays with a leading batch axis: `text`, `audio`, `vision`, `audio_length`,
`vision_length`, and `mask` (1 for real rows, 0 for the padding that fills a last batch). Methods add
their own fields (`pseudo_label`). Everything here is a pure function of (frozen params, adapted params,
batch, rng): the frozen tree is never copied or updated, only the adapted one (by default the per-layer
LayerNorms, `msa.ADAPTED_BY_CASP`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp
import optax
from ml_collections import config_dict

from jaxemo.models import msa
from jaxemo.train import optim, step

INPUT_KEYS = ("text", "audio", "vision", "audio_length", "vision_length")
MODALITIES = msa.MODALITIES


class Method(Protocol):
    """A test-time objective: `loss(model, frozen, adapted, batch, rng) -> (scalar, aux dict)`."""

    name: str

    def loss(self, model, frozen: dict, adapted: dict, batch: dict, rng: jax.Array): ...


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The adaptation optimizer's settings (hashable, so compiled modes can take them as static arguments);
    CASP's is Adam at 1e-3 with the gradient norm clipped to 0.8. `make` builds it with jaxemo's one
    optimizer factory, `optim.make_optimizer`, at a constant learning rate."""

    learning_rate: float = 1e-3
    clip_norm: float = 0.8
    name: str = "adam"

    def make(self) -> optax.GradientTransformation:
        config = config_dict.ConfigDict(dict(name=self.name, learning_rate=self.learning_rate,
                                             clip_norm=self.clip_norm, schedule="constant"))
        return optim.make_optimizer(config, total_steps=1, steps_per_epoch=1).tx


def split(params: dict, adapted_patterns: Sequence[str] = msa.ADAPTED_BY_CASP) -> tuple[dict, dict]:
    """params -> (frozen, adapted); `adapted_patterns` are regexes over "a/b/c" parameter paths."""
    adapted, frozen = optim.split_params(params, optim.path_matcher(adapted_patterns))
    if not jax.tree.leaves(adapted):
        raise ValueError(f"no parameter matches the adapted patterns {list(adapted_patterns)}")
    return frozen, adapted


def apply(model, frozen: dict, adapted: dict, batch: dict, rng=None, *, train: bool = False, mutable=False):
    """The model on a batch with `adapted` over `frozen`; `train` turns dropout on (needs `rng`)."""
    params = optim.merge_params(adapted, frozen)
    rngs = {"dropout": rng} if train else None
    return model.apply({"params": params}, *(batch[k] for k in INPUT_KEYS), deterministic=not train, rngs=rngs,
                       mutable=mutable)


def predict(model, frozen: dict, adapted: dict, batch: dict) -> jax.Array:
    """Deterministic scores [B]."""
    return apply(model, frozen, adapted, batch)[0]


def row_mask(batch: dict) -> jax.Array:
    """[B] float weights of the real rows."""
    mask = batch.get("mask")
    return jnp.ones(batch["text"].shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)


def drop_modality(batch: dict, rng: jax.Array, per_sample: bool = False) -> dict:
    """Zeroes one modality's raw input (each with probability 1/3): for the whole batch as CASP's
    `random_drop` does, or independently per sample. A multiply by a one-hot mask: no recompilation."""
    batch_size = batch["text"].shape[0]
    choice = jax.random.randint(rng, (batch_size,) if per_sample else (), 0, len(MODALITIES))
    dropped = dict(batch)
    for i, m in enumerate(MODALITIES):
        keep = (choice != i).astype(batch[m].dtype)
        dropped[m] = batch[m] * (keep[:, None, None] if per_sample else keep)
    return dropped


def adapt_step(method: Method, model, tx: optax.GradientTransformation, frozen: dict, adapted: dict, opt_state,
               batch: dict, rng: jax.Array):
    """One update of the adapted params on `method`'s loss: jaxemo's one update step (`step.update`). A
    non-finite loss or gradient skips the update (params and optimizer state unchanged) and is reported in
    the returned metrics as `update_skipped` = 1."""

    def loss_fn(adapted, batch, rng):
        return method.loss(model, frozen, adapted, batch, rng)

    adapted, opt_state, _, metrics = step.update(loss_fn, tx, adapted, opt_state, batch, rng)
    return adapted, opt_state, metrics
