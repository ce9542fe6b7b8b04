"""The recipe configs: `<name>.py` holds `get_config(variant)` (ml_collections) with its variants (`tiny` for a
CPU in minutes, `paper` or a dataset name for the published recipe). A system names its configs in
`SYSTEM.configs`; runs and benchmark drivers load them here and pass them to the library."""

from __future__ import annotations

import importlib
import os


def config_path(name: str) -> str:
    """Absolute path of `experiments/configs/<name>.py`, so defaults work from any directory."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")


def load(name: str, variant: str | None = None):
    """`get_config(variant)` of `experiments/configs/<name>.py`."""
    if not os.path.exists(config_path(name)):
        raise ValueError(f"no recipe config {name!r}: {config_path(name)} does not exist")
    return importlib.import_module(f"experiments.configs.{name}").get_config(variant)
