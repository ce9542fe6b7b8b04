"""Metric functions and the metric writer (JSON lines + TensorBoard event files, process 0 only)."""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, predictions, num_classes: int, weights=None) -> jax.Array:
    """`[true, predicted]` counts, optionally weighted (0 for padded rows)."""
    weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights
    index = labels * num_classes + predictions
    counts = jnp.zeros(num_classes * num_classes, jnp.float32).at[index].add(weights)
    return counts.reshape(num_classes, num_classes)


def classification_metrics(confusion: np.ndarray) -> dict:
    """WAR (overall accuracy) and UAR (mean per-class recall over classes that occur), as MMA-DFER reports."""
    confusion = np.asarray(confusion, np.float64)
    support = confusion.sum(axis=1)
    present = support > 0
    recall = np.diag(confusion)[present] / support[present]
    war = np.trace(confusion) / max(confusion.sum(), 1.0)
    return {"accuracy": float(war), "war": float(war), "uar": float(recall.mean()) if present.any() else 0.0,
            "macro_f1": _macro_f1(confusion), "weighted_f1": _weighted_f1(confusion)}


def _per_class_f1(confusion: np.ndarray) -> np.ndarray:
    tp = np.diag(confusion)
    denominator = 2 * tp + (confusion.sum(axis=0) - tp) + (confusion.sum(axis=1) - tp)
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def _macro_f1(confusion: np.ndarray) -> float:
    """sklearn's `f1_score(average="macro")`: the mean F1 over the classes that occur as a label or a prediction."""
    seen = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    return float(_per_class_f1(confusion)[seen].mean()) if seen.any() else 0.0


def _weighted_f1(confusion: np.ndarray) -> float:
    """sklearn's `f1_score(average="weighted")` from a `[true, predicted]` confusion matrix."""
    support = confusion.sum(axis=1)
    return float((_per_class_f1(confusion) * support).sum() / max(support.sum(), 1.0))


def sentiment_stats(predictions, labels, weights=None) -> dict:
    """Sums over a batch from which `sentiment_metrics_from_stats` gives the metrics of everything summed
    (the trainer adds them over evaluation batches; `weights` is 0 for padded rows)."""
    p = predictions.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    w = jnp.ones(y.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    hits = lambda a, b: (w * (a == b)).sum()
    rounded = lambda x, r: jnp.round(jnp.clip(x, -r, r))
    non0 = w * (y != 0)
    return {
        "count": w.sum(), "abs_error": (w * jnp.abs(p - y)).sum(),
        "sum_p": (w * p).sum(), "sum_y": (w * y).sum(), "sum_pp": (w * p * p).sum(),
        "sum_yy": (w * y * y).sum(), "sum_py": (w * p * y).sum(),
        "acc7_hits": hits(rounded(p, 3.0), rounded(y, 3.0)), "acc5_hits": hits(rounded(p, 2.0), rounded(y, 2.0)),
        "confusion_has0": confusion_matrix((y >= 0).astype(jnp.int32), (p >= 0).astype(jnp.int32), 2, w),
        "confusion_non0": confusion_matrix((y > 0).astype(jnp.int32), (p > 0).astype(jnp.int32), 2, non0),
        "confusion_reference": confusion_matrix((y > 0).astype(jnp.int32), (p > 0).astype(jnp.int32), 2, w),
    }


def sentiment_metrics_from_stats(stats) -> dict:
    """MAE, Pearson correlation, Acc-7, Acc-5, and Acc-2 / weighted F1 in three binary variants:

    has0       negative vs non-negative (label >= 0), all samples (MMSA's `Has0_acc_2`)
    non0       negative vs positive, samples with label 0 left out (MMSA's `Non0_acc_2`)
    reference  label > 0 vs <= 0 on all samples: CASP's (MulT's) `eval_senti` with exclude_zero=False,
               which CASP uses to select checkpoints

    and `f1_reference_swapped`, the weighted F1 CASP prints: `f1_score(preds > 0, labels > 0,
    average="weighted")`, the predictions passed as sklearn's `y_true`, so the classes are weighted by how
    often they are predicted (the reference variant's confusion matrix transposed).
    """
    s = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    n = max(float(s["count"]), 1.0)
    cov = s["sum_py"] / n - (s["sum_p"] / n) * (s["sum_y"] / n)
    var_p = s["sum_pp"] / n - (s["sum_p"] / n) ** 2
    var_y = s["sum_yy"] / n - (s["sum_y"] / n) ** 2
    corr = cov / np.sqrt(var_p * var_y) if var_p > 0 and var_y > 0 else 0.0
    out = {"mae": float(s["abs_error"] / n), "corr": float(corr), "acc7": float(s["acc7_hits"] / n),
           "acc5": float(s["acc5_hits"] / n)}
    for variant in ("has0", "non0", "reference"):
        confusion = s[f"confusion_{variant}"]
        out[f"acc2_{variant}"] = float(np.trace(confusion) / max(confusion.sum(), 1.0))
        out[f"f1_{variant}"] = _weighted_f1(confusion)
    out["f1_reference_swapped"] = _weighted_f1(s["confusion_reference"].T)
    return out


def sentiment_metrics(predictions, labels) -> dict:
    """`sentiment_metrics_from_stats` of whole arrays of predictions and labels (host side)."""
    return sentiment_metrics_from_stats(jax.device_get(sentiment_stats(jnp.asarray(predictions),
                                                                        jnp.asarray(labels))))


def to_python(tree) -> dict:
    return {k: float(np.asarray(v)) for k, v in tree.items() if np.ndim(v) == 0}


class MetricWriter:
    """Appends `{"step", "time", name: value}` lines to `metrics.jsonl` and scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def save_confusion_matrix(path: str, confusion, class_names, title: str = "") -> None:
    """A PNG of the row-normalised confusion matrix (rows: true class), each cell with its count and percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, np.float64)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1.0)
    n = len(class_names)
    size = max(4.0, 0.75 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=100)
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(confusion[i, j])}\n{100 * rows[i, j]:.0f}%", ha="center", va="center",
                    fontsize=8, color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix (rows: true class)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
