"""transformers wav2vec 2.0 / HuBERT checkpoints -> `jaxemo.models.wav2vec2` params.

    config = config_from_hf(json.load(open("config.json")))
    params = convert_state_dict(model.state_dict(), config)       # {"backbone": ..., "projector", "classifier"}
    logits, aux = Wav2Vec2ForSequenceClassification(config, num_labels).apply({"params": params}, waveform)
    hidden, aux = Wav2Vec2Model(config).apply({"params": params["backbone"]}, waveform)

    python -m jaxemo.convert wav2vec2 facebook-wav2vec2-base/ runs/w2v2_base     # a directory with config.json
    config, params = load("runs/w2v2_base")                       # the converted checkpoint

Keys may be `Wav2Vec2Model` / `HubertModel`'s (no prefix) or prefixed `wav2vec2.` / `hubert.` (the
ForSequenceClassification, ForCTC and ForPreTraining models). Pretraining- and CTC-only weights (quantizer,
project_q / project_hid, final_proj, label embeddings, lm_head) are dropped with a logged note; any other
key left over, a missing key or a shape mismatch is a ValueError naming it. The weight-normed position conv
is read from either layout (`weight_g` / `weight_v`, or `parametrizations.weight.original0` / `original1`).
Torch conventions mapped: Conv1d [out, in, k] -> kernel [k, in, out]; Linear [out, in] -> kernel [in, out];
q/k/v -> DenseGeneral [D, heads, head_dim]; LayerNorm / GroupNorm weight -> scale.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping, Optional

import numpy as np

from jaxemo import layers
from jaxemo.convert.common import (
    StateDictReader,
    block_stack_params,
    dense_params,
    heads_in_params,
    heads_out_params,
    layer_count,
    norm_params,
)
from jaxemo.convert.torch_state import load_state_dict
from jaxemo.models.wav2vec2 import MODEL_TYPES, Wav2Vec2Config

logger = logging.getLogger(__name__)

CONFIG_FILE = "model_config.json"  # a converted checkpoint's config, beside <step>/params
# transformers' class defaults where they differ from facebook/wav2vec2-base's config.json (our defaults):
# config_from_hf fills keys missing from a config.json with these, as transformers would.
_HF_CLASS_DEFAULTS = dict(activation_dropout=0.1, feat_proj_dropout=0.0)
_JAXEMO_ONLY = {"dtype", "scan_layers", "remat"}
PREFIXES = ("wav2vec2.", "hubert.")
# Weights of pretraining / CTC heads that no jaxemo wav2vec2 module uses (relative to the model's root).
DROPPED = ("quantizer.", "project_q.", "project_hid.", "final_proj.", "label_embeddings_concat", "lm_head.")
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1920: 16}
_POS_CONV = "encoder.pos_conv_embed.conv."
_WEIGHT_NORM_NAMES = (("weight_g", "weight_v"), ("parametrizations.weight.original0",
                                                  "parametrizations.weight.original1"))


def model_prefix(state_dict: Mapping[str, Any]) -> str:
    """"wav2vec2." / "hubert." when the backbone's keys carry it (head models), else ""."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix + "feature_extractor.") for k in state_dict):
            return prefix
    return ""


def _layer(sd: StateDictReader, at: str, c: Wav2Vec2Config) -> dict:
    d, m, h = c.hidden_size, c.intermediate_size, c.num_attention_heads
    linear = lambda name, shape: sd.linear(at + name, shape)
    norm = lambda name: norm_params(*sd.layer_norm(at + name, d))
    attention = {ours: heads_in_params(*linear(f"attention.{theirs}_proj", (d, d)), h)
                 for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"))}
    attention["out"] = heads_out_params(*linear("attention.out_proj", (d, d)), h)
    return {
        "attention": attention,
        "layer_norm": norm("layer_norm"),
        "feed_forward": {"intermediate_dense": dense_params(*linear("feed_forward.intermediate_dense", (m, d))),
                         "output_dense": dense_params(*linear("feed_forward.output_dense", (d, m)))},
        "final_layer_norm": norm("final_layer_norm"),
    }


def _backbone(sd: StateDictReader, c: Wav2Vec2Config, scan: bool) -> dict:
    d = c.hidden_size
    extractor, channels = {}, 1
    for i, (dim, kernel) in enumerate(zip(c.conv_dim, c.conv_kernel)):
        at = f"feature_extractor.conv_layers.{i}."
        conv = {"kernel": sd.get(at + "conv.weight", (dim, channels, kernel)).transpose(2, 1, 0)}
        if c.conv_bias:
            conv["bias"] = sd.get(at + "conv.bias", (dim,))
        extractor[f"conv_{i}"] = conv
        if c.feat_extract_norm == "layer" or i == 0:
            extractor[f"norm_{i}"] = norm_params(*sd.layer_norm(at + "layer_norm", dim))
        channels = dim
    projection = {"projection": dense_params(*sd.linear("feature_projection.projection", (d, channels)))}
    if c.has_feat_proj_layer_norm:
        projection["layer_norm"] = norm_params(*sd.layer_norm("feature_projection.layer_norm", channels))
    params = {"feature_extractor": extractor, "feature_projection": projection}
    if c.has_masked_spec_embed:
        params["masked_spec_embed"] = sd.get("masked_spec_embed", (d,))
    k, groups = c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups
    g_name, v_name = next((names for names in _WEIGHT_NORM_NAMES if sd.has(_POS_CONV + names[0])),
                          _WEIGHT_NORM_NAMES[1])
    pos_conv = {"weight_g": sd.get(_POS_CONV + g_name, (1, 1, k)).reshape(k),
                "weight_v": sd.get(_POS_CONV + v_name, (d, d // groups, k)).transpose(2, 1, 0),
                "bias": sd.get(_POS_CONV + "bias", (d,))}
    blocks = [_layer(sd, f"encoder.layers.{i}.", c) for i in range(c.num_hidden_layers)]
    params["encoder"] = {"pos_conv_embed": pos_conv, "blocks": block_stack_params(blocks, scan),
                         "layer_norm": norm_params(*sd.layer_norm("encoder.layer_norm", d))}
    return params


def _dropped(key: str, prefix: str, config: Wav2Vec2Config) -> bool:
    name = key[len(prefix):] if prefix and key.startswith(prefix) else key
    return name.startswith(DROPPED) or (name == "masked_spec_embed" and not config.has_masked_spec_embed)


def convert_state_dict(state_dict: Mapping[str, Any], config: Wav2Vec2Config, scan: Optional[bool] = None) -> dict:
    """transformers state dict (numpy arrays or torch tensors) -> `{"backbone": ..., "projector": ...,
    "classifier": ..., "layer_weights": ...}` of float32 numpy arrays (the heads only when present), i.e. the
    params of `Wav2Vec2ForSequenceClassification`, or `{"backbone": ...}` for `Wav2Vec2Model`.

    `scan` (default `config.scan_layers`) picks the layer layout: stacked `layers/` or `layers_{i}`.
    """
    scan = config.scan_layers if scan is None else scan
    prefix = model_prefix(state_dict)
    sd = StateDictReader(state_dict, prefix, f"transformers {config.model_type}",
                    hint=f"; the backbone's keys may carry one of {PREFIXES} (head models) or none")
    params = {"backbone": _backbone(sd, config, scan)}
    if "projector.weight" in state_dict or "classifier.weight" in state_dict:
        d, p = config.hidden_size, config.classifier_proj_size
        params["projector"] = dense_params(sd.get("projector.weight", (p, d), prefixed=False),
                                           sd.get("projector.bias", (p,), prefixed=False))
        classifier = sd.get("classifier.weight", (None, p), prefixed=False)
        params["classifier"] = dense_params(classifier,
                                            sd.get("classifier.bias", classifier.shape[:1], prefixed=False))
        if config.use_weighted_layer_sum:
            params["layer_weights"] = sd.get("layer_weights", (config.num_hidden_layers + 1,), prefixed=False)
    leftover = sd.unused()
    dropped = [k for k in leftover if _dropped(k, prefix, config)]
    unexpected = [k for k in leftover if k not in dropped]
    if unexpected:
        raise ValueError(f"unexpected keys for a {config.model_type} of {config.num_hidden_layers} layers "
                         f"(feat_extract_norm={config.feat_extract_norm!r}, conv_bias={config.conv_bias}, "
                         f"use_weighted_layer_sum={config.use_weighted_layer_sum}): {unexpected}")
    if dropped:
        logger.info("dropped %d keys the jaxemo model does not use: %s", len(dropped), ", ".join(dropped))
    return params


def infer_config(state_dict: Mapping[str, Any], model_type: str = "wav2vec2",
                 num_heads: Optional[int] = None) -> tuple[Wav2Vec2Config, list[str]]:
    """A config read off the weights (when no config.json is at hand) and notes on what was assumed."""
    prefix = model_prefix(state_dict)
    has = lambda name: prefix + name in state_dict
    shape = lambda name: tuple(np.shape(state_dict[prefix + name]))
    convs = layer_count(state_dict, prefix + "feature_extractor.conv_layers.")
    if not convs or not has("feature_projection.projection.weight"):
        raise ValueError(f"not a wav2vec2 / HuBERT state dict: no feature_extractor.conv_layers.* or "
                         f"feature_projection keys (prefix {prefix!r})")
    conv = [shape(f"feature_extractor.conv_layers.{i}.conv.weight") for i in range(convs)]
    defaults = Wav2Vec2Config()
    if convs != len(defaults.conv_stride):
        raise ValueError(f"{convs} conv layers: their strides cannot be read off the weights; give a config.json")
    hidden = shape("feature_projection.projection.weight")[0]
    v_name = next(n[1] for n in _WEIGHT_NORM_NAMES if has(_POS_CONV + n[1]) or n is _WEIGHT_NORM_NAMES[1])
    pos = shape(_POS_CONV + v_name)
    layer_norm_conv = has("feature_extractor.conv_layers.1.layer_norm.weight")
    values = dict(
        model_type=model_type, hidden_size=hidden,
        num_hidden_layers=layer_count(state_dict, prefix + "encoder.layers."),
        num_attention_heads=num_heads or HEADS_BY_WIDTH.get(hidden, max(1, hidden // 64)),
        intermediate_size=shape("encoder.layers.0.feed_forward.intermediate_dense.weight")[0],
        conv_dim=tuple(s[0] for s in conv), conv_kernel=tuple(s[2] for s in conv),
        conv_bias=has("feature_extractor.conv_layers.0.conv.bias"),
        feat_extract_norm="layer" if layer_norm_conv else "group", do_stable_layer_norm=layer_norm_conv,
        num_conv_pos_embeddings=pos[2], num_conv_pos_embedding_groups=hidden // pos[1],
        feat_proj_layer_norm=has("feature_projection.layer_norm.weight"),
        use_weighted_layer_sum="layer_weights" in state_dict,
    )
    if "projector.weight" in state_dict:
        values["classifier_proj_size"] = int(np.shape(state_dict["projector.weight"])[0])
    notes = [f"conv strides {defaults.conv_stride} (the wav2vec2 default)",
             f"do_stable_layer_norm={layer_norm_conv} (as feat_extract_norm={values['feat_extract_norm']!r}: "
             "large-lv60 / HuBERT-large layout)",
             f"num_attention_heads={values['num_attention_heads']} ({'given' if num_heads else 'by width'})"]
    if not has("masked_spec_embed"):
        values.update(mask_time_prob=0.0, mask_feature_prob=0.0)
        notes.append("no masked_spec_embed: mask_time_prob=mask_feature_prob=0")
    return Wav2Vec2Config(**values), notes


def config_from_hf(hf: dict, **overrides) -> Wav2Vec2Config:
    """A transformers config.json dict as a `Wav2Vec2Config`; unknown keys are ignored, missing ones take
    transformers' class defaults. `model_type` ("wav2vec2" / "hubert") comes from the dict unless overridden."""
    if hf.get("conv_pos_batch_norm"):
        raise ValueError("conv_pos_batch_norm=True (a BatchNorm instead of the weight-normed position conv) "
                         "is not supported")
    if hf.get("add_adapter") or hf.get("adapter_attn_dim"):
        raise ValueError("wav2vec2 adapters (add_adapter / adapter_attn_dim) are not supported")
    names = {f.name for f in dataclasses.fields(Wav2Vec2Config)} - _JAXEMO_ONLY  # HF's "dtype" is torch's
    values = {**_HF_CLASS_DEFAULTS, **{k: v for k, v in hf.items() if k in names}, **overrides}
    values.setdefault("model_type", "wav2vec2")
    if values["model_type"] not in MODEL_TYPES:  # wavlm, data2vec-audio, ... differ in their layers
        raise ValueError(f"model_type={values['model_type']!r} is not supported; expected one of {MODEL_TYPES}")
    return Wav2Vec2Config(**values)


def convert_checkpoint(path: str, output_dir: str, model_type: str, num_heads: Optional[int] = None,
                       overwrite: bool = False, echo: Callable = print) -> dict:
    """A weights file or a directory (config.json + weights, as `torch_state.load_state_dict` reads it) ->
    `<output_dir>/0/params` and `<output_dir>/0/model_config.json`. Returns the params."""
    from jaxemo.train import checkpoint

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    state_dict = load_state_dict(path)
    config_path = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            hf = json.load(f)
        overrides = {"num_attention_heads": num_heads} if num_heads else {}
        config = config_from_hf({**hf, "model_type": hf.get("model_type", model_type)}, **overrides)
        if config.model_type != model_type:
            echo(f"note: {config_path} says model_type={config.model_type!r}; converting as that")
    else:
        config, notes = infer_config(state_dict, model_type, num_heads)
        echo(f"note: no config.json beside {path}; layout inferred from the weights, assuming " + "; ".join(notes))
    params = convert_state_dict(state_dict, config)
    step_dir = checkpoint.save_params(output_dir, params, overwrite=overwrite)
    with open(os.path.join(step_dir, CONFIG_FILE), "w") as f:
        json.dump(config.to_dict(), f, indent=1)
    return params


def load(path: str, step: Optional[int] = None, params: bool = True, **overrides):
    """(config, params) of a checkpoint written by `python -m jaxemo.convert wav2vec2|hubert` (its
    `<step>/model_config.json` beside `<step>/params`); `params=False` reads the config only (params None).
    `overrides` replace config fields; a different `scan_layers` also converts the layer layout."""
    from jaxemo.train import checkpoint

    step_dir = checkpoint.step_directory(path, step)
    config_path = os.path.join(step_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path}: no wav2vec2 config (write one with python -m jaxemo.convert "
                                f"wav2vec2 / hubert)")
    with open(config_path) as f:
        stored = Wav2Vec2Config(**json.load(f))
    config = stored.replace(**overrides)
    if not params:
        return config, None
    tree = checkpoint.load_params(step_dir)
    if config.scan_layers != stored.scan_layers:
        convert = layers.loop_to_scan if config.scan_layers else layers.scan_to_loop
        blocks = tree["backbone"]["encoder"]["blocks"]
        tree["backbone"]["encoder"]["blocks"] = convert(blocks, config.num_hidden_layers)
    return config, tree
