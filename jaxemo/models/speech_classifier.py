"""The speech emotion classifier of pre-finetuned few-shot SER (Chen & Yu, Interspeech 2023): wav2vec 2.0 with
one head per corpus.

    model = speech_classifier.create("base", heads=(("iemocap", 4), ("ravdess", 8)))
    logits, aux = model.apply({"params": params}, waveform, waveform_mask, corpus)   # waveform [B, T] float

`SpeechEmotionClassifier` is transformers' `Wav2Vec2ForSequenceClassification` with several classifiers: the
backbone (`jaxemo.models.wav2vec2`), a `projector` to `classifier_proj_size` (256) applied per frame, masked
mean pooling over the frames, then `heads/<name>`, one linear layer per corpus. Pre-finetuning has one head
per corpus; a few-shot trial has one new 2-class head (`target`). Each example is scored by the head of its
`corpus` (logits of a head with fewer classes than the widest are padded with a large negative number).

The waveform is normalised per utterance over its real samples, as transformers' `Wav2Vec2FeatureExtractor`
does (`do_normalize`); truncation and padding are the task's (`jaxemo.systems.speech_ser.task`).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxemo import layers
from jaxemo.models import wav2vec2

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

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        width = max(n for _, n in self.heads)
        out = []
        for name, n in self.heads:
            logits = layers.dense(n, name, ("embed", None), kernel_init=nn.initializers.normal(0.02))(pooled)
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
        projected = layers.dense(self.config.classifier_proj_size, "projector", ("embed", "mlp"),
                                 kernel_init=nn.initializers.normal(0.02))(hidden)
        pooled = wav2vec2.masked_mean(projected, aux["frame_mask"])
        all_logits = _Heads(tuple(self.heads), name="heads")(pooled)
        if corpus is None:
            logits = all_logits[:, 0]
        else:
            logits = jnp.take_along_axis(all_logits, corpus.astype(jnp.int32)[:, None, None], axis=1)[:, 0]
        return logits, {"pooled": pooled, "frame_mask": aux["frame_mask"]}


def create(variant: Optional[str] = None, *, config: Optional[wav2vec2.Wav2Vec2Config] = None,
           heads: tuple = (("target", 2),), normalize: bool = True, **fields) -> SpeechEmotionClassifier:
    """The classifier with `heads` on the backbone of the wav2vec2 preset `variant` (or of `config`), `fields`
    replacing Wav2Vec2Config fields (`wav2vec2.resolve_config`)."""
    return SpeechEmotionClassifier(wav2vec2.resolve_config(variant, config, **fields), tuple(heads), normalize)
