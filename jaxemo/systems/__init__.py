"""One home per system.

Each module here holds what a system's experiments and benchmarks share, beside its model in
`jaxemo/models/`: how a config builds the model and the task (loss, metrics, host transform, on-device
augmentation), its analytic FLOP count, and `BENCHMARK`, the train / inference step cases it contributes to
`python -m experiments.benchmark --system=<name>`. Experiment modules only configure, run and report.
"""

from __future__ import annotations

import importlib

SYSTEMS = ("vit_classifier", "mma_dfer", "casp", "uniemox")


def get(name: str):
    """The system module by name (`SYSTEMS`)."""
    if name not in SYSTEMS:
        raise ValueError(f"system {name!r} is unknown; expected one of {SYSTEMS}")
    return importlib.import_module(f"jaxemo.systems.{name}")
