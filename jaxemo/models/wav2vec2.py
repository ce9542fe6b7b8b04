"""wav2vec 2.0 (Baevski et al., NeurIPS 2020) and HuBERT (Hsu et al., 2021): the pre-finetuning SER backbone
and AGT's audio encoder.

    model = wav2vec2.create("base", num_labels=7)           # Wav2Vec2ForSequenceClassification
    logits, aux = model.apply({"params": params}, waveform, sample_mask)       # waveform [B, T] float
    hidden, aux = wav2vec2.create("hubert-base").apply({"params": p}, waveform)  # the backbone alone
    config, params = jaxemo.convert.wav2vec2.load("runs/w2v2_base")             # a converted checkpoint
    model = wav2vec2.create(config=config, num_labels=7)

The layout follows transformers' `Wav2Vec2Model` / `HubertModel` one to one, so that converted checkpoints
(`jaxemo.convert.wav2vec2`) reproduce it to float32 precision:

    feature_extractor/conv_{i}/{kernel [k, C_in, C_out], bias?}   7 strided Conv1d + GELU
                      norm_0 (GroupNorm, one group per channel: feat_extract_norm="group") or
                      norm_{i} (LayerNorm over channels after every conv: "layer")
    feature_projection/{layer_norm, projection}    LayerNorm (always for wav2vec2; HuBERT's feat_proj_layer_norm)
    masked_spec_embed [D]                          only when mask_time_prob or mask_feature_prob > 0 (as HF)
    encoder/pos_conv_embed/{weight_g [K], weight_v [K, D/G, D], bias}   weight-normed grouped Conv1d (dim=2)
            layer_norm                             before the layers (post-LN "base") or after them (stable LN)
            blocks/layers/block/{attention/{query,key,value,out}, layer_norm, feed_forward/{intermediate_dense,
                                 output_dense}, final_layer_norm}       (`layers.BlockStack`; layers_{i} unscanned)

`Wav2Vec2ForSequenceClassification` adds `backbone/` (the model above), `projector`, `classifier` and, with
`use_weighted_layer_sum`, `layer_weights`. Randomness (training only, `deterministic=False`): dropout where
transformers puts it, SpecAugment time / feature masking and LayerDrop, all drawn from the "dropout" rng stream
(the masks from a "mask" stream when one is given); a probability of 0 turns each off.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxemo import layers

MODEL_TYPES = ("wav2vec2", "hubert")
CONV_IMPLS = ("xla", "matmul")
ACTIVATIONS = {"gelu": functools.partial(nn.gelu, approximate=False), "gelu_new": nn.gelu, "relu": nn.relu,
               "swish": nn.silu, "silu": nn.silu}


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """transformers' `Wav2Vec2Config` / `HubertConfig` fields (defaults: facebook/wav2vec2-base) + jaxemo's."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    conv_dim: tuple = (512,) * 7
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.1
    layerdrop: float = 0.1
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    classifier_proj_size: int = 256
    use_weighted_layer_sum: bool = False
    feat_proj_layer_norm: bool = True  # HuBERT's option; wav2vec2 always normalises the features
    model_type: str = "wav2vec2"
    # jaxemo only
    dtype: str = "float32"  # compute dtype; "bfloat16" on accelerators (params stay float32)
    scan_layers: bool = True
    # "xla": lax.conv for the feature encoder and the position conv; "matmul": the same convolutions as
    # strided slices and one einsum (im2col). Both are exact; "matmul" is the fast one when the weights carry a
    # vmapped axis (population training: XLA turns a vmapped conv into a grouped conv, slow on the CPU), at the
    # cost of the position conv's patches (num_conv_pos_embeddings x the hidden states) in memory.
    conv_impl: str = "xla"
    # The first conv layer's group norm ("group" layout) takes its statistics over the real samples' frames
    # only, so a zero-padded clip gives the same features as the clip alone. transformers normalises over the
    # padding too (False: its behaviour, for parity).
    feature_norm_mask: bool = False
    remat: Any = False  # False / True (= "full") or a `layers.REMAT_POLICIES` name

    def __post_init__(self):
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError(f"conv_dim, conv_kernel and conv_stride must have one entry per conv layer, got "
                             f"{self.conv_dim}, {self.conv_kernel}, {self.conv_stride}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={self.model_type!r}: expected one of {MODEL_TYPES}")
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl={self.conv_impl!r}: expected one of {CONV_IMPLS}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm={self.feat_extract_norm!r}: expected 'group' or 'layer'")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads or self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_attention_heads "
                             f"{self.num_attention_heads} and num_conv_pos_embedding_groups "
                             f"{self.num_conv_pos_embedding_groups}")

    @property
    def has_masked_spec_embed(self) -> bool:
        return self.mask_time_prob > 0 or self.mask_feature_prob > 0

    @property
    def has_feat_proj_layer_norm(self) -> bool:
        return self.model_type == "wav2vec2" or self.feat_proj_layer_norm

    @property
    def remat_policy(self) -> str:
        return {False: "none", True: "full"}.get(self.remat, self.remat)

    def replace(self, **changes) -> "Wav2Vec2Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "Wav2Vec2Config":
        if name not in PRESETS:
            raise ValueError(f"unknown wav2vec2 preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
              feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True)
PRESETS = {
    "base": {},
    "large": _LARGE,  # wav2vec2-large-lv60 / xlsr layout
    "hubert-base": dict(model_type="hubert"),
    "hubert-large": dict(_LARGE, model_type="hubert"),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                 classifier_proj_size=16),
}


# ------------------------------------------------------------------------------------------ helpers


def _dtype(config: Wav2Vec2Config):
    return jnp.dtype(config.dtype)


def conv_output_length(config: Wav2Vec2Config, length):
    """Frames the feature encoder makes of `length` samples (an int or an integer array), as transformers'
    `_get_feat_extract_output_lengths`."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        length = (length - kernel) // stride + 1
    return length


def frame_mask(config: Wav2Vec2Config, sample_mask: jax.Array) -> jax.Array:
    """Sample-level padding mask `[B, T]` -> frame mask `[B, F]` (transformers'
    `_get_feature_vector_attention_mask`: the first `conv_output_length(mask.sum())` frames are valid)."""
    frames = conv_output_length(config, sample_mask.shape[-1])
    lengths = conv_output_length(config, jnp.sum(sample_mask.astype(jnp.int32), axis=-1))
    return jnp.arange(frames) < lengths[..., None]


def masked_mean(hidden: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean over frames `[B, F, D] -> [B, D]`, over the valid frames of `mask` `[B, F]` when given (an example
    without any, e.g. batch padding, pools to 0 rather than NaN)."""
    if mask is None:
        return hidden.mean(axis=1)
    total = jnp.sum(jnp.where(mask[..., None], hidden, 0), axis=1, dtype=jnp.float32)
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
    return (total / count).astype(hidden.dtype)


def max_spans(length: int, prob: float, span: int, min_masks: int) -> int:
    """The most spans `compute_span_mask` can draw on an axis of `length` (its static size)."""
    most = min(max(int(prob * length / span + 1), min_masks), length // span)
    return max(min(most, length - span + 1), 0)


def compute_span_mask(rng, shape: Sequence[int], prob: float, span: int, min_masks: int = 0,
                      lengths: Optional[jax.Array] = None) -> jax.Array:
    """SpecAugment spans `[B, T]` (True = masked), distributed as transformers' `_compute_mask_indices`.

    With one uniform `eps` per batch, example b gets n = max(min_masks, int(prob * len_b / span + eps)) spans
    (at most T // span and len_b - span + 1) whose starts are distinct and uniform over [0, len_b - span], so
    that every span lies within the valid (unpadded) `lengths` (default T). Spans may overlap.
    """
    batch, total = shape
    if span < 1 or span > total:
        raise ValueError(f"mask span length {span} must be in [1, {total}] (the masked axis' length)")
    most = max_spans(total, prob, span, min_masks)
    if most == 0:
        return jnp.zeros(shape, bool)
    lengths = jnp.full((batch,), total) if lengths is None else lengths.astype(jnp.int32)
    eps_key, order_key = jax.random.split(rng)
    eps = jax.random.uniform(eps_key, ())
    count = jnp.maximum(jnp.floor(prob * lengths / span + eps).astype(jnp.int32), min_masks)
    count = jnp.where(count * span > total, total // span, count)
    count = jnp.where(lengths - (span - 1) < count, jnp.maximum(lengths - (span - 1), 0), count)
    positions = jnp.arange(total)
    scores = jnp.where(positions <= (lengths - span)[:, None], jax.random.uniform(order_key, shape), -1.0)
    _, starts = jax.lax.top_k(scores, most)  # distinct, uniformly ordered among the valid starts
    chosen = jnp.arange(most) < count[:, None]
    start_mask = jnp.any((starts[..., None] == positions) & chosen[..., None], axis=1)
    covered = jnp.cumsum(start_mask.astype(jnp.int32), axis=1)
    before = jnp.pad(covered, ((0, 0), (span, 0)))[:, :total]
    return covered - before > 0


_hf_linear = functools.partial(layers.dense, kernel_init=nn.initializers.normal(0.02))  # as transformers inits


# ------------------------------------------------------------------------------------------ modules


def conv1d_taps(x: jax.Array, kernel: jax.Array, stride: int = 1, groups: int = 1) -> jax.Array:
    """VALID 1-D convolution `[B, L, Cin] * [K, Cin / groups, Cout] -> [B, L_out, Cout]` as K strided slices
    and one einsum: under `vmap` over the weights it is a batched matmul, not a grouped convolution."""
    k, cin_per_group, cout = kernel.shape
    out = (x.shape[1] - k) // stride + 1
    patches = jnp.stack([jax.lax.slice_in_dim(x, i, i + stride * (out - 1) + 1, stride, axis=1) for i in range(k)],
                        axis=2)  # [B, L_out, K, Cin]
    patches = patches.reshape(*patches.shape[:3], groups, cin_per_group)
    weights = kernel.reshape(k, cin_per_group, groups, cout // groups)
    return jnp.einsum("blkgc,kcgo->blgo", patches, weights).reshape(*patches.shape[:2], cout)


class Conv1d(nn.Module):
    """`nn.Conv` (VALID, one spatial axis; the same `kernel` [K, Cin, Cout] and `bias` params) computed by
    `lax.conv` or, with impl="matmul", by `conv1d_taps`."""

    features: int
    kernel_size: int
    stride: int
    use_bias: bool
    dtype: Any
    impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", layers.with_axes(nn.initializers.he_normal(), None, None, "embed"),
                            (self.kernel_size, x.shape[-1], self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.impl == "matmul":
            y = conv1d_taps(x, kernel, self.stride)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (self.stride,), "VALID",
                                             dimension_numbers=("NWC", "WIO", "NWC"))
        if self.use_bias:
            y = y + self.param("bias", layers.with_axes(nn.initializers.zeros, "embed"),
                               (self.features,)).astype(self.dtype)
        return y


class FeatureEncoder(nn.Module):
    """Waveform `[B, T]` -> conv features `[B, F, conv_dim[-1]]`."""

    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, waveform: jax.Array, sample_mask: Optional[jax.Array] = None) -> jax.Array:
        c, dtype = self.config, _dtype(self.config)
        activation = ACTIVATIONS[c.feat_extract_activation]
        x = waveform.astype(dtype)[..., None]
        for i, (dim, kernel, stride) in enumerate(zip(c.conv_dim, c.conv_kernel, c.conv_stride)):
            x = Conv1d(dim, kernel, stride, c.conv_bias, dtype, c.conv_impl, name=f"conv_{i}")(x)
            if c.feat_extract_norm == "layer":
                x = layers.layer_norm(1e-5, dtype, f"norm_{i}")(x)  # torch's default eps, not layer_norm_eps
            elif i == 0:
                valid = None
                if c.feature_norm_mask and sample_mask is not None:
                    lengths = (jnp.sum(sample_mask.astype(jnp.int32), axis=-1) - kernel) // stride + 1
                    valid = (jnp.arange(x.shape[1]) < lengths[:, None])[..., None]
                x = nn.GroupNorm(num_groups=dim, epsilon=1e-5, dtype=dtype, use_fast_variance=False,
                                 scale_init=layers.with_axes(nn.initializers.ones, "embed"),
                                 bias_init=layers.with_axes(nn.initializers.zeros, "embed"), name="norm_0")(
                    x, mask=None if valid is None else jnp.broadcast_to(valid, x.shape))
            x = activation(x)
        return x


class FeatureProjection(nn.Module):
    """Conv features -> (hidden `[B, F, D]`, the normalised features (transformers' `extract_features`))."""

    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, features, deterministic: bool = True):
        c, dtype = self.config, _dtype(self.config)
        if c.has_feat_proj_layer_norm:
            features = layers.layer_norm(c.layer_norm_eps, dtype, "layer_norm")(features)
        x = _hf_linear(c.hidden_size, "projection", (None, "embed"), dtype)(features)
        return nn.Dropout(c.feat_proj_dropout)(x, deterministic=deterministic), features


class PositionalConvEmbedding(nn.Module):
    """Grouped Conv1d (kernel K, padding K // 2, the last frame dropped when K is even) + GELU, its weight
    normalised over dim 2 as `torch.nn.utils.weight_norm(conv, dim=2)`: w[k] = g[k] * v[k] / ||v[k]||."""

    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dtype = self.config, _dtype(self.config)
        k, d, groups = c.num_conv_pos_embeddings, c.hidden_size, c.num_conv_pos_embedding_groups
        std = 2 * math.sqrt(1 / (k * d))
        v = self.param("weight_v", layers.with_axes(nn.initializers.normal(std), None, None, "embed"),
                       (k, d // groups, d))
        norm_of_v = lambda: jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=(1, 2)))
        g = self.param("weight_g", layers.with_axes(lambda *_: norm_of_v(), None), (k,))
        bias = self.param("bias", layers.with_axes(nn.initializers.zeros, "embed"), (d,))
        kernel = v * (g / norm_of_v())[:, None, None]
        if c.conv_impl == "matmul":
            padded = jnp.pad(x.astype(dtype), ((0, 0), (k // 2, k // 2), (0, 0)))
            out = conv1d_taps(padded, kernel.astype(dtype), 1, groups)
        else:
            out = jax.lax.conv_general_dilated(
                x.astype(dtype), kernel.astype(dtype), window_strides=(1,), padding=[(k // 2, k // 2)],
                dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups)
        out = out + bias.astype(dtype)
        if k % 2 == 0:
            out = out[:, :-1]
        return ACTIVATIONS[c.feat_extract_activation](out)


class EncoderLayer(nn.Module):
    """One transformer layer, post-LN (base) or pre-LN (`do_stable_layer_norm`), with LayerDrop.

    Called by `layers.BlockStack` as `(x, drop_path_rate, mask, deterministic)`; the rate is unused (wav2vec2
    drops whole layers instead: with probability `layerdrop` per layer and batch, the layer is the identity).
    """

    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x, _rate=None, mask=None, deterministic: bool = True):
        c, dtype = self.config, _dtype(self.config)
        norm = functools.partial(layers.layer_norm, c.layer_norm_eps, dtype)
        attention = layers.MultiHeadAttention(c.num_attention_heads, dropout_rate=c.attention_dropout, dtype=dtype,
                                              kernel_init=nn.initializers.normal(0.02), name="attention")
        dropout = functools.partial(nn.Dropout(c.hidden_dropout), deterministic=deterministic)
        feed_forward = FeedForward(c, name="feed_forward")
        attn_norm, ffn_norm = norm("layer_norm"), norm("final_layer_norm")
        if c.do_stable_layer_norm:
            y = x + dropout(attention(attn_norm(x), mask, deterministic))
            y = y + feed_forward(ffn_norm(y), deterministic)
        else:
            y = attn_norm(x + dropout(attention(x, mask, deterministic)))
            y = ffn_norm(y + feed_forward(y, deterministic))
        if deterministic or c.layerdrop <= 0:
            return y
        skip = jax.random.uniform(self.make_rng("dropout"), ()) < c.layerdrop
        return jnp.where(skip, x, y)


class FeedForward(nn.Module):
    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        c, dtype = self.config, _dtype(self.config)
        x = _hf_linear(c.intermediate_size, "intermediate_dense", ("embed", "mlp"), dtype)(x)
        x = nn.Dropout(c.activation_dropout)(ACTIVATIONS[c.hidden_act](x), deterministic=deterministic)
        x = _hf_linear(c.hidden_size, "output_dense", ("mlp", "embed"), dtype)(x)
        return nn.Dropout(c.hidden_dropout)(x, deterministic=deterministic)


class Encoder(nn.Module):
    """Position conv + the layers. Returns (last hidden state, hidden states as transformers lists them:
    the first layer's input, then every layer's output (for stable LN: before the final LayerNorm))."""

    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, output_hidden_states: bool = True):
        c, dtype = self.config, _dtype(self.config)
        x = x + PositionalConvEmbedding(c, name="pos_conv_embed")(x)
        layer_norm = layers.layer_norm(c.layer_norm_eps, dtype, "layer_norm")
        if not c.do_stable_layer_norm:
            x = layer_norm(x)
        x = nn.Dropout(c.hidden_dropout)(x, deterministic=deterministic)
        attention_mask = None if mask is None else mask[:, None, None, :]
        stack = layers.BlockStack(c.num_hidden_layers, functools.partial(EncoderLayer, c), scan=c.scan_layers,
                                  remat_policy=c.remat_policy, name="blocks")
        out, stacked = stack(x, attention_mask, deterministic, return_hidden_states=output_hidden_states)
        hidden = (x, *stacked) if output_hidden_states else ()  # iterating splits the [layers, ...] stack
        return (layer_norm(out) if c.do_stable_layer_norm else out), hidden


def _check_inputs(config: Wav2Vec2Config, waveform, sample_mask, mask_time) -> int:
    if waveform.ndim != 2:
        raise ValueError(f"waveform must be [batch, samples], got shape {tuple(waveform.shape)}")
    frames = conv_output_length(config, waveform.shape[1])
    if frames < 1:
        raise ValueError(f"waveform of {waveform.shape[1]} samples is too short for the feature encoder "
                         f"(kernels {config.conv_kernel}, strides {config.conv_stride})")
    if sample_mask is not None and tuple(sample_mask.shape) != tuple(waveform.shape):
        raise ValueError(f"sample_mask must have the waveform's shape {tuple(waveform.shape)}, got shape "
                         f"{tuple(sample_mask.shape)}")
    if mask_time is not None and tuple(mask_time.shape) != (waveform.shape[0], frames):
        raise ValueError(f"mask_time must be [batch, frames] = {(waveform.shape[0], frames)}, got shape "
                         f"{tuple(mask_time.shape)}")
    return frames


class Wav2Vec2Model(nn.Module):
    """`Wav2Vec2Model` / `HubertModel`: `(waveform [B, T], sample_mask [B, T] bool | None)` ->
    `(last_hidden_state [B, F, D], aux)`.

    aux: "hidden_states" (tuple of `num_hidden_layers + 1` `[B, F, D]`, as transformers'
    `output_hidden_states=True`; empty when `output_hidden_states=False`), "extract_features" (wav2vec2: the
    normalised conv features, as transformers; HuBERT: the raw conv features), "frame_mask" (`[B, F]`; all
    True without `sample_mask`) and "mask_time" (the SpecAugment time mask applied, or None).

    As transformers, without `sample_mask` nothing is masked (base checkpoints expect zero-padded audio and
    no mask); with it, padded frames are zeroed before the encoder and hidden from attention. `mask_time`
    `[B, F]` replaces those frames by `masked_spec_embed` (also when deterministic); otherwise, in training,
    time masks are drawn with `mask_time_prob`.
    """

    config: Wav2Vec2Config

    @nn.compact
    def __call__(self, waveform, sample_mask=None, deterministic: bool = True, mask_time=None,
                 output_hidden_states: bool = True):
        c = self.config
        frames = _check_inputs(c, waveform, sample_mask, mask_time)
        features = FeatureEncoder(c, name="feature_extractor")(waveform, sample_mask)
        frames_valid = None if sample_mask is None else frame_mask(c, sample_mask)
        hidden, normed = FeatureProjection(c, name="feature_projection")(features, deterministic)
        hidden, mask_time = self.spec_augment(hidden, frames_valid, deterministic, mask_time)
        if frames_valid is not None:
            hidden = jnp.where(frames_valid[..., None], hidden, 0)
        last, hidden_states = Encoder(c, name="encoder")(hidden, frames_valid, deterministic, output_hidden_states)
        aux = {
            "hidden_states": hidden_states,
            "extract_features": normed if c.model_type == "wav2vec2" else features,
            "frame_mask": jnp.ones((waveform.shape[0], frames), bool) if frames_valid is None else frames_valid,
            "mask_time": mask_time,
        }
        return last, aux

    def spec_augment(self, hidden, frames_valid, deterministic, mask_time):
        c = self.config
        embed = None
        if c.has_masked_spec_embed:
            embed = self.param("masked_spec_embed", layers.with_axes(nn.initializers.uniform(1.0), "embed"),
                               (c.hidden_size,))
        if not c.apply_spec_augment:
            return hidden, None
        train = not deterministic
        if mask_time is None and train and c.mask_time_prob > 0:
            lengths = None if frames_valid is None else frames_valid.sum(-1)
            mask_time = compute_span_mask(self._mask_rng(), hidden.shape[:2], c.mask_time_prob, c.mask_time_length,
                                          c.mask_time_min_masks, lengths)
        if mask_time is not None:
            if embed is None:
                raise ValueError("time masking needs masked_spec_embed, which exists only when mask_time_prob > 0 "
                                 "or mask_feature_prob > 0 (as in transformers)")
            hidden = jnp.where(mask_time[..., None], embed.astype(hidden.dtype), hidden)
        if train and c.mask_feature_prob > 0:
            feature_mask = compute_span_mask(self._mask_rng(), (hidden.shape[0], hidden.shape[2]),
                                             c.mask_feature_prob, c.mask_feature_length, c.mask_feature_min_masks)
            hidden = jnp.where(feature_mask[:, None, :], 0, hidden)
        return hidden, mask_time

    def _mask_rng(self):
        return self.make_rng("mask" if self.has_rng("mask") else "dropout")


class Wav2Vec2ForSequenceClassification(nn.Module):
    """transformers' `Wav2Vec2ForSequenceClassification` / `HubertForSequenceClassification`:
    backbone -> (softmax-weighted sum of the hidden states with `use_weighted_layer_sum`) -> per-frame
    `projector` -> mean over the valid frames (`masked_mean`; a plain mean without `sample_mask`) ->
    `classifier`. Returns `(logits [B, num_labels], aux)`: the backbone's aux plus "pooled" and "projected".
    """

    config: Wav2Vec2Config
    num_labels: int = 2

    def setup(self):
        c, dtype = self.config, _dtype(self.config)
        self.backbone = Wav2Vec2Model(c)
        if c.use_weighted_layer_sum:
            depth = c.num_hidden_layers + 1
            self.layer_weights = self.param("layer_weights", layers.with_axes(nn.initializers.constant(1 / depth),
                                                                              None), (depth,))
        self.projector = _hf_linear(c.classifier_proj_size, "projector", ("embed", "mlp"), dtype)
        self.classifier = _hf_linear(self.num_labels, "classifier", ("mlp", "classes"), dtype)

    def __call__(self, waveform, sample_mask=None, deterministic: bool = True, mask_time=None,
                 output_hidden_states: bool = False):
        c = self.config
        hidden, aux = self.backbone(waveform, sample_mask, deterministic, mask_time,
                                    output_hidden_states or c.use_weighted_layer_sum)
        if c.use_weighted_layer_sum:
            weights = jax.nn.softmax(self.layer_weights.astype(jnp.float32))
            hidden = jnp.einsum("l,lbfd->bfd", weights.astype(hidden.dtype), jnp.stack(aux["hidden_states"]))
        projected = self.projector(hidden)
        pooled = masked_mean(projected, None if sample_mask is None else aux["frame_mask"])
        return self.classifier(pooled), {**aux, "pooled": pooled, "projected": projected}


def resolve_config(variant: Optional[str] = None, config: Optional[Wav2Vec2Config] = None,
                   **fields) -> Wav2Vec2Config:
    """The preset `variant` ("base" when None, "large", "hubert-base", "hubert-large", "tiny") or `config`, with
    `fields` (Wav2Vec2Config's) replacing its own."""
    if config is None:
        return Wav2Vec2Config.preset("base" if variant is None else variant, **fields)
    if variant is not None:
        raise ValueError(f"variant={variant!r} and a config are given: pass one of them")
    return config.replace(**fields)


def create(variant: Optional[str] = None, *, config: Optional[Wav2Vec2Config] = None,
           num_labels: Optional[int] = None, **fields) -> nn.Module:
    """A `Wav2Vec2Model` (or, with `num_labels`, a `Wav2Vec2ForSequenceClassification`) of the preset `variant`
    or of `config`, `fields` replacing Wav2Vec2Config fields (`resolve_config`)."""
    config = resolve_config(variant, config, **fields)
    if num_labels is None:
        return Wav2Vec2Model(config)
    return Wav2Vec2ForSequenceClassification(config, num_labels)
