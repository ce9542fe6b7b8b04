"""PyTorch checkpoints -> jaxemo params (plain nested dicts of numpy arrays)."""

from __future__ import annotations

import os


def load_torch_state_dict(path: str, key: str | None = "model") -> dict:
    """A `.pth` checkpoint's state dict, read with torch on the CPU (weights only, never executing code).

    MAE / MAE-Face / AudioMAE checkpoints keep it under "model", the MMA-DFER releases under "state_dict";
    `key` is tried first and the whole file is returned when it holds no such entry.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading {path} needs torch (pip install torch==2.13.0 for the CPU build)") from error
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    for name in (key, "state_dict", "model"):
        if name and isinstance(checkpoint, dict) and isinstance(checkpoint.get(name), dict):
            return checkpoint[name]
    return checkpoint
