"""`python -m jaxemo.convert <kind> <input> <output_dir>`: a PyTorch checkpoint -> a jaxemo Orbax checkpoint.

    python -m jaxemo.convert mae mae_visualize_vit_large.pth runs/mae_l16          # official MAE naming
    python -m jaxemo.convert mae_hf model.safetensors runs/vit_mae_base             # transformers ViTMAEForPreTraining
    python -m jaxemo.convert clip ViT-B-16.pt runs/clip_b16                         # OpenAI (TorchScript) / open_clip
    python -m jaxemo.convert clip_hf model.safetensors runs/clip_b16                # transformers CLIPModel
    python -m jaxemo.convert vit_hf model.safetensors runs/vit_b16                  # transformers ViT(ForImageClassification)
    python -m jaxemo.convert vit_timm mae_pretrain_vit_base.pth runs/vit_b16        # timm / MAE / AudioMAE encoder
    python -m jaxemo.convert mma_dfer DFEW-set1-model_best.pth runs/mma_dfer_fold1  # the reference's trained model
    python -m jaxemo.convert uemo checkpoint.pth runs/uemo_start                    # u-emo's UniEmoX pretraining
    python -m jaxemo.convert wav2vec2 wav2vec2-base/ runs/w2v2_base                 # transformers Wav2Vec2*: a
    python -m jaxemo.convert hubert hubert-large-ll60k/ runs/hubert_large           #   directory with config.json
    python -m jaxemo.convert mertools attention.pth runs/mertools \
        --features hubert=audio,clip=video,baichuan=text       # MERTools' attention baseline (MERToolsAttention)

The params are written as step 0 of a jaxemo checkpoint directory (`<output_dir>/0/params`), which
`jaxemo.train.checkpoint.load_params(output_dir)` and every recipe's `init_params` read. wav2vec2 / HuBERT
take a weights file or a directory holding config.json and the weights (without config.json the layout is
inferred from the weights, and the CLI says what it assumed); they also write the model config
(`<output_dir>/0/model_config.json`): `jaxemo.convert.wav2vec2.load(output_dir)` returns (config, params).
uemo takes the whole dict u-emo's `main_pretrain.py` saves (`checkpoint.pth`: the MAE student with its decoder,
and the `att_fusion` entry) and writes UniEmoX params (`student`, `fuse`) for `--config.pretrained.uemo`; it
prints what is not carried over (optimizer state, epoch) and the run's settings. `misc.save_model`'s
`checkpoint-<epoch>.pth` has no fusion: it converts with `--allow_missing_fusion` only.
mertools takes a state dict of MERTools' `Attention` / `Attention_TOPN` and `--features`: the jaxemo feature
names in jaxemo's fusion order, each with the MERTools slot it comes from (audio / text / video or
encoder<k>; default audio=audio,video=video,text=text, or feat<k>=encoder<k>); it writes
`<output_dir>/0/model_config.json`, the `MERToolsAttention` fields (name "attention", modalities, hidden_dim,
num_classes, lstm_front_padding) the params fit, and drops the valence head `fc_out_2` (listed as unused).

Inputs are read by `jaxemo.convert.torch_state`: `torch.save` files (`.pth` / `.bin` / `.pt`, with
`torch.load(weights_only=True)`: weights, plain containers and `argparse.Namespace` only), TorchScript archives,
`.safetensors` files or a Hugging Face model directory; a `module.` (DataParallel) prefix is stripped, and a
pickled model is refused with the command that re-saves it as a state dict. Head counts are not stored in the
weights: they default by width (ViT 192/384/768/1024/1280 -> 3/6/12/16/16 heads, MAE decoder 512 -> 16, CLIP
text 512/768 -> 8/12, wav2vec2 / HuBERT without config.json 768/1024 -> 12/16; uemo: by the saved `args.model`
first) and `--num_heads`, `--decoder_heads`, `--text_heads` override them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

from jaxemo.convert import clip as convert_clip, mae as convert_mae, mertools as convert_mertools
from jaxemo.convert import mma_dfer as convert_mma_dfer
from jaxemo.convert import torch_state, vit as convert_vit, wav2vec2 as convert_wav2vec2
from jaxemo.convert import uniemox as convert_uniemox
from jaxemo.convert.common import layer_count

VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
DECODER_HEADS = {512: 16}
TEXT_HEADS = {512: 8, 768: 12}
KINDS = ("mae", "mae_hf", "clip", "clip_hf", "vit_hf", "vit_timm", "mma_dfer", "wav2vec2", "hubert", "mertools",
         "uemo")


def _heads(table: dict, width: int, override, what: str) -> int:
    if override:
        return int(override)
    if width not in table:
        raise ValueError(f"no default head count for a {what} of width {width}: pass it ({sorted(table)} known)")
    return table[width]


def _width(state_dict: dict, *keys: str) -> int:
    for key in keys:
        if key in state_dict:
            return int(np.shape(state_dict[key])[-1])
    raise ValueError(f"cannot find the width: none of {list(keys)} is in the state dict")


def convert(kind: str, state_dict: dict, args) -> tuple[dict, list[str]]:
    """(params, keys left unused) for `kind`."""
    if kind == "mae":
        heads = _heads(VIT_HEADS, _width(state_dict, "cls_token"), args.num_heads, "ViT")
        decoder = _width(state_dict, "mask_token") if "mask_token" in state_dict else 512
        return convert_mae.from_timm_mae(state_dict, heads, _heads(DECODER_HEADS, decoder, args.decoder_heads,
                                                                   "MAE decoder"))
    if kind == "mae_hf":
        heads = _heads(VIT_HEADS, _width(state_dict, "vit.embeddings.cls_token"), args.num_heads, "ViT")
        decoder = _heads(DECODER_HEADS, _width(state_dict, "decoder.mask_token"), args.decoder_heads, "MAE decoder")
        return convert_mae.from_hf_mae(state_dict, heads, decoder), []
    if kind == "clip":
        heads = _heads(VIT_HEADS, _width(state_dict, "visual.class_embedding"), args.num_heads, "CLIP image tower")
        text = _heads(TEXT_HEADS, _width(state_dict, "ln_final.weight"), args.text_heads, "CLIP text tower")
        return convert_clip.from_openai_clip(state_dict, heads, text), []
    if kind == "clip_hf":
        heads = _heads(VIT_HEADS, _width(state_dict, "vision_model.embeddings.class_embedding"), args.num_heads,
                       "CLIP image tower")
        text = _heads(TEXT_HEADS, _width(state_dict, "text_model.final_layer_norm.weight"), args.text_heads,
                      "CLIP text tower")
        return convert_clip.from_hf_clip(state_dict, heads, text), []
    if kind == "vit_hf":
        prefix = "vit." if any(k.startswith("vit.") for k in state_dict) else ""
        width = _width(state_dict, prefix + "embeddings.cls_token")
        depth = max(layer_count(state_dict, prefix + "encoder.layer."),
                    layer_count(state_dict, prefix + "layers."))
        return convert_vit.from_hf_vit(state_dict, depth, _heads(VIT_HEADS, width, args.num_heads, "ViT"),
                                       prefix=prefix), []
    if kind == "vit_timm":
        return convert_vit.from_timm_vit(state_dict, _heads(VIT_HEADS, _width(state_dict, "cls_token"),
                                                            args.num_heads, "ViT"))
    if kind == "mma_dfer":
        return convert_mma_dfer.from_reference_checkpoint(state_dict, num_heads=args.num_heads or 12,
                                                          temporal_heads=args.temporal_heads)
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS} (mertools, uemo, wav2vec2 and hubert "
                     "write more than params: `main`)")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m jaxemo.convert", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("input", help="the PyTorch checkpoint (.pth, .bin, .pt, TorchScript or .safetensors) or a "
                   "Hugging Face model directory (wav2vec2 / hubert: config.json read from it)")
    p.add_argument("output_dir", help="the jaxemo checkpoint directory to create (its step 0)")
    p.add_argument("--num_heads", type=int, default=None,
                   help="(image / speech) encoder heads; default by width (wav2vec2 / hubert: config.json first)")
    p.add_argument("--decoder_heads", type=int, default=None, help="MAE decoder heads; default by width")
    p.add_argument("--text_heads", type=int, default=None, help="CLIP text tower heads; default by width")
    p.add_argument("--temporal_heads", type=int, default=8, help="MMA-DFER temporal transformer heads")
    p.add_argument("--features", default=None,
                   help="mertools: name=slot,... in jaxemo's fusion order (slots audio, text, video, encoder<k>)")
    p.add_argument("--allow_missing_fusion", action="store_true",
                   help="uemo: convert a checkpoint without u-emo's att_fusion (the fusion then starts fresh)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output checkpoint")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from jaxemo.train import checkpoint

    if args.kind in ("wav2vec2", "hubert"):
        params = convert_wav2vec2.convert_checkpoint(args.input, args.output_dir, args.kind,
                                                     num_heads=args.num_heads, overwrite=args.overwrite)
        count = sum(int(np.size(x)) for x in jax.tree.leaves(params))
        print(f"{args.input} -> {os.path.join(os.path.abspath(args.output_dir), '0')}: {count:,} parameters "
              f"({args.kind})")
        return params
    if args.kind == "uemo":  # the whole saved dict: the student and the fusion are two entries of it
        return _convert_uemo(args, checkpoint)
    source = torch_state.read_checkpoint(args.input)
    if args.kind == "mertools":  # the params need their model's fields: written beside them
        sources = convert_mertools.parse_sources(args.features) or convert_mertools.default_sources(
            source.state_dict)
        params, info = convert_mertools.convert_mertools_state_dict(source.state_dict, sources)
        unused = info["dropped"]
        path = checkpoint.save_params(args.output_dir, params, overwrite=args.overwrite)
        fields = {"name": "attention", **info["model_fields"], "modalities": list(info["modalities"])}
        with open(os.path.join(path, "model_config.json"), "w") as f:
            json.dump(fields, f, indent=1)
        print(f"MERToolsAttention fields ({info['layout']}, slots {dict(info['sources'])}): {fields}")
    else:
        params, unused = convert(args.kind, source.state_dict, args)
        path = checkpoint.save_params(args.output_dir, params, overwrite=args.overwrite)
    count = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    stripped = f"; the keys' {source.stripped_prefix!r} prefix stripped" if source.stripped_prefix else ""
    print(f"{args.input} -> {path}: {count:,} parameters ({args.kind}{stripped})")
    if unused:
        print(f"unused keys ({len(unused)}): {', '.join(unused[:20])}{' ...' if len(unused) > 20 else ''}")
    return params


def _convert_uemo(args, checkpoint) -> dict:
    converted = convert_uniemox.load(args.input, args.num_heads, args.decoder_heads,
                                     require_fusion=not args.allow_missing_fusion)
    path = checkpoint.save_params(args.output_dir, converted.params, overwrite=args.overwrite)
    count = sum(int(np.size(x)) for x in jax.tree.leaves(converted.params))
    print(f"{args.input} -> {path}: {count:,} parameters (uemo: {' and '.join(sorted(converted.params))}; "
          f"heads {converted.heads[0]} encoder, {converted.heads[1]} decoder)")
    print(f"checked, not stored (jaxemo computes them): {', '.join(converted.checked)}")
    if converted.not_converted:
        print(f"not converted: {', '.join(converted.not_converted)}")
    for note in converted.notes:
        print(f"note: {note}")
    print(f"continue with --config.pretrained.uemo={os.path.abspath(args.output_dir)}")
    return converted.params


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:  # a bad input: the message says what to do, no traceback
        sys.exit(f"python -m jaxemo.convert: {error}")
