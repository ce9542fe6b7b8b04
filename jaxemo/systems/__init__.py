"""The systems and their registry.

Each system is a package `jaxemo/systems/<name>/` exporting one `SYSTEM` (`jaxemo.systems.base.System`: its
name, recipe configs, `build_task(config)`, FLOP count, benchmark cases and workloads), beside its model in
`jaxemo/models/`. `SYSTEMS` lists the packages; the benchmark driver, the GPU suite and the TPU pod compiles
build their lists from `all_systems()`, so a new system is one package and one line here. A system that lives
outside the package (a user's own, or a test's) joins with `register(system)`.
"""

from __future__ import annotations

import importlib

from jaxemo.systems.base import System

SYSTEMS = (
    "vit_classifier",
    "mma_dfer",
    "casp",
    "uniemox",
    "speech_ser",
    "agt",
)

_registered: dict[str, System] = {}


def register(system: System) -> System:
    """Adds a system defined elsewhere to the registry (after the packages of `SYSTEMS`)."""
    if not isinstance(system, System):
        raise TypeError(f"register expects a jaxemo.systems.base.System, got {type(system).__name__}")
    if system.name in SYSTEMS or system.name in _registered:
        raise ValueError(f"a system named {system.name!r} is registered already")
    _registered[system.name] = system
    return system


def unregister(name: str) -> None:
    """Removes a system added with `register`."""
    if name not in _registered:
        raise KeyError(f"{name!r} was not added with register (packages in SYSTEMS stay)")
    del _registered[name]


def names() -> tuple[str, ...]:
    return SYSTEMS + tuple(_registered)


def get(name: str) -> System:
    """The system by name: a package's `SYSTEM` (imported on first use) or a registered one."""
    if name in _registered:
        return _registered[name]
    if name not in SYSTEMS:
        raise ValueError(f"system {name!r} is unknown; expected one of {names()}")
    system = importlib.import_module(f"jaxemo.systems.{name}").SYSTEM
    if system.name != name:
        raise ValueError(f"jaxemo/systems/{name}/'s SYSTEM is named {system.name!r}")
    return system


def all_systems() -> list[System]:
    return [get(name) for name in names()]
