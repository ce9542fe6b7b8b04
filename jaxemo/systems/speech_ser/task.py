"""The speech emotion task: the classifier (`jaxemo.models.speech_classifier`) on waveforms truncated to
`max_samples` (5 s at 16 kHz in the paper) and zero-padded, with their mask; one confusion matrix per head.

Padding (`config.model.padding`). "clip" (the default): a clip's mask covers its own samples, so the
normalisation, the feature encoder's group norm (`feature_norm_mask`), attention and pooling see only them and
a clip computes what it computes alone. "reference": the released scripts' preprocessing, in which
`datasets.map(batched=True)` hands the feature extractor 1,000 clips at a time, pads them to the longest
(truncated to `max_samples`), normalises each over its padded length (zeros included) and returns no attention
mask (wav2vec2-base's extractor has `return_attention_mask=False`), so the model attends over and pools the
padding. Here the source marks each example's `padded_length` (`corpora.PaddedToLongest`) and the mask covers
that many samples: within them the zeros are data, exactly as in the reference's padded array.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxemo.models.speech_classifier import SpeechEmotionClassifier
from jaxemo.train import metrics as metrics_lib
from jaxemo.train import optim
from jaxemo.train.tasks import HostTransform

PADDINGS = ("clip", "reference")


@dataclasses.dataclass(frozen=True)
class SpeechInput:
    """Host transform: the waveform truncated to `max_samples` and zero-padded, its mask, the label (and the
    corpus when `with_corpus`)."""

    max_samples: int
    with_corpus: bool = False
    padding: str = "clip"  # "clip" | "reference" (the module docstring)

    def __post_init__(self):
        if self.padding not in PADDINGS:
            raise ValueError(f"model.padding={self.padding!r}: expected one of {PADDINGS}")

    def __call__(self, example: dict, rng=None) -> dict:
        waveform = np.asarray(example["waveform"], np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"waveform of shape {waveform.shape}: expected mono samples [num_samples]")
        real = min(waveform.shape[0], self.max_samples)
        out = np.zeros(self.max_samples, np.float32)
        out[:real] = waveform[:real]
        mask = np.zeros(self.max_samples, bool)
        if self.padding == "reference":
            if "padded_length" not in example:
                raise ValueError("model.padding='reference' needs each example's padded_length (the longest clip "
                                 "of its split's chunk): wrap the split in corpora.PaddedToLongest")
            padded = int(example["padded_length"])
            if not real <= padded <= self.max_samples:
                raise ValueError(f"padded_length={padded} must lie in [{real} (this clip), {self.max_samples}]")
            real = padded
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
    accuracy, UAR, macro- and weighted F1 directly.

    `eval_model`, when given, is the same classifier (the same params) computed another way for evaluation
    (`model.eval_conv_impl`: e.g. XLA's convolutions to evaluate a population's vmapped trials, im2col to train
    them, where each is the faster on a CPU)."""

    model: SpeechEmotionClassifier
    max_samples: int
    scale_by_log_classes: bool = False
    trainable_patterns: Optional[Sequence[str]] = None
    flops_per_example: Optional[int] = None
    eval_model: Optional[SpeechEmotionClassifier] = None
    padding: str = "clip"  # "clip" | "reference" (the module docstring)
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
        return HostTransform(SpeechInput(self.max_samples, self.multi_head, self.padding),
                             (*self.input_keys, self.label_key))

    def _corpus(self, batch):
        return batch["corpus"] if self.multi_head else None

    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch["waveform"],
                               batch["waveform_mask"], self._corpus(batch))

    def logits(self, params, batch, rng=None, train: bool = False):
        rngs = {"dropout": rng} if train and rng is not None else None
        model = self.model if train or self.eval_model is None else self.eval_model
        logits, _ = model.apply({"params": params}, batch["waveform"], batch["waveform_mask"],
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
