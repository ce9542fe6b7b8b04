"""The three ways to adapt at test time, each compiled as a whole.

offline    CASP's protocol: epochs over the unlabelled target split, each epoch one `lax.scan` over its
           batches; prediction snapshots before adaptation and every `snapshot_every` epochs; stable
           pseudo-labels; an L1 stage on the selected samples (`casp_offline`), or the stage-1 loop
           alone for any other method (`adapt_offline`).
online     a stream of batches: adapt on each batch, then predict it; the adapted params carry over
           (`adapt_online`, one `lax.scan` over the stream).
episodic   every sample on its own: from the source params, K steps on augmented views of itself, then
           its prediction (`episodic_predict`). One `jax.vmap` of adapt-then-predict over samples: the
           frozen params are broadcast (`in_axes=None`), only the adapted params exist per sample, the K
           steps are a `lax.scan`, and each sample's randomness comes from its own key, so a sample's
           result does not depend on which batch it is in.

Data enters as a dict of host arrays with a leading sample axis (`stack_source`); `batched` reshapes it
into [num_batches, batch, ...] with a `mask` for the padded tail, so every batch has the same shape.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxemo import layers
from jaxemo.tta import core, methods

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------
# data


def stack_source(source, keys=(*core.INPUT_KEYS, "label")) -> dict:
    """A random-access source (len, [i]) -> {key: [N, ...] array}, in source order."""
    if len(source) == 0:
        raise ValueError("the split is empty")
    first = source[0]
    missing = [k for k in keys if k not in first]
    if missing:
        raise KeyError(f"examples lack {missing} (they have {sorted(first)})")
    rows = [first] + [source[i] for i in range(1, len(source))]
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}


def batched(arrays: dict, batch_size: int) -> dict:
    """{key: [N, ...]} -> {key: [ceil(N / batch), batch, ...]} plus `mask`; the tail repeats row 0, masked."""
    n = len(next(iter(arrays.values())))
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    index = np.concatenate([np.arange(n), np.zeros(pad, np.int64)])
    out = {k: np.asarray(v)[index].reshape(num_batches, batch_size, *np.shape(v)[1:]) for k, v in arrays.items()}
    out["mask"] = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(num_batches,
                                                                                               batch_size)
    return out


def unbatch(values, n: int) -> np.ndarray:
    """[num_batches, batch, ...] -> the first n rows."""
    values = np.asarray(values)
    return values.reshape(-1, *values.shape[2:])[:n]


# ------------------------------------------------------------------------------------------------------
# compiled building blocks


@functools.partial(jax.jit, static_argnums=0)
def predict_batches(model, frozen, adapted, batches: dict) -> jax.Array:
    """Deterministic scores for every batch: [num_batches, batch]."""
    return jax.lax.map(lambda b: core.predict(model, frozen, adapted, b), batches)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4, 5))
def adapt_epoch(method, model, optimizer: core.OptimizerConfig, frozen, adapted, opt_state, batches: dict, rng):
    """One epoch: `lax.scan` of `core.adapt_step` over the batches (in order). Returns the new adapted
    params and optimizer state, and per-step losses and skip flags."""
    tx = optimizer.make()

    def step(carry, inputs):
        adapted, opt_state = carry
        batch, key = inputs
        adapted, opt_state, metrics = core.adapt_step(method, model, tx, frozen, adapted, opt_state, batch, key)
        return (adapted, opt_state), (metrics["loss"], metrics["update_skipped"])

    num_batches = jax.tree.leaves(batches)[0].shape[0]
    keys = jax.random.split(rng, num_batches)
    (adapted, opt_state), (losses, skipped) = jax.lax.scan(step, (adapted, opt_state), (batches, keys))
    return adapted, opt_state, losses, skipped


def _check_finite_epoch(losses, skipped, stage: str, epoch: int) -> None:
    skipped = np.asarray(skipped)
    if skipped.all():
        raise FloatingPointError(f"{stage} epoch {epoch}: every step had a non-finite loss or gradient, so none "
                                 f"updated the params; lower the learning rate or check the target data")
    if skipped.any():
        logger.warning("%s epoch %d: %d of %d steps skipped (non-finite loss or gradient)", stage, epoch,
                       int(skipped.sum()), skipped.size)


def _shuffled(batches: dict, rng: np.random.Generator, n: int, batch_size: int) -> dict:
    """The same rows re-batched in a new order (the padding stays at the end)."""
    order = rng.permutation(n)
    rows = {k: unbatch(v, n)[order] for k, v in batches.items() if k != "mask"}
    return batched(rows, batch_size)


# ------------------------------------------------------------------------------------------------------
# offline (the paper's protocol)


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """CASP's README run: 15 contrastive epochs with a snapshot before and every 3 (6 in all), quantile
    0.95, 5 pseudo-label epochs; Adam 1e-3, clip 0.8, batch 24, unshuffled loaders (`shuffle=False`)."""

    epochs: int = 15
    snapshot_every: int = 3
    pseudo_epochs: int = 5
    quantile: float = 0.95
    selection: str = "stable"  # or "reference": see methods.stable_pseudo_labels
    batch_size: int = 24
    shuffle: bool = False
    optimizer: core.OptimizerConfig = core.OptimizerConfig()


@dataclasses.dataclass
class OfflineResult:
    adapted: dict
    snapshots: np.ndarray  # [S, N] predictions on the adaptation split
    pseudo_labels: np.ndarray | None = None
    selected: np.ndarray | None = None
    losses: list = dataclasses.field(default_factory=list)  # mean loss per epoch, stage 1 then stage 3


def _run_epochs(method, model, frozen, adapted, arrays: dict, epochs: int, config: OfflineConfig, rng,
                stage: str, on_epoch=None):
    adapted = jax.tree.map(jnp.array, adapted)  # a copy: adapt_epoch donates it, the caller keeps its own
    opt_state = config.optimizer.make().init(adapted)
    # Both committed to adapted's device, as adapt_epoch's outputs are. Otherwise (params restored from a
    # checkpoint are committed, the optimizer's fresh step count is not) epoch 2's arguments are placed
    # differently from epoch 1's and the whole epoch compiles a second time.
    adapted, opt_state = jax.device_put((adapted, opt_state), jax.tree.leaves(adapted)[0].sharding)
    n = len(arrays["text"])
    batches = batched(arrays, config.batch_size)
    order_rng = np.random.default_rng(int(jax.random.randint(rng, (), 0, 2**31 - 1)))
    losses = []
    for epoch in range(1, epochs + 1):
        rng, epoch_rng = jax.random.split(rng)
        epoch_batches = _shuffled(batches, order_rng, n, config.batch_size) if config.shuffle else batches
        adapted, opt_state, step_losses, skipped = adapt_epoch(method, model, config.optimizer, frozen, adapted,
                                                               opt_state, epoch_batches, epoch_rng)
        _check_finite_epoch(step_losses, skipped, stage, epoch)
        ok = ~np.asarray(skipped, bool)
        losses.append(float(np.asarray(step_losses)[ok].mean()))
        if on_epoch is not None:
            on_epoch(epoch, adapted)
    return adapted, losses


def adapt_offline(method, model, frozen, adapted, target: dict, config: OfflineConfig, rng) -> OfflineResult:
    """`config.epochs` epochs of `method` over `target` (no labels used); no snapshots or pseudo stage."""
    if isinstance(method, methods.SourceOnly) or config.epochs == 0:
        return OfflineResult(adapted, np.zeros((0, len(target["text"])), np.float32))
    adapted, losses = _run_epochs(method, model, frozen, adapted, target, config.epochs, config, rng, method.name)
    return OfflineResult(adapted, np.zeros((0, len(target["text"])), np.float32), losses=losses)


def casp_offline(model, frozen, adapted, target: dict, config: OfflineConfig, rng,
                 contrastive: methods.Contrastive = methods.Contrastive()) -> OfflineResult:
    """CASP end to end on the unlabelled `target` arrays: stage 1 with snapshots, stage 2, stage 3."""
    n = len(target["text"])
    eval_batches = batched({k: v for k, v in target.items() if k in core.INPUT_KEYS}, config.batch_size)
    snapshot = lambda a: unbatch(predict_batches(model, frozen, a, eval_batches), n)
    snapshots = [snapshot(adapted)]

    def on_epoch(epoch, current):
        if epoch % config.snapshot_every == 0:
            snapshots.append(snapshot(current))

    stage1_rng, stage3_rng = jax.random.split(rng)
    adapted, losses = _run_epochs(contrastive, model, frozen, adapted, target, config.epochs, config, stage1_rng,
                                  "contrastive", on_epoch)
    snapshots = np.stack(snapshots)
    pseudo, selected, _ = methods.stable_pseudo_labels(snapshots, config.quantile, config.selection)
    logger.info("CASP: %d snapshots; %d of %d samples selected (%s)", len(snapshots), int(selected.sum()), n,
                config.selection)
    if config.pseudo_epochs and selected.any():
        subset = {k: v[selected] for k, v in target.items() if k in core.INPUT_KEYS}
        subset["pseudo_label"] = pseudo[selected]
        adapted, pseudo_losses = _run_epochs(methods.PseudoLabelL1(), model, frozen, adapted, subset,
                                             config.pseudo_epochs, config, stage3_rng, "pseudo-label")
        losses += pseudo_losses
    return OfflineResult(adapted, snapshots, pseudo, selected, losses)


# ------------------------------------------------------------------------------------------------------
# online


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _online_scan(method, model, optimizer: core.OptimizerConfig, steps_per_batch: int, frozen, adapted, batches,
                 rng):
    tx = optimizer.make()

    def per_batch(carry, inputs):
        adapted, opt_state = carry
        batch, key = inputs
        for k in jax.random.split(key, steps_per_batch):
            adapted, opt_state, _ = core.adapt_step(method, model, tx, frozen, adapted, opt_state, batch, k)
        return (adapted, opt_state), core.predict(model, frozen, adapted, batch)

    num_batches = jax.tree.leaves(batches)[0].shape[0]
    keys = jax.random.split(rng, num_batches)
    (adapted, _), predictions = jax.lax.scan(per_batch, (adapted, tx.init(adapted)), (batches, keys))
    return adapted, predictions


def adapt_online(method, model, frozen, adapted, stream: dict, batch_size: int, rng, steps_per_batch: int = 1,
                 optimizer: core.OptimizerConfig = core.OptimizerConfig()):
    """Predictions [N] for a stream (the arrays in arrival order): each batch first adapts the params
    (`steps_per_batch` steps), then is predicted with them. Returns (predictions, final adapted params)."""
    n = len(stream["text"])
    batches = batched({k: v for k, v in stream.items() if k in core.INPUT_KEYS}, batch_size)
    adapted, predictions = _online_scan(method, model, optimizer, steps_per_batch, frozen, adapted, batches, rng)
    return unbatch(predictions, n), adapted


# ------------------------------------------------------------------------------------------------------
# episodic


@dataclasses.dataclass(frozen=True)
class EpisodicConfig:
    """K steps per sample on `views` augmented copies of it (modality drops and dropout masks drawn per view)."""

    steps: int = 5
    views: int = 4
    optimizer: core.OptimizerConfig = core.OptimizerConfig()


def episodic_method(method):
    """The per-sample form of a method: CASP's contrastive loss on views of one sample has no negatives
    (`methods.view_alignment`) and drops a modality per view; the others apply unchanged."""
    if isinstance(method, methods.Contrastive):
        return dataclasses.replace(method, negatives=False, per_sample_drop=True)
    return method


def sample_views(sample: dict, views: int) -> dict:
    """`views` copies of one sample (no batch axis) as a batch, without its mask."""
    out = jax.tree.map(lambda x: jnp.broadcast_to(x, (views, *x.shape)), sample)
    out.pop("mask", None)
    return out


def adapt_sample(method, model, config: EpisodicConfig, frozen, adapted, sample: dict, key):
    """One sample (no batch axis): the params after K adaptation steps from `adapted` on its views."""
    tx = config.optimizer.make()
    views = sample_views(sample, config.views)

    def step(carry, k):
        params, opt_state = carry
        params, opt_state, metrics = core.adapt_step(method, model, tx, frozen, params, opt_state, views, k)
        return (params, opt_state), metrics["loss"]

    (adapted, _), _ = jax.lax.scan(step, (adapted, tx.init(adapted)), jax.random.split(key, config.steps),
                                   unroll=layers.scan_unroll(config.steps))
    return adapted


def predict_sample(model, frozen, adapted, sample: dict) -> jax.Array:
    single = jax.tree.map(lambda x: x[None], sample)
    single.pop("mask", None)
    return core.predict(model, frozen, adapted, single)[0]


def adapt_then_predict(method, model, config: EpisodicConfig, frozen, adapted, sample: dict, key) -> jax.Array:
    """One sample (no batch axis): K adaptation steps from `adapted` on its views, then its score."""
    return predict_sample(model, frozen, adapt_sample(method, model, config, frozen, adapted, sample, key), sample)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def episodic_batch(method, model, config: EpisodicConfig, frozen, adapted, samples: dict, keys) -> jax.Array:
    """`adapt_then_predict` vmapped over the leading axis of `samples` and `keys`; params broadcast."""
    fn = functools.partial(adapt_then_predict, method, model, config)
    return jax.vmap(fn, in_axes=(None, None, 0, 0))(frozen, adapted, samples, keys)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def episodic_single(method, model, config: EpisodicConfig, frozen, adapted, sample: dict, key) -> jax.Array:
    """The same function on one sample, unbatched (the sample-by-sample loop's step)."""
    return adapt_then_predict(method, model, config, frozen, adapted, sample, key)


def sample_keys(rng, indices) -> jax.Array:
    """One key per sample from its index in the split: the same sample gets the same key in any batch."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(indices, jnp.uint32))


def episodic_predict(method, model, frozen, adapted, samples: dict, rng, config: EpisodicConfig = EpisodicConfig(),
                     batch_size: int = 256) -> np.ndarray:
    """Scores [N] of every sample adapted on its own, `batch_size` samples per vmapped call (the last call
    padded to the same shape, so it compiles once)."""
    method = episodic_method(method)
    inputs = {k: v for k, v in samples.items() if k in core.INPUT_KEYS}
    n = len(inputs["text"])
    batches = batched(inputs, batch_size)
    keys = sample_keys(rng, np.arange(batches["mask"].size)).reshape(batches["mask"].shape)
    out = [episodic_batch(method, model, config, frozen, adapted, {k: v[b] for k, v in batches.items()
                                                                    if k != "mask"}, keys[b])
           for b in range(len(batches["mask"]))]
    return unbatch(np.stack(jax.device_get(out)), n)
