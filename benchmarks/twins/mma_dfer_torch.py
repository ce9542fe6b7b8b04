"""The reference MMA-DFER forward pass re-expressed in PyTorch, for the parity test and the benchmark.

It follows katerynaCh/MMA-DFER (`models/Generate_Model.py::GenerateModel.forward`, `models/models_vit.py`,
`AudioMAE/audio_models_vit.py`, `models/Temporal_Model.py`) at any size. The encoder blocks are
either the official code's (timm's `Block`: fused q/k/v, `scaled_dot_product_attention`; the benchmark's
twin) or transformers' `ViTLayer` (the same pre-LN block with separate q, k, v: LayerNorm eps 1e-6, exact
GELU, q/k/v with bias); the fusion bottleneck, the progressive prompts, the joint projection and the temporal
transformer are written out here. Stochastic depth in the frozen blocks is left out (the reference trains with
`drop_path_rate=0.1`; at evaluation it does nothing).

    model = mma_dfer_torch.build(mma_dfer_torch.Sizes())        # paper size, random weights
    logits, video_cls, audio_cls = model(video, audio)          # video [B, T, 3, H, W], audio [B, 1, 512, 128]
    state = mma_dfer_torch.to_state_dict(model)                  # numpy, under the reference's key names
    mma_dfer_torch.freeze_like_reference(model)                  # requires_grad as the reference's main.py

Importing this module needs neither torch nor transformers: the `torch.nn.Module` classes are defined on
the first call of `build` (`modules()`).
"""

from __future__ import annotations

import dataclasses
import functools
import types

import numpy as np

# The reference's `main.py` split, applied to state-dict names: everything trains except what lives in the
# encoders (`image_encoder.` / `audio_model.`), of which names containing these words train again.
FROZEN_IF_CONTAINS = ("image_encoder", "audio_model")
TRAINABLE_IF_CONTAINS = ("learnable_prompts", "pos_embed", "audio_proj", "temporal", "gate")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Sizes of the model; the defaults are the paper's (DFEW: 7 classes)."""

    num_frames: int = 16
    image_size: int = 224
    audio_shape: tuple[int, int] = (512, 128)  # fbank frames x mel bins
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_prompts: int = 6
    prompt_groups: int = 2
    prompt_stride: int = 6  # group g's prompts are updated after layer g * stride (the reference: `ii % 6`)
    latent_dim: int = 128
    temporal_width: int = 512
    temporal_depth: int = 1
    temporal_heads: int = 8
    temporal_mlp_dim: int = 1024
    num_classes: int = 7

    @classmethod
    def of(cls, model) -> Sizes:
        """The sizes of a `jaxemo.models.mma_dfer.MMADFER` (bottleneck fusion, the reference's design)."""
        if model.fusion != "bottleneck":
            raise ValueError(f"the reference has only the bottleneck fusion, not fusion={model.fusion!r}")
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("prompt_stride", "audio_shape")]
        return cls(audio_shape=tuple(model.audio_shape), prompt_stride=model.depth // model.prompt_groups,
                   **{name: getattr(model, name) for name in names})

    @property
    def video_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def audio_patches(self) -> int:
        return (self.audio_shape[0] // self.patch_size) * (self.audio_shape[1] // self.patch_size)


def build(sizes: Sizes = Sizes(), attn_implementation: str = "eager"):
    """A randomly initialised model. `attn_implementation`: "eager" or "sdpa" build the encoder blocks from
    transformers' `ViTLayer` (separate q, k, v); "timm" from the official code's block (timm's: fused qkv
    and `scaled_dot_product_attention`), the benchmark's default."""
    return modules().MMADFER(sizes, attn_implementation)


def reference_trainable(key: str) -> bool:
    """Whether the reference trains the parameter stored under state-dict `key`."""
    frozen = any(word in key for word in FROZEN_IF_CONTAINS)
    return not frozen or any(word in key for word in TRAINABLE_IF_CONTAINS)


def reference_parameters(model, prefix: str = "") -> dict:
    """`{reference key: [parameters]}`: the reference's `GenerateModel.state_dict()` names (`prefix="module."`
    as DataParallel saves them); the fused `attn.qkv` of timm's blocks lists q, k and v, in that order."""
    return {prefix + key: params for key, params in modules().named_for_reference(model).items()}


def to_state_dict(model, prefix: str = "") -> dict[str, np.ndarray]:
    """The model's weights as the reference stores them (numpy float32 copies, q/k/v fused)."""
    import torch

    out = {}
    for key, params in reference_parameters(model, prefix).items():
        value = params[0] if len(params) == 1 else torch.cat(list(params))
        out[key] = value.detach().cpu().numpy().copy()
    return out


FRAMEWORK = "PyTorch (timm blocks)"


def benchmark_steps(torch, case, net=None, compile: bool = False) -> dict:
    """{"train", "inference"} callables on the case's batch: the train step is forward, cross-entropy, backward
    and AdamW on the parameters the reference trains (the rest frozen); the inference step a forward under
    `inference_mode`. Pixels go from uint8 to [0, 1] inside both. `net` defaults to a new one with the official
    code's blocks and the sizes of the case's model; with `compile` its forward runs under `torch.compile`."""
    net = net if net is not None else build(Sizes.of(case.task.model), attn_implementation="timm")
    if compile:
        net.forward = torch.compile(net.forward)
    o = case.config.optimizer
    trainable = freeze_like_reference(net)
    optimizer = torch.optim.AdamW(trainable, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.get("eps", 1e-8),
                                  weight_decay=o.weight_decay)
    video = torch.from_numpy(case.batch["video"]).permute(0, 1, 4, 2, 3).contiguous()  # uint8 [B, T, 3, H, W]
    fbank = torch.from_numpy(case.batch["fbank"])[:, None]  # [B, 1, time, mel]
    labels = torch.from_numpy(case.batch["label"]).long()

    def train():
        net.train()
        logits = net(video.float() / 255.0, fbank)[0]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        if o.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(trainable, o.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def inference():
        net.eval()
        with torch.inference_mode():
            return net(video.float() / 255.0, fbank)[0]

    return {"train": train, "inference": inference}


def freeze_like_reference(model) -> list:
    """Sets `requires_grad` as the reference's `main.py` does; returns the trainable parameters."""
    trainable = []
    for key, params in reference_parameters(model).items():
        for param in params:
            param.requires_grad_(reference_trainable(key))
            if param.requires_grad:
                trainable.append(param)
    return trainable


@functools.cache
def modules() -> types.SimpleNamespace:
    """The model's `torch.nn.Module` classes (defined here so that importing the file needs no torch)."""
    import torch
    import transformers
    from transformers.models.vit.modeling_vit import ViTLayer

    F = torch.nn.functional

    class TimmBlock(torch.nn.Module):
        """The official code's encoder block (timm's `Block`, as MAE-Face and AudioMAE build it): pre-LN, one
        fused q/k/v projection, `scaled_dot_product_attention`, exact GELU MLP."""

        def __init__(self, s: Sizes):
            super().__init__()
            self.heads = s.num_heads
            self.norm1, self.norm2 = torch.nn.LayerNorm(s.width, eps=1e-6), torch.nn.LayerNorm(s.width, eps=1e-6)
            self.qkv, self.proj = torch.nn.Linear(s.width, 3 * s.width), torch.nn.Linear(s.width, s.width)
            self.fc1, self.fc2 = torch.nn.Linear(s.width, s.mlp_dim), torch.nn.Linear(s.mlp_dim, s.width)

        def forward(self, x):
            batch, tokens, width = x.shape
            qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, width // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
            x = x + self.proj(attended)
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def vit_layer(s: Sizes, attn_implementation: str):
        if attn_implementation == "timm":
            return TimmBlock(s)
        config = transformers.ViTConfig(hidden_size=s.width, num_attention_heads=s.num_heads,
                                        intermediate_size=s.mlp_dim, layer_norm_eps=1e-6, hidden_act="gelu",
                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        config._attn_implementation = attn_implementation
        return ViTLayer(config)

    def linears(n, d_in, d_out, bias=True):
        return torch.nn.ModuleList(torch.nn.Linear(d_in, d_out, bias=bias) for _ in range(n))

    class Encoder(torch.nn.Module):
        """A frozen ViT with prompt tokens after the patches, and its own side of the fusion: the latent ->
        width up-projection (`temporal_att_post`), the tanh gate (`all_gate`) and the progressive prompt
        updates (`learnable_prompts_progr`)."""

        def __init__(self, s: Sizes, channels: int, patches: int, head_classes: int, attn_implementation: str):
            super().__init__()
            self.s, self.patches = s, patches
            self.patch_embed = torch.nn.Conv2d(channels, s.width, s.patch_size, stride=s.patch_size)
            self.cls_token = torch.nn.Parameter(torch.randn(1, 1, s.width))
            self.pos_embed = torch.nn.Parameter(torch.randn(1, 1 + patches + s.num_prompts, s.width))
            self.prompts = torch.nn.Parameter(torch.randn(s.num_prompts, s.width) * s.width**-0.5)
            per_group = s.num_prompts // s.prompt_groups
            self.prompt_updates = torch.nn.ParameterList(
                torch.nn.Parameter(torch.randn(per_group, s.width) * s.width**-0.5) for _ in range(s.prompt_groups))
            self.blocks = torch.nn.ModuleList(vit_layer(s, attn_implementation) for _ in range(s.depth))
            self.norm = torch.nn.LayerNorm(s.width, eps=1e-6)
            self.head = torch.nn.Linear(s.width, head_classes)  # in the reference's encoders, never called
            self.up = linears(s.depth, s.latent_dim, s.width)
            self.gates = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(1)) for _ in range(s.depth))

        def embed(self, images):
            x = self.patch_embed(images).flatten(2).transpose(1, 2)
            batch = x.shape[0]
            x = torch.cat([self.cls_token.expand(batch, -1, -1), x, self.prompts.expand(batch, -1, -1)], dim=1)
            return x + self.pos_embed

        def fuse(self, i, x, latent):
            """Gated residual up-projection, then after layers 0, stride, ... group g's prompt-slot update."""
            s = self.s
            x = x + torch.tanh(self.gates[i]) * F.gelu(self.up[i](latent))
            group = i // s.prompt_stride
            if i % s.prompt_stride == 0 and group < s.prompt_groups:
                per_group = s.num_prompts // s.prompt_groups
                start = 1 + self.patches + group * per_group
                update = torch.zeros_like(x)
                update[:, start:start + per_group] = self.prompt_updates[group]
                x = x + update
            return x

    class TemporalLayer(torch.nn.Module):
        """Pre-norm attention (q and fused kv without bias, heads as (h d)) and tanh-GELU MLP, both residual.
        `attn_norm2` / `mlp_norm2` mirror the reference PreNorm's second LayerNorm, which is never called."""

        def __init__(self, s: Sizes):
            super().__init__()
            width, self.heads = s.temporal_width, s.temporal_heads
            self.attn_norm, self.attn_norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
            self.to_q = torch.nn.Linear(width, width, bias=False)
            self.to_kv = torch.nn.Linear(width, 2 * width, bias=False)
            self.to_out = torch.nn.Linear(width, width)
            self.mlp_norm, self.mlp_norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
            self.fc1, self.fc2 = torch.nn.Linear(width, s.temporal_mlp_dim), torch.nn.Linear(s.temporal_mlp_dim, width)

        def forward(self, x):
            batch, steps, _ = x.shape
            split = lambda t: t.reshape(batch, steps, self.heads, -1).transpose(1, 2)
            y = self.attn_norm(x)
            key, value = self.to_kv(y).chunk(2, dim=-1)
            query, key, value = split(self.to_q(y)), split(key), split(value)
            weights = (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(dim=-1)
            x = x + self.to_out((weights @ value).transpose(1, 2).reshape(batch, steps, -1))
            hidden = self.fc1(self.mlp_norm(x))
            hidden = 0.5 * hidden * (1 + torch.tanh((2 / np.pi) ** 0.5 * (hidden + 0.044715 * hidden**3)))
            return x + self.fc2(hidden)

    class Temporal(torch.nn.Module):
        """`Temporal_Transformer_Cls`: CLS + positions (N(0, 1)), pre-norm layers, no final norm."""

        def __init__(self, s: Sizes):
            super().__init__()
            self.cls_token = torch.nn.Parameter(torch.randn(1, 1, s.temporal_width))
            self.pos_embedding = torch.nn.Parameter(torch.randn(1, s.num_frames + 1, s.temporal_width))
            self.layers = torch.nn.ModuleList(TemporalLayer(s) for _ in range(s.temporal_depth))

        def forward(self, x):
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
            for layer in self.layers:
                x = layer(x)
            return x[:, 0]

    class MMADFER(torch.nn.Module):
        def __init__(self, s: Sizes, attn_implementation: str = "eager"):
            super().__init__()
            self.s = s
            # The unused heads as the reference builds them: MAE-Face's 12 outputs, timm's default 1000.
            self.video = Encoder(s, 3, s.video_patches, 12, attn_implementation)
            self.audio = Encoder(s, 1, s.audio_patches, 1000, attn_implementation)
            self.video_down = linears(s.depth, s.width, s.latent_dim)
            self.audio_down = linears(s.depth, s.width, s.latent_dim)
            self.video_down_norm = torch.nn.ModuleList(torch.nn.LayerNorm(s.latent_dim) for _ in range(s.depth))
            self.audio_down_norm = torch.nn.ModuleList(torch.nn.LayerNorm(s.latent_dim) for _ in range(s.depth))
            self.temporal = Temporal(s)
            self.joint_proj = torch.nn.Linear(s.width, s.temporal_width)
            self.classifier = torch.nn.Linear(s.temporal_width, s.num_classes)

        def forward(self, video, audio):
            """video [B, T, 3, H, W], audio [B, 1, time, mel] -> (logits, video CLS [B, T, D], audio CLS [B, D])."""
            s = self.s
            clips, frames = video.shape[:2]
            x, a = self.video.embed(video.flatten(0, 1)), self.audio.embed(audio)
            for i in range(s.depth):
                a, x = self.audio.blocks[i](a), self.video.blocks[i](x)
                z_video = self.video_down_norm[i](self.video_down[i](x))
                z_audio = self.audio_down_norm[i](self.audio_down[i](a))
                audio_summary = z_audio.mean(1).unsqueeze(1).repeat_interleave(frames, 0)
                video_summary = z_video.view(clips, frames, -1, s.latent_dim).mean(1).mean(1).unsqueeze(1)
                x = self.video.fuse(i, x, z_video + audio_summary)
                a = self.audio.fuse(i, a, z_audio + video_summary)
            video_cls = self.video.norm(x)[:, 0].reshape(clips, frames, s.width)
            audio_cls = self.audio.norm(a)[:, 0]
            feature = self.temporal(self.joint_proj(video_cls + audio_cls.unsqueeze(1)))
            return self.classifier(feature), video_cls, audio_cls

    # ------------------------------------------------------------- the reference's state-dict names

    def add_module(out, name, module):
        out[name + ".weight"] = [module.weight]
        if getattr(module, "bias", None) is not None:
            out[name + ".bias"] = [module.bias]

    def timm_block(layer, at):
        """One encoder block under timm's names; a HF `ViTLayer` lists q/k/v for the fused `attn.qkv`."""
        if isinstance(layer, TimmBlock):
            out = {}
            for name, module in (("attn.qkv", layer.qkv), ("attn.proj", layer.proj), ("norm1", layer.norm1),
                                 ("norm2", layer.norm2), ("mlp.fc1", layer.fc1), ("mlp.fc2", layer.fc2)):
                add_module(out, at + name, module)
            return out
        attention = layer.attention
        projections = [attention.q_proj, attention.k_proj, attention.v_proj]
        out = {at + "attn.qkv.weight": [p.weight for p in projections],
               at + "attn.qkv.bias": [p.bias for p in projections]}
        for name, module in (("attn.proj", attention.o_proj), ("norm1", layer.layernorm_before),
                             ("norm2", layer.layernorm_after), ("mlp.fc1", layer.mlp.fc1),
                             ("mlp.fc2", layer.mlp.fc2)):
            add_module(out, at + name, module)
        return out

    def encoder_names(encoder, name):
        out = {name + "cls_token": [encoder.cls_token], name + "pos_embed": [encoder.pos_embed],
               name + "learnable_prompts_init": [encoder.prompts]}
        add_module(out, name + "patch_embed.proj", encoder.patch_embed)
        for g, update in enumerate(encoder.prompt_updates):
            out[f"{name}learnable_prompts_progr.{g}"] = [update]
        for i, layer in enumerate(encoder.blocks):
            out.update(timm_block(layer, f"{name}blocks.{i}."))
            add_module(out, f"{name}temporal_att_post.{i}.0", encoder.up[i])
            out[f"{name}all_gate.{i}"] = [encoder.gates[i]]
        add_module(out, name + "norm", encoder.norm)
        add_module(out, name + "head", encoder.head)
        return out

    def temporal_names(temporal):
        out = {"temporal_net.cls_token": [temporal.cls_token],
               "temporal_net.pos_embedding": [temporal.pos_embedding]}
        for i, layer in enumerate(temporal.layers):
            at = f"temporal_net.temporal_transformer.layers.{i}."
            attn, ff = at + "0.fn.", at + "1.fn."
            for name, module in (("norm", layer.attn_norm), ("norm2", layer.attn_norm2), ("fn.to_q", layer.to_q),
                                 ("fn.to_kv", layer.to_kv), ("fn.to_out.0", layer.to_out)):
                add_module(out, attn + name, module)
            for name, module in (("norm", layer.mlp_norm), ("norm2", layer.mlp_norm2), ("fn.net.0", layer.fc1),
                                 ("fn.net.3", layer.fc2)):
                add_module(out, ff + name, module)
        return out

    def named_for_reference(model):
        """The reference's names (the adapters' down-projections live in its image encoder)."""
        out = {**encoder_names(model.video, "image_encoder."), **encoder_names(model.audio, "audio_model.")}
        for i in range(model.s.depth):
            add_module(out, f"image_encoder.temporal_pre.{i}", model.video_down[i])
            add_module(out, f"image_encoder.temporal_pre_norm.{i}", model.video_down_norm[i])
            add_module(out, f"image_encoder.audio_proj_pre.{i}.0", model.audio_down[i])
            add_module(out, f"image_encoder.audio_proj_pre.{i}.1", model.audio_down_norm[i])
        out.update(temporal_names(model.temporal))
        add_module(out, "vision_proj", model.joint_proj)
        add_module(out, "our_classifier", model.classifier)
        return out

    return types.SimpleNamespace(Encoder=Encoder, TimmBlock=TimmBlock, TemporalLayer=TemporalLayer, Temporal=Temporal,
                                 MMADFER=MMADFER, named_for_reference=named_for_reference)
