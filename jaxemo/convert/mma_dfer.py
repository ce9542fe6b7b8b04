"""MMA-DFER checkpoints (PyTorch, katerynaCh/MMA-DFER) <-> `jaxemo.models.mma_dfer.MMADFER` params.

Three entry points, all numpy-only (torch tensors or numpy arrays in, float32 numpy out):

    params, unused = from_reference_checkpoint(load_state_dict("model.pth"))      # torch_state.load_state_dict
    state_dict = to_reference_checkpoint(params, prefix="module.", extra={k: sd[k] for k in unused})
    params, unused = from_pretrained_encoders(mae_face_sd, audiomae_sd, template_params)

Where each reference parameter goes (i = layer, g = prompt group; `image_encoder.` is the video side,
`audio_model.` the audio side, both timm ViTs converted by `from_timm_vit`):

    {image_encoder,audio_model}.{patch_embed,cls_token,pos_embed,norm}  -> {video,audio}_encoder/...
    {image_encoder,audio_model}.blocks.{i}                    -> fusion_layers/{video,audio}_block [i]
    *.learnable_prompts_init [P, D]                           -> {video,audio}_encoder/prompts
    *.learnable_prompts_progr.{g} [P/G, D]                    -> {video,audio}_prompt_updates [g]
    image_encoder.temporal_pre.{i}, temporal_pre_norm.{i}     -> fusion_layers/adapter/video_down, _norm [i]
    image_encoder.audio_proj_pre.{i}.0, .1                    -> fusion_layers/adapter/audio_down, _norm [i]
    {image_encoder,audio_model}.temporal_att_post.{i}.0       -> fusion_layers/adapter/{video,audio}_up [i]
    {image_encoder,audio_model}.all_gate.{i}                  -> fusion_layers/adapter/{video,audio}_gate [i]
    temporal_net.cls_token, pos_embedding                     -> temporal/cls_token, pos_embed
    temporal_net.temporal_transformer.layers.{i}.0.fn.*       -> temporal/block_{i}/{norm1, attn}
    temporal_net.temporal_transformer.layers.{i}.1.fn.*       -> temporal/block_{i}/{norm2, mlp}
    vision_proj, our_classifier                               -> joint_proj, classifier

The encoders' `head.*` (never called by the reference) are reported as unused, and so are the temporal
layers' never-called `norm2` LayerNorms unless `reference_unused_norms=True` keeps them as the model's
`temporal/block_{i}_{attn,mlp}_unused_norm_*` parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxemo.convert.common import (
    StateDictReader,
    as_numpy_tree,
    dense_params,
    heads_in_params,
    heads_out_params,
    norm_params,
    stack_trees,
    to_numpy,
)
from jaxemo.convert.torch_state import data_parallel_prefix, select_state_dict
from jaxemo.convert.vit import fit_pos_embed, from_timm_vit, to_timm_vit

VIDEO, AUDIO = "image_encoder.", "audio_model."
_SIDES = (("video", VIDEO), ("audio", AUDIO))
_TEMPORAL_LAYER = "temporal_net.temporal_transformer.layers.{}."
_ENCODER_PARTS = ("patch_embed", "cls_token", "pos_embed", "norm")
_LAYOUT = "MMA-DFER checkpoint"


# ------------------------------------------------------------------------------------------- helpers


def _num_indexed(state_dict: Mapping[str, Any], start: str) -> int:
    """How many consecutive `start{i}` entries (`start{i}` or `start{i}.anything`) the state dict has."""
    pattern = re.compile(re.escape(start) + r"(\d+)(\.|$)")
    found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    count = 0
    while count in found:
        count += 1
    return count


def _encoder_from_timm(state_dict: Mapping[str, Any], prefix: str, num_heads: int) -> tuple[dict, dict, set]:
    """One encoder's timm ViT -> (`{patch_embed, cls_token, pos_embed, norm}`, stacked blocks, used keys)."""
    own = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    vit, unused = from_timm_vit(own, num_heads, prefix=prefix)
    used = set(own) - set(unused) - {prefix + "head.weight", prefix + "head.bias"}
    return {k: vit[k] for k in _ENCODER_PARTS}, vit["encoder"]["layers"]["block"], used


def _prompts(sd: StateDictReader, side: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """`learnable_prompts_init` [P, D] and the stacked `learnable_prompts_progr.{g}` [G, P/G, D]."""
    initial = sd.get(side + "learnable_prompts_init", (None, width))
    groups = max(1, _num_indexed(sd.arrays, sd.prefix + side + "learnable_prompts_progr."))
    if initial.shape[0] % groups:
        raise ValueError(f"{sd.prefix}{side}learnable_prompts_init has {initial.shape[0]} prompts, not a multiple "
                         f"of the {groups} learnable_prompts_progr groups")
    per_group = initial.shape[0] // groups
    updates = [sd.get(f"{side}learnable_prompts_progr.{g}", (per_group, width)) for g in range(groups)]
    return initial, np.stack(updates)


def _adapter_layer(sd: StateDictReader, i: int, width: int, latent: int) -> dict:
    linear = lambda name, shape: dense_params(*sd.linear(name, shape))
    return {
        "video_down": linear(f"{VIDEO}temporal_pre.{i}", (latent, width)),
        "video_down_norm": norm_params(*sd.layer_norm(f"{VIDEO}temporal_pre_norm.{i}", latent)),
        "audio_down": linear(f"{VIDEO}audio_proj_pre.{i}.0", (latent, width)),
        "audio_down_norm": norm_params(*sd.layer_norm(f"{VIDEO}audio_proj_pre.{i}.1", latent)),
        "video_up": linear(f"{VIDEO}temporal_att_post.{i}.0", (width, latent)),
        "audio_up": linear(f"{AUDIO}temporal_att_post.{i}.0", (width, latent)),
        "video_gate": sd.get(f"{VIDEO}all_gate.{i}", (1,)),
        "audio_gate": sd.get(f"{AUDIO}all_gate.{i}", (1,)),
    }


def _adapter(sd: StateDictReader, depth: int, width: int) -> dict:
    latent = sd.get(VIDEO + "temporal_pre.0.weight", (None, width)).shape[0]
    return stack_trees([_adapter_layer(sd, i, width, latent) for i in range(depth)])


def _temporal_block(sd: StateDictReader, i: int, width: int, num_heads: int) -> dict:
    attn, ff = _TEMPORAL_LAYER.format(i) + "0.fn.", _TEMPORAL_LAYER.format(i) + "1.fn."
    query = sd.get(attn + "fn.to_q.weight", (None, width))
    inner = query.shape[0]
    if inner != width or inner % num_heads:
        raise ValueError(f"{sd.prefix}{attn}fn.to_q.weight maps {width} -> {inner}: jaxemo's temporal attention "
                         f"needs heads * dim_head == width, divisible by temporal_heads={num_heads}")
    key, value = np.split(sd.get(attn + "fn.to_kv.weight", (2 * inner, width)), 2)  # to_kv = [k; v], (h d)
    mlp_dim = sd.get(ff + "fn.net.0.weight", (None, width)).shape[0]
    return {
        "norm1": norm_params(*sd.layer_norm(attn + "norm", width)),
        "attn": {
            "query": heads_in_params(query, None, num_heads),
            "key": heads_in_params(key, None, num_heads),
            "value": heads_in_params(value, None, num_heads),
            "out": heads_out_params(*sd.linear(attn + "fn.to_out.0", (width, inner)), num_heads),
        },
        "norm2": norm_params(*sd.layer_norm(ff + "norm", width)),
        "mlp": {"fc1": dense_params(*sd.linear(ff + "fn.net.0", (mlp_dim, width))),
                "fc2": dense_params(*sd.linear(ff + "fn.net.3", (width, mlp_dim)))},
    }


def _unused_norms(sd: StateDictReader, i: int, width: int) -> dict:
    """The PreNorms' `norm2` (defined, trained by weight decay, never called) as the model names them."""
    out = {}
    for part, branch in (("attn", "0"), ("mlp", "1")):
        scale, bias = sd.layer_norm(f"{_TEMPORAL_LAYER.format(i)}{branch}.fn.norm2", width)
        out[f"block_{i}_{part}_unused_norm_scale"], out[f"block_{i}_{part}_unused_norm_bias"] = scale, bias
    return out


def _temporal(sd: StateDictReader, num_heads: int, reference_unused_norms: bool) -> dict:
    cls_token = sd.get("temporal_net.cls_token", (1, 1, None))
    width = cls_token.shape[-1]
    params = {"cls_token": cls_token, "pos_embed": sd.get("temporal_net.pos_embedding", (1, None, width))}
    depth = max(1, _num_indexed(sd.arrays, sd.prefix + _TEMPORAL_LAYER.split("{")[0]))
    for i in range(depth):
        params[f"block_{i}"] = _temporal_block(sd, i, width, num_heads)
        if reference_unused_norms:
            params.update(_unused_norms(sd, i, width))
    return params


def _check_same_depth(video_blocks: dict, audio_blocks: dict) -> int:
    video_depth, audio_depth = (len(b["norm1"]["scale"]) for b in (video_blocks, audio_blocks))
    if video_depth != audio_depth:
        raise ValueError(f"the image encoder has {video_depth} blocks and the audio encoder {audio_depth}: "
                         f"MMA-DFER runs them in lockstep, so they must match")
    return video_depth


# ------------------------------------------------------------------------------ reference checkpoint


def from_reference_checkpoint(state_dict: Mapping[str, Any], num_heads: int = 12, temporal_heads: int = 8,
                              reference_unused_norms: bool = False) -> tuple[dict, list[str]]:
    """A trained MMA-DFER `state_dict` (keys with or without DataParallel's `module.`) -> `(params, unused)`.

    `params` is a plain nested dict of float32 arrays for `MMADFER(..., reference_unused_norms=...)` in its
    scanned layout; `unused` lists the keys it does not use (the encoders' `head.*` and, unless
    `reference_unused_norms`, the temporal `norm2`s). Sizes (width, depth, prompts, latent width, temporal
    width and depth, classes) come from the shapes; the head counts cannot, so pass them.
    A whole saved checkpoint (`{"state_dict": ...}`) is unwrapped.
    """
    state_dict = select_state_dict(state_dict, "state_dict")
    prefix = data_parallel_prefix(state_dict)
    sd = StateDictReader(state_dict, prefix, _LAYOUT)
    params, used = {"fusion_layers": {}}, set()
    for side, name in _SIDES:
        encoder, blocks, encoder_used = _encoder_from_timm(state_dict, prefix + name, num_heads)
        encoder["prompts"], params[f"{side}_prompt_updates"] = _prompts(sd, name, encoder["cls_token"].shape[-1])
        params[f"{side}_encoder"], params["fusion_layers"][f"{side}_block"] = encoder, blocks
        used |= encoder_used
    width = params["video_encoder"]["cls_token"].shape[-1]
    fusion = params["fusion_layers"]
    depth = _check_same_depth(fusion["video_block"], fusion["audio_block"])
    fusion["adapter"] = _adapter(sd, depth, width)
    params["temporal"] = _temporal(sd, temporal_heads, reference_unused_norms)
    temporal_width = params["temporal"]["cls_token"].shape[-1]
    params["joint_proj"] = dense_params(*sd.linear("vision_proj", (temporal_width, width)))
    params["classifier"] = dense_params(*sd.linear("our_classifier", (None, temporal_width)))
    return params, sorted(set(state_dict) - used - sd.used)


def _encoder_to_reference(params: dict, side: str, name: str) -> dict:
    encoder = params[f"{side}_encoder"]
    vit = {k: encoder[k] for k in _ENCODER_PARTS}
    vit["encoder"] = {"layers": {"block": params["fusion_layers"][f"{side}_block"]}}
    out = {name + k: v for k, v in to_timm_vit(vit).items()}
    out[name + "learnable_prompts_init"] = encoder["prompts"]
    for g, update in enumerate(params[f"{side}_prompt_updates"]):
        out[f"{name}learnable_prompts_progr.{g}"] = update
    return out


def _adapter_to_reference(adapter: dict) -> dict:
    out = {}
    for i in range(len(adapter["video_gate"])):
        layer = {k: {n: a[i] for n, a in v.items()} if isinstance(v, dict) else v[i] for k, v in adapter.items()}
        for key, module in (("video_down", f"{VIDEO}temporal_pre.{i}"),
                            ("audio_down", f"{VIDEO}audio_proj_pre.{i}.0"),
                            ("video_up", f"{VIDEO}temporal_att_post.{i}.0"),
                            ("audio_up", f"{AUDIO}temporal_att_post.{i}.0")):
            out[module + ".weight"], out[module + ".bias"] = layer[key]["kernel"].T, layer[key]["bias"]
        for key, module in (("video_down_norm", f"{VIDEO}temporal_pre_norm.{i}"),
                            ("audio_down_norm", f"{VIDEO}audio_proj_pre.{i}.1")):
            out[module + ".weight"], out[module + ".bias"] = layer[key]["scale"], layer[key]["bias"]
        out[f"{VIDEO}all_gate.{i}"], out[f"{AUDIO}all_gate.{i}"] = layer["video_gate"], layer["audio_gate"]
    return out


def _temporal_block_to_reference(temporal: dict, i: int) -> dict:
    block, at = temporal[f"block_{i}"], _TEMPORAL_LAYER.format(i)
    attn, ff, width = at + "0.fn.", at + "1.fn.", block["norm1"]["scale"].shape[0]
    fused = lambda name: block["attn"][name]["kernel"].reshape(width, -1).T
    out = {
        attn + "fn.to_q.weight": fused("query"),
        attn + "fn.to_kv.weight": np.concatenate([fused("key"), fused("value")]),
        attn + "fn.to_out.0.weight": block["attn"]["out"]["kernel"].reshape(-1, width).T,
        attn + "fn.to_out.0.bias": block["attn"]["out"]["bias"],
    }
    for fc, module in (("fc1", "fn.net.0"), ("fc2", "fn.net.3")):
        dense = block["mlp"][fc]
        out[f"{ff}{module}.weight"], out[f"{ff}{module}.bias"] = dense["kernel"].T, dense["bias"]
    for norm, branch, part in (("norm1", attn, "attn"), ("norm2", ff, "mlp")):
        out[branch + "norm.weight"], out[branch + "norm.bias"] = block[norm]["scale"], block[norm]["bias"]
        # The never-called norm2: the model's copy if it keeps one, else LayerNorm's initial ones / zeros.
        scale = temporal.get(f"block_{i}_{part}_unused_norm_scale", np.ones(width, np.float32))
        bias = temporal.get(f"block_{i}_{part}_unused_norm_bias", np.zeros(width, np.float32))
        out[branch + "norm2.weight"], out[branch + "norm2.bias"] = scale, bias
    return out


def _temporal_to_reference(temporal: dict) -> dict:
    out = {"temporal_net.cls_token": temporal["cls_token"], "temporal_net.pos_embedding": temporal["pos_embed"]}
    for i in range(_num_indexed(temporal, "block_")):
        out.update(_temporal_block_to_reference(temporal, i))
    return out


def to_reference_checkpoint(params: Mapping[str, Any], prefix: str = "",
                            extra: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """jaxemo MMA-DFER params -> the reference's state dict (float32 numpy), the inverse of
    `from_reference_checkpoint`.

    `prefix` goes before every generated key ("module." for the reference's DataParallel `evaluate.py`).
    `extra` entries are added as they are, after the generated ones: the reference loads strictly, so
    it needs the encoders' never-used `head.*` too (e.g. the `unused` entries of the original checkpoint).
    Temporal `norm2`s the params lack are written as LayerNorm's initial ones / zeros (they are never
    called). Takes params as `model.init` gives them (boxed, jax arrays) or plain numpy.
    """
    params = as_numpy_tree(params)
    out = {}
    for side, name in _SIDES:
        out.update(_encoder_to_reference(params, side, name))
    out.update(_adapter_to_reference(params["fusion_layers"]["adapter"]))
    out.update(_temporal_to_reference(params["temporal"]))
    for key, module in (("joint_proj", "vision_proj"), ("classifier", "our_classifier")):
        out[module + ".weight"], out[module + ".bias"] = params[key]["kernel"].T, params[key]["bias"]
    out = {prefix + k: np.asarray(v, np.float32) for k, v in out.items()}
    out.update({k: to_numpy(v) for k, v in (extra or {}).items()})
    return out


# --------------------------------------------------------------------------- pretrained encoders


def _square_grid(rows: int, what: str) -> tuple[int, int]:
    side = round(rows**0.5)
    if side * side != rows:
        raise ValueError(f"{what} has {rows} grid positions, not a square grid")
    return side, side


def _grids(side: str, old_rows: int, new_rows: int, audiomae_grid: Sequence[int], source: str) -> tuple:
    """(old grid, new grid) of the position table, as the reference resizes it."""
    if side == "video":  # timm's resize_pos_embed default: square grids
        return _square_grid(old_rows, f"{source} pos_embed"), _square_grid(new_rows, "the template pos_embed")
    old = tuple(audiomae_grid)
    if old[0] * old[1] != old_rows or new_rows % old[1]:
        raise ValueError(f"{source} pos_embed has {old_rows} grid positions, expected audiomae_grid={old} "
                         f"({old[0] * old[1]}), with the template's {new_rows} a multiple of its {old[1]} "
                         f"frequency columns")
    return old, (new_rows // old[1], old[1])  # the frequency axis is kept, time is resized


def _check_shapes(new: Any, template: Any, path: str, source: str) -> None:
    if isinstance(template, dict):
        parts = sorted(new) if isinstance(new, dict) else type(new).__name__
        if parts != sorted(template):
            raise ValueError(f"{source} gives {path} with parts {parts}, the template has {sorted(template)}")
        for k in template:
            _check_shapes(new[k], template[k], f"{path}/{k}", source)
    elif np.shape(new) != np.shape(template):
        raise ValueError(f"{source} gives {path} the shape {np.shape(new)}, the template expects "
                         f"{np.shape(template)}")


def _load_encoder(params: dict, side: str, state_dict: Mapping[str, Any], rng: np.random.Generator,
                  audiomae_grid: Sequence[int], source: str) -> list[str]:
    """Writes one pretrained ViT into `params` (in place); returns its unused keys."""
    blocks = params["fusion_layers"][f"{side}_block"]
    vit, unused = from_timm_vit(state_dict, num_heads=blocks["attn"]["query"]["kernel"].shape[2])
    if "head" in vit:
        unused = sorted(unused + ["head.weight", "head.bias"])
    encoder = params[f"{side}_encoder"]
    num_prompts = len(encoder.get("prompts", ()))
    old_rows, new_rows = vit["pos_embed"].shape[1] - 1, encoder["pos_embed"].shape[1] - 1 - num_prompts
    old_grid, new_grid = _grids(side, old_rows, new_rows, audiomae_grid, source)
    vit["pos_embed"] = fit_pos_embed(vit["pos_embed"], old_grid, new_grid, num_extra=num_prompts, rng=rng)
    for part in _ENCODER_PARTS:
        _check_shapes(vit[part], encoder[part], f"{side}_encoder/{part}", source)
        encoder[part] = vit[part]
    new_blocks = vit["encoder"]["layers"]["block"]
    _check_shapes(new_blocks, blocks, f"fusion_layers/{side}_block", source)
    params["fusion_layers"][f"{side}_block"] = new_blocks
    return unused


def from_pretrained_encoders(mae_face_state_dict: Mapping[str, Any], audiomae_state_dict: Mapping[str, Any],
                             template_params: Mapping[str, Any], rng_seed: int = 0,
                             audiomae_grid: Sequence[int] = (64, 8)) -> tuple[dict, dict[str, list[str]]]:
    """Initial MMA-DFER params for training, built as the reference's `GenerateModel.__init__` does.

    The MAE-Face ViT (timm names, e.g. `load_state_dict("mae_face_pretrain_vit_base.pth")`) fills
    `video_encoder` and `fusion_layers/video_block`, its `pos_embed` resized to the template's square grid
    (bicubic, torch-compatible). AudioMAE (`audiomae_pretrained.pth`) fills `audio_encoder` and
    `fusion_layers/audio_block`; its `pos_embed`, pretrained on 1024 x 128 fbanks (`audiomae_grid`, the
    reference's hard-coded 64 x 8), is resized along time to the template's grid (32 x 8 for 512 x 128).
    The prompt-slot position rows are N(0, 1), drawn from `rng_seed` (video first, then audio). Everything
    else (prompts, adapters, gates, temporal, joint_proj, classifier) is `template_params`, a freshly
    initialised jaxemo params tree (boxed or not). Whole saved checkpoints (`{"model": ...}`) are unwrapped.

    Returns `(params, unused)`, `unused` = {"mae_face": [...], "audiomae": [...]} (decoder, mask_token, head).
    """
    params = as_numpy_tree(template_params)
    rng = np.random.default_rng(rng_seed)
    unused = {}
    for key, side, state_dict, source in (("mae_face", "video", mae_face_state_dict, "MAE-Face checkpoint"),
                                          ("audiomae", "audio", audiomae_state_dict, "AudioMAE checkpoint")):
        state_dict = select_state_dict(state_dict, "model")
        unused[key] = _load_encoder(params, side, state_dict, rng, audiomae_grid, source)
    return params, unused
