"""Device mesh, the one logical-to-mesh rules table, and helpers that place params and batches.

Parameters carry logical axis names (`jaxemo.layers.with_axes`); `DEFAULT_RULES` maps them to the mesh axes
`data`, `fsdp` and `tensor`, as MaxText does. Batches are split over `data` and `fsdp` together.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis name -> mesh axis (or axes, or None = replicated). First match wins.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("trials", MESH_AXES),  # population training: a trial lives on one device, trials spread over all
    ("batch", BATCH_AXES),
    ("activation_batch", BATCH_AXES),  # activations: split the batch, keep the rest whole (`layers.constrain`)
    ("activation_length", None),
    ("activation_embed", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("classes", None),
    ("layers", None),
    ("tokens", None),
)


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
    """`config.sharding.rules` (pairs of logical name and mesh axes: a name, a list of names, or None) ahead
    of `DEFAULT_RULES`, so that a config overrides any default rule (the first match wins)."""
    overrides = tuple((config.get("sharding") or {}).get("rules") or ())
    for rule in overrides:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"sharding.rules entry {rule!r}: expected (logical name, mesh axes)")
        axes = (rule[1],) if isinstance(rule[1], str) else tuple(rule[1] or ())
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ValueError(f"sharding.rules entry {rule!r}: mesh axes {unknown} are unknown; expected {MESH_AXES}")
    return tuple((name, axes if axes is None or isinstance(axes, str) else tuple(axes))
                 for name, axes in overrides) + DEFAULT_RULES


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when this process is one of several (a pod slice or multi-GPU job).

    JAX auto-detects TPU pods, SLURM and Open MPI; elsewhere set JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    if jax.distributed.is_initialized():
        return
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    cluster = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
    if explicit:
        jax.distributed.initialize(
            coordinator_address=explicit,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif cluster:
        jax.distributed.initialize()


def use_host_devices(count: int) -> int:
    """The host's CPU cores as `count` XLA CPU devices (0: one per core this process may run on), so that a
    mesh axis (a population's trials) splits over them instead of one device using the cores through XLA's
    intra-op threads. Call before JAX starts its backends (JAX raises otherwise); an accelerator's devices are
    not affected. Returns the count set (1 leaves JAX's default)."""
    if count < 0:
        raise ValueError(f"host_devices={count}: expected 0 (one per core) or a positive count")
    count = count or len(os.sched_getaffinity(0))
    if count > 1 and jax.config.jax_num_cpu_devices != count:
        jax.config.update("jax_num_cpu_devices", count)
    return count


def resolve_mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fills the one axis given as -1 so that the product equals `num_devices`."""
    unknown = [name for name in axes if name not in MESH_AXES]
    if unknown:
        raise ValueError(f"mesh axes {unknown} are unknown; expected a subset of {MESH_AXES}")
    sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"mesh {dict(axes)}: at most one axis may be -1, got {fill}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"mesh {dict(axes)}: {num_devices} devices are not divisible by {known}")
        sizes[fill[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh {dict(axes)} has {math.prod(sizes.values())} slots but there are "
                         f"{num_devices} devices")
    return sizes


def make_mesh(axes: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A `data x fsdp x tensor` mesh; e.g. `{"data": -1}` or `{"data": 4, "fsdp": 2}`."""
    devices = list(devices) if devices is not None else jax.devices()
    sizes = resolve_mesh_shape(axes, len(devices))
    return jax.make_mesh(
        tuple(sizes.values()),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def logical_to_spec(names: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh, rules) -> P:
    """Maps logical names to a PartitionSpec, replicating a dimension that the mesh axes do not divide."""
    spec = nn.logical_to_mesh_axes(names, rules)
    fitted = []
    for dim, axis in zip(shape, spec):
        axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size:
            logging.info("replicating a dimension of %d (names %s): not divisible by mesh axes %s",
                         dim, names, axes)
            axis = None
        fitted.append(axis)
    return P(*fitted)


def tree_shardings(abstract_boxed_tree, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes (others replicate)."""

    def leaf_sharding(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(leaf_sharding, abstract_boxed_tree,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def spec_devices(spec: P, mesh: Mesh) -> int:
    """Over how many devices a PartitionSpec splits an array (1: replicated)."""
    axes = [a for entry in spec for a in ((entry,) if isinstance(entry, str) else (entry or ()))]
    return math.prod(mesh.shape[a] for a in axes)


def check_large_params_sharded(boxed_params, mesh: Mesh, rules, min_size: int, what: str = "params") -> None:
    """With `fsdp` > 1, every parameter of at least `min_size` elements must be split over some mesh axis:
    a large parameter left replicated (its logical names have no rule, or its dims do not divide) costs its
    full size on every device, which is what FSDP is there to avoid. Raises naming each such parameter."""
    if mesh.shape.get("fsdp", 1) <= 1 or not min_size:
        return
    offenders = []
    flat = jax.tree_util.tree_flatten_with_path(
        boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    for path, leaf in flat:
        value = leaf.value if isinstance(leaf, nn.LogicallyPartitioned) else leaf
        if int(np.prod(value.shape)) < min_size:
            continue
        names = leaf.names if isinstance(leaf, nn.LogicallyPartitioned) else None
        spec = logical_to_spec(names, value.shape, mesh, rules) if names else P()
        if spec_devices(spec, mesh) == 1:
            offenders.append(f"{jax.tree_util.keystr(path)} {tuple(value.shape)} (logical axes {names})")
    if offenders:
        raise ValueError(
            f"mesh {dict(mesh.shape)} has fsdp={mesh.shape['fsdp']}, but these {what} of >= {min_size:,} elements "
            f"stay replicated on every device: {'; '.join(offenders)}. Give their logical axes a rule "
            f"(config.sharding.rules), make their dims divisible by the mesh axes, or raise "
            f"config.sharding.min_sharded_size")


def activation_rules(mesh: Mesh, rules):
    """While tracing a sharded step: the mesh and the rules that `layers.constrain` maps activations with.
    Without it (per-sample vmap, population trials) activation constraints are no-ops."""
    from jaxemo import layers

    return layers.activation_sharding(mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    divisor = batch_divisor(mesh)
    if global_batch_size % divisor or global_batch_size % jax.process_count():
        raise ValueError(
            f"batch_size={global_batch_size} must be divisible by the data axes of the mesh "
            f"(data x fsdp = {divisor}, mesh {dict(mesh.shape)}) and by the {jax.process_count()} processes"
        )


def local_batch_size(global_batch_size: int) -> int:
    return global_batch_size // jax.process_count()


def shard_batch(local_batch, mesh: Mesh):
    """Host-local numpy batch (this process's rows) -> global jax arrays split over the batch axes."""
    sharding = batch_sharding(mesh)

    def to_global(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(to_global, local_batch)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def topology_mesh(name: str) -> Mesh:
    """A mesh over the chips of a TPU topology (`jaxemo.perf.TPU_TOPOLOGIES`, `jax.experimental.topologies`;
    needs libtpu): programs compile for it on any machine, nothing runs."""
    from jaxemo.perf import TPU_TOPOLOGIES

    # libtpu takes a machine-wide lock unless told otherwise; compiling only, several processes may share it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    if name not in TPU_TOPOLOGIES:
        raise ValueError(f"topology {name!r}: expected one of {sorted(TPU_TOPOLOGIES)}")
    devices = topologies.get_topology_desc(topology_name=name, platform="tpu").devices
    return make_mesh(TPU_TOPOLOGIES[name].mesh_axes, devices=devices)
