"""The layout helpers every converter shares: reading a state dict by key, and torch -> flax leaf layouts.

Everything here is numpy: state dict values may be numpy arrays or torch tensors (torch is never imported
here; a tensor can only exist once the caller has imported it), params come out as float32 numpy arrays.

    reader = StateDictReader(state_dict, prefix="vit.", layout="HuggingFace ViT checkpoint")
    fc1 = dense_params(*reader.linear("encoder.layer.0.intermediate.dense", (3072, 768)))
    norm = norm_params(*reader.layer_norm("layernorm", 768))
    query = heads_in_params(*reader.linear("encoder.layer.0.attention.attention.query", (768, 768)), 12)
    leftover = reader.unused()

Torch conventions mapped: Linear weight [out, in] -> kernel [in, out]; q/k/v Linear -> DenseGeneral kernel
[D, heads, head_dim] and bias [heads, head_dim]; attention output Linear -> kernel [heads, head_dim, D];
LayerNorm weight -> scale.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np


def to_numpy(value) -> np.ndarray:
    """A torch tensor (any device; bfloat16 / float16 widened to float32) or array-like as a numpy array."""
    torch = sys.modules.get("torch")  # a tensor can exist only if torch is imported; importing it here would not
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value  # bfloat16 has no numpy dtype
        return value.numpy()
    return np.asarray(value)


def _unbox(value):
    """A flax `Partitioned` / `LogicallyPartitioned` box's value; anything else as it is."""
    meta = sys.modules.get("flax.core.meta")  # as for torch in `to_numpy`: no box exists before flax is imported
    if meta is not None and isinstance(value, meta.Partitioned):
        return value.value
    return value


def as_float32(leaf) -> np.ndarray:
    """A param leaf (a jax / numpy array or a flax `Partitioned` box of one) as a float32 numpy array."""
    return np.asarray(_unbox(leaf), np.float32)


def as_numpy_tree(tree) -> Any:
    """Nested mappings (dicts, FrozenDicts) of param leaves -> nested dicts of float32 numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: as_numpy_tree(v) for k, v in tree.items()}
    return as_float32(tree)


class StateDictReader:
    """Key look-ups against a torch state dict under `prefix`, with errors that name the key and the
    `layout` expected (plus `hint`), remembering which keys were consumed (`unused()` lists the rest)."""

    def __init__(self, state_dict: Mapping[str, Any], prefix: str, layout: str, hint: str = ""):
        self.arrays, self.prefix, self.layout, self.hint = state_dict, prefix, layout, hint
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return self.prefix + name in self.arrays

    def get(self, name: str, shape: Sequence[Optional[int]], prefixed: bool = True) -> np.ndarray:
        """The float32 array at `prefix + name` (at `name` when not `prefixed`); `shape` may hold None for any
        size."""
        key = self.prefix + name if prefixed else name
        if key not in self.arrays:
            raise ValueError(f"state dict has no key {key!r} (expected the {self.layout} layout with "
                             f"prefix={self.prefix!r}){self.hint}")
        value = to_numpy(self.arrays[key]).astype(np.float32)
        if len(value.shape) != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            expected = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"key {key!r} has shape {tuple(value.shape)}, expected {expected}")
        self.used.add(key)
        return value

    def linear(self, name: str, shape: tuple, optional_bias: bool = False) -> tuple:
        """torch (weight, bias) of the Linear `name`, weight of `shape`; bias is None where `optional_bias`
        (e.g. qkv_bias=False) and absent."""
        bias = None if optional_bias and not self.has(name + ".bias") else self.get(name + ".bias", shape[:1])
        return self.get(name + ".weight", shape), bias

    def layer_norm(self, name: str, width: int) -> tuple:
        """torch (weight, bias) of the LayerNorm `name`."""
        return self.get(name + ".weight", (width,)), self.get(name + ".bias", (width,))

    def unused(self) -> list[str]:
        return sorted(k for k in self.arrays if k not in self.used)


def layer_count(state_dict: Mapping[str, Any], start: str) -> int:
    """1 + the largest i of the `start{i}.*` keys (0 when there are none): a stack's depth."""
    indices = {int(k[len(start):].split(".")[0]) for k in state_dict if k.startswith(start)}
    return max(indices) + 1 if indices else 0


# ----------------------------------------------------------------------------------- torch -> flax leaves


def dense_params(weight, bias) -> dict:
    """Linear weight [out, in], bias -> `nn.Dense` {kernel [in, out], bias}."""
    return {"kernel": weight.T, "bias": bias}


def norm_params(weight, bias) -> dict:
    """LayerNorm / GroupNorm weight, bias -> {scale, bias}."""
    return {"scale": weight, "bias": bias}


def heads_in_params(weight, bias, num_heads: int) -> dict:
    """q/k/v Linear [H*hd, D] -> DenseGeneral kernel [D, H, hd] (bias [H, hd], if any)."""
    out = {"kernel": weight.T.reshape(weight.shape[1], num_heads, -1)}
    if bias is not None:
        out["bias"] = bias.reshape(num_heads, -1)
    return out


def heads_out_params(weight, bias, num_heads: int) -> dict:
    """Attention output Linear [D, H*hd] -> DenseGeneral kernel [H, hd, D], bias."""
    return {"kernel": weight.T.reshape(num_heads, -1, weight.shape[0]), "bias": bias}


def stack_trees(trees: list) -> Any:
    """Same-structured nested dicts of arrays -> one nested dict, each leaf stacked along a new axis 0."""
    if isinstance(trees[0], dict):
        return {k: stack_trees([t[k] for t in trees]) for k in trees[0]}
    return np.stack(trees)


def block_stack_params(blocks: list[dict], scan: bool) -> dict:
    """Per-layer block params -> a `BlockStack`'s: stacked under `layers/block` (scan) or `layers_{i}/block`."""
    if scan:
        return {"layers": {"block": stack_trees(blocks)}}
    return {f"layers_{i}": {"block": b} for i, b in enumerate(blocks)}
