"""What the benchmark drivers share: a measured row and its table, machine facts, CPU contention, peak RSS,
the BENCHMARKS.md section writer and plots. The run-time pieces (FLOP rules, peak FLOP/s, memory estimates,
topologies) are `jaxemo.perf`."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import re
import resource
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax

from jaxemo.perf import GIB

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



def others_share_text(value: Optional[float]) -> str:
    """`with_others_cpu_share`'s fraction as a phrase for a section."""
    return "an unknown share" if value is None else f"{100 * value:.0f}%"


def use_host_devices(count: int) -> None:
    """At least `count` CPU devices in this process (the host's cores as XLA devices, e.g. a population's
    trials axis over them); call before the backend starts."""
    from jaxemo.train import sharding

    if count > 1:
        sharding.use_host_devices(max(count, jax.config.jax_num_cpu_devices or 1))

def run_side_by_side(argv, args, section: str, measure: Callable, section_body: Callable) -> dict:
    """A side-by-side comparison's main (`benchmarks.agt_round0`, `benchmarks.fewshot_released`): jaxemo's side
    on `args.host_devices` CPU devices, `measure(args)`, its section printed and, with `--write`, written under
    `<section>[-tiny]-d<devices>:<backend>`."""
    use_host_devices(args.host_devices)
    result = measure(args)
    body = section_body(result, argv)
    print("\n" + body)
    if args.write:
        key = f"{section}{'-tiny' if args.tiny else ''}-d{args.host_devices}:{jax.default_backend()}"
        write_section(args.benchmarks_file, key, body)
        print(f"\nwrote section {key} of {args.benchmarks_file}")
    return result

class CompileClock:
    """Seconds XLA spends compiling, from JAX's monitoring events (tracing is not counted: nested traces would
    be counted twice)."""

    EVENTS = ("/jax/core/compile/backend_compile_duration",)

    def __init__(self):
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event in self.EVENTS:
            self.seconds += duration


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
