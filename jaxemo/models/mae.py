"""Masked autoencoder (He et al., CVPR 2022) on jaxemo's ViT: UniEmoX's student.

    model = mae.create("B/16", mask_ratio=0.75)
    loss, aux = model.apply({"params": params}, images, rngs={"masking": key})   # images [B, 224, 224, 3]

The encoder (`encoder/`, a `jaxemo.vit.ViT` with fixed 2-D sin-cos positions) sees only the visible patches:
per sample, the patches are ranked by uniform noise (`argsort`), the first `int(N * (1 - mask_ratio))` are kept
(a gather by index: every shape is static), the CLS token is prepended. The decoder embeds the latent to its
own width, appends one learned mask token per hidden patch, restores the patch order (a second gather),
adds its own sin-cos positions, runs its blocks and predicts each patch's `P * P * C` pixels. The loss is the
mean squared error on the hidden patches only, against the pixels (optionally normalised per patch,
`norm_pix_loss`; the variance is unbiased, as MAE's `var()`).

`decoder_slice="patches"` drops the CLS prediction (upstream MAE). UniEmoX's released `forward_decoder` keeps
`x[:, :1]` instead (the CLS prediction, broadcast against every patch's target): `decoder_slice="reference"`
reproduces that bug for parity.

Noise can be given (`noise=[B, N]`, as transformers' `ViTMAEForPreTraining(noise=...)`) or drawn from the
"masking" rng stream. Inputs are images as the encoder should see them (normalised), channels last.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxemo import layers, vit

DECODER_SLICES = ("patches", "reference")


def patchify(images: jax.Array, patch_size: Sequence[int]) -> jax.Array:
    """`[B, H, W, C]` -> `[B, N, ph * pw * C]`, patches in row-major order, pixels as MAE's `nhwpqc`."""
    b, h, w, c = images.shape
    ph, pw = patch_size
    x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches: jax.Array, grid: Sequence[int], patch_size: Sequence[int], channels: int) -> jax.Array:
    """Inverse of `patchify`."""
    (gh, gw), (ph, pw) = grid, patch_size
    x = patches.reshape(patches.shape[0], gh, gw, ph, pw, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(patches.shape[0], gh * ph, gw * pw, channels)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: `int(N * (1 - ratio))`, as MAE and transformers truncate."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(noise: jax.Array, keep: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`noise` `[B, N]` -> (`ids_keep` `[B, keep]`, `mask` `[B, N]` with 1 = hidden, `ids_restore` `[B, N]`)."""
    ids_shuffle = jnp.argsort(noise, axis=-1)
    ids_restore = jnp.argsort(ids_shuffle, axis=-1)
    mask = (ids_restore >= keep).astype(jnp.float32)
    return ids_shuffle[:, :keep], mask, ids_restore


def reconstruction_loss(images, pred, mask, patch_size, norm_pix_loss: bool) -> jax.Array:
    """Mean over hidden patches of the per-patch MSE; `pred` `[B, N or 1, P*P*C]` broadcasts to the targets."""
    target = patchify(images.astype(jnp.float32), patch_size)
    if norm_pix_loss:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    return (per_patch * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class MAE(nn.Module):
    """Encoder on the visible patches, decoder over all of them; `__call__` returns `(loss, aux)`.

    `aux`: `pred` `[B, N, P*P*C]` (`[B, 1, ...]` with `decoder_slice="reference"`), `mask` `[B, N]` (1 = hidden),
    `ids_restore`, `latent` (the encoder's normalised tokens, CLS first), `projected_cls` (the latent CLS
    through `decoder_embed`, UniEmoX's student feature) and, if asked, `hidden_states` (the encoder's).
    """

    image_size: Sequence[int] = (224, 224)
    in_channels: int = 3
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoder_mlp_dim: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    decoder_slice: str = "patches"
    layer_norm_eps: float = 1e-6
    scan_layers: bool = True
    remat_policy: str = "none"
    dtype: Any = jnp.float32

    def setup(self):
        if self.decoder_slice not in DECODER_SLICES:
            raise ValueError(f"decoder_slice={self.decoder_slice!r}: expected one of {DECODER_SLICES}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1)")
        self.encoder = vit.ViT(image_size=tuple(self.image_size), in_channels=self.in_channels,
                               patch_size=tuple(self.patch_size), width=self.width, depth=self.depth,
                               num_heads=self.num_heads, mlp_dim=self.mlp_dim, pos_embedding="sincos",
                               layer_norm_eps=self.layer_norm_eps, scan_layers=self.scan_layers,
                               remat_policy=self.remat_policy, dtype=self.dtype)
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=layers.with_axes(
            nn.initializers.xavier_uniform(), "embed", "mlp"), bias_init=layers.with_axes(nn.initializers.zeros, "mlp"))
        self.decoder_embed = dense(self.decoder_width)
        self.mask_token = self.param("mask_token", layers.with_axes(nn.initializers.normal(0.02), None, None, "mlp"),
                                     (1, 1, self.decoder_width))
        block = functools.partial(layers.EncoderBlock, self.decoder_heads, self.decoder_mlp_dim,
                                  layer_norm_eps=self.layer_norm_eps, dtype=self.dtype)
        self.decoder = layers.BlockStack(self.decoder_depth, block, scan=self.scan_layers,
                                         remat_policy=self.remat_policy)
        self.decoder_norm = layers.layer_norm(self.layer_norm_eps, self.dtype, "decoder_norm")
        ph, pw = self.patch_size
        self.decoder_pred = nn.Dense(ph * pw * self.in_channels, dtype=self.dtype,
                                     kernel_init=layers.with_axes(nn.initializers.xavier_uniform(), "embed", None),
                                     bias_init=layers.with_axes(nn.initializers.zeros, None))

    @property
    def num_patches(self) -> int:
        (h, w), (ph, pw) = self.image_size, self.patch_size
        return (h // ph) * (w // pw)

    def encode(self, images, noise, deterministic: bool = True, return_hidden_states: bool = False):
        """(latent `[B, 1 + keep, D]`, mask, ids_restore, hidden states or None)."""
        self.encoder.check_input(images)
        tokens = self.encoder.embed(images)  # [B, 1 + N, D], positions added
        ids_keep, mask, ids_restore = random_masking(noise, num_visible(self.num_patches, self.mask_ratio))
        visible = jnp.take_along_axis(tokens[:, 1:], ids_keep[..., None], axis=1)
        x = jnp.concatenate([tokens[:, :1], visible], axis=1)
        x, hidden = self.encoder.encoder(x, deterministic=deterministic, return_hidden_states=return_hidden_states)
        return self.encoder.norm(x), mask, ids_restore, hidden

    def decode(self, latent, ids_restore, deterministic: bool = True):
        """Patch predictions `[B, N, P*P*C]` (`[B, 1, P*P*C]` with `decoder_slice="reference"`)."""
        x = self.decoder_embed(latent)
        batch, n = ids_restore.shape
        masked = jnp.broadcast_to(self.mask_token.astype(x.dtype), (batch, n + 1 - x.shape[1], x.shape[-1]))
        patches = jnp.concatenate([x[:, 1:], masked], axis=1)
        patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)
        x = jnp.concatenate([x[:, :1], patches], axis=1)
        x = x + jnp.asarray(vit.sincos_pos_embed_2d(self.decoder_width, self.encoder.grid)).astype(x.dtype)
        x, _ = self.decoder(x, deterministic=deterministic)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, :1] if self.decoder_slice == "reference" else x[:, 1:]

    def __call__(self, images, deterministic: bool = True, noise: Optional[jax.Array] = None,
                 return_hidden_states: bool = False):
        if noise is None:
            noise = jax.random.uniform(self.make_rng("masking"), (images.shape[0], self.num_patches))
        elif noise.shape != (images.shape[0], self.num_patches):
            raise ValueError(f"noise must be [batch, patches] = {(images.shape[0], self.num_patches)}, "
                             f"got {noise.shape}")
        latent, mask, ids_restore, hidden = self.encode(images, noise, deterministic, return_hidden_states)
        pred = self.decode(latent, ids_restore, deterministic)
        loss = reconstruction_loss(images, pred, mask, self.patch_size, self.norm_pix_loss)
        aux = {"pred": pred, "mask": mask, "ids_restore": ids_restore, "latent": latent,
               "projected_cls": self.decoder_embed(latent[:, 0])}
        if return_hidden_states:
            aux["hidden_states"] = hidden
        return loss, aux


def create(variant: Optional[str] = None, **fields) -> MAE:
    """An MAE whose encoder has the sizes of a ViT variant ("B/16", "L/16", "H/14"; None: the class defaults,
    B/16), any of its fields overriding them; the decoder defaults to MAE's 512 x 8."""
    sizes = {} if variant is None else vit.decode_variant(variant)
    return MAE(**{**sizes, **fields})
