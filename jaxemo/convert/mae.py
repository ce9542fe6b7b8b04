"""MAE checkpoints -> `jaxemo.models.mae.MAE` params, from either layout:

- the official MAE / timm naming (`blocks.{i}.attn.qkv`, `decoder_embed`, `mask_token`, `decoder_blocks.{i}`,
  `decoder_norm`, `decoder_pred`): `mae_pretrain_vit_*.pth` (encoder only) and `mae_visualize_vit_*.pth` /
  `*_full` checkpoints (encoder and decoder);
- transformers' `ViTMAEForPreTraining` (`vit.*`, `decoder.*`), hub files or transformers >= 5 in-memory names.

    params, unused = from_timm_mae(load_state_dict(path), num_heads=16, decoder_heads=16)  # torch_state's
    params = from_hf_mae(hf_model.state_dict(), num_heads=12, decoder_heads=16)

An encoder-only checkpoint gives params without the decoder (`decoder_*`, `mask_token` absent): `init` the
model and overlay them (`merge_encoder`) to start the decoder fresh, as MAE fine-tuning and UniEmoX do. The
fixed sin-cos position tables of both layouts are not parameters in jaxemo; they are checked against
jaxemo's own table, so a checkpoint for another grid fails loudly instead of silently.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxemo import vit
from jaxemo.convert import vit as convert_vit
from jaxemo.convert.common import StateDictReader, dense_params, layer_count, norm_params

_TIMM_DECODER = dict(convert_vit.TIMM_BLOCK_NAMES, layer="decoder_blocks.{}.", qkv_weight="attn.qkv.weight",
                     qkv_bias="attn.qkv.bias")


def _check_sincos(table, width: int, name: str) -> None:
    table = np.asarray(table, np.float32)
    patches = table.shape[1] - 1
    side = int(round(patches**0.5))
    if side * side != patches:
        raise ValueError(f"{name}: {patches} grid positions are not a square grid")
    expected = vit.sincos_pos_embed_2d(width, (side, side))
    if table.shape != expected.shape or not np.allclose(table, expected, atol=1e-4):
        raise ValueError(f"{name}: not MAE's fixed 2-D sin-cos table for a {side}x{side} grid (jaxemo computes "
                         f"that table itself; a learned or resized table is not supported here)")


def _decoder_head(sd: StateDictReader, width: int, names: dict) -> dict:
    """decoder_embed, mask_token, decoder_norm, decoder_pred under `names` (role -> key)."""
    embed = dense_params(*sd.linear(names["embed"], (None, width)))
    decoder_width = embed["kernel"].shape[1]
    pred_weight = sd.get(names["pred"] + ".weight", (None, decoder_width))
    return {
        "decoder_embed": embed,
        "mask_token": sd.get(names["mask_token"], (1, 1, decoder_width)),
        "decoder_norm": norm_params(*sd.layer_norm(names["norm"], decoder_width)),
        "decoder_pred": dense_params(pred_weight, sd.get(names["pred"] + ".bias", (pred_weight.shape[0],))),
    }


def from_timm_mae(state_dict: Mapping[str, Any], num_heads: int, decoder_heads: int = 16,
                  scan: bool = True) -> tuple[dict, list[str]]:
    """Official MAE / timm-named state dict -> (`MAE` params, unused keys). Without `decoder_*` keys the
    params hold the encoder only."""
    encoder, _ = convert_vit.from_timm_vit(state_dict, num_heads, scan)
    width = encoder["cls_token"].shape[-1]
    _check_sincos(encoder.pop("pos_embed"), width, "pos_embed")
    encoder.pop("head", None)
    params = {"encoder": encoder}
    sd = StateDictReader(state_dict, "", "official MAE")
    depth = layer_count(state_dict, "decoder_blocks.")
    if depth:
        head = _decoder_head(sd, width, dict(embed="decoder_embed", mask_token="mask_token", norm="decoder_norm",
                                             pred="decoder_pred"))
        decoder_width = head["mask_token"].shape[-1]
        _check_sincos(sd.get("decoder_pos_embed", (1, None, decoder_width)), decoder_width, "decoder_pos_embed")
        params.update(head)
        params["decoder"] = convert_vit.stacked_blocks(sd, _TIMM_DECODER, depth, decoder_width, decoder_heads,
                                                       scan, fused_qkv=True)
    encoder_keys = {k for k in state_dict if k.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed",
                                                           "norm.", "fc_norm.", "head."))}
    return params, [k for k in sd.unused() if k not in encoder_keys]


def from_hf_mae(state_dict: Mapping[str, Any], num_heads: int, decoder_heads: int, scan: bool = True) -> dict:
    """transformers `ViTMAEForPreTraining` state dict (hub or transformers >= 5 names) -> `MAE` params."""
    depth = max(layer_count(state_dict, "vit.encoder.layer."), layer_count(state_dict, "vit.layers."))
    if not depth:
        raise ValueError("not a ViTMAEForPreTraining state dict: no vit.encoder.layer.* or vit.layers.* keys")
    encoder = convert_vit.from_hf_vit(state_dict, depth, num_heads, scan, prefix="vit.")
    width = encoder["cls_token"].shape[-1]
    _check_sincos(encoder.pop("pos_embed"), width, "vit.embeddings.position_embeddings")
    params = {"encoder": encoder}
    sd = StateDictReader(state_dict, "decoder.", "ViTMAEForPreTraining decoder")
    head = _decoder_head(sd, width, dict(embed="decoder_embed", mask_token="mask_token", norm="decoder_norm",
                                         pred="decoder_pred"))
    decoder_width = head["mask_token"].shape[-1]
    _check_sincos(sd.get("decoder_pos_embed", (1, None, decoder_width)), decoder_width, "decoder.decoder_pos_embed")
    v5 = any(k.startswith("decoder.decoder_layers.0.attention.q_proj") for k in state_dict)
    names = dict(convert_vit.HF_V5_BLOCK_NAMES if v5 else convert_vit.HF_BLOCK_NAMES, layer="decoder_layers.{}.")
    decoder_depth = layer_count(state_dict, "decoder.decoder_layers.")
    params.update(head)
    params["decoder"] = convert_vit.stacked_blocks(sd, names, decoder_depth, decoder_width, decoder_heads, scan)
    leftover = [k for k in sd.unused() if not k.startswith("vit.")]  # the encoder's are checked by from_hf_vit
    if leftover:
        raise ValueError(f"unexpected keys in the ViTMAEForPreTraining state dict: {leftover}")
    return params


def merge_encoder(params: dict, converted: dict) -> dict:
    """`params` (an `MAE`'s init) with every part `converted` has replaced, shapes checked: an encoder-only
    checkpoint keeps the initialised decoder."""
    out = dict(params)
    for name, value in converted.items():
        if name not in params:
            raise KeyError(f"converted part {name!r} is not in the model's params ({sorted(params)})")
        _check_shapes(params[name], value, name)
        out[name] = value
    return out


def _check_shapes(expected, got, path: str) -> None:
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping) or set(expected) != set(got):
            raise ValueError(f"{path}: keys {sorted(got) if isinstance(got, Mapping) else type(got).__name__} do "
                             f"not match the model's {sorted(expected)}")
        for key in expected:
            _check_shapes(expected[key], got[key], f"{path}/{key}")
    elif tuple(np.shape(expected)) != tuple(np.shape(got)):
        raise ValueError(f"{path}: checkpoint shape {tuple(np.shape(got))}, model shape {tuple(np.shape(expected))}")
