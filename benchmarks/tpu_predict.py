"""Predicted TPU step times, MFU and paper-run wall times from the TPU compiler's own cost model (AOT, on the CPU).

    python -m benchmarks.tpu_predict --write             # every paper-size train step on v5e-256 and v5p-128
    python -m benchmarks.tpu_predict --systems=mma_dfer --topologies=v5e:16x16 --write
    python -m benchmarks.tpu_predict --tiny              # tiny configs on a 2x2 v5e slice: tests / CI

For every system's paper-size variants (`benchmark.pod_variants` in the registry) and every topology, the
trainer's train step (the same program as `benchmarks.pod_compile`: bf16 compute and frozen weights, fp32
master weights, state sharded over `data x fsdp`) is compiled for the topology with libtpu, nothing runs:

  per-chip batch  the largest power of two up to --max_batch whose step fits the chip's HBM (searched with
                  the scanned step, whose memory estimate is the larger), or --batch
  predicted time  the step compiled again with every scan unrolled (`layers.unrolled_scans`: the cost model,
                  like XLA's FLOP count, prices a loop's body once, so a scanned 24-layer stack reads as one
                  layer) and its `cost_analysis()["optimal_seconds"]`, the compiler's estimate of the step's
                  time on the chip, read with `perf.priced_seconds` (libtpu counts -1 s per op it cannot
                  price; those ops, async memory prefetches, are reported)
  floor           analytic FLOPs per chip / the chip's bf16 peak. libtpu's sum is known up to whole seconds
                  (`perf.priced_seconds`): the priced time is read as the smallest reading at or above the
                  floor, and flagged where in doubt (a reading near a second, or one the floor moved)
  MFU             analytic FLOPs per chip / (peak x predicted time)
  paper run       the system's `PaperRun` examples / (global batch / predicted time), training steps only, at
                  the pod's global batch (a recipe at that batch would rescale its learning rate)

Every figure is the compiler's model of chips nobody ran, not a measurement. `--write` replaces the section of
BENCHMARKS.md after every row (a long run that stops keeps what it predicted).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import Optional

from benchmarks import pod_compile, report
from jaxemo import layers, perf, systems
from jaxemo.systems.base import TINY
from jaxemo.train import sharding

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = perf.GIB


@dataclasses.dataclass
class Prediction:
    system: str
    variant: str
    topology: str
    per_chip_batch: int
    chips: int
    memory_bytes: Optional[int]
    xla_flops_per_chip: Optional[float]
    analytic_flops_per_chip: float
    predicted_s: Optional[float]  # the priced part of `optimal_seconds`
    unpriced_ops: int
    compile_s: float
    error: str = ""
    raw_seconds: Optional[float] = None  # `optimal_seconds` as libtpu reports it

    @property
    def peak(self) -> float:
        return perf.TPU_TOPOLOGIES[self.topology].peak_flops

    @property
    def floor_s(self) -> float:
        return self.analytic_flops_per_chip / self.peak

    @property
    def mfu(self) -> Optional[float]:
        return None if not self.predicted_s else self.floor_s / self.predicted_s

    @property
    def ambiguous(self) -> bool:
        """Whether the priced time is in doubt by whole seconds (`perf.priced_seconds`): the model left ops
        unpriced and either the plain fractional reading fell below the floor or the reading is near a second."""
        if self.predicted_s is None or not self.unpriced_ops:
            return False
        return self.predicted_s >= 0.5 or perf.priced_seconds(self.raw_seconds)[0] < self.floor_s

    def paper_hours(self, examples: int) -> Optional[float]:
        if not self.predicted_s:
            return None
        return examples / (self.per_chip_batch * self.chips) * self.predicted_s / 3600


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tpu_predict", description=__doc__.split("\n")[0])
    p.add_argument("--systems", default=None, help="comma-separated systems (default: those with pod variants)")
    p.add_argument("--variants", default=None, help="comma-separated variants (default: each one's pod variants)")
    p.add_argument("--topologies", default="v5e:16x16,v5p:4x4x4", help="comma-separated topology names")
    p.add_argument("--batch", type=int, default=0, help="per-chip batch (default: the largest that fits)")
    p.add_argument("--max_batch", type=int, default=16, help="largest per-chip batch the search tries")
    p.add_argument("--remat", default="none", choices=sorted(layers.REMAT_POLICIES),
                   help="the layer stacks' recomputation policy (results unchanged; `full` saves no residuals)")
    p.add_argument("--tiny", action="store_true", help="tiny configs on v5e:2x2 at per-chip batch 2: seconds")
    p.add_argument("--write", action="store_true")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    if args.tiny:
        args.topologies, args.batch = "v5e:2x2", args.batch or 2
    args.paper = pod_compile.paper_variants()
    args.systems = [s for s in args.systems.split(",") if s] if args.systems else list(args.paper)
    unknown = sorted(set(args.systems) - set(args.paper))
    if unknown:
        raise ValueError(f"--systems: {unknown} have no pod variants; expected some of {sorted(args.paper)}")
    args.variants = [v for v in args.variants.split(",") if v] if args.variants else None
    args.topologies = [t for t in args.topologies.split(",") if t]
    for topology in args.topologies:
        if topology not in perf.TPU_TOPOLOGIES:
            known = sorted(perf.TPU_TOPOLOGIES)
            raise ValueError(f"--topologies: {topology!r} is unknown; expected some of {known}")
    return args


def per_chip_batch(system: str, variant: str, mesh, topology: str, max_batch: int,
                   remat: str = "none") -> tuple[Optional[int], str]:
    """The largest power of two <= max_batch whose scanned step fits (None and the last error if none does)."""
    batch, error = 1 << (max_batch.bit_length() - 1), ""
    while batch >= 1:
        row = pod_compile.compile_step(system, variant, mesh, topology, batch, remat)
        fits = pod_compile.fits(row, topology)
        print(f"  {system} {variant} {topology} batch {batch}: "
              f"{row.error or f'{row.memory_bytes / GIB:.2f} GiB per chip'} ({row.compile_s:.0f} s)", flush=True)
        if fits:
            return batch, ""
        error = row.error or f"{row.memory_bytes / GIB:.1f} GiB per chip at batch 1 > HBM"
        batch //= 2
    return None, error


def predict(system: str, variant: str, mesh, topology: str, batch: int, remat: str = "none") -> Prediction:
    row = pod_compile.compile_step(system, variant, mesh, topology, batch, remat, unroll=True)
    floor = row.analytic_flops_per_chip / perf.TPU_TOPOLOGIES[topology].peak_flops
    raw = row.optimal_seconds
    priced, unpriced = (None, 0) if raw is None else perf.priced_seconds(raw, floor)
    return Prediction(system, variant, topology, batch, mesh.size, row.memory_bytes, row.flops_per_chip,
                      row.analytic_flops_per_chip, priced, unpriced, row.compile_s,
                      row.error or ("" if priced is not None else "no optimal_seconds in the cost analysis"), raw)


def measure(args) -> list[Prediction]:
    rows = []
    for topology in args.topologies:
        mesh = sharding.topology_mesh(topology)
        for system in args.systems:
            variants = (TINY,) if args.tiny else args.paper[system]
            for variant in variants if args.variants is None else [v for v in variants if v in args.variants]:
                batch, error = (args.batch, "") if args.batch else per_chip_batch(system, variant, mesh, topology,
                                                                                  args.max_batch, args.remat)
                if batch is None:
                    row = Prediction(system, variant, topology, 0, mesh.size, None, None, 0.0, None, 0, 0.0,
                                     f"no per-chip batch fits: {error}")
                else:
                    row = predict(system, variant, mesh, topology, batch, args.remat)
                print(f"{system} {variant} on {topology}: {describe(row)}", flush=True)
                rows.append(row)
                if args.write:
                    write(rows, args)
    return rows


def describe(row: Prediction) -> str:
    if row.error:
        return row.error
    return (f"batch {row.per_chip_batch}/chip, predicted {1e3 * row.predicted_s:.2f} ms (floor "
            f"{1e3 * row.floor_s:.2f} ms), MFU {100 * row.mfu:.1f}%, {row.unpriced_ops} unpriced ops, "
            f"compile {row.compile_s:.0f} s")


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g}"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}" if fraction >= 0.01 else f"{100 * fraction:.2g}"


def paper_run(row: Prediction):
    return systems.get(row.system).benchmark.paper_runs.get(row.variant)


def section_body(rows: list[Prediction], args, argv) -> str:
    lines = ["| system | topology | per-chip batch | global batch | memory per chip (XLA) | GFLOP per chip per "
             "step (analytic / XLA) | floor ms (FLOPs / peak) | **predicted step ms** | **predicted MFU %** | "
             "unpriced ops | paper run | **projected hours** | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = perf.TPU_TOPOLOGIES[r.topology].label
        if r.error:
            lines.append(f"| {r.system} ({r.variant}) | {label} | {r.per_chip_batch or '-'} | - | {r.error} | "
                         "- | - | - | - | - | - | - | - |")
            continue
        xla = "n/a" if r.xla_flops_per_chip is None else f"{r.xla_flops_per_chip / 1e9:,.1f}"
        run = paper_run(r)
        hours = "-" if run is None else f"{r.paper_hours(run.examples):.3g}"
        flag = " (known up to whole seconds)" if r.ambiguous else ""
        lines.append(
            f"| {r.system} ({r.variant}) | {label} | {r.per_chip_batch} | {r.per_chip_batch * r.chips:,} | "
            f"{r.memory_bytes / GIB:.2f} GiB | {r.analytic_flops_per_chip / 1e9:,.1f} / {xla} | "
            f"{_ms(r.floor_s)} | {_ms(r.predicted_s)}{flag} | {_percent(r.mfu)} | {r.unpriced_ops} | "
            f"{'-' if run is None else run.description} | {hours} | {r.compile_s:.0f} |")
    peaks = ", ".join(sorted({f"{perf.TPU_TOPOLOGIES[t].label} {perf.TPU_TOPOLOGIES[t].peak_flops / 1e12:.0f}"
                              for t in args.topologies}))
    return "\n".join([
        "### Predicted TPU train steps: the compiler's cost model, not a measurement"
        + (" (tiny)" if args.tiny else ""),
        "",
        *lines,
        "",
        f"- Command: `python -m benchmarks.tpu_predict {shlex.join(argv)}`",
        f"- Machine (compiling only): {report.machine_description(('jax', 'jaxlib', 'libtpu', 'flax'))}",
        f"- Date: {report.today()}",
        "- Every figure is libtpu's model of a chip that never ran: the step compiled ahead of time for the "
        "topology (`jax.experimental.topologies`) with every scan unrolled, its predicted time the priced part "
        "of `cost_analysis()['optimal_seconds']` (`jaxemo.perf.priced_seconds`; unpriced ops: async memory "
        "prefetches the model reports as -1 s each, left out). The same program as `benchmarks.pod_compile`: "
        "bf16 compute and frozen weights, fp32 master weights, `data x fsdp`, the batch split over both, "
        + ("no remat." if args.remat == "none" else f"the layer stacks recomputed in the backward "
           f"(`remat_policy={args.remat}`; MFU counts the model's FLOPs, not the recomputation's)."),
        f"- MFU: the system's analytic FLOPs per chip (`jaxemo/systems/`, matmuls only) / (bf16 peak x "
        f"predicted time); peak per chip (TFLOP/s, datasheet): {peaks}. Floor: analytic FLOPs / peak; the "
        "priced time is the smallest reading at or above it, flagged where only known up to whole seconds. "
        "Projected hours: the paper run's training examples at the pod's global batch and the predicted step "
        "time (training only; evaluation, input pipeline and checkpoints not counted).",
    ])


def write(rows: list[Prediction], args) -> None:
    systems_part = "" if set(args.systems) == set(args.paper) else "-" + "+".join(args.systems)
    variants_part = "" if args.variants is None else "-" + "+".join(args.variants)
    remat_part = "" if args.remat == "none" else f"-remat_{args.remat}"
    key = (f"tpu-predict{'-tiny' if args.tiny else ''}{systems_part}{variants_part}{remat_part}"
           f"-{'+'.join(args.topologies)}")
    report.write_section(args.benchmarks_file, f"{key}:tpu-bfloat16", section_body(rows, args, args.argv))


def main(argv=None) -> list[Prediction]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    rows = measure(args)
    print("\n" + section_body(rows, args, argv))
    if args.write:
        write(rows, args)
        print(f"\nwrote the section of {args.benchmarks_file}")
    return rows


if __name__ == "__main__":
    main()
