"""u-emo pretraining checkpoints (UniEmoX's released code, chincharles/u-emo at d251937) -> the params of
`jaxemo.models.uniemox.UniEmoX` (`student/...`, `fuse/...`), to continue a u-emo pretraining run in jaxemo.

    converted = load("checkpoint.pth")                   # or from_uemo(torch.load(...)) on the saved dict
    converted.params                                     # {"student": MAE params, "fuse": Fusion params}
    python -m jaxemo.convert uemo checkpoint.pth runs/uemo_start    # then --config.pretrained.uemo=runs/uemo_start

What u-emo saves (`main_pretrain.py`, `utils/misc.py`):
- after every epoch, `<output_dir>/checkpoint.pth` = {"model": the MAE student's state dict, "att_fusion": the
  fusion's, "optimizer", "epoch": epochs done, "args": the run's argparse.Namespace}; both state dicts carry a
  `module.` prefix when the run was distributed (they are the DDP wrappers' state dicts);
- every 100 epochs, `misc.save_model`'s `checkpoint-<epoch>.pth` = {"model", "optimizer", "epoch", "scaler",
  "args"}: the student only, WITHOUT the fusion (refused unless `require_fusion=False`; the fusion then starts
  from its initialisation). `misc.save_attn` (unused by main_pretrain) would store a fusion as "attn".
Neither holds the CLIP teacher, the CLIP text tower that encodes the prompts or the YOLO detector: u-emo loads
them from their own weights on every run, and so does jaxemo (`teacher.checkpoint`).

The mapping, every key of both state dicts read or refused:
- "model", official MAE naming (u-emo's `models_mae.MaskedAutoencoderViT`, timm blocks with a fused qkv):
  patch_embed, cls_token, blocks.{i}, norm, decoder_embed, mask_token, decoder_blocks.{i}, decoder_norm,
  decoder_pred -> `student/...` (`jaxemo.convert.mae.from_timm_mae`); `pos_embed` and `decoder_pos_embed`, the
  fixed sin-cos tables, are checked against jaxemo's and not stored (jaxemo computes them; `checked`).
- "att_fusion", u-emo's default `AttentionFusion` ("easyfusion"): `bn` (the LayerNorm shared by both inputs,
  eps 1e-5) -> `fuse/norm`, `linear` -> `fuse/proj` (its ELU has no weights). That is `uniemox.Fusion` term for
  term: ELU(linear(bn(alpha) + bn(beta))), alpha / beta the scene / person CLS through `decoder_embed` (u-emo's
  `mid_feature`), u-emo's `torch.squeeze` of their [B, 1, C] shape being jaxemo's [B, C]. u-emo's other fusions
  (`--use_fusion` multihead_weighted_fusion, dual_layer_attention_fusion, mlp_attention_glu,
  deep_residual_bilinear) have no jaxemo counterpart and are refused, naming the class.
A missing key, a key of the wrong shape and a key u-emo's modules do not have are errors naming the key.
Not converted, and listed in `not_converted`: the optimizer (AdamW moments and step count), the AMP scaler,
the epoch counter and the args (read for the head counts and the notes, `notes`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import numpy as np

from jaxemo.convert import mae as convert_mae, torch_state
from jaxemo.convert.common import StateDictReader, dense_params, layer_count, norm_params

MODEL_ENTRY = "model"
FUSION_ENTRIES = ("att_fusion", "attn")  # main_pretrain's checkpoint.pth; misc.save_attn's
# u-emo's `models_mae` factories (`--model`): (encoder heads, decoder heads); the decoder is 512 x 8 x 16 heads.
MODEL_HEADS = {"mae_vit_base_patch16": (12, 16), "mae_vit_large_patch16": (16, 16),
               "mae_vit_huge_patch14": (16, 16)}
MODEL_HEADS.update({f"{name}_dec512d8b": heads for name, heads in list(MODEL_HEADS.items())})
WIDTH_HEADS, DECODER_WIDTH_HEADS = {768: 12, 1024: 16, 1280: 16}, {512: 16}
# u-emo's `--use_fusion` choices -> their classes in models/attention_fusion.py; jaxemo has "easyfusion" only.
FUSION_CLASSES = {"easyfusion": "AttentionFusion", "multihead_weighted_fusion": "MultiHeadWeightedSumFusion",
                  "dual_layer_attention_fusion": "MultiHeadAttentionFusion",
                  "mlp_attention_glu": "MLPMultiHeadAttentionGLU",
                  "deep_residual_bilinear": "DeepResidualBilinearPooling"}
FUSION_KEYS = ("bn.weight", "bn.bias", "linear.weight", "linear.bias")  # AttentionFusion's state dict
_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


@dataclasses.dataclass(frozen=True)
class UemoCheckpoint:
    """A converted u-emo checkpoint. `params`: `UniEmoX` params, `student` and (where the file has the fusion)
    `fuse`; `checked`: keys read and verified but not stored; `not_converted`: the saved dict's other entries;
    `epoch`: the saved "epoch" (checkpoint.pth: epochs done; checkpoint-<e>.pth: e, the last one's index);
    `args`: the run's settings that matter here; `heads`: the (encoder, decoder) head counts used; `notes`:
    what a continuation should know (the CLI prints them)."""

    params: dict
    checked: list[str]
    not_converted: list[str]
    epoch: Optional[int]
    args: dict
    heads: tuple[int, int]
    notes: list[str]


def mae_keys(depth: int, decoder_depth: int) -> set[str]:
    """Every key of u-emo's `MaskedAutoencoderViT` state dict with `depth` encoder and `decoder_depth` decoder
    blocks."""
    keys = {"cls_token", "pos_embed", "mask_token", "decoder_pos_embed"}
    for name in ("patch_embed.proj", "norm", "decoder_embed", "decoder_norm", "decoder_pred"):
        keys |= {f"{name}.weight", f"{name}.bias"}
    for stack, count in (("blocks", depth), ("decoder_blocks", decoder_depth)):
        keys |= {f"{stack}.{i}.{part}.{leaf}" for i in range(count) for part in _BLOCK_PARTS
                 for leaf in ("weight", "bias")}
    return keys


def heads_for(model_name: Optional[str]) -> Optional[tuple[int, int]]:
    """(encoder heads, decoder heads) of u-emo's `--model` name; None for a name it does not define."""
    return MODEL_HEADS.get(model_name) if model_name else None


def _heads(model: Mapping[str, Any], name: Optional[str], num_heads: Optional[int],
           decoder_heads: Optional[int]) -> tuple[int, int]:
    """The head counts (not in the weights): as given, else those of u-emo's `--model` `name`, else those of
    its factories' widths (768 / 1024 / 1280 -> 12 / 16 / 16; decoder 512 -> 16)."""
    named = heads_for(name)
    widths = {}
    for key, table, index in (("cls_token", WIDTH_HEADS, 0), ("mask_token", DECODER_WIDTH_HEADS, 1)):
        width = int(np.shape(model[key])[-1]) if key in model else None
        widths[index] = (width, table.get(width))
    out = []
    for index, given in enumerate((num_heads, decoder_heads)):
        width, by_width = widths[index]
        value = given or (named[index] if named else None) or by_width
        if not value:
            what = ("encoder", "decoder")[index]
            raise ValueError(f"no {what} head count: args.model={name!r} is not one of u-emo's "
                             f"{sorted(MODEL_HEADS)} and the {what} width {width} has no default: pass it "
                             f"(--num_heads / --decoder_heads)")
        out.append(int(value))
    return out[0], out[1]


def _run_args(args: Any) -> dict:
    """The run settings jaxemo reads from the saved `args` (an argparse.Namespace, or a dict)."""
    names = ("model", "input_size", "mask_ratio", "norm_pix_loss", "use_fusion", "use_component", "channels",
             "epochs", "warmup_epochs", "blr", "lr", "batch_size", "accum_iter")
    if args is None:
        return {}
    values = dict(args) if isinstance(args, Mapping) else vars(args)
    return {name: values[name] for name in names if values.get(name) is not None}


def _strip(state_dict: Mapping[str, Any], entry: str) -> dict:
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError(f"entry {entry!r} is not a state dict (got {type(state_dict).__name__})")
    prefix = torch_state.data_parallel_prefix(state_dict)
    return {k[len(prefix):]: v for k, v in state_dict.items()}


def student_params(state_dict: Mapping[str, Any], num_heads: int, decoder_heads: int,
                   scan: bool = True) -> tuple[dict, list[str]]:
    """(`MAE` params, keys checked but not stored) of u-emo's student state dict ("model", prefix stripped)."""
    depth, decoder_depth = layer_count(state_dict, "blocks."), layer_count(state_dict, "decoder_blocks.")
    if not depth:
        raise ValueError("'model' has no blocks.{i}.* keys: not u-emo's MaskedAutoencoderViT state dict")
    if not decoder_depth:
        raise ValueError("'model' has no decoder_blocks.{i}.* keys: a u-emo pretraining student has a decoder (an "
                         "encoder-only MAE checkpoint converts with `python -m jaxemo.convert mae`)")
    expected = mae_keys(depth, decoder_depth)
    missing, extra = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing:
        raise ValueError(f"'model' has no key {missing[0]!r} (u-emo's MaskedAutoencoderViT with {depth} encoder "
                         f"and {decoder_depth} decoder blocks; {len(missing)} missing: {missing[:8]})")
    if extra:
        raise ValueError(f"'model' has keys u-emo's MaskedAutoencoderViT does not: {extra[:8]}"
                         f"{' ...' if len(extra) > 8 else ''} ({len(extra)})")
    params, unused = convert_mae.from_timm_mae(state_dict, num_heads, decoder_heads, scan)
    if unused:  # every expected key is read by from_timm_mae; anything left is a bug in this mapping
        raise AssertionError(f"u-emo keys left unread: {unused}")
    return params, ["model/pos_embed", "model/decoder_pos_embed"]


def _fusion_class(state_dict: Mapping[str, Any]) -> str:
    """u-emo's fusion class a state dict that is not AttentionFusion's belongs to, read off its keys."""
    if "alpha" in state_dict or "layer_norm.weight" in state_dict:
        return FUSION_CLASSES["multihead_weighted_fusion"]
    if "gate.weight" in state_dict or "mlp.0.weight" in state_dict:
        return FUSION_CLASSES["mlp_attention_glu"]
    if "W_a.0.weight" in state_dict:
        return FUSION_CLASSES["dual_layer_attention_fusion"]
    return "an unknown module"


def fusion_params(state_dict: Mapping[str, Any], width: int, entry: str = "att_fusion") -> dict:
    """`uniemox.Fusion` params (`norm`, `proj`) of u-emo's `AttentionFusion` state dict (prefix stripped) at the
    student's projected-CLS width."""
    if not any(k in state_dict for k in FUSION_KEYS):
        raise ValueError(f"{entry!r} holds {_fusion_class(state_dict)} (keys {sorted(state_dict)[:6]}), not "
                         f"u-emo's AttentionFusion ('easyfusion', keys {list(FUSION_KEYS)}): jaxemo has that "
                         f"fusion only")
    sd = StateDictReader(state_dict, "", f"u-emo AttentionFusion ({entry!r})",
                         hint=f": {entry!r} must hold {list(FUSION_KEYS)}")
    params = {"norm": norm_params(*sd.layer_norm("bn", width)),
              "proj": dense_params(*sd.linear("linear", (width, width)))}
    if sd.unused():
        raise ValueError(f"{entry!r} has keys u-emo's AttentionFusion does not: {sd.unused()}")
    return params


def _notes(run: dict, epoch: Optional[int], has_fusion: bool) -> list[str]:
    notes = []
    if run:
        shown = ", ".join(f"{k}={run[k]}" for k in ("model", "input_size", "mask_ratio", "norm_pix_loss",
                                                     "use_fusion", "epochs") if k in run)
        notes.append(f"u-emo run: {shown}; saved epoch: {epoch if epoch is not None else 'none'}")
    components = run.get("use_component")
    if has_fusion and components is not None and "fusion" not in components:
        notes.append(f"the run's use_component={list(components)} leaves the fusion out of the loss: its weights "
                     f"never trained; --config.model.fusion=none continues that ablation")
    notes.append("u-emo's forward_decoder keeps the CLS prediction (x[:, :1]) and compares it with every patch: "
                 "--config.model.decoder_slice=reference continues that objective, 'patches' is upstream MAE's")
    notes.append("not carried over: the AdamW moments and step count, and the learning-rate schedule's position "
                 "(the jaxemo run starts at step 0: set pretrain.num_epochs and pretrain.optimizer.warmup_epochs "
                 "for the epochs left)")
    return notes


def from_uemo(saved: Any, num_heads: Optional[int] = None, decoder_heads: Optional[int] = None,
              require_fusion: bool = True, scan: bool = True) -> UemoCheckpoint:
    """The dict u-emo saved (`torch.load` of checkpoint.pth or checkpoint-<epoch>.pth; values torch tensors or
    numpy arrays) -> `UemoCheckpoint`. Head counts (not in the weights) default to those of the saved
    `args.model`, else to those of u-emo's models of the checkpoint's widths. A file without the fusion is
    refused unless `require_fusion=False`."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get(MODEL_ENTRY), Mapping):
        found = sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__
        raise ValueError(f"not a u-emo checkpoint: expected a dict with a {MODEL_ENTRY!r} state dict (as "
                         f"main_pretrain.py and misc.save_model save), found {found}")
    run = _run_args(saved.get("args"))
    model = _strip(saved[MODEL_ENTRY], MODEL_ENTRY)
    num_heads, decoder_heads = _heads(model, run.get("model"), num_heads, decoder_heads)
    use_fusion = run.get("use_fusion")
    if use_fusion is not None and use_fusion != "easyfusion":
        raise ValueError(f"the run used --use_fusion={use_fusion!r} "
                         f"({FUSION_CLASSES.get(use_fusion, 'unknown')}); jaxemo has u-emo's default "
                         f"AttentionFusion ('easyfusion') only")

    student, checked = student_params(model, num_heads, decoder_heads, scan)
    params = {"student": student}
    entry = next((name for name in FUSION_ENTRIES if name in saved), None)
    if entry is not None:
        width = student["decoder_embed"]["kernel"].shape[1]
        params["fuse"] = fusion_params(_strip(saved[entry], entry), width, entry)
    elif require_fusion:
        raise ValueError(f"no 'att_fusion' entry (the saved dict has {sorted(saved)}): u-emo's per-epoch "
                         f"checkpoint.pth holds the fusion, misc.save_model's checkpoint-<epoch>.pth does not; "
                         f"convert checkpoint.pth, or allow the fusion to start from its initialisation "
                         f"(require_fusion=False, --allow_missing_fusion)")
    epoch = saved.get("epoch")
    epoch = int(epoch) if isinstance(epoch, (int, np.integer)) else None
    not_converted = sorted(k for k in saved if k != MODEL_ENTRY and k != entry)
    notes = _notes(run, epoch, entry is not None)
    if entry is None:
        notes.insert(0, "the file has no fusion: the fusion starts from its initialisation")
    return UemoCheckpoint(params, checked, not_converted, epoch, run, (num_heads, decoder_heads), notes)


def read_saved(path: str) -> Any:
    """The whole dict a u-emo `torch.save` file holds (weights-only unpickling, argparse.Namespace allowed);
    a file torch refuses or cannot read fails with `torch_state`'s explanation."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    file_format = torch_state.checkpoint_format(path)
    if file_format != "torch":
        raise ValueError(f"{path}: a {file_format} file; u-emo saves its checkpoints with torch.save")
    import torch

    try:
        with open(path, "rb") as f, torch.serialization.safe_globals(list(torch_state.EXTRA_SAFE_TYPES)):
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception:
        torch_state.read_checkpoint(path)  # raises the loader's error: what is wrong, how to re-save it
        raise


def load(path: str, num_heads: Optional[int] = None, decoder_heads: Optional[int] = None,
         require_fusion: bool = True, scan: bool = True) -> UemoCheckpoint:
    """`from_uemo` of the u-emo checkpoint file at `path`."""
    return from_uemo(read_saved(path), num_heads, decoder_heads, require_fusion, scan)
