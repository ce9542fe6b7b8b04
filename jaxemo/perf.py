"""Benchmark helpers: analytic FLOP counts, timing, measured peak FLOP/s, memory, machine facts, BENCHMARKS.md.

Conventions (shared by every benchmark that reports MFU):
  * a matmul of [m, k] x [k, n] costs 2 * m * k * n FLOPs (one multiply-add = 2 FLOPs);
  * only matmuls and convolutions are counted: softmax, LayerNorm, GELU, residual adds, the optimizer
    update and other elementwise work are ignored (a few percent of a ViT's FLOPs at width >= 384);
  * a training step costs 3x the forward pass (the backward pass does two matmuls per forward matmul:
    one for the input gradient, one for the weight gradient), even where a gradient is not needed (the
    patch embedding never needs the gradient of the images), as in the PaLM / MaxText MFU convention;
    except for models with frozen parts (MMA-DFER, `mma_dfer_flops`): there the backward counts what has
    to be computed, i.e. activation gradients through every layer but weight gradients only for the
    trainable weights, since 3x forward would credit a frozen encoder with work nobody does;
  * recomputation (remat) is not counted: MFU is model FLOPs, not hardware FLOPs;
  * MFU = achieved model FLOP/s / peak FLOP/s, the peak being a large matmul timed in the same process in
    the same dtype on the same device, not a datasheet number.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import os
import platform
import re
import resource
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

GIB = 1024**3


# ------------------------------------------------------------------------------------------------ FLOPs


def vit_forward_flops(model) -> int:
    """Matmul FLOPs of one sample through a `jaxemo.vit.ViT` forward pass.

    With N patches of P x P x C pixels, T tokens (CLS + patches + prompts), width D, MLP width M, depth L
    and K classes:

        patch embedding   2 * N * P*P*C * D
        per layer         8 * T * D^2      query, key, value and output projections
                          4 * T^2 * D      attention scores q k^T and the weighted sum of v (all heads)
                          4 * T * D * M    the two MLP matmuls
        head              2 * D * K        on the pooled token only
    """
    (ph, pw), d = model.patch_size, model.width
    gh, gw = model.grid
    patches, tokens = gh * gw, model.num_tokens
    patch_embed = 2 * patches * ph * pw * model.in_channels * d
    per_layer = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * model.mlp_dim
    head = 2 * d * model.num_classes if model.num_classes else 0
    return patch_embed + model.depth * per_layer + head


def train_flops(forward_flops: int) -> int:
    """Forward + backward (2x forward) FLOPs of one training step, per sample."""
    return 3 * forward_flops


def transformer_layer_flops(tokens: int, width: int, mlp_dim: int) -> tuple[int, int]:
    """(weight matmuls, attention matmuls) of one pre-LN transformer layer on `tokens` tokens; see
    `vit_forward_flops`: 8*T*D^2 + 4*T*D*M with weights, 4*T^2*D without (q k^T and the weighted sum of v)."""
    return 8 * tokens * width * width + 4 * tokens * width * mlp_dim, 4 * tokens * tokens * width


# ------------------------------------------------------------------------------------------------ timing


def time_runs(run: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `run`, after `warmup` untimed calls.

    `run` must return only once its work is finished (e.g. end with `jax.block_until_ready`).
    """
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def cpu_seconds_of_others() -> Optional[float]:
    """CPU seconds used since boot by every other process and the kernel (Linux `/proc/stat` busy time
    minus this process's own); None where `/proc/stat` does not exist."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy - own.ru_utime - own.ru_stime


def with_others_cpu_share(fn: Callable[[], Any]) -> tuple[Any, Optional[float]]:
    """(fn(), the fraction of all cores that other processes used meanwhile, or None if unknown).

    On a shared machine this tells a clean timing (a few percent) from one that competed for the cores.
    """
    before, start = cpu_seconds_of_others(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    if before is None:
        return result, None
    return result, max(0.0, cpu_seconds_of_others() - before) / (wall * cpu_count())


def matmul_peak_flops(matmul: Callable[[], Any], size: int, repeats: int = 5, min_run_s: float = 0.2) -> float:
    """Peak FLOP/s from `matmul`, a blocking callable doing one [size, size] x [size, size] product.

    Each timed run repeats the product enough times to last about `min_run_s` (dispatch overhead would
    otherwise dominate a fast accelerator); the result is the median over `repeats` runs.
    """
    matmul()  # compile / allocate
    one = min(time_runs(matmul, 2, warmup=0))
    iterations = max(1, int(min_run_s / max(one, 1e-9)))

    def run():
        for _ in range(iterations):
            matmul()

    seconds = statistics.median(time_runs(run, repeats, warmup=0))
    return 2 * size**3 * iterations / seconds


def jax_matmul(size: int, dtype, device: Optional[jax.Device] = None) -> Callable[[], Any]:
    """A blocking [size, size] x [size, size] product in `dtype` on `device` (see `matmul_peak_flops`)."""
    device = device or jax.devices()[0]
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
    product = jax.jit(jnp.matmul)
    return lambda: product(a, b).block_until_ready()


# Dense (no sparsity) peak FLOP/s of one chip by `device_kind`, from the vendors' datasheets. fp32 on a GPU is
# its CUDA-core rate (XLA's default fp32 matmuls there); TPUs run fp32 matmuls in bf16 passes.
DATASHEET_PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "TPU v6 lite": {"bfloat16": 918e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5": {"bfloat16": 459e12},
    "TPU v4": {"bfloat16": 275e12},
}


@functools.cache
def peak_flops(dtype_name: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of all of this job's devices in `dtype_name`, where it comes from): the datasheet figure
    per chip times the chips on an accelerator listed in `DATASHEET_PEAK_FLOPS`; elsewhere (the CPU, whose
    simulated devices share its cores) a matmul measured once per process."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        for kind, peaks in DATASHEET_PEAK_FLOPS.items():
            if device.device_kind.startswith(kind):
                per_chip = peaks.get(dtype_name, peaks["bfloat16"])
                return per_chip * jax.device_count(), f"datasheet {kind} {dtype_name}"
    size = 1024 if device.platform == "cpu" else 8192
    dtype = jnp.dtype(dtype_name)
    measured = matmul_peak_flops(jax_matmul(size, dtype, device), size, repeats=3, min_run_s=0.1)
    devices = 1 if device.platform == "cpu" else jax.device_count()
    return measured * devices, f"measured {size}^2 {dtype_name} matmul"


# ------------------------------------------------------------------------------------------------ memory


def compiled_memory_bytes(compiled) -> Optional[int]:
    """XLA's estimate of a compiled program's footprint: temp + arguments + outputs - donated aliases."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes)


def device_peak_bytes(device: jax.Device) -> Optional[int]:
    """The allocator's high-water mark on an accelerator (process lifetime); None where not reported (CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("peak_bytes_in_use")


def reset_peak_rss() -> bool:
    """Resets the process's peak RSS (Linux `/proc/self/clear_refs`); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since the last `reset_peak_rss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


# ------------------------------------------------------------------------------------------------ results


@dataclasses.dataclass
class Measurement:
    """One table row: a framework's train step throughput on one model and batch."""

    model: str
    batch: int
    dtype: str
    framework: str
    run_seconds: list[float]  # wall time of each timed run
    steps_per_run: int
    flops_per_sample: int  # analytic: of a training sample (3x forward for the ViT), or of a forward pass
    peak_flops: Optional[float] = None  # measured in the same process, row's dtype and device(s)
    compile_s: Optional[float] = None
    memory_bytes: Optional[int] = None
    memory_source: str = ""
    rss_bytes: Optional[int] = None
    others_cpu_share: Optional[float] = None  # of all cores, used by other processes during the timed runs
    step: str = "train"  # or "inference" (forward only)

    @property
    def samples_per_s(self) -> float:
        return self.batch * self.steps_per_run / statistics.median(self.run_seconds)

    @property
    def achieved_flops(self) -> float:
        return self.samples_per_s * self.flops_per_sample

    @property
    def mfu(self) -> float:
        return self.achieved_flops / self.peak_flops if self.peak_flops else float("nan")


TABLE_COLUMNS = ("model", "step", "batch", "dtype", "framework", "samples/s", "GFLOP/sample", "achieved TFLOP/s",
                 "measured peak TFLOP/s", "MFU %", "compile s", "memory")


def _memory_cell(m: Measurement) -> str:
    parts = []
    if m.memory_bytes is not None:
        parts.append(f"{m.memory_bytes / GIB:.2f} GiB {m.memory_source}".strip())
    if m.rss_bytes is not None:
        parts.append(f"RSS {m.rss_bytes / GIB:.2f} GiB")
    return "; ".join(parts) or "n/a"


def table_row(m: Measurement) -> list[str]:
    peak = "n/a" if m.peak_flops is None else f"{m.peak_flops / 1e12:.3f}"
    return [m.model, m.step, str(m.batch), m.dtype, m.framework, f"{m.samples_per_s:.2f}",
            f"{m.flops_per_sample / 1e9:.2f}", f"{m.achieved_flops / 1e12:.3f}", peak,
            f"{100 * m.mfu:.1f}", "n/a" if m.compile_s is None else f"{m.compile_s:.1f}", _memory_cell(m)]


def markdown_table(rows: Sequence[Measurement]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(m)) + " |" for m in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ cases

TINY = "tiny"  # every system's benchmark has a variant of this name that runs in seconds (tests, CI)


@dataclasses.dataclass(frozen=True)
class CaseOptions:
    """What `python -m experiments.benchmark` lets a user change in any system's case; `load_config(name,
    variant)` reads `experiments/configs/<name>.py` (the library never imports the experiments)."""

    load_config: Callable
    dtype: str = "float32"
    remat_policy: str = "none"
    frozen_dtype: str = "float32"
    image_size: Optional[int] = None
    trainable: Optional[Sequence[str]] = None


@dataclasses.dataclass
class StepCase:
    """One benchmarked configuration: the trainer's train step (and the evaluator's eval step) of `task` under
    `config` on one fixed host batch. `flops[step]` is the analytic count per sample of each timed step.
    `torch_comparable` is False where the PyTorch twin would not do the same work (e.g. with remat)."""

    label: str
    config: Any
    task: Any
    batch: dict
    flops: dict
    torch_comparable: bool = True

    @property
    def batch_size(self) -> int:
        return len(next(iter(self.batch.values())))


@dataclasses.dataclass(frozen=True)
class SystemBenchmark:
    """What a system contributes to the benchmark harness (its module's `BENCHMARK`): a case per variant and
    batch size, the steps it times (train, inference), and the text of its BENCHMARKS.md section."""

    name: str
    section: str
    title: str
    unit: str  # what one sample is: image, clip, ...
    default_variants: tuple
    default_batch: dict  # variant (or its prefix before "/") -> batch size
    case: Callable  # (variant, batch_size, CaseOptions) -> StepCase
    steps: tuple = ("train", "inference")
    notes: tuple = ()
    cpu_steps: Optional[dict] = None  # variant -> steps per timed run on a CPU (default 2)
    remat: bool = True  # whether its cases honour `CaseOptions.remat_policy`

    def batch_for(self, variant: str) -> int:
        for key in (variant, variant.split("/")[0]):
            if key in self.default_batch:
                return int(self.default_batch[key])
        raise ValueError(f"{self.name}: no default batch size for variant {variant!r}; pass --batch_size")


# ------------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def package_version(name: str) -> Optional[str]:
    """Installed version without importing the package (None if absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_description(packages: Sequence[str] = ("jax", "jaxlib", "flax", "torch", "transformers")) -> str:
    """One line: CPU model, cores, RAM, package versions, JAX backend and devices."""
    ram = _ram_bytes()
    devices = jax.devices()
    parts = [_cpu_model(), f"{cpu_count()} cores"] + ([f"{ram / GIB:.1f} GiB RAM"] if ram else [])
    parts += [f"{p} {v}" for p in packages if (v := package_version(p))]
    parts.append(f"JAX backend {jax.default_backend()} ({len(devices)} x {devices[0].device_kind})")
    return ", ".join(parts)


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------------------ BENCHMARKS.md


def section_markers(key: str) -> tuple[str, str]:
    return f"<!-- {key} begin -->", f"<!-- {key} end -->"


def replace_section(text: str, key: str, body: str) -> str:
    """`text` with the section between `key`'s markers replaced by `body` (appended if there is none)."""
    begin, end = section_markers(key)
    section = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"


def write_section(path: str, key: str, body: str, header: str = "# Benchmarks\n") -> None:
    """Writes `body` into `path` between `key`'s markers, keeping every other section of the file."""
    text = header
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    with open(path, "w") as f:
        f.write(replace_section(text, key, body))


# ------------------------------------------------------------------------------------------------ plots


def save_line_plot(path: str, series: dict, xlabel: str, ylabel: str, title: str, size=(9.0, 5.6)) -> None:
    """A log-log line chart as a PNG (matplotlib): `series` maps a label to [(x, y), ...] with x, y > 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(x > 0 and y > 0 for values in series.values() for x, y in values):
        raise ValueError("save_line_plot: no positive points to draw")
    fig, ax = plt.subplots(figsize=size, dpi=100)
    for label, values in series.items():
        points = sorted((x, y) for x, y in values if x > 0 and y > 0)
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ TPU topologies

GIB = 1024**3
# topology name -> (label, chips' HBM in bytes, mesh axes)
TPU_TOPOLOGIES = {
    "v5e:16x16": ("TPU v5e-256", 16 * GIB, {"data": 16, "fsdp": 16}),
    "v5p:4x4x4": ("TPU v5p-128 (64 chips)", 95 * GIB, {"data": 4, "fsdp": 16}),  # axes fit the 4x4x4 torus
    "v5e:2x2": ("TPU v5e-4", 16 * GIB, {"data": 2, "fsdp": 2}),
}


def topology_mesh(name: str):
    """A mesh over the chips of a TPU topology (`jax.experimental.topologies`; needs libtpu): programs compile
    for it on any machine, nothing runs."""
    from jaxemo.train import sharding

    # libtpu takes a machine-wide lock unless told otherwise; compiling only, several processes may share it
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    if name not in TPU_TOPOLOGIES:
        raise ValueError(f"topology {name!r}: expected one of {sorted(TPU_TOPOLOGIES)}")
    devices = topologies.get_topology_desc(topology_name=name, platform="tpu").devices
    return sharding.make_mesh(TPU_TOPOLOGIES[name][2], devices=devices)
