"""Safe online adaptation: label-free signals that predict mis-adaptation, thresholds calibrated on source data,
and a policy that skips a batch or resets the adapted params when a signal crosses its threshold.

Per incoming batch, inside one `lax.scan` over the stream (`adapt_online_monitored`):

    shift    how far the batch's input statistics are from the source's: per modality, the mean over feature
             dims of |mean_b - mean_s| / std_s + |log std_b - log std_s| over the real frames, the largest
             over modalities (a silent or constant sensor sends the log-std term far out)
    loss     the method's adaptation loss on the batch with the current params
    spread   the standard deviation of the batch's predictions after the update (collapse or explosion)
    drift    the adapted params' L2 distance from the source's, relative to the source's norm

    shift > shift_max or loss > loss_max (or not finite)     skip: no update on this batch
    after the update, drift > drift_max or spread outside
    [spread_min, spread_max] (or not finite)                 reset: to the last accepted params (`reset_to=
                                                             "snapshot"`) or the source's ("source"), with a
                                                             fresh optimizer state
    otherwise                                                adapt: the update stands and becomes the snapshot

The batch is then predicted with the params the decision left. `calibrate` sets every threshold from source
validation data only (no target labels): shift and loss from the source model's own batches, spread from its
predictions, drift from plain online adaptation run over the source stream, each widened by a factor
(`MonitorConfig`). Every decision and signal comes back per batch (`Audit`) for the JSON-lines log and the
timeline plot (`write_audit`, `plot_timeline`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxemo.tta import core, modes

DECISIONS = ("adapt", "skip", "reset")
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Thresholds:
    shift_max: float
    loss_max: float
    spread_min: float
    spread_max: float
    drift_max: float


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """How `calibrate` widens the source's signals into thresholds, and where a reset goes."""

    shift_factor: float = 8.0  # x the source batches' largest shift from their own set's statistics
    loss_factor: float = 2.0  # x the source batches' largest adaptation loss (`_widen`)
    spread_factor: float = 4.0  # spread within [smallest / factor, largest x factor] of the source batches'
    drift_factor: float = 3.0  # x the largest drift of plain online adaptation over the source stream
    change_factor: float = 3.0  # episodic: x the largest |adapted - source prediction| of a source sample
    # episodic: x the source samples' largest shift. One sample's statistics are far noisier than a batch's
    # (its largest shift is ~2 where a batch's is ~0.3), and a silent modality's distance is bounded (~14:
    # the log-std term at the floor), so the batch's factor 8 would let it through.
    sample_shift_factor: float = 3.0
    reset_to: str = "snapshot"  # or "source"

    def __post_init__(self):
        if self.reset_to not in ("snapshot", "source"):
            raise ValueError(f"reset_to={self.reset_to!r}: expected 'snapshot' or 'source'")


def _valid_frames(batch: dict, modality: str) -> jax.Array:
    """[B, T, 1] float weights of the real frames of the real rows."""
    x = batch[modality]
    rows = core.row_mask(batch)[:, None]
    length_key = f"{modality}_length"
    if length_key in batch:
        frames = (jnp.arange(x.shape[1])[None, :] < batch[length_key][:, None]).astype(jnp.float32)
    else:
        frames = jnp.ones(x.shape[:2], jnp.float32)
    return (frames * rows)[..., None]


def input_statistics(batch: dict) -> dict:
    """{modality: (mean [D], std [D])} over the real frames of the real rows."""
    stats = {}
    for m in core.MODALITIES:
        x = batch[m].astype(jnp.float32)
        w = _valid_frames(batch, m)
        count = jnp.maximum(w.sum(), 1.0)
        mean = (x * w).sum((0, 1)) / count
        var = (jnp.square(x - mean) * w).sum((0, 1)) / count
        stats[m] = (mean, jnp.sqrt(var))
    return stats


def shift(stats: dict, source: dict) -> jax.Array:
    """The largest, over modalities, mean over dims of |mean - mean_s| / std_s + |log std - log std_s|."""
    distances = []
    for m in core.MODALITIES:
        (mean, std), (mean_s, std_s) = stats[m], source[m]
        std_s = jnp.asarray(std_s)
        distances.append(jnp.mean(jnp.abs(mean - jnp.asarray(mean_s)) / (std_s + _EPS)
                                  + jnp.abs(jnp.log(std + _EPS) - jnp.log(std_s + _EPS))))
    return jnp.max(jnp.stack(distances))


def spread(predictions: jax.Array, batch: dict) -> jax.Array:
    w = core.row_mask(batch)
    count = jnp.maximum(w.sum(), 1.0)
    mean = (predictions * w).sum() / count
    return jnp.sqrt((jnp.square(predictions - mean) * w).sum() / count)


def drift(adapted, source) -> jax.Array:
    diff = sum(jnp.sum(jnp.square(a - s)) for a, s in zip(jax.tree.leaves(adapted), jax.tree.leaves(source)))
    norm = sum(jnp.sum(jnp.square(s)) for s in jax.tree.leaves(source))
    return jnp.sqrt(diff / jnp.maximum(norm, _EPS))


def _widen(largest, factor: float) -> float:
    """An upper limit `factor` x the largest value seen, measured from zero: x factor for a positive loss, and
    for a negative one (episodic view alignment is a negative cosine) as far above it as it is from zero."""
    return float(largest + (factor - 1.0) * abs(largest))


def _where(condition, a, b):
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), a, b)


@dataclasses.dataclass
class Audit:
    """Per batch of the stream: the signals, the decision (an index into `DECISIONS`), the thresholds."""

    SIGNALS = ("shift", "loss", "spread", "drift")
    UNIT = "batch"
    shift: np.ndarray
    loss: np.ndarray
    spread: np.ndarray
    drift: np.ndarray
    decision: np.ndarray
    thresholds: Thresholds

    def counts(self) -> dict:
        return {name: int((self.decision == i).sum()) for i, name in enumerate(DECISIONS)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _monitored_scan(method, model, optimizer: core.OptimizerConfig, steps_per_batch: int, reset_to: str,
                    thresholds: dict, frozen, adapted, source_stats, batches, rng):
    tx = optimizer.make()
    source = adapted
    t = Thresholds(**thresholds)  # traced: a new calibration reuses the compiled scan

    def per_batch(carry, inputs):
        params, opt_state, snapshot = carry
        batch, key = inputs
        batch_shift = shift(input_statistics(batch), source_stats)
        # the update's keys are plain online adaptation's (`modes._online_scan`): with no threshold crossed,
        # the monitored stream adapts and predicts exactly as the plain one
        step_keys = jax.random.split(key, steps_per_batch)
        loss, _ = method.loss(model, frozen, params, batch, jax.random.fold_in(key, 0x6C6F7373))
        skip = ~((batch_shift <= t.shift_max) & (loss <= t.loss_max))  # NaN compares False: skipped
        new_params, new_opt = params, opt_state
        for k in step_keys:
            new_params, new_opt, _ = core.adapt_step(method, model, tx, frozen, new_params, new_opt, batch, k)
        new_predictions = core.predict(model, frozen, new_params, batch)
        new_spread = spread(new_predictions, batch)
        new_drift = drift(new_params, source)
        reset = ~skip & ~((new_drift <= t.drift_max) & (new_spread >= t.spread_min) & (new_spread <= t.spread_max))
        fallback = snapshot if reset_to == "snapshot" else source
        kept = _where(skip, params, _where(reset, fallback, new_params))
        kept_opt = _where(skip, opt_state, _where(reset, tx.init(fallback), new_opt))
        accepted = ~skip & ~reset
        snapshot = _where(accepted, new_params, snapshot)
        decision = jnp.where(skip, 1, jnp.where(reset, 2, 0))
        signals = {"shift": batch_shift, "loss": loss, "spread": new_spread, "drift": new_drift,
                   "decision": decision}
        # an accepted update's predictions are already computed; only a skip or a reset predicts again
        predictions = jax.lax.cond(accepted, lambda: new_predictions,
                                   lambda: core.predict(model, frozen, kept, batch))
        return (kept, kept_opt, snapshot), (predictions, signals)

    num_batches = jax.tree.leaves(batches)[0].shape[0]
    keys = jax.random.split(rng, num_batches)
    (adapted, _, _), (predictions, signals) = jax.lax.scan(per_batch, (adapted, tx.init(adapted), adapted),
                                                           (batches, keys))
    return adapted, predictions, signals


def adapt_online_monitored(method, model, frozen, adapted, stream: dict, batch_size: int, rng,
                           thresholds: Thresholds, source_stats: dict, steps_per_batch: int = 1,
                           optimizer: core.OptimizerConfig = core.OptimizerConfig(),
                           reset_to: str = "snapshot") -> tuple[np.ndarray, dict, Audit]:
    """`modes.adapt_online` with the monitor: (predictions [N], final adapted params, the per-batch `Audit`)."""
    n = len(stream["text"])
    batches = modes.batched({k: v for k, v in stream.items() if k in core.INPUT_KEYS}, batch_size)
    source_stats = jax.tree.map(jnp.asarray, source_stats)
    limits = {k: jnp.float32(v) for k, v in dataclasses.asdict(thresholds).items()}
    adapted, predictions, signals = _monitored_scan(method, model, optimizer, steps_per_batch, reset_to, limits,
                                                    frozen, adapted, source_stats, batches, rng)
    signals = jax.device_get(signals)
    audit = Audit(**{k: np.asarray(signals[k]) for k in ("shift", "loss", "spread", "drift", "decision")},
                  thresholds=thresholds)
    return modes.unbatch(predictions, n), adapted, audit


@functools.partial(jax.jit, static_argnums=(0, 1))
def _source_signals(method, model, frozen, adapted, source_stats, batches, rng):
    def per_batch(_, inputs):
        batch, key = inputs
        loss, _ = method.loss(model, frozen, adapted, batch, key)
        return None, (shift(input_statistics(batch), source_stats), loss,
                      spread(core.predict(model, frozen, adapted, batch), batch))

    keys = jax.random.split(rng, jax.tree.leaves(batches)[0].shape[0])
    return jax.lax.scan(per_batch, None, (batches, keys))[1]


def calibrate(method, model, frozen, adapted, source_valid: dict, batch_size: int, rng,
              steps_per_batch: int = 1, optimizer: core.OptimizerConfig = core.OptimizerConfig(),
              config: MonitorConfig = MonitorConfig()) -> tuple[Thresholds, dict]:
    """(thresholds, source input statistics) from source validation data alone (its labels are not read)."""
    inputs = {k: v for k, v in source_valid.items() if k in core.INPUT_KEYS}
    whole = dict(inputs, mask=np.ones(len(inputs["text"]), bool))
    source_stats = jax.device_get(jax.jit(input_statistics)(whole))
    batches = modes.batched(inputs, batch_size)
    if len(batches["mask"]) < 2:
        raise ValueError(f"calibration needs at least 2 source batches of {batch_size}; got "
                         f"{len(inputs['text'])} samples")
    signal_rng, drift_rng = jax.random.split(rng)
    shifts, losses, spreads = jax.device_get(_source_signals(method, model, frozen, adapted,
                                                             jax.tree.map(jnp.asarray, source_stats), batches,
                                                             signal_rng))
    # plain online adaptation over the source stream: how far the params wander when nothing is wrong
    no_limits = Thresholds(np.inf, np.inf, 0.0, np.inf, np.inf)
    _, _, audit = adapt_online_monitored(method, model, frozen, adapted, inputs, batch_size, drift_rng, no_limits,
                                         source_stats, steps_per_batch, optimizer)
    c = config
    thresholds = Thresholds(
        shift_max=float(c.shift_factor * np.max(shifts)), loss_max=_widen(np.max(losses), c.loss_factor),
        spread_min=float(np.min(spreads) / c.spread_factor), spread_max=float(np.max(spreads) * c.spread_factor),
        drift_max=float(c.drift_factor * max(np.max(audit.drift), _EPS)))
    return thresholds, source_stats


# ---------------------------------------------------------------------------------------- episodic, per sample


@dataclasses.dataclass(frozen=True)
class SampleThresholds:
    shift_max: float
    loss_max: float
    drift_max: float
    change_max: float


@dataclasses.dataclass
class SampleAudit:
    """Per sample of an episodic run: the signals, the decision (an index into `DECISIONS`), the thresholds."""

    SIGNALS = ("shift", "loss", "drift", "change")
    UNIT = "sample"
    shift: np.ndarray
    loss: np.ndarray
    drift: np.ndarray
    change: np.ndarray
    decision: np.ndarray
    thresholds: SampleThresholds

    counts = Audit.counts


def _sample_signals(method, model, config, frozen, source, source_stats, sample, key):
    """One sample's signals before (shift, loss on its views) and after its K steps (drift, prediction
    change), and its adapted and source predictions."""
    single = dict(jax.tree.map(lambda x: x[None], sample), mask=jnp.ones((1,), bool))
    sample_shift = shift(input_statistics(single), source_stats)
    loss, _ = method.loss(model, frozen, source, modes.sample_views(sample, config.views),
                          jax.random.fold_in(key, 0x6C6F7373))
    adapted = modes.adapt_sample(method, model, config, frozen, source, sample, key)
    prediction = modes.predict_sample(model, frozen, adapted, sample)
    source_prediction = modes.predict_sample(model, frozen, source, sample)
    return (sample_shift, loss, drift(adapted, source), jnp.abs(prediction - source_prediction), prediction,
            source_prediction)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def episodic_monitored_batch(method, model, config, thresholds: dict, frozen, source, source_stats, samples, keys):
    """Per sample of `samples` (vmapped, as `modes.episodic_batch`): skip (the source's prediction) if its
    shift or loss crosses its limit, reject after the steps (the source's prediction) if the drift or the
    prediction change does, else the adapted prediction. Returns (predictions, signals with `decision`)."""
    t = SampleThresholds(**thresholds)  # traced
    fn = functools.partial(_sample_signals, method, model, config)
    shifts, losses, drifts, changes, adapted, unadapted = jax.vmap(fn, in_axes=(None, None, None, 0, 0))(
        frozen, source, source_stats, samples, keys)
    skip = ~((shifts <= t.shift_max) & (losses <= t.loss_max))
    reject = ~skip & ~((drifts <= t.drift_max) & (changes <= t.change_max))
    decision = jnp.where(skip, 1, jnp.where(reject, 2, 0))
    signals = {"shift": shifts, "loss": losses, "drift": drifts, "change": changes, "decision": decision}
    return jnp.where(decision == 0, adapted, unadapted), signals


def episodic_predict_monitored(method, model, frozen, adapted, samples: dict, rng, thresholds: SampleThresholds,
                               source_stats: dict, config: modes.EpisodicConfig = modes.EpisodicConfig(),
                               batch_size: int = 256) -> tuple[np.ndarray, SampleAudit]:
    """`modes.episodic_predict` with the per-sample rule: (predictions [N], `SampleAudit`). The same keys as the
    plain episodic run, so a sample the rule accepts gets the plain run's prediction."""
    method = modes.episodic_method(method)
    inputs = {k: v for k, v in samples.items() if k in core.INPUT_KEYS}
    n = len(inputs["text"])
    batches = modes.batched(inputs, batch_size)
    keys = modes.sample_keys(rng, np.arange(batches["mask"].size)).reshape(batches["mask"].shape)
    limits = {k: jnp.float32(v) for k, v in dataclasses.asdict(thresholds).items()}
    source_stats = jax.tree.map(jnp.asarray, source_stats)
    outs = [episodic_monitored_batch(method, model, config, limits, frozen, adapted, source_stats,
                                     {k: v[b] for k, v in batches.items() if k != "mask"}, keys[b])
            for b in range(len(batches["mask"]))]
    predictions, signals = jax.device_get(([o[0] for o in outs], [o[1] for o in outs]))
    signals = {k: modes.unbatch(np.stack([s[k] for s in signals]), n) for k in signals[0]}
    audit = SampleAudit(**{k: signals[k] for k in SampleAudit.SIGNALS}, decision=signals["decision"],
                        thresholds=thresholds)
    return modes.unbatch(np.stack(predictions), n), audit


def calibrate_episodic(method, model, frozen, adapted, source_valid: dict, rng,
                       config: modes.EpisodicConfig = modes.EpisodicConfig(), batch_size: int = 256,
                       monitor_config: MonitorConfig = MonitorConfig()) -> tuple[SampleThresholds, dict]:
    """(per-sample thresholds, source input statistics) from source validation samples alone: each sample
    adapted episodically with no limit, its signals widened by `monitor_config`'s factors."""
    inputs = {k: v for k, v in source_valid.items() if k in core.INPUT_KEYS}
    source_stats = jax.device_get(jax.jit(input_statistics)(dict(inputs, mask=np.ones(len(inputs["text"]), bool))))
    no_limits = SampleThresholds(np.inf, np.inf, np.inf, np.inf)
    _, audit = episodic_predict_monitored(method, model, frozen, adapted, inputs, rng, no_limits, source_stats,
                                          config, batch_size)
    c = monitor_config
    thresholds = SampleThresholds(
        shift_max=float(c.sample_shift_factor * np.max(audit.shift)),
        loss_max=_widen(np.max(audit.loss), c.loss_factor),
        drift_max=float(c.drift_factor * max(np.max(audit.drift), _EPS)),
        change_max=float(c.change_factor * max(np.max(audit.change), _EPS)))
    return thresholds, source_stats


def write_audit(audit, path: str, errors: Optional[np.ndarray] = None) -> None:
    """One JSON line per batch (an `Audit`) or sample (a `SampleAudit`): its index, signals, decision and the
    thresholds (and its absolute error where labels are known, for a report; the monitor never reads them)."""
    thresholds = dataclasses.asdict(audit.thresholds)
    with open(path, "w") as f:
        for i in range(len(audit.decision)):
            row = {audit.UNIT: i, "decision": DECISIONS[int(audit.decision[i])],
                   "signals": {k: float(getattr(audit, k)[i]) for k in audit.SIGNALS},
                   "thresholds": thresholds}
            if errors is not None:
                row["mae"] = float(errors[i])
            f.write(json.dumps(row) + "\n")


def plot_timeline(audits: dict, path: str, errors: Optional[dict] = None, title: str = "") -> None:
    """Per batch (or sample): each run's error (where given) and the monitored run's signals against their
    thresholds, those it skipped or reset marked. `audits`: {run name: Audit or SampleAudit} (the first's
    signals are drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, audit = next(iter(audits.items()))
    limits = dataclasses.asdict(audit.thresholds)
    panels = [(signal, [limits[k] for k in (f"{signal}_min", f"{signal}_max") if k in limits])
              for signal in audit.SIGNALS]
    rows = len(panels) + (1 if errors else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 1.9 * rows), sharex=True)
    x = np.arange(len(audit.decision))
    if errors:
        for run, values in errors.items():
            axes[0].plot(x, values, label=run)
        axes[0].set_ylabel("MAE")
        axes[0].legend(fontsize=8)
    for ax, (signal, limits) in zip(axes[1 if errors else 0:], panels):
        ax.plot(x, getattr(audit, signal), color="black", lw=1)
        for limit in limits:
            ax.axhline(limit, color="red", ls="--", lw=0.8)
        ax.set_ylabel(signal)
    for ax in axes:
        for code, color in ((1, "orange"), (2, "purple")):
            for i in x[audit.decision == code]:
                ax.axvspan(i - 0.5, i + 0.5, color=color, alpha=0.15, lw=0)
    axes[-1].set_xlabel(f"{audit.UNIT} ({name}: orange = skipped, purple = reset or rejected)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
