"""MMA-DFER (Chumachenko, Iosifidis, Gabbouj, CVPRW 2024): audio-visual dynamic facial expression recognition.

A frozen image ViT-B/16 (MAE-Face) runs on every frame and a frozen audio ViT-B/16 (AudioMAE) on the clip's
512 x 128 fbank; both get 6 prompt tokens after their patches. Their blocks run in lockstep and, after every
layer, a fusion bottleneck lets the modalities exchange information. The per-frame and audio CLS tokens are
joined and read by a one-layer multimodal temporal transformer.

Shapes (paper size): video `[B, 16, 224, 224, 3]` in [0, 1] -> 16 x 203 tokens (1 CLS + 196 patches +
6 prompts); audio `[B, 512, 128]` -> 263 tokens (1 + 32 x 8 + 6).

Two fusion designs share the backbones:
- `fusion="bottleneck"` (the paper's): per modality 768 -> 128 + LayerNorm, exchange of mean-pooled
  summaries (the audio summary is added to every frame token, the video summary to every audio token),
  128 -> 768 + GELU, scaled by tanh of a zero-initialised gate, residual. At every layer.
- `fusion="tokens"` (MBT, Nagrani et al. 2021): `num_fusion_tokens` shared tokens appended to every
  sequence from `fusion_layer` on; each modality's block updates them and the next layer sees their mean
  across modalities (the video's own copy is first averaged over the clip's frames). Before
  `fusion_layer` the tokens are masked out of attention.

Numerics follow the reference: exact GELU and LayerNorm eps 1e-6 in the ViTs, eps 1e-5 in the adapters
and the temporal layer, whose MLP uses the tanh GELU.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxemo import layers, vit

# Parameters that train (the reference's `main.py` split); everything else is frozen.
TRAINABLE_PATTERNS = (
    r"_encoder/pos_embed$",
    r"_encoder/prompts$",
    r"prompt_updates$",
    r"^fusion_layers/(adapter|bottleneck)",
    r"^fusion_tokens$",
    r"^temporal/",
    r"^joint_proj/",
    r"^classifier/",
)


def _latent_norm(dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, use_fast_variance=False, name=name,
                        scale_init=layers.with_axes(nn.initializers.ones, "mlp"),
                        bias_init=layers.with_axes(nn.initializers.zeros, "mlp"))


class BottleneckAdapter(nn.Module):
    """The paper's per-layer fusion bottleneck between `video` `[B*T, Nv, D]` and `audio` `[B, Na, D]`."""

    latent_dim: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video, audio):
        width, clips = video.shape[-1], audio.shape[0]
        frames = video.shape[0] // clips
        down = functools.partial(layers.dense, self.latent_dim, axes=("embed", "mlp"), dtype=self.dtype)
        z_video = _latent_norm(self.dtype, "video_down_norm")(down(name="video_down")(video))
        z_audio = _latent_norm(self.dtype, "audio_down_norm")(down(name="audio_down")(audio))
        audio_summary = z_audio.mean(axis=1)  # [B, L]
        video_summary = z_video.reshape(clips, frames, *z_video.shape[1:]).mean(axis=(1, 2))  # [B, L]
        z_video = z_video + jnp.repeat(audio_summary, frames, axis=0)[:, None, :]
        z_audio = z_audio + video_summary[:, None, :]
        up = functools.partial(layers.dense, width, axes=("mlp", "embed"), dtype=self.dtype)
        gate = functools.partial(self.param, init_fn=layers.with_axes(nn.initializers.zeros, None), shape=(1,))
        video = video + jnp.tanh(gate("video_gate")).astype(video.dtype) * nn.gelu(
            up(name="video_up")(z_video), approximate=False)
        audio = audio + jnp.tanh(gate("audio_gate")).astype(audio.dtype) * nn.gelu(
            up(name="audio_up")(z_audio), approximate=False)
        return video, audio


def _attend_fusion_tokens_only_if(fused, num_tokens: int, num_fusion: int) -> jax.Array:
    """Attention mask `[1, 1, q, k]`: the last `num_fusion` keys are visible only once `fused`."""
    is_fusion_key = jnp.arange(num_tokens + num_fusion) >= num_tokens
    visible = jnp.logical_or(fused, ~is_fusion_key)
    return jnp.broadcast_to(visible, (1, 1, num_tokens + num_fusion, num_tokens + num_fusion))


def add_prompt_updates(tokens, table, index, stride: int):
    """After layer `index` = g * stride (g < groups), adds `table[g]` (`[groups, prompts, D]`, group g's
    update vectors in its own prompt slots) to the prompt tokens, which are the last ones of `tokens`."""
    groups, num_prompts, _ = table.shape
    group = jnp.minimum(index // stride, groups - 1)
    active = jnp.logical_and(index % stride == 0, index // stride < groups)
    delta = jnp.where(active, table[group], 0.0).astype(tokens.dtype)
    return tokens.at[:, -num_prompts:].add(delta)


class _AVLayer(nn.Module):
    """One layer of both encoders in lockstep, their fusion, then the progressive prompt update."""

    block: layers.ModuleFactory
    fusion: str
    latent_dim: int
    fusion_layer: int
    prompt_stride: int
    deterministic: bool
    dtype: Any

    @nn.compact
    def __call__(self, carry, per_layer, prompt_tables):
        video, audio, fusion_tokens = carry
        video, audio = layers.constrain(video), layers.constrain(audio)  # [B*T | B, tokens, D]: split the batch
        index, rate = per_layer
        if self.fusion == "tokens":
            video, audio, fusion_tokens = self._token_fusion(video, audio, fusion_tokens, index, rate)
        else:
            video = self.block(name="video_block")(video, rate, None, self.deterministic)
            audio = self.block(name="audio_block")(audio, rate, None, self.deterministic)
            video, audio = BottleneckAdapter(self.latent_dim, self.dtype, name="adapter")(video, audio)
        video_table, audio_table = prompt_tables
        video = layers.constrain(add_prompt_updates(video, video_table, index, self.prompt_stride))
        audio = layers.constrain(add_prompt_updates(audio, audio_table, index, self.prompt_stride))
        return (video, audio, fusion_tokens), None

    def _token_fusion(self, video, audio, tokens, index, rate):
        clips, num_fusion, width = tokens.shape
        frames = video.shape[0] // clips
        fused = index >= self.fusion_layer
        video_in = jnp.concatenate([video, jnp.repeat(tokens, frames, axis=0)], axis=1)
        audio_in = jnp.concatenate([audio, tokens], axis=1)
        video_mask = _attend_fusion_tokens_only_if(fused, video.shape[1], num_fusion)
        audio_mask = _attend_fusion_tokens_only_if(fused, audio.shape[1], num_fusion)
        video_out = self.block(name="video_block")(video_in, rate, video_mask, self.deterministic)
        audio_out = self.block(name="audio_block")(audio_in, rate, audio_mask, self.deterministic)
        video_tokens = video_out[:, -num_fusion:].reshape(clips, frames, num_fusion, width).mean(axis=1)
        updated = 0.5 * (video_tokens + audio_out[:, -num_fusion:])
        tokens = jnp.where(fused, updated.astype(tokens.dtype), tokens)
        return video_out[:, :-num_fusion], audio_out[:, :-num_fusion], tokens


class TemporalTransformer(nn.Module):
    """CLS + learned positions (both N(0, 1)), pre-norm layers with tanh GELU, no final norm; returns CLS."""

    depth: int = 1
    num_heads: int = 8
    mlp_dim: int = 1024
    reference_unused_norms: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, steps, width = x.shape
        cls = self.param("cls_token", layers.with_axes(nn.initializers.normal(1.0), None, None, "mlp"), (1, 1, width))
        pos = self.param("pos_embed", layers.with_axes(nn.initializers.normal(1.0), None, None, "mlp"),
                         (1, steps + 1, width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, width)).astype(x.dtype), x], axis=1)
        x = x + pos.astype(x.dtype)
        for i in range(self.depth):
            x = layers.EncoderBlock(self.num_heads, self.mlp_dim, layer_norm_eps=1e-5, approximate_gelu=True,
                                    qkv_bias=False, dtype=self.dtype, name=f"block_{i}")(x)
            if self.reference_unused_norms:
                self._unused_norms(i, width)
        return x[:, 0]

    def _unused_norms(self, i: int, width: int) -> None:
        """The reference's PreNorm defines a second LayerNorm it never calls: it counts as trainable but gets no
        gradient, and torch's AdamW skips parameters without one, so it never changes (not even by weight
        decay). Here its gradient is zero, so Adam moves it by nothing, and the MMA-DFER recipe's
        `optimizer.decay_exclude` keeps AdamW's decay off it: it never changes either. No effect on the
        outputs; kept behind `reference_unused_norms` for parameter-count parity."""
        for part in ("attn", "mlp"):
            self.param(f"block_{i}_{part}_unused_norm_scale", nn.initializers.ones, (width,))
            self.param(f"block_{i}_{part}_unused_norm_bias", nn.initializers.zeros, (width,))


class MMADFER(nn.Module):
    """The full model; `__call__(video, audio, deterministic)` returns `(logits, aux)`."""

    num_classes: int = 7
    num_frames: int = 16
    image_size: int = 224
    audio_shape: tuple[int, int] = (512, 128)
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_prompts: int = 6
    prompt_groups: int = 2
    latent_dim: int = 128
    fusion: str = "bottleneck"  # or "tokens" (MBT)
    num_fusion_tokens: int = 4
    fusion_layer: int = 8
    encoder_drop_path_rate: float = 0.1
    temporal_width: int = 512
    temporal_depth: int = 1
    temporal_heads: int = 8
    temporal_mlp_dim: int = 1024
    reference_unused_norms: bool = False
    remat_policy: str = "none"
    dtype: Any = jnp.float32

    def _encoder(self, image_size, channels, name):
        return vit.ViT(image_size=image_size, in_channels=channels, patch_size=(self.patch_size, self.patch_size),
                       width=self.width, depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                       num_prompts=self.num_prompts, layer_norm_eps=1e-6, dtype=self.dtype, name=name)

    def check_inputs(self, video, audio) -> None:
        expected_video = (self.num_frames, self.image_size, self.image_size, 3)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected_video:
            raise ValueError(f"MMA-DFER expects video [batch, {', '.join(map(str, expected_video))}], "
                             f"got {video.shape}")
        if tuple(audio.shape[1:3]) != tuple(self.audio_shape) or audio.ndim not in (3, 4) or audio.shape[0] != video.shape[0]:
            raise ValueError(f"MMA-DFER expects audio [batch, {self.audio_shape[0]}, {self.audio_shape[1]}] "
                             f"(a fbank) with the video's batch {video.shape[0]}, got {audio.shape}")
        if self.num_prompts % self.prompt_groups or self.depth < self.prompt_groups:
            raise ValueError(f"num_prompts={self.num_prompts} must split into prompt_groups={self.prompt_groups} "
                             f"spread over depth={self.depth}")
        if self.fusion not in ("bottleneck", "tokens"):
            raise ValueError(f"fusion={self.fusion!r}: expected 'bottleneck' or 'tokens'")

    def _prompt_table(self, name: str) -> jax.Array:
        """`[groups, num_prompts, D]`: group g's learned update vectors in its prompt slots, zeros elsewhere."""
        per_group = self.num_prompts // self.prompt_groups
        updates = self.param(name, layers.with_axes(nn.initializers.normal(self.width**-0.5), None, None, "embed"),
                             (self.prompt_groups, per_group, self.width))
        slots = np.zeros((self.prompt_groups, self.num_prompts, per_group), np.float32)
        for g in range(self.prompt_groups):
            slots[g, g * per_group:(g + 1) * per_group] = np.eye(per_group)
        return jnp.einsum("gps,gsd->gpd", slots, updates)

    @nn.compact
    def __call__(self, video, audio, deterministic: bool = True):
        self.check_inputs(video, audio)
        audio = audio[..., None] if audio.ndim == 3 else audio
        clips = video.shape[0]
        video_encoder = self._encoder((self.image_size, self.image_size), 3, "video_encoder")
        audio_encoder = self._encoder(tuple(self.audio_shape), 1, "audio_encoder")
        video_tokens = video_encoder.embed(video.reshape(-1, *video.shape[2:]))  # [B*T, 203, D]
        audio_tokens = audio_encoder.embed(audio)  # [B, 263, D]
        fusion_tokens = jnp.zeros((clips, self.num_fusion_tokens, self.width), video_tokens.dtype)
        if self.fusion == "tokens":
            init = layers.with_axes(nn.initializers.normal(0.02), None, None, "embed")
            fusion_tokens = jnp.broadcast_to(self.param("fusion_tokens", init, (1, self.num_fusion_tokens, self.width)),
                                             fusion_tokens.shape).astype(video_tokens.dtype)
        tables = (self._prompt_table("video_prompt_updates"), self._prompt_table("audio_prompt_updates"))
        video_tokens, audio_tokens = self._layers(video_tokens, audio_tokens, fusion_tokens, tables, deterministic)
        video_cls = video_encoder.norm(video_tokens)[:, 0].reshape(clips, self.num_frames, self.width)
        audio_cls = audio_encoder.norm(audio_tokens)[:, 0]
        joint = layers.dense(self.temporal_width, "joint_proj", ("embed", "mlp"), self.dtype)(
            video_cls + audio_cls[:, None, :])
        clip_feature = TemporalTransformer(self.temporal_depth, self.temporal_heads, self.temporal_mlp_dim,
                                           self.reference_unused_norms, self.dtype, name="temporal")(joint)
        logits = layers.dense(self.num_classes, "classifier", ("mlp", "classes"), self.dtype)(clip_feature)
        return logits, {"video_cls": video_cls, "audio_cls": audio_cls, "clip_feature": clip_feature}

    def _layers(self, video, audio, fusion_tokens, tables, deterministic):
        block = functools.partial(layers.EncoderBlock, self.num_heads, self.mlp_dim, layer_norm_eps=1e-6,
                                  approximate_gelu=False, qkv_bias=True, dtype=self.dtype)
        layer_cls = layers._remat(_AVLayer, self.remat_policy)
        scanned = nn.scan(layer_cls, variable_axes={True: 0}, split_rngs={"params": True, "dropout": True},
                          in_axes=(0, nn.broadcast), length=self.depth,
                          unroll=layers.scan_unroll(self.depth), metadata_params={nn.PARTITION_NAME: "layers"})
        stack = scanned(block, self.fusion, self.latent_dim, self.fusion_layer,
                        self.depth // self.prompt_groups, deterministic, self.dtype, name="fusion_layers")
        rates = jnp.linspace(0.0, self.encoder_drop_path_rate, self.depth, dtype=jnp.float32)
        (video, audio, _), _ = stack((video, audio, fusion_tokens), (jnp.arange(self.depth), rates), tables)
        return video, audio


def create(variant: Optional[str] = None, **fields) -> MMADFER:
    """MMA-DFER whose two encoders have the sizes of a ViT variant ("B/16", the paper's and the class
    defaults when None), any of its fields overriding them."""
    sizes = {} if variant is None else vit.decode_variant(variant)
    if sizes:
        sizes["patch_size"] = sizes["patch_size"][0]
    return MMADFER(**{**sizes, **fields})


def count_parts(params: dict) -> dict[str, int]:
    """Parameter counts grouped as the reference's table (dossier §1.5), for checking the split."""
    from flax import traverse_util

    groups = {
        "image.temporal_att_post": r"adapter/video_up/", "image.audio_proj_pre": r"adapter/audio_down",
        "image.temporal_pre": r"adapter/video_down/", "image.temporal_pre_norm": r"adapter/video_down_norm/",
        "image.pos_embed": r"video_encoder/pos_embed", "image prompts": r"video_(encoder/prompts|prompt_updates)",
        "image all_gate": r"adapter/video_gate", "audio.temporal_att_post": r"adapter/audio_up/",
        "audio.pos_embed": r"audio_encoder/pos_embed", "audio prompts": r"audio_(encoder/prompts|prompt_updates)",
        "audio all_gate": r"adapter/audio_gate", "temporal_net": r"^temporal/", "vision_proj": r"^joint_proj/",
        "our_classifier": r"^classifier/",
    }
    import re

    counts = dict.fromkeys(groups, 0)
    for path, value in traverse_util.flatten_dict(params).items():
        name = "/".join(path)
        for group, pattern in groups.items():
            if re.search(pattern, name):
                counts[group] += int(np.size(value))
    return counts
