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


def save_confusion_matrix(path: str, confusion, class_names, title: str = "") -> None:
    """A PNG of the row-normalised confusion matrix (rows: true class), with counts and percentages."""
    from PIL import Image, ImageDraw, ImageFont

    confusion = np.asarray(confusion, np.float64)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1.0)
    n, cell, margin, top = len(class_names), 64, 120, 40
    image = Image.new("RGB", (margin + n * cell + 10, top + margin + n * cell), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    draw.text((10, 10), title or "confusion matrix (rows: true class, columns: predicted)", fill="black", font=font)
    for i, name in enumerate(class_names):
        draw.text((5, top + margin + i * cell + cell // 2 - 5), str(name)[:18], fill="black", font=font)
        draw.text((margin + i * cell + 4, top + margin - 20 - 12 * (i % 2)), str(name)[:10], fill="black", font=font)
    for i in range(n):
        for j in range(n):
            shade = int(255 * (1.0 - rows[i, j]))
            x0, y0 = margin + j * cell, top + margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="gray")
            ink = "white" if rows[i, j] > 0.5 else "black"
            draw.text((x0 + 6, y0 + 18), f"{int(confusion[i, j])}", fill=ink, font=font)
            draw.text((x0 + 6, y0 + 34), f"{100 * rows[i, j]:.0f}%", fill=ink, font=font)
    image.save(path)
