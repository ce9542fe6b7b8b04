"""One ViT encoder for RGB images, video frames and 1-channel spectrograms.

Layout of the parameters (names chosen so that timm / HF checkpoints map onto them one to one):

    patch_embed/{kernel [ph, pw, C, D], bias}    cls_token [1, 1, D]    pos_embed [1, tokens, D] (learned)
    prompts [P, D]                               encoder/layers/block/... (see layers.BlockStack)
    norm/{scale, bias}                           head/{kernel, bias} (when num_classes is set)

Token order is `[CLS, patches..., prompts...]`; the position embedding covers all of them.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxemo import layers

# name -> (width, depth, heads, mlp_dim), as in the ViT / DeiT papers and timm.
VARIANTS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}


def decode_variant(variant: str) -> dict:
    """"B/16" -> dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=(16, 16))."""
    match = re.fullmatch(r"(Ti|S|B|L|H)/(\d+)", variant or "")
    if match is None:
        raise ValueError(
            f"unknown ViT variant {variant!r}: expected '<size>/<patch>' with size in "
            f"{list(VARIANTS)}, e.g. 'B/16'"
        )
    width, depth, heads, mlp_dim = VARIANTS[match.group(1)]
    patch = int(match.group(2))
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, patch_size=(patch, patch))


def sincos_pos_embed_2d(width: int, grid: Sequence[int], num_prefix: int = 1) -> np.ndarray:
    """Fixed 2-D sin-cos embedding `[1, num_prefix + gh * gw, width]` as MAE / AudioMAE build it.

    The first half of the channels encodes the column (w) coordinate and the second half the row (h);
    prefix rows (CLS) are zeros.
    """
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {width}")
    gh, gw = grid
    cols, rows = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))

    def embed_1d(pos):
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    emb = np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1)
    emb = np.concatenate([np.zeros((num_prefix, width)), emb], axis=0)
    return emb[None].astype(np.float32)


def _torch_bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
    """`[size_out, size_in]` matrix equal to torch's bicubic interpolation (align_corners=False)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    matrix = np.zeros((size_out, size_in), np.float64)
    scale = size_in / size_out
    for o in range(size_out):
        src = (o + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[o, min(max(base + offset, 0), size_in - 1)] += weight
    return matrix


def resize_pos_embed(
    pos_embed, old_grid: Sequence[int], new_grid: Sequence[int], num_prefix: int = 1
) -> np.ndarray:
    """Bicubic resize of the grid rows of `[1, prefix + gh*gw + suffix, D]`, matching timm / AudioMAE.

    Prefix rows (CLS) and any suffix rows (prompt positions) are kept as they are.
    """
    pos_embed = np.asarray(pos_embed, np.float32)
    (oh, ow), (nh, nw) = tuple(old_grid), tuple(new_grid)
    prefix = pos_embed[:, :num_prefix]
    grid = pos_embed[:, num_prefix : num_prefix + oh * ow]
    suffix = pos_embed[:, num_prefix + oh * ow :]
    if grid.shape[1] != oh * ow:
        raise ValueError(f"pos_embed has {grid.shape[1]} grid rows, expected {oh}x{ow}={oh * ow}")
    if (oh, ow) == (nh, nw):
        return pos_embed
    grid = grid.reshape(oh, ow, -1).astype(np.float64)
    grid = np.einsum("ho,wp,opd->hwd", _torch_bicubic_matrix(oh, nh), _torch_bicubic_matrix(ow, nw), grid)
    grid = grid.reshape(1, nh * nw, -1).astype(np.float32)
    return np.concatenate([prefix, grid, suffix], axis=1)


class ViT(nn.Module):
    """Vision Transformer over `[..., H, W, C]` inputs (any leading batch axes).

    Returns `(out, aux)`: `out` is the logits if `num_classes` is set, else the pooled feature; `aux` holds
    `tokens` (after the final LayerNorm; un-normalised with `fc_norm`, which normalises the pooled feature
    instead), `embeddings` (the input to the first block), `pre_logits` and, if asked for, `hidden_states`
    (`[depth, ..., tokens, D]`, every block's output before the final norm).
    """

    image_size: Sequence[int] = (224, 224)
    in_channels: int = 3
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: Optional[int] = None
    pool: str = "token"  # "token" (CLS) or "gap" (mean of patch tokens)
    fc_norm: bool = False  # MAE fine-tuning: no final norm on the tokens; LayerNorm `fc_norm` after pooling
    pos_embedding: str = "learned"  # "learned" or "sincos" (fixed)
    class_token: bool = True
    num_prompts: int = 0
    layer_norm_eps: float = 1e-6
    approximate_gelu: bool = False
    qkv_bias: bool = True
    quick_gelu: bool = False  # OpenAI CLIP's activation
    patch_bias: bool = True  # CLIP's patch embedding has none
    pre_norm: bool = False  # CLIP's LayerNorm on the embeddings before the blocks (`norm_pre`)
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    scan_layers: bool = True
    remat_policy: str = "none"
    block_hook: Optional[layers.ModuleFactory] = None
    dtype: Any = jnp.float32

    @property
    def grid(self) -> tuple[int, int]:
        (h, w), (ph, pw) = self.image_size, self.patch_size
        return h // ph, w // pw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token)

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid
        return self.num_prefix_tokens + gh * gw + self.num_prompts

    def setup(self):
        (h, w), (ph, pw) = self.image_size, self.patch_size
        if h % ph or w % pw:
            raise ValueError(f"image_size {tuple(self.image_size)} is not divisible by patch {self.patch_size}")
        if self.pool not in ("token", "gap") or (self.pool == "token" and not self.class_token):
            raise ValueError(f"pool={self.pool!r} needs 'token' (with class_token=True) or 'gap'")
        self.patch_embed = nn.Conv(
            self.width,
            tuple(self.patch_size),
            strides=tuple(self.patch_size),
            padding="VALID",
            use_bias=self.patch_bias,
            dtype=self.dtype,
            kernel_init=layers.with_axes(nn.initializers.lecun_normal(), None, None, None, "embed"),
            bias_init=layers.with_axes(nn.initializers.zeros, "embed"),
        )
        if self.class_token:
            self.cls_token = self.param("cls_token", layers.with_axes(nn.initializers.zeros, None, None, "embed"),
                                        (1, 1, self.width))
        if self.num_prompts:
            self.prompts = self.param("prompts", layers.with_axes(nn.initializers.normal(self.width**-0.5),
                                                                  None, "embed"), (self.num_prompts, self.width))
        if self.pos_embedding == "learned":
            self.pos_embed = self.param("pos_embed", layers.with_axes(nn.initializers.normal(0.02), None, None,
                                                                      "embed"), (1, self.num_tokens, self.width))
        elif self.pos_embedding != "sincos":
            raise ValueError(f"pos_embedding={self.pos_embedding!r}: expected 'learned' or 'sincos'")
        block = functools.partial(
            layers.EncoderBlock,
            self.num_heads,
            self.mlp_dim,
            layer_norm_eps=self.layer_norm_eps,
            approximate_gelu=self.approximate_gelu,
            qkv_bias=self.qkv_bias,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            quick_gelu=self.quick_gelu,
        )
        if self.pre_norm:
            self.norm_pre = layers.layer_norm(self.layer_norm_eps, self.dtype, "norm_pre")
        self.encoder = layers.BlockStack(
            self.depth,
            block,
            hook=self.block_hook,
            scan=self.scan_layers,
            remat_policy=self.remat_policy,
            drop_path_rate=self.drop_path_rate,
        )
        if self.fc_norm:
            self.fc_norm_layer = layers.layer_norm(self.layer_norm_eps, self.dtype, "fc_norm")
        else:
            self.norm = layers.layer_norm(self.layer_norm_eps, self.dtype, "norm")
        if self.num_classes:
            self.head = nn.Dense(
                self.num_classes,
                dtype=self.dtype,
                kernel_init=layers.with_axes(nn.initializers.zeros, "embed", "classes"),
                bias_init=layers.with_axes(nn.initializers.zeros, "classes"),
            )

    def check_input(self, images) -> None:
        expected = (*self.image_size, self.in_channels)
        if images.ndim < 4 or tuple(images.shape[-3:]) != expected:
            raise ValueError(
                f"ViT expects inputs of shape [batch..., {expected[0]}, {expected[1]}, {expected[2]}] "
                f"(image_size={tuple(self.image_size)}, in_channels={self.in_channels}), got {images.shape}"
            )

    def position_table(self) -> jax.Array:
        if self.pos_embedding == "learned":
            return self.pos_embed
        table = sincos_pos_embed_2d(self.width, self.grid, self.num_prefix_tokens)
        return jnp.pad(jnp.asarray(table), ((0, 0), (0, self.num_prompts), (0, 0)))

    def embed(self, images: jax.Array) -> jax.Array:
        """`[B, H, W, C]` -> tokens `[B, prefix + patches + prompts, D]` with positions added (and `norm_pre`)."""
        x = self.patch_embed(images.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, self.width)
        pieces = [x]
        if self.class_token:
            pieces.insert(0, jnp.broadcast_to(self.cls_token, (x.shape[0], 1, self.width)).astype(x.dtype))
        if self.num_prompts:
            pieces.append(jnp.broadcast_to(self.prompts, (x.shape[0], *self.prompts.shape)).astype(x.dtype))
        x = jnp.concatenate(pieces, axis=1) + self.position_table().astype(x.dtype)
        return self.norm_pre(x) if self.pre_norm else x

    def pool_tokens(self, tokens: jax.Array) -> jax.Array:
        if self.pool == "token":
            return tokens[:, 0]
        gh, gw = self.grid
        return tokens[:, self.num_prefix_tokens : self.num_prefix_tokens + gh * gw].mean(axis=1)

    def __call__(self, images, deterministic: bool = True, return_hidden_states: bool = False):
        self.check_input(images)
        batch_shape = images.shape[:-3]
        x = self.embed(images.reshape((-1, *images.shape[-3:])))
        embeddings = x
        x, hidden = self.encoder(x, deterministic=deterministic, return_hidden_states=return_hidden_states)
        tokens = x if self.fc_norm else self.norm(x)
        pooled = self.pool_tokens(tokens)
        if self.fc_norm:
            pooled = self.fc_norm_layer(pooled)
        out = self.head(pooled) if self.num_classes else pooled
        unflat = lambda a, lead=(): a.reshape((*lead, *batch_shape, *a.shape[len(lead) + 1 :]))
        aux = {"tokens": unflat(tokens), "embeddings": unflat(embeddings), "pre_logits": unflat(pooled)}
        if return_hidden_states:
            aux["hidden_states"] = unflat(hidden, lead=(self.depth,))
        return unflat(out), aux


def create(variant: Optional[str] = None, **fields) -> ViT:
    """A ViT of the sizes of `variant` ("Ti/16", "S/16", "B/16", "L/14", "H/14", ...; None: the class defaults,
    B/16), any of its fields overriding them."""
    sizes = {} if variant is None else decode_variant(variant)
    return ViT(**{**sizes, **fields})
