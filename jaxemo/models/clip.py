"""CLIP (Radford et al., ICML 2021): the image tower and the text transformer, UniEmoX's frozen teacher.

    model = clip.create("B/16")
    logits_per_image, aux = model.apply({"params": params}, images, token_ids)   # images [B, 224, 224, 3]
    image_embeds = model.apply({"params": params}, images, method=clip.CLIP.encode_image)

Image tower: jaxemo's ViT with CLIP's conventions (no patch-embedding bias, learned positions, a LayerNorm on
the embeddings before the blocks, QuickGELU, LayerNorm eps 1e-5); the CLS token after the final LayerNorm is
projected (no bias) to the joint width. Text tower: token and learned position embeddings, the same blocks
under a causal mask, a final LayerNorm, the feature at the end-of-text token (its first occurrence; with
`eot_token_id=None`, the position of the largest id, as OpenAI's code and transformers' legacy configs pool),
projected (no bias). `logit_scale` is the log of the temperature's inverse, as CLIP stores it; the logits
are `exp(logit_scale) * cos`. Inputs are images normalised with CLIP's mean and std, channels last, and
token ids (`tokenizers`, with the user's tokenizer file).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxemo import layers, vit


def _projection(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=dtype, name=name,
                    kernel_init=layers.with_axes(nn.initializers.normal(0.02), "embed", "mlp"))


class TextTransformer(nn.Module):
    """`token_ids` `[B, T]` -> (pooled `[B, D]` after the final LayerNorm, hidden states or None)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    eot_token_id: Optional[int] = 49407
    layer_norm_eps: float = 1e-5
    scan_layers: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, token_ids, return_hidden_states: bool = False):
        steps = token_ids.shape[-1]
        if token_ids.ndim != 2 or steps > self.context_length:
            raise ValueError(f"token_ids must be [batch, <= {self.context_length}], got {token_ids.shape}")
        embed = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="token_embedding",
                         embedding_init=layers.with_axes(nn.initializers.normal(0.02), "vocab", "embed"))
        positions = self.param("position_embedding", layers.with_axes(nn.initializers.normal(0.01), None, "embed"),
                               (self.context_length, self.width))
        x = embed(token_ids) + positions[:steps].astype(self.dtype)
        causal = jnp.tril(jnp.ones((steps, steps), bool))[None, None]
        block = functools.partial(layers.EncoderBlock, self.num_heads, self.mlp_dim, layer_norm_eps=self.layer_norm_eps,
                                  quick_gelu=True, dtype=self.dtype)
        x, hidden = layers.BlockStack(self.depth, block, scan=self.scan_layers, name="encoder")(
            x, mask=causal, return_hidden_states=return_hidden_states)
        x = layers.layer_norm(self.layer_norm_eps, self.dtype, "final_norm")(x)
        if self.eot_token_id is None:
            eot = jnp.argmax(token_ids, axis=-1)
        else:
            eot = jnp.argmax(token_ids == self.eot_token_id, axis=-1)
        return jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0], hidden


class CLIP(nn.Module):
    """Both towers, their projections and the logit scale. `__call__(images, token_ids)` returns
    `(logits_per_image [B_img, B_txt], aux)` with the normalised `image_embeds` and `text_embeds`."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    embed_dim: int = 512
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_depth: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    eot_token_id: Optional[int] = 49407
    layer_norm_eps: float = 1e-5
    scan_layers: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        self.visual = vit.ViT(image_size=(self.image_size, self.image_size), patch_size=(self.patch_size,) * 2,
                              width=self.vision_width, depth=self.vision_depth, num_heads=self.vision_heads,
                              mlp_dim=self.vision_mlp_dim, layer_norm_eps=self.layer_norm_eps, quick_gelu=True,
                              patch_bias=False, pre_norm=True, scan_layers=self.scan_layers, dtype=self.dtype)
        self.text = TextTransformer(self.vocab_size, self.context_length, self.text_width, self.text_depth,
                                    self.text_heads, self.text_mlp_dim, self.eot_token_id, self.layer_norm_eps,
                                    self.scan_layers, self.dtype)
        self.visual_projection = _projection(self.embed_dim, self.dtype, "visual_projection")
        self.text_projection = _projection(self.embed_dim, self.dtype, "text_projection")
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

    def encode_image(self, images, return_hidden_states: bool = False):
        """Image embeddings `[B, embed_dim]` (not normalised); with hidden states, `(embeds, aux)`."""
        pooled, aux = self.visual(images, return_hidden_states=return_hidden_states)
        embeds = self.visual_projection(pooled)
        return (embeds, aux) if return_hidden_states else embeds

    def encode_text(self, token_ids, return_hidden_states: bool = False):
        """Text embeddings `[B, embed_dim]` (not normalised); with hidden states, `(embeds, hidden)`."""
        pooled, hidden = self.text(token_ids, return_hidden_states)
        embeds = self.text_projection(pooled)
        return (embeds, hidden) if return_hidden_states else embeds

    def __call__(self, images, token_ids):
        image_embeds = normalize(self.encode_image(images))
        text_embeds = normalize(self.encode_text(token_ids))
        logits = jnp.exp(self.logit_scale) * image_embeds @ text_embeds.T
        return logits, {"image_embeds": image_embeds, "text_embeds": text_embeds, "logits_per_text": logits.T}


def normalize(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def create(variant: Optional[str] = None, **fields) -> CLIP:
    """OpenAI's CLIP sizes by image-tower name ("B/32", "B/16", "L/14"; None: the class defaults, B/16), any
    of its fields overriding them; the text tower is 512 x 12 (768 x 12 for L/14), the joint width 512 (768
    for L/14)."""
    return CLIP(**{**({} if variant is None else variant_sizes(variant)), **fields})


def variant_sizes(variant: str) -> dict:
    """The CLIP fields of an image-tower name, at 224 px."""
    sizes = vit.decode_variant(variant)
    large = sizes["width"] >= 1024
    return {"image_size": 224, "patch_size": sizes["patch_size"][0], "vision_width": sizes["width"],
            "vision_depth": sizes["depth"], "vision_heads": sizes["num_heads"], "vision_mlp_dim": sizes["mlp_dim"],
            "embed_dim": 768 if large else 512, "text_width": 768 if large else 512,
            "text_heads": 12 if large else 8, "text_mlp_dim": 3072 if large else 2048}
