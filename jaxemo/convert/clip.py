"""CLIP checkpoints -> `jaxemo.models.clip.CLIP` params.

    params = from_hf_clip(hf_model.state_dict(), vision_heads=12, text_heads=8)    # transformers' CLIPModel
    params = from_openai_clip(load_state_dict("ViT-B-16.pt"), 12, 8)               # OpenAI / open_clip

transformers' `CLIPModel` names (`vision_model.*`, `text_model.*`, `visual_projection`, `text_projection`,
`logit_scale`), as its hub files and its in-memory state dicts hold them; OpenAI's and open_clip's names
(`visual.conv1`, `visual.transformer.resblocks.{i}.attn.in_proj_weight` (fused q/k/v), `visual.proj`,
`transformer.resblocks.{i}`, `ln_final`, `text_projection`, ...), as the TorchScript `.pt` archives and
open_clip's `.bin` / `.safetensors` files hold them. Every key must be used: a missing one is named, a
leftover one listed, a shape mismatch names the key and both shapes.
"""

from __future__ import annotations

from typing import Any, Mapping

from jaxemo.convert.common import StateDictReader, layer_count, norm_params
from jaxemo.convert.vit import stacked_blocks

_HF_CLIP_LAYER = dict(layer="encoder.layers.{}.", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                      proj="self_attn.out_proj", fc1="mlp.fc1", fc2="mlp.fc2", norm1="layer_norm1",
                      norm2="layer_norm2")


def _count(state_dict: Mapping[str, Any], start: str) -> int:
    depth = layer_count(state_dict, start)
    if not depth:
        raise ValueError(f"not a CLIP state dict: no {start}* keys")
    return depth


def _tower_blocks(sd: StateDictReader, width: int, num_heads: int, scan: bool) -> dict:
    depth = _count(sd.arrays, sd.prefix + "encoder.layers.")
    return stacked_blocks(sd, _HF_CLIP_LAYER, depth, width, num_heads, scan)


def from_hf_clip(state_dict: Mapping[str, Any], vision_heads: int, text_heads: int, scan: bool = True) -> dict:
    vision = StateDictReader(state_dict, "vision_model.", "CLIPModel vision tower")
    cls = vision.get("embeddings.class_embedding", (None,))
    width = cls.shape[0]
    patch = vision.get("embeddings.patch_embedding.weight", (width, 3, None, None))
    visual = {
        "cls_token": cls.reshape(1, 1, width),
        "patch_embed": {"kernel": patch.transpose(2, 3, 1, 0)},
        "pos_embed": vision.get("embeddings.position_embedding.weight", (None, width))[None],
        "norm_pre": norm_params(*vision.layer_norm("pre_layrnorm", width)),
        "encoder": _tower_blocks(vision, width, vision_heads, scan),
        "norm": norm_params(*vision.layer_norm("post_layernorm", width)),
    }
    text = StateDictReader(state_dict, "text_model.", "CLIPModel text tower")
    tokens = text.get("embeddings.token_embedding.weight", (None, None))
    text_width = tokens.shape[1]
    text_params = {
        "token_embedding": {"embedding": tokens},
        "position_embedding": text.get("embeddings.position_embedding.weight", (None, text_width)),
        "encoder": _tower_blocks(text, text_width, text_heads, scan),
        "final_norm": norm_params(*text.layer_norm("final_layer_norm", text_width)),
    }
    root = StateDictReader(state_dict, "", "CLIPModel")
    params = {
        "visual": visual,
        "text": text_params,
        "visual_projection": {"kernel": root.get("visual_projection.weight", (None, width)).T},
        "text_projection": {"kernel": root.get("text_projection.weight", (None, text_width)).T},
        "logit_scale": root.get("logit_scale", ()),
    }
    used = vision.used | text.used | root.used
    leftover = sorted(k for k in state_dict if k not in used and not k.endswith("position_ids"))
    if leftover:
        raise ValueError(f"unexpected keys in the CLIPModel state dict: {leftover}")
    return params


_OPENAI_LAYER = dict(layer="transformer.resblocks.{}.", qkv_weight="attn.in_proj_weight",
                     qkv_bias="attn.in_proj_bias", proj="attn.out_proj", fc1="mlp.c_fc",
                     fc2="mlp.c_proj", norm1="ln_1", norm2="ln_2")
# Entries of OpenAI's TorchScript archives and open_clip's state dicts that are not weights.
_OPENAI_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _openai_blocks(sd: StateDictReader, width: int, num_heads: int, scan: bool) -> dict:
    depth = _count(sd.arrays, sd.prefix + "transformer.resblocks.")
    return stacked_blocks(sd, _OPENAI_LAYER, depth, width, num_heads, scan, fused_qkv=True)


def from_openai_clip(state_dict: Mapping[str, Any], vision_heads: int, text_heads: int, scan: bool = True) -> dict:
    """OpenAI CLIP / open_clip state dict (ViT image tower) -> `CLIP` params."""
    if "visual.conv1.weight" not in state_dict:
        raise ValueError("not an OpenAI / open_clip ViT CLIP state dict: no 'visual.conv1.weight' (ResNet image "
                         "towers are not supported)")
    vision = StateDictReader(state_dict, "visual.", "OpenAI CLIP image tower")
    cls = vision.get("class_embedding", (None,))
    width = cls.shape[0]
    visual = {
        "cls_token": cls.reshape(1, 1, width),
        "patch_embed": {"kernel": vision.get("conv1.weight", (width, 3, None, None)).transpose(2, 3, 1, 0)},
        "pos_embed": vision.get("positional_embedding", (None, width))[None],
        "norm_pre": norm_params(*vision.layer_norm("ln_pre", width)),
        "encoder": _openai_blocks(vision, width, vision_heads, scan),
        "norm": norm_params(*vision.layer_norm("ln_post", width)),
    }
    root = StateDictReader(state_dict, "", "OpenAI CLIP")
    tokens = root.get("token_embedding.weight", (None, None))
    text_width = tokens.shape[1]
    text = {
        "token_embedding": {"embedding": tokens},
        "position_embedding": root.get("positional_embedding", (None, text_width)),
        "encoder": _openai_blocks(root, text_width, text_heads, scan),
        "final_norm": norm_params(*root.layer_norm("ln_final", text_width)),
    }
    params = {
        "visual": visual,
        "text": text,
        "visual_projection": {"kernel": vision.get("proj", (width, None))},
        "text_projection": {"kernel": root.get("text_projection", (text_width, None))},
        "logit_scale": root.get("logit_scale", ()),
    }
    used = vision.used | root.used
    leftover = sorted(k for k in state_dict if k not in used and k.split(".")[-1] not in _OPENAI_NOT_WEIGHTS)
    if leftover:
        raise ValueError(f"unexpected keys in the OpenAI CLIP state dict: {leftover}")
    return params
