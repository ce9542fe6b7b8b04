"""The two multimodal sentiment regressors of CASP (zrguo/CASP `models/model.py`): late and early fusion.

Both start with a per-modality 1x1 projection (the reference's `Conv1d(D_m, 40, kernel_size=1)`, with
bias) of the text, audio and vision sequences, run MulT/fairseq-style transformer encoders over them and
read out the *first* token:

    late fusion    each modality: project -> own 5-layer encoder -> token 0;  concat (3 x 40 = 120: the
                   representation CASP's contrastive stage compares) -> ReLU(Linear 120 -> 40) -> head
    early fusion   project all -> concatenate along time (text, audio, vision) -> one shared encoder ->
                   token 0 (40: the representation) -> head
    head           h + Linear(Dropout(ReLU(Linear(h)))) -> Linear -> one score

Encoder (`modules/transformer.py`): x = sqrt(40) x + sinusoidal positions, embedding dropout, 5 pre-LN
layers (8 heads of 5; ReLU FFN of 160; attention, ReLU and residual dropout), a final LayerNorm. Dropout
defaults are the reference's `main.py` ones (attention 0.1, ReLU 0.1, embedding 0.25, residual 0.1,
output 0.0). Parameter names follow the reference where test-time adaptation selects by name: each layer's
two LayerNorms are `layer_norms_0` / `layer_norms_1` (what CASP adapts), the encoder's final one
`layer_norm` (frozen in CASP).

Positions: fairseq's sinusoidal table (sin half then cos half, positions from 1). The reference gives a
zero position vector to every time step whose first *projected* channel is exactly 0: its encoder runs
`make_positions` on `x_in[:, :, 0]`, and `x_in` is the 1x1 projection's output, not the raw features. It is
meant for padding, but a zero-padded step projects to the projection's bias, so it marks padding only where
that bias's channel 0 is exactly 0 (and marks any other step whose projected channel 0 happens to be 0).
`zero_position_quirk=True` reproduces it; by default every step gets its position.
The reference attends over padding; `use_padding_mask=True` masks steps past `audio_length` /
`vision_length` out of the keys instead (text is never padded in MMSA's features).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxemo import layers

Dtype = Any
MODALITIES = ("text", "audio", "vision")
ADAPTED_BY_CASP = (r"layer_norms_\d+",)  # per-layer LayerNorms; the final `layer_norm` stays frozen
VARIANTS = {"late": {"fusion": "late"}, "early": {"fusion": "early"}}  # `create`'s names


def sinusoidal_table(num_positions: int, dim: int) -> np.ndarray:
    """fairseq's `SinusoidalPositionalEmbedding.get_embedding` with row 0 (the padding position) zero."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -step)
    angles = np.arange(num_positions, dtype=np.float32)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2:
        table = np.concatenate([table, np.zeros((num_positions, 1), np.float32)], axis=1)
    table[0] = 0.0
    return table.astype(np.float32)


def positions(x_in: jax.Array, zero_position_quirk: bool) -> jax.Array:
    """[B, T, D] sinusoidal positions 1..T for the encoder's input `x_in` [B, T, D] (the projected sequence);
    with the quirk, position 0 (a zero vector) where the first projected channel x_in[..., 0] == 0."""
    steps = x_in.shape[-2]
    table = jnp.asarray(sinusoidal_table(steps + 1, x_in.shape[-1]))
    ids = jnp.arange(1, steps + 1)
    if zero_position_quirk:
        ids = jnp.where(x_in[..., 0] != 0, ids, 0)
        return table[ids].astype(x_in.dtype)
    return jnp.broadcast_to(table[ids], x_in.shape).astype(x_in.dtype)


class EncoderLayer(nn.Module):
    """One pre-LN layer: x + Drop(MHA(LN0 x)), then x + Drop(FC2(Drop(ReLU(FC1(LN1 x)))))."""

    num_heads: int
    attn_dropout: float
    relu_dropout: float
    res_dropout: float
    dtype: Dtype = jnp.float32
    dropout_impl: str = "threefry"

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        width = x.shape[-1]
        drop = lambda rate: layers.dropout_module(rate, self.dropout_impl)  # noqa: E731
        h = layers.layer_norm(1e-5, self.dtype, "layer_norms_0")(x)
        h = layers.MultiHeadAttention(self.num_heads, dropout_rate=self.attn_dropout, dtype=self.dtype,
                                      dropout_impl=self.dropout_impl, name="self_attn")(h, mask, deterministic)
        x = x + drop(self.res_dropout)(h, deterministic)
        h = layers.layer_norm(1e-5, self.dtype, "layer_norms_1")(x)
        h = nn.relu(layers.dense(4 * width, "fc1", ("embed", "mlp"), self.dtype)(h))
        h = drop(self.relu_dropout)(h, deterministic)
        h = layers.dense(width, "fc2", ("mlp", "embed"), self.dtype)(h)
        return x + drop(self.res_dropout)(h, deterministic)


class TransformerEncoder(nn.Module):
    """MulT's `TransformerEncoder` on `[batch, time, width]`; `key_mask` [batch, time] marks valid steps.

    Every layer's output is sown into the `intermediates` collection (`layer_<i>`), for methods that align
    hidden-feature statistics.
    """

    num_heads: int = 8
    depth: int = 5
    attn_dropout: float = 0.1
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.25
    zero_position_quirk: bool = False
    dtype: Dtype = jnp.float32
    dropout_impl: str = "threefry"

    @nn.compact
    def __call__(self, x_in, key_mask: Optional[jax.Array] = None, deterministic: bool = True):
        x = math.sqrt(x_in.shape[-1]) * x_in + positions(x_in, self.zero_position_quirk)
        x = layers.dropout_module(self.embed_dropout, self.dropout_impl)(x, deterministic)
        mask = None if key_mask is None else key_mask[..., None, None, :]
        for i in range(self.depth):
            x = EncoderLayer(self.num_heads, self.attn_dropout, self.relu_dropout, self.res_dropout,
                             self.dtype, self.dropout_impl, name=f"layers_{i}")(x, mask, deterministic)
            self.sow("intermediates", f"layer_{i}", x)
        return layers.layer_norm(1e-5, self.dtype, "layer_norm")(x)


class ResidualHead(nn.Module):
    """h + proj2(Dropout(ReLU(proj1(h)))) -> one score per sample."""

    out_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    dropout_impl: str = "threefry"

    @nn.compact
    def __call__(self, h, deterministic: bool):
        width = h.shape[-1]
        z = nn.relu(layers.dense(width, "out_layer_proj1", ("embed", "mlp"), self.dtype)(h))
        z = layers.dropout_module(self.out_dropout, self.dropout_impl)(z, deterministic)
        z = layers.dense(width, "out_layer_proj2", ("mlp", "embed"), self.dtype)(z)
        return layers.dense(1, "out_layer", ("embed", None), self.dtype)(h + z)[..., 0]


class SentimentRegressor(nn.Module):
    """CASP's late- or early-fusion backbone. `__call__` returns (score [B], representation [B, R]).

    Inputs: text [B, T_t, D_t], audio [B, T_a, D_a], vision [B, T_v, D_v] (any dims: the projections
    infer them); `audio_length` / `vision_length` [B] are used only with `use_padding_mask`.
    """

    fusion: str = "late"  # "late" or "early"
    proj_dim: int = 40
    num_heads: int = 8
    depth: int = 5
    attn_dropout: float = 0.1
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.25
    out_dropout: float = 0.0
    zero_position_quirk: bool = False
    use_padding_mask: bool = False
    dtype: Dtype = jnp.float32
    # "hash": every dropout's mask from a counter-based hash (`layers.HashDropout`), about 6x cheaper to draw on
    # XLA:CPU than jax.random's threefry bits, where dropout is half of an adaptation step; another mask
    dropout_impl: str = "threefry"

    def setup(self):
        if self.fusion not in ("late", "early"):
            raise ValueError(f"fusion={self.fusion!r}; expected 'late' or 'early'")
        if self.dropout_impl not in layers.DROPOUT_IMPLS:
            raise ValueError(f"dropout_impl={self.dropout_impl!r}; expected one of {layers.DROPOUT_IMPLS}")

    def _encoder(self, name: str) -> TransformerEncoder:
        return TransformerEncoder(self.num_heads, self.depth, self.attn_dropout, self.relu_dropout,
                                  self.res_dropout, self.embed_dropout, self.zero_position_quirk, self.dtype,
                                  self.dropout_impl, name=name)

    def _key_masks(self, sequences, audio_length, vision_length) -> list:
        if not self.use_padding_mask:
            return [None, None, None]
        if audio_length is None or vision_length is None:
            raise ValueError("use_padding_mask=True needs audio_length and vision_length")
        text_mask = jnp.ones(sequences[0].shape[:-1], bool)
        steps = lambda x, n: jnp.arange(x.shape[-2]) < jnp.maximum(n, 1)[..., None]  # keep token 0 attendable
        return [text_mask, steps(sequences[1], audio_length), steps(sequences[2], vision_length)]

    @nn.compact
    def __call__(self, text, audio, vision, audio_length=None, vision_length=None, deterministic: bool = True):
        sequences = [text, audio, vision]
        projected = [layers.dense(self.proj_dim, f"proj_{m}", (None, "embed"), self.dtype)(x.astype(self.dtype))
                     for m, x in zip(MODALITIES, sequences)]
        masks = self._key_masks(sequences, audio_length, vision_length)
        if self.fusion == "late":
            firsts = [self._encoder(f"encoder_{m}")(x, mask, deterministic)[..., 0, :]
                      for m, x, mask in zip(MODALITIES, projected, masks)]
            representation = jnp.concatenate(firsts, axis=-1)
            head_in = layers.dense(self.proj_dim, "out_layer_proj0", (None, "embed"), self.dtype)
            h = nn.relu(head_in(representation))
        else:
            mask = None if masks[0] is None else jnp.concatenate(masks, axis=-1)
            h = self._encoder("fusion")(jnp.concatenate(projected, axis=-2), mask, deterministic)[..., 0, :]
            representation = h
        score = ResidualHead(self.out_dropout, self.dtype, self.dropout_impl, name="head")(h, deterministic)
        return score.astype(jnp.float32), representation.astype(jnp.float32)


def create(variant: Optional[str] = None, **fields) -> SentimentRegressor:
    """CASP's late- or early-fusion regressor by `variant` ("late" / "early"; None: the class defaults, late),
    any of its fields overriding the variant's."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown sentiment regressor variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return SentimentRegressor(**{**VARIANTS.get(variant, {}), **fields})
