"""PyTorch ViT checkpoints (HuggingFace transformers, timm / MAE / AudioMAE) -> `jaxemo.vit.ViT` params.

The converters take a state dict whose values are numpy arrays or torch tensors (torch is never imported
here) and return a plain nested dict of float32 numpy arrays, ready for `model.apply({"params": params}, x)`:

    params = from_hf_vit(hf_model.state_dict(), depth=12, num_heads=12)
    params, unused = from_timm_vit(load_state_dict("mae_pretrain_vit_base.pth"), num_heads=12)

(`load_state_dict` is `jaxemo.convert.torch_state`'s; the key / leaf helpers are `jaxemo.convert.common`'s.)
Torch conventions mapped here: Linear weight [out, in] -> kernel [in, out]; q/k/v -> DenseGeneral kernel
[D, heads, head_dim] and bias [heads, head_dim]; attention output -> kernel [heads, head_dim, D];
Conv2d OIHW -> HWIO; LayerNorm weight -> scale. Position embeddings are copied as they are: resizing them
to another grid (or adding prompt positions) is the caller's job, see `fit_pos_embed`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxemo.convert.common import (
    StateDictReader,
    as_numpy_tree,
    block_stack_params,
    dense_params,
    heads_in_params,
    heads_out_params,
    layer_count,
    norm_params,
    to_numpy,
)

# Per-block module names, by role, in each supported layout (`stacked_blocks` reads any of them).
HF_BLOCK_NAMES = dict(
    layer="encoder.layer.{}.",
    q="attention.attention.query",
    k="attention.attention.key",
    v="attention.attention.value",
    proj="attention.output.dense",
    fc1="intermediate.dense",
    fc2="output.dense",
    norm1="layernorm_before",
    norm2="layernorm_after",
)
# transformers >= 5 renames the modules in memory (`model.state_dict()`); files on the hub keep the names above.
HF_V5_BLOCK_NAMES = dict(
    HF_BLOCK_NAMES,
    layer="layers.{}.",
    q="attention.q_proj",
    k="attention.k_proj",
    v="attention.v_proj",
    proj="attention.o_proj",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)
TIMM_BLOCK_NAMES = dict(layer="blocks.{}.", qkv="attn.qkv", proj="attn.proj", fc1="mlp.fc1", fc2="mlp.fc2",
                        norm1="norm1", norm2="norm2")


def _block(linear: Callable, norm: Callable, num_heads: int) -> dict:
    """One `EncoderBlock`'s params; `linear(role)` gives torch (weight, bias), `norm(role)` (weight, bias)."""
    attn = {name: heads_in_params(*linear(role), num_heads)
            for name, role in (("query", "q"), ("key", "k"), ("value", "v"))}
    attn["out"] = heads_out_params(*linear("proj"), num_heads)
    return {
        "norm1": norm_params(*norm("norm1")),
        "attn": attn,
        "norm2": norm_params(*norm("norm2")),
        "mlp": {"fc1": dense_params(*linear("fc1")), "fc2": dense_params(*linear("fc2"))},
    }


def _index(tree, i: int) -> Any:
    return {k: _index(v, i) for k, v in tree.items()} if isinstance(tree, dict) else tree[i]


def _check_heads(width: int, num_heads: int) -> None:
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads={num_heads}")


def _check_blocks_consumed(sd: StateDictReader, layer_prefix: str) -> None:
    """Every key under the blocks must have been used: a leftover is a feature jaxemo's block lacks."""
    leftover = [k for k in sd.unused() if k.startswith(sd.prefix + layer_prefix)]
    if leftover:
        raise ValueError(f"unsupported (or beyond `depth`) encoder keys in the {sd.layout} state dict: {leftover}")


def _embeddings(sd: StateDictReader, cls_token: str, pos_embed: str, patch: str) -> dict:
    width = sd.get(cls_token, (1, 1, None)).shape[-1]
    kernel = sd.get(patch + ".weight", (width, None, None, None))
    return {
        "cls_token": sd.get(cls_token, (1, 1, width)),
        "pos_embed": sd.get(pos_embed, (1, None, width)),
        "patch_embed": {"kernel": kernel.transpose(2, 3, 1, 0), "bias": sd.get(patch + ".bias", (width,))},
    }


def _head(sd: StateDictReader, name: str, width: int, prefixed: bool = True) -> dict:
    weight = sd.get(name + ".weight", (None, width), prefixed)
    return dense_params(weight, sd.get(name + ".bias", (weight.shape[0],), prefixed))


# ------------------------------------------------------------------------------------------ public API


def from_hf_vit(state_dict: Mapping[str, Any], depth: int, num_heads: int, scan: bool = True,
                prefix: str = "") -> dict:
    """HuggingFace `ViTModel` / `ViTForImageClassification` (prefix="vit.") state dict -> jaxemo ViT params.

    Accepts the hub checkpoint names (`encoder.layer.{i}.attention.attention.query`, ...) and the names
    transformers >= 5 uses in memory (`layers.{i}.attention.q_proj`, ...). The pooler (not part of jaxemo's
    ViT) is ignored; a root-level `classifier` becomes `head`.
    """
    v5 = any(k.startswith(prefix + "layers.") for k in state_dict)
    names = HF_V5_BLOCK_NAMES if v5 else HF_BLOCK_NAMES
    layout = "transformers>=5 ViT" if v5 else "HuggingFace ViT checkpoint"
    sd = StateDictReader(state_dict, prefix, layout, hint="; ViTForImageClassification weights need prefix='vit.'")
    params = _embeddings(sd, "embeddings.cls_token", "embeddings.position_embeddings",
                         "embeddings.patch_embeddings.projection")
    width = params["cls_token"].shape[-1]
    _check_heads(width, num_heads)
    mlp_dim = sd.get(names["layer"].format(0) + names["fc1"] + ".weight", (None, width)).shape[0]
    shapes = dict(q=(width, width), k=(width, width), v=(width, width), proj=(width, width),
                  fc1=(mlp_dim, width), fc2=(width, mlp_dim))

    def layer(i):
        at = names["layer"].format(i)
        linear = lambda role: sd.linear(at + names[role], shapes[role], optional_bias=role in ("q", "k", "v"))
        return _block(linear, lambda role: sd.layer_norm(at + names[role], width), num_heads)

    params["encoder"] = block_stack_params([layer(i) for i in range(depth)], scan)
    _check_blocks_consumed(sd, names["layer"].split("{")[0])
    params["norm"] = norm_params(*sd.layer_norm("layernorm", width))
    if "classifier.weight" in state_dict:
        params["head"] = _head(sd, "classifier", width, prefixed=False)
    return params


def stacked_blocks(sd: StateDictReader, names: dict, depth: int, width: int, num_heads: int, scan: bool,
                   fused_qkv: bool = False) -> dict:
    """`depth` `EncoderBlock`s under `names` (role -> module name under `names["layer"].format(i)`); with
    `fused_qkv`, q/k/v come from the full keys `names["qkv_weight"]` / `names["qkv_bias"]`, split in order."""
    mlp_dim = sd.get(names["layer"].format(0) + names["fc1"] + ".weight", (None, width)).shape[0]
    shapes = dict(q=(width, width), k=(width, width), v=(width, width), proj=(width, width), fc1=(mlp_dim, width),
                  fc2=(width, mlp_dim))

    def layer(i):
        at = names["layer"].format(i)
        linear = lambda role: sd.linear(at + names[role], shapes[role])
        if fused_qkv:
            weight = sd.get(at + names["qkv_weight"], (3 * width, width))
            bias = sd.get(at + names["qkv_bias"], (3 * width,))
            q_k_v = dict(zip("qkv", zip(np.split(weight, 3), np.split(bias, 3))))
            linear = lambda role: q_k_v[role] if role in q_k_v else sd.linear(at + names[role], shapes[role])
        return _block(linear, lambda role: sd.layer_norm(at + names[role], width), num_heads)

    return block_stack_params([layer(i) for i in range(depth)], scan)


def _timm_depth(state_dict: Mapping[str, Any], prefix: str) -> int:
    depth = layer_count(state_dict, prefix + "blocks.")
    if not depth:
        raise ValueError(f"state dict has no {prefix + 'blocks.'!r}* keys (expected the timm ViT layout, "
                         f"prefix={prefix!r})")
    return depth


def from_timm_vit(state_dict: Mapping[str, Any], num_heads: int, scan: bool = True,
                  prefix: str = "") -> tuple[dict, list[str]]:
    """timm `VisionTransformer` / MAE / MAE-Face / AudioMAE state dict -> `(params, unused_keys)`.

    The fused `attn.qkv` is split into query, key, value (in that order). Depth comes from the block indices.
    Keys outside the encoder (MAE `decoder_*`, `mask_token`, ...) are skipped and returned in `unused_keys`.
    The final norm is `norm`, or `fc_norm` when `norm` is absent (MAE fine-tuning with global pooling); note
    jaxemo normalises every token before pooling, whereas timm's `fc_norm` normalises the pooled feature.
    """
    sd = StateDictReader(state_dict, prefix, "timm ViT")
    depth = _timm_depth(state_dict, prefix)
    params = _embeddings(sd, "cls_token", "pos_embed", "patch_embed.proj")
    width = params["cls_token"].shape[-1]
    _check_heads(width, num_heads)
    names = TIMM_BLOCK_NAMES
    mlp_dim = sd.get(names["layer"].format(0) + names["fc1"] + ".weight", (None, width)).shape[0]
    shapes = dict(qkv=(3 * width, width), proj=(width, width), fc1=(mlp_dim, width), fc2=(width, mlp_dim))

    def layer(i):
        at = names["layer"].format(i)
        qkv_weight, qkv_bias = sd.linear(at + names["qkv"], shapes["qkv"], optional_bias=True)
        biases = [None] * 3 if qkv_bias is None else np.split(qkv_bias, 3)
        q_k_v = dict(zip("qkv", zip(np.split(qkv_weight, 3), biases)))
        linear = lambda role: q_k_v[role] if role in q_k_v else sd.linear(at + names[role], shapes[role])
        return _block(linear, lambda role: sd.layer_norm(at + names[role], width), num_heads)

    params["encoder"] = block_stack_params([layer(i) for i in range(depth)], scan)
    _check_blocks_consumed(sd, "blocks.")
    norm = "norm" if sd.has("norm.weight") or not sd.has("fc_norm.weight") else "fc_norm"
    params["norm"] = norm_params(*sd.layer_norm(norm, width))
    if sd.has("head.weight"):
        params["head"] = _head(sd, "head", width)
    return params, sd.unused()


def _layer_blocks(encoder: dict, scan: bool) -> list[dict]:
    """The per-layer `block` params of a BlockStack, in order, from either layout."""
    if scan:
        if set(encoder) != {"layers"} or set(encoder["layers"]) != {"block"}:
            raise ValueError(f"expected encoder/layers/block (scan layout), got encoder keys {sorted(encoder)}")
        stacked = encoder["layers"]["block"]
        depth = len(stacked["norm1"]["scale"])
        return [_index(stacked, i) for i in range(depth)]
    depth = len(encoder)
    if set(encoder) != {f"layers_{i}" for i in range(depth)} or any(set(v) != {"block"} for v in encoder.values()):
        raise ValueError(f"expected encoder/layers_{{i}}/block (loop layout), got encoder keys {sorted(encoder)}")
    return [encoder[f"layers_{i}"]["block"] for i in range(depth)]


def _timm_block(block: dict, at: str) -> dict:
    attn, width = block["attn"], block["norm1"]["scale"].shape[0]
    qkv = [attn[name] for name in ("query", "key", "value")]
    out = {at + "attn.qkv.weight": np.concatenate([p["kernel"].reshape(width, -1).T for p in qkv])}
    if "bias" in qkv[0]:
        out[at + "attn.qkv.bias"] = np.concatenate([p["bias"].reshape(-1) for p in qkv])
    out[at + "attn.proj.weight"] = attn["out"]["kernel"].reshape(-1, width).T
    out[at + "attn.proj.bias"] = attn["out"]["bias"]
    for norm in ("norm1", "norm2"):
        out[at + f"{norm}.weight"], out[at + f"{norm}.bias"] = block[norm]["scale"], block[norm]["bias"]
    for fc in ("fc1", "fc2"):
        dense = block["mlp"][fc]
        out[at + f"mlp.{fc}.weight"], out[at + f"mlp.{fc}.bias"] = dense["kernel"].T, dense["bias"]
    return out


def to_timm_vit(params: Mapping[str, Any], scan: bool = True) -> dict[str, np.ndarray]:
    """jaxemo ViT params -> timm-named state dict of float32 numpy arrays (inverse of `from_timm_vit`)."""
    params = as_numpy_tree(params)
    extra = sorted(set(params) - {"cls_token", "pos_embed", "patch_embed", "encoder", "norm", "head"})
    if extra:
        raise ValueError(f"params {extra} have no timm ViT counterpart; remove them before exporting")
    out = {
        "cls_token": params["cls_token"],
        "pos_embed": params["pos_embed"],
        "patch_embed.proj.weight": params["patch_embed"]["kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": params["patch_embed"]["bias"],
    }
    for i, block in enumerate(_layer_blocks(params["encoder"], scan)):
        out.update(_timm_block(block, f"blocks.{i}."))
    out["norm.weight"], out["norm.bias"] = params["norm"]["scale"], params["norm"]["bias"]
    if "head" in params:
        out["head.weight"], out["head.bias"] = params["head"]["kernel"].T, params["head"]["bias"]
    return out


def fit_pos_embed(pos_embed, old_grid: Sequence[int], new_grid: Sequence[int], num_prefix: int = 1,
                  num_extra: int = 0, rng=None) -> np.ndarray:
    """Resize a `[1, prefix + gh*gw, D]` table to `new_grid` and append `num_extra` N(0, 1) rows.

    The extra rows are the positions of jaxemo prompt tokens (placed after the patches), drawn the way
    MMA-DFER initialises its prompt-slot positions. `rng` is a numpy Generator or a seed (default 0).
    """
    from jaxemo.vit import resize_pos_embed  # imported here so that this module needs only numpy to load

    table = resize_pos_embed(to_numpy(pos_embed), old_grid, new_grid, num_prefix)
    if num_extra:
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
        extra = rng.standard_normal((1, num_extra, table.shape[-1])).astype(np.float32)
        table = np.concatenate([table, extra], axis=1)
    return table
