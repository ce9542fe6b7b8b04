"""Test-time objectives for sentiment regression: CASP's two stages and two published baselines.

CASP (Guo et al., AAAI 2025; zrguo/CASP):
  `Contrastive`   stage 1: NT-Xent (SimCLR, temperature 0.5) between the representation of the full input
                  and of the input with one modality zeroed, dropout on in both views.
  `PseudoLabelL1` stage 3: L1 to the stable pseudo-labels of `stable_pseudo_labels` (stage 2).
Baselines, each adapting the same LayerNorm parameters:
  `DropoutVariance`   Tent (Wang et al., ICLR 2021) minimises the entropy of its own predictions; a
                      regressor has no softmax, so its uncertainty is the variance of the prediction over
                      Monte-Carlo dropout masks (Gal & Ghahramani, ICML 2016), which this minimises.
  `FeatureAlignment`  CFA (Kojima et al., IJCAI 2022): match the per-channel mean and standard deviation of
                      every encoder layer's hidden states on target data to those measured once on source
                      data (`feature_statistics`), by L1 distance; only statistics of the source are kept.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxemo.tta import core


def nt_xent(a: jax.Array, b: jax.Array, temperature: float = 0.5, weights=None) -> jax.Array:
    """SimCLR's NT-Xent between rows of `a` and `b` [N, R]: rows i and i + N of the stacked [2N, R] batch
    are positives, the other 2N - 2 rows negatives; cosine similarity; mean over the 2N rows. Rows with
    weight 0 (padding) are neither anchors nor negatives. CASP's `ContrastiveLoss`, without its loop."""
    z = jnp.concatenate([a, b]).astype(jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)  # F.normalize's eps
    n = a.shape[0]
    w = jnp.ones((n,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    w2 = jnp.concatenate([w, w])
    logits = z @ z.T / temperature
    excluded = jnp.eye(2 * n, dtype=bool) | (w2[None, :] == 0)
    logits = jnp.where(excluded, -jnp.inf, logits)
    logits = jnp.where(w2[:, None] > 0, logits, 0.0)  # padded anchors: finite, weighted out below (no NaN grads)
    positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    per_row = -jnp.take_along_axis(log_probs, positives[:, None], axis=-1)[:, 0]
    return (per_row * w2).sum() / jnp.maximum(w2.sum(), 1.0)


def view_alignment(a: jax.Array, b: jax.Array, temperature: float = 0.5, weights=None) -> jax.Array:
    """NT-Xent's positive term alone, -cos(a_i, b_i) / temperature, averaged: what NT-Xent reduces to when
    every row is a view of one sample, so there is no other sample to serve as a negative."""
    cos = jnp.sum(_normalize(a) * _normalize(b), axis=-1)
    w = jnp.ones(cos.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    return -(cos * w).sum() / (temperature * jnp.maximum(w.sum(), 1.0))


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class SourceOnly:
    """No adaptation: the source model's predictions (the lower bound every method must beat)."""

    name: str = "source_only"

    def loss(self, model, frozen, adapted, batch, rng):
        return jnp.zeros(()), {}


@dataclasses.dataclass(frozen=True)
class Contrastive:
    """CASP stage 1. `per_sample_drop=False` zeroes one modality for the whole batch (the reference);
    `negatives=False` keeps only the positive term (`view_alignment`), for batches that are all views of
    one sample (episodic adaptation)."""

    temperature: float = 0.5
    per_sample_drop: bool = False
    negatives: bool = True
    name: str = "casp"

    def loss(self, model, frozen, adapted, batch, rng):
        drop_rng, full_rng, dropped_rng = jax.random.split(rng, 3)
        dropped = core.drop_modality(batch, drop_rng, self.per_sample_drop)
        _, rep = core.apply(model, frozen, adapted, batch, full_rng, train=True)
        _, rep_dropped = core.apply(model, frozen, adapted, dropped, dropped_rng, train=True)
        objective = nt_xent if self.negatives else view_alignment
        return objective(rep, rep_dropped, self.temperature, core.row_mask(batch)), {}


@dataclasses.dataclass(frozen=True)
class PseudoLabelL1:
    """CASP stage 3: L1 between the (dropout-on) prediction and `batch["pseudo_label"]`."""

    name: str = "casp_pseudo"

    def loss(self, model, frozen, adapted, batch, rng):
        score, _ = core.apply(model, frozen, adapted, batch, rng, train=True)
        w = core.row_mask(batch)
        return (jnp.abs(score - batch["pseudo_label"]) * w).sum() / jnp.maximum(w.sum(), 1.0), {}


@dataclasses.dataclass(frozen=True)
class DropoutVariance:
    """Tent for regression: the variance of each prediction over `num_samples` dropout masks, averaged."""

    num_samples: int = 4
    name: str = "dropout_variance"

    def loss(self, model, frozen, adapted, batch, rng):
        rngs = jax.random.split(rng, self.num_samples)
        scores = jax.vmap(lambda r: core.apply(model, frozen, adapted, batch, r, train=True)[0])(rngs)
        w = core.row_mask(batch)
        return (scores.var(axis=0) * w).sum() / jnp.maximum(w.sum(), 1.0), {}


def _layer_moments(intermediates: dict, weights: jax.Array) -> dict:
    """{encoder/layer: (mean [D], std [D])} over all tokens of the weighted rows."""
    moments = {}
    for encoder, sown in intermediates.items():
        for layer, (hidden,) in sown.items():
            h = hidden.astype(jnp.float32).reshape(hidden.shape[0], -1, hidden.shape[-1])
            w = jnp.broadcast_to(weights[:, None, None], h.shape[:2] + (1,))
            count = jnp.maximum(w.sum(), 1.0)
            mean = (h * w).sum(axis=(0, 1)) / count
            var = (jnp.square(h - mean) * w).sum(axis=(0, 1)) / count
            moments[f"{encoder}/{layer}"] = (mean, jnp.sqrt(var + 1e-6))
    return moments


def feature_statistics(model, params: dict, batches) -> dict:
    """Per-layer channel mean and std of the hidden states over source batches (an iterable of batch
    dicts), weighted by rows: what `FeatureAlignment` needs to keep of the source data."""
    sums, total = None, 0.0

    @jax.jit
    def moments(batch):
        frozen, adapted = params, {}
        (_, _), state = core.apply(model, frozen, adapted, batch, mutable=["intermediates"])
        w = core.row_mask(batch)
        return _layer_moments(state["intermediates"], w), w.sum()

    for batch in batches:
        m, count = jax.device_get(moments(batch))
        count = float(count)
        # accumulate first and second raw moments, weighted by the batch's row count
        raw = {k: (count * mean, count * (std ** 2 + mean ** 2)) for k, (mean, std) in m.items()}
        sums = raw if sums is None else {k: (sums[k][0] + raw[k][0], sums[k][1] + raw[k][1]) for k in raw}
        total += count
    if sums is None:
        raise ValueError("feature_statistics needs at least one batch")
    return {k: (np.asarray(s1 / total, np.float32), np.asarray(np.sqrt(np.maximum(s2 / total - (s1 / total) ** 2,
                                                                                    0.0) + 1e-6), np.float32))
            for k, (s1, s2) in sums.items()}


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jit must not reuse another's stats
class FeatureAlignment:
    """CFA without classes: sum over layers of mean |mu_t - mu_s| + mean |sigma_t - sigma_s|."""

    source_stats: dict = dataclasses.field(default_factory=dict)
    name: str = "feature_alignment"

    def loss(self, model, frozen, adapted, batch, rng):
        if not self.source_stats:
            raise ValueError("FeatureAlignment needs source_stats (methods.feature_statistics on source data)")
        (_, _), state = core.apply(model, frozen, adapted, batch, mutable=["intermediates"])
        target = _layer_moments(state["intermediates"], core.row_mask(batch))
        loss = 0.0
        for key, (mean_s, std_s) in self.source_stats.items():
            mean_t, std_t = target[key]
            loss = loss + jnp.abs(mean_t - mean_s).mean() + jnp.abs(std_t - std_s).mean()
        return loss, {}


# ------------------------------------------------------------------------------------------------------
# CASP stage 2


def stable_pseudo_labels(snapshots, quantile: float = 0.95, selection: str = "stable"):
    """Pseudo-labels and the samples to train on from prediction snapshots [S, N] (S >= 2).

    pseudo label = the mean over snapshots; instability = the mean absolute change between consecutive
    snapshots. `selection="stable"` keeps the samples whose instability is at most its `quantile` (the
    most stable ones, 95% by default), as the method describes; `selection="reference"` keeps those above
    it (the 5% *least* stable), as CASP's released `pseudolabel.py` does (`res > quantile(res, 0.95)`).
    Returns (pseudo labels [N], selected [N] bool, instability [N]).
    """
    snapshots = np.asarray(snapshots, np.float64)
    if snapshots.ndim != 2 or snapshots.shape[0] < 2:
        raise ValueError(f"snapshots of shape {snapshots.shape}; expected [S >= 2, N]")
    instability = np.abs(np.diff(snapshots, axis=0)).mean(axis=0)
    threshold = np.quantile(instability, quantile)
    if selection == "stable":
        selected = instability <= threshold
    elif selection == "reference":
        selected = instability > threshold
    else:
        raise ValueError(f"selection={selection!r}; expected 'stable' or 'reference'")
    return snapshots.mean(axis=0).astype(np.float32), selected, instability.astype(np.float32)


METHODS = {"source_only": SourceOnly, "casp": Contrastive, "dropout_variance": DropoutVariance,
           "feature_alignment": FeatureAlignment}
