"""The contracts the trainer, the evaluator and population training rely on, and the generic tasks.

A task ties a model to its inputs, loss and evaluation statistics; the trainer is generic over tasks. The
contract is `Task` below; `SupervisedTask` gives the methods every task of the form "the model reads
`input_keys`, the label is `label_key`" shares, so a concrete task writes only its loss and metrics.

The data a task trains on comes from `DataSource`s (random access, `len` and `[i]` -> dict of numpy arrays,
plus the capabilities `orders_itself`, `reads_batches` / `read_batch` and `row_index`). The protocol lives in
the data layer (`jaxemo.data.datasource`, with `SourceBase`, its defaults) because the input pipeline checks
sources too and the data layer does not import training code; it is re-exported here beside `Task`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxemo.data.datasource import DataSource, SourceBase, as_data_source  # noqa: F401  (re-exported)
from jaxemo.train import metrics as metrics_lib
from jaxemo.train import optim


@runtime_checkable
class Task(Protocol):
    """What the trainer calls, directly:

    model                                           the Flax module
    pad_spec                                        {field: length} padded by the input pipeline, or None
    init(rng, batch) -> variables                   boxed params (logical axis names) for sharded creation
    loss(params, batch, rng, train) -> (loss, metrics)
    eval_stats(params, batch) -> {name: array}      statistics summed over batches (padded rows masked out)
    summarize(stats) -> {name: float}               final metrics from the summed statistics
    is_trainable(path) -> bool                      which parameters train; the rest are frozen
    host_transform(train) -> (example, rng) -> example
        the per-example work the grain pipeline does on the host (e.g. TSN frame sampling), ending with only
        the fields the model reads: datasets carry more (ids as bytes, text attributes, ragged boxes) than a
        batch can hold.
    """

    model: nn.Module
    pad_spec: Optional[Mapping[str, int]]
    flops_per_example: Optional[int]  # analytic FLOPs of one training example (the trainer's MFU), or None

    def init(self, rng, batch) -> Any: ...

    def loss(self, params, batch, rng, train: bool = True) -> tuple[jax.Array, dict]: ...

    def eval_stats(self, params, batch) -> dict: ...

    def summarize(self, stats) -> dict: ...

    def is_trainable(self, path) -> bool: ...

    def host_transform(self, train: bool) -> Callable: ...


@dataclasses.dataclass(frozen=True)
class HostTransform:
    """Runs an optional per-example transform, then keeps `keys` and the padding `mask` if the example has one
    (picklable for grain's worker processes)."""

    transform: Optional[Callable]
    keys: tuple

    def __call__(self, example: dict, rng) -> dict:
        # the eval pipeline's marker of padding rows (`pipeline.eval_dataset`), read before the transform, which
        # need not pass it on (MMA-DFER's clip transform returns only the model's inputs and the label)
        mask = example.get("mask")
        if self.transform is not None:
            example = self.transform(example, rng)
        missing = [k for k in self.keys if k not in example]
        if missing:
            raise KeyError(f"examples lack the fields {missing} the task reads (they have {sorted(example)})")
        kept = {k: example[k] for k in self.keys}
        if mask is not None:
            kept["mask"] = mask
        return kept


class SupervisedTask:
    """The shared half of a `Task` whose model reads `batch[k] for k in input_keys` and whose label is
    `batch[label_key]`. Subclasses are frozen dataclasses with the fields `model`, `input_keys`, `label_key`,
    `trainable_patterns`, `train_transform` and `eval_transform`, and write `loss`, `eval_stats` and
    `summarize`."""

    pad_spec: Optional[Mapping[str, int]] = None
    flops_per_example: Optional[int] = None

    def is_trainable(self, path) -> bool:
        return optim.path_matcher(self.trainable_patterns)(path)

    def host_transform(self, train: bool) -> HostTransform:
        transform = self.train_transform if train else self.eval_transform
        return HostTransform(transform, (*self.input_keys, self.label_key))

    def inputs(self, batch, rng=None, train: bool = False) -> list:
        return [batch[k] for k in self.input_keys]

    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, *self.inputs(batch))


@dataclasses.dataclass(frozen=True)
class ClassificationTask(SupervisedTask):
    """Softmax cross-entropy classification of `model(*batch[k] for k in input_keys)` into `num_classes`.

    By default uint8 inputs become floats in [0, 1] on the device. `preprocess(rng, inputs, train) -> inputs`,
    if given, replaces that: it gets the stored arrays (a dict keyed like `input_keys`) and does the
    conversion and, when `train`, the on-device augmentation (`rng` is None in evaluation).

    `mixing(rng, inputs, labels) -> (inputs, soft targets [B, num_classes])`, if given, mixes the
    preprocessed training batch (e.g. `augment.mixup_cutmix`, which also smooths the labels; then
    `label_smoothing` is not applied again). `top_k` adds `top<k>_accuracy` to the evaluation metrics.
    """

    model: nn.Module
    num_classes: int
    input_keys: Sequence[str] = ("image",)
    label_key: str = "label"
    label_smoothing: float = 0.0
    trainable_patterns: Optional[Sequence[str]] = None
    preprocess: Optional[Callable] = None
    train_transform: Optional[Callable] = None
    eval_transform: Optional[Callable] = None
    flops_per_example: Optional[int] = None
    mixing: Optional[Callable] = None
    top_k: Sequence[int] = ()

    def inputs(self, batch, rng=None, train: bool = False) -> list:
        inputs = {k: batch[k] for k in self.input_keys}
        if self.preprocess is not None:
            inputs = self.preprocess(rng, inputs, train)
        else:
            inputs = {k: _to_float(v) for k, v in inputs.items()}
        return [inputs[k] for k in self.input_keys]

    def _apply(self, params, inputs, dropout_rng=None):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        logits, _ = self.model.apply({"params": params}, *inputs, deterministic=dropout_rng is None, rngs=rngs)
        return logits.astype(jnp.float32)

    def logits(self, params, batch, rng=None, train=False):
        if not train:
            return self._apply(params, self.inputs(batch))
        preprocess_rng, dropout_rng = jax.random.split(rng)
        return self._apply(params, self.inputs(batch, preprocess_rng, train=True), dropout_rng)

    def loss(self, params, batch, rng, train=True):
        labels = batch[self.label_key]
        if train and self.mixing is not None:
            preprocess_rng, mixing_rng, dropout_rng = jax.random.split(rng, 3)
            inputs = self.inputs(batch, preprocess_rng, train=True)
            inputs, targets = self.mixing(mixing_rng, inputs, labels)
            logits = self._apply(params, inputs, dropout_rng)
        else:
            logits = self.logits(params, batch, rng, train)
            targets = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes), self.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = (logits.argmax(-1) == labels).mean()
        return loss, {"accuracy": accuracy}

    def eval_stats(self, params, batch):
        logits = self.logits(params, batch)
        labels = batch[self.label_key]
        mask = batch.get("mask", jnp.ones(labels.shape, bool)).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        confusion = metrics_lib.confusion_matrix(labels, logits.argmax(-1), self.num_classes, mask)
        stats = {"loss_sum": (nll * mask).sum(), "confusion": confusion}
        if self.top_k:
            # rank of the true class: how many classes score strictly higher
            rank = (logits > jnp.take_along_axis(logits, labels[:, None], axis=-1)).sum(-1)
            for k in self.top_k:
                stats[f"top{k}_correct"] = ((rank < k) * mask).sum()
        return stats

    def summarize(self, stats) -> dict:
        """Scalar metrics; the summed statistics themselves (e.g. `confusion`) stay in `stats`."""
        confusion = np.asarray(stats["confusion"])
        count = max(float(confusion.sum()), 1.0)
        metrics = {"loss": float(stats["loss_sum"]) / count, **metrics_lib.classification_metrics(confusion)}
        for k in self.top_k:
            metrics[f"top{k}_accuracy"] = float(stats[f"top{k}_correct"]) / count
        return metrics


def _to_float(x):
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x


@dataclasses.dataclass(frozen=True)
class SentimentRegressionTask(SupervisedTask):
    """L1 regression of a sentiment score, `model(*batch[k] for k in input_keys) -> (score, representation)`.

    Evaluation sums `metrics.sentiment_stats` over batches; `summarize` gives MAE, correlation, Acc-7/5 and
    Acc-2 / F1 in the has-0, non-0 and CASP-reference variants (`best.metric` can name any).
    """

    model: nn.Module
    input_keys: Sequence[str] = ("text", "audio", "vision", "audio_length", "vision_length")
    label_key: str = "label"
    trainable_patterns: Optional[Sequence[str]] = None
    train_transform: Optional[Callable] = None
    eval_transform: Optional[Callable] = None
    flops_per_example: Optional[int] = None

    def predict(self, params, batch, rng=None, train: bool = False):
        rngs = {"dropout": rng} if train else None
        score, _ = self.model.apply({"params": params}, *self.inputs(batch), deterministic=not train, rngs=rngs)
        return score

    def loss(self, params, batch, rng, train=True):
        error = jnp.abs(self.predict(params, batch, rng, train) - batch[self.label_key])
        return error.mean(), {"mae": error.mean()}

    def eval_stats(self, params, batch):
        labels = batch[self.label_key]
        mask = batch.get("mask", jnp.ones(labels.shape, bool))
        return metrics_lib.sentiment_stats(self.predict(params, batch), labels, mask)

    def summarize(self, stats) -> dict:
        metrics = metrics_lib.sentiment_metrics_from_stats(stats)
        return {"loss": metrics["mae"], **metrics}
