"""A task ties a model to its inputs, loss and evaluation statistics; the trainer is generic over tasks.

A task provides:
  model                                       the Flax module
  init(rng, batch) -> variables               boxed params (logical axis names) for sharded creation
  loss(params, batch, rng, train) -> (loss, metrics)
  eval_stats(params, batch) -> {name: array} statistics summed over batches (padded rows masked out)
  summarize(stats) -> {name: float}           final metrics from the summed statistics
  is_trainable(path) -> bool                  which parameters train; the rest are frozen
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxemo.train import metrics as metrics_lib
from jaxemo.train import optim


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Softmax cross-entropy classification of `batch[input_key]` into `num_classes` labels."""

    model: nn.Module
    num_classes: int
    input_key: str = "image"
    label_key: str = "label"
    label_smoothing: float = 0.0
    trainable_patterns: Optional[Sequence[str]] = None

    def is_trainable(self, path) -> bool:
        return optim.path_matcher(self.trainable_patterns)(path)

    def inputs(self, batch) -> jax.Array:
        """Images stored as uint8 become floats in [0, 1] on the device."""
        x = batch[self.input_key]
        return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x

    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, self.inputs(batch))

    def logits(self, params, batch, rng=None, train=False):
        rngs = {"dropout": rng} if train else None
        logits, _ = self.model.apply({"params": params}, self.inputs(batch), deterministic=not train, rngs=rngs)
        return logits.astype(jnp.float32)

    def loss(self, params, batch, rng, train=True):
        logits = self.logits(params, batch, rng, train)
        targets = optax.smooth_labels(jax.nn.one_hot(batch[self.label_key], self.num_classes), self.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = (logits.argmax(-1) == batch[self.label_key]).mean()
        return loss, {"accuracy": accuracy}

    def eval_stats(self, params, batch):
        logits = self.logits(params, batch)
        labels = batch[self.label_key]
        mask = batch.get("mask", jnp.ones(labels.shape, bool)).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        confusion = metrics_lib.confusion_matrix(labels, logits.argmax(-1), self.num_classes, mask)
        return {"loss_sum": (nll * mask).sum(), "confusion": confusion}

    def summarize(self, stats) -> dict:
        confusion = np.asarray(stats["confusion"])
        count = max(confusion.sum(), 1.0)
        return {
            "loss": float(stats["loss_sum"]) / count,
            **metrics_lib.classification_metrics(confusion),
        }
