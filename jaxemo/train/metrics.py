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
    return {"accuracy": float(war), "war": float(war), "uar": float(recall.mean()) if present.any() else 0.0}


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
