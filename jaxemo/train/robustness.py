"""Modality failures at test time: one transform shared by every multimodal system, and the sweep that scores a
trained model under every failure x modality x severity with one compiled program.

A system names its modalities (`Modality`: the batch field, its time axis, the field of its valid lengths);
a failure is applied per example, on the device, inside the evaluation step:

    absent            the modality's input is zeros (lengths, where the model reads them, are kept: no model in
                      jaxemo has a modality-presence mask, and a zero length would leave an empty sequence)
    noise             Gaussian noise at a signal-to-noise ratio in dB (`severity`), the signal's power measured
                      per example over its valid frames; integer inputs (uint8 video) are rounded and clipped
    temporal_dropout  a fraction (`severity`) of the example's frames set to zero (modalities with a time axis)

The random draws of an example depend only on (seed, the example's row in the evaluation set, the modality),
not on the batch, the failure or its severity: a stronger failure applies the same noise scaled up, or drops a
superset of the frames, so a metric's curve against severity is not blurred by resampling.

`sweep` evaluates all points with the task's own `eval_stats` through the trainer's jitted eval step (its mesh
and parameter shardings): the failure's modality, kind and severity travel in the batch as per-row fields,
so every point reuses one program per batch shape.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxemo.data import pipeline
from jaxemo.train import loop, sharding, step as step_lib

KINDS = ("absent", "noise", "temporal_dropout")
CLEAN = -1  # the kind index of an example left as it is
DEFAULT_SNR_DB = (20.0, 10.0, 5.0, 0.0, -5.0, -10.0)  # mildest first
DEFAULT_DROPOUT = (0.25, 0.5, 0.75, 1.0)
FIELDS = ("failure/modality", "failure/kind", "failure/severity", "failure/row")


@dataclasses.dataclass(frozen=True)
class Modality:
    """One input stream of a multimodal model: `key` is its batch field ([batch, ...]); `time_axis` the axis of
    that field (batch axis included) that holds time, or None for one vector per example; `length_key` the
    field with each example's valid length along `time_axis`, where the model reads one."""

    name: str
    key: str
    time_axis: Optional[int] = 1
    length_key: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class FailurePoint:
    """One evaluation: `kind` (one of `KINDS`, or "clean") on `modality` at `severity` (noise: SNR in dB;
    temporal_dropout: the fraction of frames; absent: 1)."""

    modality: str
    kind: str
    severity: float

    @property
    def label(self) -> str:
        return "clean" if self.kind == "clean" else f"{self.modality} {self.kind} {self.severity:g}"


def failure_grid(modalities: Sequence[Modality], snr_db: Sequence[float] = DEFAULT_SNR_DB,
                 dropout: Sequence[float] = DEFAULT_DROPOUT, kinds: Sequence[str] = KINDS) -> list[FailurePoint]:
    """The clean point, then for every modality each kind at each severity (temporal dropout only where the
    modality has a time axis)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown failure kinds {unknown}; expected some of {list(KINDS)}")
    for fraction in dropout:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"temporal dropout fraction {fraction} is outside [0, 1]")
    points = [FailurePoint("", "clean", 0.0)]
    for m in modalities:
        if "absent" in kinds:
            points.append(FailurePoint(m.name, "absent", 1.0))
        if "noise" in kinds:
            points += [FailurePoint(m.name, "noise", float(s)) for s in snr_db]
        if "temporal_dropout" in kinds and m.time_axis is not None:
            points += [FailurePoint(m.name, "temporal_dropout", float(f)) for f in dropout]
    return points


def failure_fields(point: FailurePoint, modalities: Sequence[Modality], rows: np.ndarray) -> dict:
    """The per-row batch fields that make the evaluation step apply `point` to the rows `rows`."""
    names = [m.name for m in modalities]
    if point.kind != "clean" and point.modality not in names:
        raise ValueError(f"failure on {point.modality!r}: the modalities are {names}")
    n = len(rows)
    return {
        "failure/modality": np.full((n,), names.index(point.modality) if point.kind != "clean" else 0, np.int32),
        "failure/kind": np.full((n,), KINDS.index(point.kind) if point.kind != "clean" else CLEAN, np.int32),
        "failure/severity": np.full((n,), point.severity, np.float32),
        "failure/row": np.asarray(rows, np.int32),
    }


def _valid_frames(x: jax.Array, modality: Modality, length) -> jax.Array:
    """[T] bool of one example's real frames (all True without lengths or a time axis)."""
    if modality.time_axis is None:
        return jnp.ones((1,), bool)
    frames = x.shape[modality.time_axis - 1]
    return jnp.arange(frames) < length if length is not None else jnp.ones((frames,), bool)


def _along_time(values: jax.Array, x: jax.Array, modality: Modality) -> jax.Array:
    """[T] values broadcast against one example `x` along its time axis."""
    if modality.time_axis is None:
        return values.reshape((1,) * x.ndim)
    axis = modality.time_axis - 1
    return values.reshape(tuple(-1 if i == axis else 1 for i in range(x.ndim)))


def fail_example(x: jax.Array, modality: Modality, kind, severity, key, length=None) -> jax.Array:
    """One example's input `x` (no batch axis) under failure `kind` (an index into `KINDS`, or `CLEAN`)."""
    xf = x.astype(jnp.float32)
    valid = _along_time(_valid_frames(x, modality, length), x, modality).astype(jnp.float32)
    noise_key, drop_key = jax.random.split(key)
    count = jnp.maximum(jnp.sum(jnp.broadcast_to(valid, x.shape)), 1.0)
    power = jnp.sum(jnp.square(xf) * valid) / count
    sigma = jnp.sqrt(power / 10.0 ** (severity / 10.0))
    noisy = xf + sigma * jax.random.normal(noise_key, x.shape) * valid
    if modality.time_axis is None:
        dropped = xf
    else:
        frames = x.shape[modality.time_axis - 1]
        keep = jax.random.uniform(drop_key, (frames,)) >= severity
        dropped = xf * _along_time(keep, x, modality).astype(jnp.float32)
    out = jnp.select([kind == 0, kind == 1, kind == 2], [jnp.zeros_like(xf), noisy, dropped], xf)
    if jnp.issubdtype(x.dtype, jnp.integer):
        info = jnp.iinfo(x.dtype)
        out = jnp.clip(jnp.round(out), info.min, info.max)
    return out.astype(x.dtype)


def apply_failures(batch: dict, modalities: Sequence[Modality], seed: int) -> dict:
    """`batch` with each row's failure (its `failure/*` fields, which are removed) applied."""
    missing = [f for f in FIELDS if f not in batch]
    if missing:
        raise KeyError(f"a failing batch needs the fields {missing} (`failure_fields`)")
    out = {k: v for k, v in batch.items() if k not in FIELDS}
    which, kind, severity = batch["failure/modality"], batch["failure/kind"], batch["failure/severity"]
    row_keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.key(seed), row))(batch["failure/row"])
    for i, m in enumerate(modalities):
        if m.key not in batch:
            raise KeyError(f"modality {m.name!r}: the batch has no field {m.key!r} (it has {sorted(out)})")
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys)
        lengths = batch[m.length_key] if m.length_key else None
        kinds = jnp.where(which == i, kind, CLEAN)
        fail = jax.vmap(lambda x, k, s, key, n: fail_example(x, m, k, s, key, n),
                        in_axes=(0, 0, 0, 0, 0 if lengths is not None else None))
        out[m.key] = fail(batch[m.key], kinds, severity, keys, lengths)
    return out


@dataclasses.dataclass(frozen=True)
class FailingTask:
    """`task` evaluated on batches that carry failures (`failure_fields`); everything else is `task`'s."""

    task: object
    modalities: tuple
    seed: int = 0

    def eval_stats(self, params, batch):
        return self.task.eval_stats(params, apply_failures(batch, self.modalities, self.seed))

    def summarize(self, stats):
        return self.task.summarize(stats)


def sweep(config, task, params, eval_source, modalities: Sequence[Modality], points: Sequence[FailurePoint],
          seed: int = 0, mesh=None) -> list[dict]:
    """Every point's metrics (`task.summarize`) on `eval_source`: the evaluation set is read and host-transformed
    once, and one jitted eval step (the trainer's, on `mesh`) serves every point. Rows: the point's fields and
    its metrics and `seconds` (the first point's include compiling); `compiles`, the eval step's compilations,
    on the first row."""
    mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
    rules = sharding.rules_from_config(config)
    boxed = jax.eval_shape(task.init, jax.random.key(0), loop.example_batch(task, eval_source))["params"]
    shardings = sharding.tree_shardings(boxed, mesh, rules)
    params = jax.device_put(params, shardings)
    failing = FailingTask(task, tuple(modalities), seed)
    eval_step = step_lib.jit_eval_step(failing, shardings, mesh, rules)
    batches = list(pipeline.eval_batches(eval_source, config.eval_batch_size,
                                         transform=task.host_transform(False), pad_spec=task.pad_spec))
    offsets = np.cumsum([0] + [len(batch["mask"]) for batch in batches])[:-1]
    results = []
    for point in points:
        start = time.perf_counter()
        totals = None
        for batch, offset in zip(batches, offsets):
            fields = failure_fields(point, modalities, np.arange(offset, offset + len(batch["mask"])))
            stats = eval_step(params, sharding.shard_batch({**batch, **fields}, mesh))
            totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
        scores = failing.summarize(jax.device_get(totals))
        results.append({"modality": point.modality, "kind": point.kind, "severity": point.severity,
                        **{k: float(v) for k, v in scores.items() if np.ndim(v) == 0},
                        "seconds": time.perf_counter() - start})
    results[0]["compiles"] = eval_step._cache_size()
    return results


def write_results(rows: Sequence[dict], output: str, metric: str, title: str = "") -> dict:
    """`robustness.csv`, `robustness.json` and `robustness.png` (`metric` against severity, a panel per failure
    kind, a line per modality, the clean score dashed) under `output`; returns their paths."""
    os.makedirs(output, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "compiles"))
    paths = {name: os.path.join(output, f"robustness.{name}") for name in ("csv", "json", "png")}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["json"], "w") as f:
        json.dump({"metric": metric, "rows": list(rows)}, f, indent=2)
    plot(rows, metric, paths["png"], title)
    return paths


def plot(rows: Sequence[dict], metric: str, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if any(metric not in row for row in rows):
        raise KeyError(f"metric {metric!r} is not among the results' fields {sorted(rows[0])}")
    clean = next((row[metric] for row in rows if row["kind"] == "clean"), None)
    kinds = [k for k in KINDS if any(row["kind"] == k for row in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for modality in dict.fromkeys(row["modality"] for row in rows if row["kind"] == kind):
            points = [(row["severity"], row[metric]) for row in rows
                      if row["kind"] == kind and row["modality"] == modality]
            if kind == "absent":
                ax.bar(modality, points[0][1])
            else:
                ax.plot(*zip(*points), marker="o", label=modality)
        if clean is not None:
            ax.axhline(clean, color="gray", linestyle="--", label="clean")
        ax.set_title(kind.replace("_", " "))
        axis_names = {"noise": "SNR (dB)", "temporal_dropout": "fraction of frames dropped"}
        ax.set_xlabel(axis_names.get(kind, "modality"))
        if kind == "noise":
            ax.invert_xaxis()  # the failure grows to the right
        ax.set_ylabel(metric)
        if kind != "absent":
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
