"""CASP reference checkpoints (PyTorch, zrguo/CASP `models/model.py`) <-> `jaxemo.models.msa` params.

    params, fusion, info = load_reference_checkpoint("sourcemodel/mosei_state_dict.pt")
    params = from_reference_state_dict(state_dict)                 # fusion, depth and dims read from the keys
    state_dict = to_reference_state_dict(params, "late")           # Latefusion(...).load_state_dict(sd) accepts it

Everything here is numpy (torch tensors or numpy arrays in, float32 numpy out); torch is imported only to
read a file. Where each reference entry goes (m = 0, 1, 2 for text, audio, vision; i = layer; E = the
encoder: `encoders.{m}` -> `encoder_{text,audio,vision}` in `Latefusion`, `fusion` -> `fusion` in
`Earlyfusion`):

    proj.{m}.weight [P, D_m, 1], .bias     -> proj_{text,audio,vision}/kernel [D_m, P] (1x1 Conv1d: drop
                                              the kernel axis, transpose), bias
    E.layers.{i}.self_attn.in_proj_weight  -> E/layers_{i}/self_attn/{query,key,value}/kernel [P, H, P/H]:
                [3P, P], .in_proj_bias       the fused projection split in three along its rows (q, k, v in
                                              that order, as the reference's `chunk(3)`), each transposed
                                              to [in, out] and its output axis split into (heads, head_dim)
                                              as the reference's `view(T, B * H, head_dim)`; biases -> [H, P/H]
    E.layers.{i}.self_attn.out_proj        -> E/layers_{i}/self_attn/out/kernel [H, P/H, P] (transposed,
                                              input axis split into heads), bias
    E.layers.{i}.fc1, fc2                  -> E/layers_{i}/fc1, fc2 (Linear weight [out, in] -> kernel [in, out])
    E.layers.{i}.layer_norms.{0,1}         -> E/layers_{i}/layer_norms_{0,1} (weight -> scale, bias)
    E.layer_norm                           -> E/layer_norm
    out_layer_proj0 [P, 3P] (late only)    -> out_layer_proj0
    out_layer_proj1, out_layer_proj2,      -> head/out_layer_proj1, head/out_layer_proj2, head/out_layer
      out_layer [1, P]

Buffers: each encoder registers `E.version` ([2.]) and its positional embedding `E.embed_positions.
_float_tensor` (a 1-element tensor that only carries a dtype and device; its value is uninitialised memory).
Neither holds a weight: reading ignores them (and lists them in `info["ignored"]`), writing adds them with
the shapes the reference has (`version` = [2.], `_float_tensor` = [0.]) so that
`Latefusion(...).load_state_dict(sd, strict=True)` accepts the result. A `module.` prefix on every key
(the state dict of an `nn.DataParallel` wrapper) is accepted.

The number of attention heads is not in a state dict (the fused projection has no head axis), so reading
takes it as an argument: `num_heads=8`, the reference's `main.py` default (`--num_heads`). Fusion, depth,
the projection width P and the three input dims are read from the keys and shapes.

CASP's training scripts save whole pickled models (`torch.save(model, hyp_params.name)` in
`utils/base_model_train.py`, `utils/train.py`, `utils/pseudo_train.py`), which `weights_only` loading
refuses; `load_reference_checkpoint` says so and shows the one line that re-saves such a file as a state
dict.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxemo.convert.common import as_float32, heads_in_params, to_numpy
from jaxemo.convert.torch_state import data_parallel_prefix, read_checkpoint

logger = logging.getLogger(__name__)

FUSIONS = ("late", "early")
MODALITIES = ("text", "audio", "vision")
DEFAULT_NUM_HEADS = 8  # CASP's main.py --num_heads (its help string says 5; the value is 8)
_BUFFERS = ("version", "embed_positions._float_tensor")
_LAYOUT = "CASP reference (zrguo/CASP models/model.py)"


# ------------------------------------------------------------------------------------------- helpers


def _encoder_prefixes(fusion: str) -> list[tuple[str, str]]:
    """(jaxemo name, reference prefix) of each transformer encoder."""
    if fusion == "late":
        return [(f"encoder_{m}", f"encoders.{i}.") for i, m in enumerate(MODALITIES)]
    return [("fusion", "fusion.")]


class _Reader:
    """Key look-ups against a reference state dict, with the errors naming the key."""

    def __init__(self, state_dict: Mapping[str, Any], prefix: str):
        self.arrays, self.prefix = state_dict, prefix
        self.used: set[str] = set()

    def _key(self, name: str) -> str:
        key = self.prefix + name
        if key not in self.arrays:
            raise ValueError(f"missing key {key!r}: the {_LAYOUT} state dict must have it")
        return key

    def shape(self, name: str) -> tuple:
        return tuple(to_numpy(self.arrays[self._key(name)]).shape)

    def get(self, name: str, shape: tuple) -> np.ndarray:
        key = self._key(name)
        value = to_numpy(self.arrays[key]).astype(np.float32)
        if value.shape != tuple(shape):
            raise ValueError(f"key {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        self.used.add(key)
        return value

    def linear(self, name: str, out_features: int, in_features: int) -> dict:
        return {"kernel": self.get(name + ".weight", (out_features, in_features)).T,
                "bias": self.get(name + ".bias", (out_features,))}

    def norm(self, name: str, width: int) -> dict:
        return {"scale": self.get(name + ".weight", (width,)), "bias": self.get(name + ".bias", (width,))}


def _contiguous(tree):
    """Nested dicts with every array a C-contiguous float32 copy (no transposed views of the input)."""
    if isinstance(tree, dict):
        return {k: _contiguous(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)


def _indices(keys, start: str) -> list[int]:
    pattern = re.compile(re.escape(start) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def _count(keys, start: str) -> int:
    """How many consecutive `start{i}.` entries there are (0, 1, ...); a gap is an error."""
    found = _indices(keys, start)
    if found != list(range(len(found))):
        missing = min(set(range(max(found) + 1)) - set(found))
        raise ValueError(f"missing key(s) {start}{missing}.*: found {start}{{{', '.join(map(str, found))}}}")
    return len(found)


def _infer_fusion(keys, prefix: str, fusion: str | None) -> str:
    late = any(k.startswith(prefix + "encoders.") for k in keys)
    early = any(k.startswith(prefix + "fusion.") for k in keys)
    if late and early:
        raise ValueError(f"the state dict has both {prefix}encoders.* (Latefusion) and {prefix}fusion.* "
                         f"(Earlyfusion) keys")
    if not late and not early:
        raise ValueError(f"missing key(s) {prefix}encoders.* (Latefusion) or {prefix}fusion.* (Earlyfusion): "
                         f"not a {_LAYOUT} state dict")
    found = "late" if late else "early"
    if fusion is not None and fusion != found:
        raise ValueError(f"fusion={fusion!r}, but the state dict is a "
                         f"{'Latefusion' if late else 'Earlyfusion'} one ({found!r} fusion)")
    return found


def _encoder_from(sd: _Reader, start: str, depth: int, width: int, num_heads: int) -> dict:
    encoder = {}
    for i in range(depth):
        at = f"{start}layers.{i}."
        in_weight = sd.get(at + "self_attn.in_proj_weight", (3 * width, width))
        in_bias = sd.get(at + "self_attn.in_proj_bias", (3 * width,))
        attention = {name: heads_in_params(w, b, num_heads) for name, w, b
                     in zip(("query", "key", "value"), np.split(in_weight, 3), np.split(in_bias, 3))}
        out = sd.linear(at + "self_attn.out_proj", width, width)
        attention["out"] = {"kernel": out["kernel"].reshape(num_heads, -1, width), "bias": out["bias"]}
        encoder[f"layers_{i}"] = {
            "self_attn": attention,
            "fc1": sd.linear(at + "fc1", 4 * width, width),
            "fc2": sd.linear(at + "fc2", width, 4 * width),
            "layer_norms_0": sd.norm(at + "layer_norms.0", width),
            "layer_norms_1": sd.norm(at + "layer_norms.1", width),
        }
    encoder["layer_norm"] = sd.norm(start + "layer_norm", width)
    return encoder


def _encoder_to(encoder: dict, start: str) -> dict:
    state = {f"{start}version": np.array([2.0], np.float32),
             f"{start}embed_positions._float_tensor": np.zeros((1,), np.float32)}
    layers = sorted((k for k in encoder if re.fullmatch(r"layers_\d+", k)), key=lambda k: int(k.split("_")[1]))
    if [int(k.split("_")[1]) for k in layers] != list(range(len(layers))) or not layers:
        raise ValueError(f"{start[:-1]}: expected layers_0 ... layers_<depth-1>, found {layers}")
    for i, name in enumerate(layers):
        layer, at = encoder[name], f"{start}layers.{i}."
        attention = layer["self_attn"]
        width = as_float32(attention["query"]["kernel"]).shape[0]
        state[at + "self_attn.in_proj_weight"] = np.concatenate(
            [as_float32(attention[n]["kernel"]).reshape(width, -1).T for n in ("query", "key", "value")])
        state[at + "self_attn.in_proj_bias"] = np.concatenate(
            [as_float32(attention[n]["bias"]).reshape(-1) for n in ("query", "key", "value")])
        state[at + "self_attn.out_proj.weight"] = as_float32(attention["out"]["kernel"]).reshape(-1, width).T
        state[at + "self_attn.out_proj.bias"] = as_float32(attention["out"]["bias"])
        for fc in ("fc1", "fc2"):
            state[f"{at}{fc}.weight"] = as_float32(layer[fc]["kernel"]).T
            state[f"{at}{fc}.bias"] = as_float32(layer[fc]["bias"])
        for j in (0, 1):
            state[f"{at}layer_norms.{j}.weight"] = as_float32(layer[f"layer_norms_{j}"]["scale"])
            state[f"{at}layer_norms.{j}.bias"] = as_float32(layer[f"layer_norms_{j}"]["bias"])
    state[start + "layer_norm.weight"] = as_float32(encoder["layer_norm"]["scale"])
    state[start + "layer_norm.bias"] = as_float32(encoder["layer_norm"]["bias"])
    return state


# ------------------------------------------------------------------------------------------ public API


def convert_reference_state_dict(state_dict: Mapping[str, Any], fusion: str | None = None,
                                 num_heads: int = DEFAULT_NUM_HEADS) -> tuple[dict, dict]:
    """A `Latefusion` / `Earlyfusion` state dict -> (jaxemo params, info).

    info: fusion, depth, proj_dim, num_heads (as given: a state dict does not hold it), dims (text, audio,
    vision input dims), prefix ("module." or ""), ignored (the `version` / `_float_tensor` buffer keys).
    A missing key, an unexpected key, or a shape that does not fit is a `ValueError` naming the key.
    """
    if fusion is not None and fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}; expected 'late' or 'early'")
    keys = list(state_dict)
    prefix = data_parallel_prefix(state_dict)
    fusion = _infer_fusion(keys, prefix, fusion)
    sd = _Reader(state_dict, prefix)

    num_projections = _count(keys, prefix + "proj.")
    if num_projections != len(MODALITIES):
        raise ValueError(f"the state dict has {num_projections} projections {prefix}proj.*: jaxemo's "
                         f"SentimentRegressor takes exactly three modalities (text, audio, vision)")
    params: dict = {}
    dims = []
    width = None
    for i, m in enumerate(MODALITIES):
        shape = sd.shape(f"proj.{i}.weight")
        width = shape[0] if width is None else width
        if len(shape) != 3 or shape[0] != width or shape[2] != 1:
            raise ValueError(f"key {prefix}proj.{i}.weight has shape {shape}, expected a kernel_size=1 Conv1d "
                             f"weight ({width}, D, 1)")
        weight = sd.get(f"proj.{i}.weight", shape)[:, :, 0]
        params[f"proj_{m}"] = {"kernel": weight.T, "bias": sd.get(f"proj.{i}.bias", (width,))}
        dims.append(int(shape[1]))
    if width % num_heads:
        raise ValueError(f"the projection width {width} is not divisible by num_heads={num_heads}")

    depths = {}
    for name, start in _encoder_prefixes(fusion):
        depths[name] = _count(keys, prefix + start + "layers.")
        if depths[name] == 0:
            raise ValueError(f"missing key {prefix}{start}layers.0.self_attn.in_proj_weight (an encoder with no "
                             f"layers)")
    if len(set(depths.values())) > 1:
        raise ValueError(f"the encoders have different depths {depths}: jaxemo's SentimentRegressor has one depth")
    depth = next(iter(depths.values()))
    for name, start in _encoder_prefixes(fusion):
        params[name] = _encoder_from(sd, start, depth, width, num_heads)

    if fusion == "late":
        params["out_layer_proj0"] = sd.linear("out_layer_proj0", width, len(MODALITIES) * width)
    if sd.shape("out_layer.weight")[0] != 1:
        raise ValueError(f"key {prefix}out_layer.weight has shape {sd.shape('out_layer.weight')}: jaxemo's "
                         f"regressor has one output (output_dim=1), expected (1, {width})")
    params["head"] = {"out_layer_proj1": sd.linear("out_layer_proj1", width, width),
                      "out_layer_proj2": sd.linear("out_layer_proj2", width, width),
                      "out_layer": sd.linear("out_layer", 1, width)}

    buffers = {prefix + start + b for _, start in _encoder_prefixes(fusion) for b in _BUFFERS}
    ignored = sorted(k for k in keys if k in buffers)
    unexpected = [k for k in keys if k not in sd.used and k not in buffers]
    if unexpected:
        raise ValueError(f"unexpected key(s) in the {_LAYOUT} state dict ({fusion} fusion, depth {depth}): "
                         f"{unexpected}")
    params = _contiguous(params)
    info = {"fusion": fusion, "depth": depth, "proj_dim": width, "num_heads": num_heads, "dims": tuple(dims),
            "prefix": prefix, "ignored": ignored}
    return params, info


def from_reference_state_dict(state_dict: Mapping[str, Any], fusion: str | None = None,
                              num_heads: int = DEFAULT_NUM_HEADS) -> dict:
    """A CASP `Latefusion` / `Earlyfusion` state dict -> `msa.SentimentRegressor` params (float32 numpy).

    `fusion` ("late" / "early") is read from the keys; when given, it must agree. `num_heads` cannot be read
    from a state dict: pass the `--num_heads` the source model was trained with (CASP's default, 8). The
    `version` and `embed_positions._float_tensor` buffers are ignored (logged); see the module docstring.
    """
    params, info = convert_reference_state_dict(state_dict, fusion, num_heads)
    if info["ignored"]:
        logger.info("CASP state dict: ignored %d buffers without weights: %s", len(info["ignored"]),
                    ", ".join(info["ignored"]))
    return params


def to_reference_state_dict(params: Mapping[str, Any], fusion: str) -> dict[str, np.ndarray]:
    """`msa.SentimentRegressor` params -> the state dict of CASP's `Latefusion` (fusion="late") or
    `Earlyfusion` ("early"): the reference's exact keys in its order, buffers included, float32 numpy.

    Load it into the reference with `model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}; expected 'late' or 'early'")
    encoders = _encoder_prefixes(fusion)
    missing = [name for name, _ in encoders if name not in params]
    if missing:
        other = "early" if fusion == "late" else "late"
        hint = (f" (the params look like {other!r} fusion)"
                if all(name in params for name, _ in _encoder_prefixes(other)) else "")
        raise ValueError(f"fusion={fusion!r} needs params {missing}{hint}")
    state = {}
    for i, m in enumerate(MODALITIES):
        state[f"proj.{i}.weight"] = as_float32(params[f"proj_{m}"]["kernel"]).T[:, :, None]
        state[f"proj.{i}.bias"] = as_float32(params[f"proj_{m}"]["bias"])
    for name, start in encoders:
        state.update(_encoder_to(params[name], start))
    if fusion == "late":
        state["out_layer_proj0.weight"] = as_float32(params["out_layer_proj0"]["kernel"]).T
        state["out_layer_proj0.bias"] = as_float32(params["out_layer_proj0"]["bias"])
    for name in ("out_layer_proj1", "out_layer_proj2", "out_layer"):
        state[f"{name}.weight"] = as_float32(params["head"][name]["kernel"]).T
        state[f"{name}.bias"] = as_float32(params["head"][name]["bias"])
    return {k: np.array(v, np.float32) for k, v in state.items()}  # contiguous, writable copies


def load_reference_checkpoint(path: str, num_heads: int = DEFAULT_NUM_HEADS,
                              fusion: str | None = None) -> tuple[dict, str, dict]:
    """A `.pt` / `.pth` file holding a CASP `Latefusion` / `Earlyfusion` state dict -> (params, fusion, info).

    The file is read by `jaxemo.convert.torch_state.read_checkpoint` (weights only, no code runs); the state
    dict may be the whole file or sit under "state_dict" / "model". CASP's own scripts save the whole pickled
    model instead (`torch.save(model, name)`), which cannot be read that way: the error then gives the line
    that re-saves it as a state dict, to be run once where the CASP code imports. See
    `convert_reference_state_dict` for `info`; it also holds `path`, and `prefix` is the one the file's keys
    had ("module." for a DataParallel model's, stripped on reading).
    """
    checkpoint = read_checkpoint(path, key="state_dict")
    params, info = convert_reference_state_dict(checkpoint.state_dict, fusion, num_heads)
    info["path"], info["prefix"] = path, checkpoint.stripped_prefix
    if info["ignored"]:
        logger.info("%s: ignored %d buffers without weights: %s", path, len(info["ignored"]),
                    ", ".join(info["ignored"]))
    return params, info["fusion"], info
