"""The speech emotion classifier (wav2vec 2.0 + one head per corpus) and its task.

`SpeechEmotionClassifier` is transformers' `Wav2Vec2ForSequenceClassification` with several classifiers: the
backbone (`jaxemo.models.wav2vec2`), a `projector` to `classifier_proj_size` (256) applied per frame, masked
mean pooling over the frames, then `heads/<name>`, one linear layer per corpus. Pre-finetuning has one head
per corpus; a few-shot trial has one new 2-class head (`target`). Each example is scored by the head of its
`corpus` (logits of a head with fewer classes than the widest are padded with a large negative number).

The waveform is normalised per utterance over its real samples, as transformers' `Wav2Vec2FeatureExtractor`
does (`do_normalize`), truncated to `max_samples` (5 s at 16 kHz in the paper) and zero-padded, with its mask.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxemo import layers
from jaxemo.models import wav2vec2
from jaxemo.train import metrics as metrics_lib
from jaxemo.train import optim
from jaxemo.train.tasks import HostTransform

NEG = -1e9  # logits of a head's missing classes


def normalize_waveform(waveform: jax.Array, mask: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Zero mean, unit variance over each row's real samples (transformers' `zero_mean_unit_var_norm`); the
    padding stays 0."""
    m = mask.astype(jnp.float32)
    count = jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    mean = (waveform * m).sum(-1, keepdims=True) / count
    var = (jnp.square(waveform - mean) * m).sum(-1, keepdims=True) / count
    return (waveform - mean) / jnp.sqrt(var + eps) * m


class _Heads(nn.Module):
    heads: tuple  # ((name, num_classes), ...)
    dtype: str = "float32"

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        width = max(n for _, n in self.heads)
        out = []
        for name, n in self.heads:
            logits = nn.Dense(n, name=name, kernel_init=layers.with_axes(nn.initializers.normal(0.02), "embed", None),
                              bias_init=layers.with_axes(nn.initializers.zeros, None))(pooled)
            out.append(jnp.pad(logits.astype(jnp.float32), ((0, 0), (0, width - n)), constant_values=NEG))
        return jnp.stack(out, axis=1)  # [B, heads, width]


class SpeechEmotionClassifier(nn.Module):
    """wav2vec 2.0 / HuBERT backbone, per-frame projector, masked mean pooling, one head per corpus."""

    config: wav2vec2.Wav2Vec2Config
    heads: tuple = (("target", 2),)
    normalize: bool = True

    @nn.compact
    def __call__(self, waveform, waveform_mask, corpus=None, deterministic: bool = True):
        waveform = waveform.astype(jnp.float32)
        if self.normalize:
            waveform = normalize_waveform(waveform, waveform_mask)
        hidden, aux = wav2vec2.Wav2Vec2Model(self.config, name="backbone")(
            waveform, waveform_mask, deterministic=deterministic)
        projected = nn.Dense(self.config.classifier_proj_size, name="projector",
                             kernel_init=layers.with_axes(nn.initializers.normal(0.02), "embed", "mlp"),
                             bias_init=layers.with_axes(nn.initializers.zeros, "mlp"))(hidden)
        pooled = wav2vec2.masked_mean(projected, aux["frame_mask"])
        all_logits = _Heads(tuple(self.heads), name="heads")(pooled)
        if corpus is None:
            logits = all_logits[:, 0]
        else:
            logits = jnp.take_along_axis(all_logits, corpus.astype(jnp.int32)[:, None, None], axis=1)[:, 0]
        return logits, {"pooled": pooled, "frame_mask": aux["frame_mask"]}


@dataclasses.dataclass(frozen=True)
class SpeechInput:
    """Host transform: the waveform truncated to `max_samples` and zero-padded, its mask, the label (and the
    corpus when `with_corpus`)."""

    max_samples: int
    with_corpus: bool = False

    def __call__(self, example: dict, rng=None) -> dict:
        waveform = np.asarray(example["waveform"], np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"waveform of shape {waveform.shape}: expected mono samples [num_samples]")
        real = min(waveform.shape[0], self.max_samples)
        out = np.zeros(self.max_samples, np.float32)
        out[:real] = waveform[:real]
        mask = np.zeros(self.max_samples, bool)
        mask[:real] = True
        row = {"waveform": out, "waveform_mask": mask, "label": np.int32(example["label"])}
        if self.with_corpus:
            row["corpus"] = np.int32(example["corpus"])
        if "mask" in example:  # the eval pipeline's padding rows
            row["mask"] = example["mask"]
        return row


@dataclasses.dataclass(frozen=True)
class SpeechEmotionTask:
    """Cross-entropy over the head of each example's corpus, divided by ln(that head's classes) when
    `scale_by_log_classes` (the reference's "scaled" multi-task loss, after MUPPET).

    Evaluation: one confusion matrix per head; `accuracy` pools all heads (the reference's multi-task
    validation accuracy), `<head>/accuracy`, `<head>/uar`, `<head>/macro_f1` per head, and with one head its
    accuracy, UAR, macro- and weighted F1 directly."""

    model: SpeechEmotionClassifier
    max_samples: int
    scale_by_log_classes: bool = False
    trainable_patterns: Optional[Sequence[str]] = None
    flops_per_example: Optional[int] = None
    pad_spec = None
    label_key = "label"

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.model.heads)

    @property
    def multi_head(self) -> bool:
        return len(self.model.heads) > 1

    @property
    def input_keys(self) -> tuple[str, ...]:
        return ("waveform", "waveform_mask") + (("corpus",) if self.multi_head else ())

    def is_trainable(self, path) -> bool:
        return optim.path_matcher(self.trainable_patterns)(path)

    def host_transform(self, train: bool) -> HostTransform:
        return HostTransform(SpeechInput(self.max_samples, self.multi_head), (*self.input_keys, self.label_key))

    def _corpus(self, batch):
        return batch["corpus"] if self.multi_head else None

    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch["waveform"],
                               batch["waveform_mask"], self._corpus(batch))

    def logits(self, params, batch, rng=None, train: bool = False):
        rngs = {"dropout": rng} if train and rng is not None else None
        logits, _ = self.model.apply({"params": params}, batch["waveform"], batch["waveform_mask"],
                                     self._corpus(batch), deterministic=not train, rngs=rngs)
        return logits

    def _log_classes(self, batch):
        classes = jnp.asarray([n for _, n in self.model.heads], jnp.float32)
        corpus = self._corpus(batch)
        per_example = classes[corpus] if corpus is not None else jnp.full(batch["label"].shape, classes[0])
        return jnp.log(jnp.maximum(per_example, 2.0))

    def loss(self, params, batch, rng, train: bool = True):
        logits = self.logits(params, batch, rng, train)
        labels = batch["label"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        if self.scale_by_log_classes:
            nll = nll / self._log_classes(batch)
        return nll.mean(), {"accuracy": (logits.argmax(-1) == labels).mean()}

    def eval_stats(self, params, batch):
        logits = self.logits(params, batch)
        labels = batch["label"]
        mask = batch.get("mask", jnp.ones(labels.shape, bool)).astype(jnp.float32)
        width = logits.shape[-1]
        corpus = self._corpus(batch)
        corpus = jnp.zeros(labels.shape, jnp.int32) if corpus is None else corpus.astype(jnp.int32)
        index = (corpus * width + labels) * width + logits.argmax(-1)
        confusion = jnp.zeros(len(self.model.heads) * width * width, jnp.float32).at[index].add(mask)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {"loss_sum": (nll * mask).sum(),
                "confusion": confusion.reshape(len(self.model.heads), width, width)}

    def summarize(self, stats) -> dict:
        confusion = np.asarray(stats["confusion"], np.float64)
        count = max(float(confusion.sum()), 1.0)
        metrics = {"loss": float(stats["loss_sum"]) / count,
                   "accuracy": float(sum(np.trace(c) for c in confusion)) / count}
        if not self.multi_head:
            n = self.model.heads[0][1]
            swapped = metrics_lib.classification_metrics(confusion[0, :n, :n].T)["weighted_f1"]
            return {**metrics, **metrics_lib.classification_metrics(confusion[0, :n, :n]),
                    "reference_weighted_f1": swapped}  # sklearn's arguments swapped, as the reference calls it
        for (name, n), c in zip(self.model.heads, confusion):
            if c.sum() > 0:
                per_head = metrics_lib.classification_metrics(c[:n, :n])
                metrics.update({f"{name}/{k}": per_head[k] for k in ("accuracy", "uar", "macro_f1")})
        return metrics
