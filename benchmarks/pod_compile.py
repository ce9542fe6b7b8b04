"""Proof without a pod: every system's paper-size train step compiled ahead of time for TPU pod topologies.

    python -m benchmarks.pod_compile --write                   # paper configs on v5e-256 and v5p-128
    python -m benchmarks.pod_compile --tiny                    # tiny configs on a 2x2 v5e slice: tests / CI

`jax[tpu]` installs libtpu, with which a CPU machine can compile (not run) a program for a TPU topology
(`jax.experimental.topologies.get_topology_desc`). For each system's paper configuration and each topology
this builds the trainer's own train step (`loop.setup_train_step`: sharded state from the logical-axis
rules, donated, jitted) on a data x fsdp mesh of the topology's chips, compiles it for a global batch of
`per-chip batch x chips`, and reports per-chip memory (`compiled.memory_analysis()`: arguments + temporaries
+ outputs - donated aliases) against the chip's HBM, XLA's FLOPs per step (`cost_analysis`, per chip), and the
largest per-chip batch (a power of two) that fits, without and with recomputation (`remat_policy=full`).
Parameters and compute are bf16 with fp32 master weights, frozen weights bf16: how a pod would run them.
The systems and their paper-size variants come from the registry (`benchmark.pod_variants` of every system
in `jaxemo.systems`). `--write` replaces the section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
import time
from typing import Any, Callable, Optional

import jax

from benchmarks import report
from benchmarks.steps import make_case
from jaxemo import layers, perf, systems
from jaxemo.systems.base import TINY, CaseOptions
from jaxemo.train import loop, sharding, state as state_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = perf.GIB
TOPOLOGIES = perf.TPU_TOPOLOGIES


def paper_variants() -> dict[str, tuple]:
    """system -> its paper-size variants, for every registered system that names some (the tiny one is `TINY`)."""
    return {s.name: tuple(s.benchmark.pod_variants) for s in systems.all_systems()
            if s.benchmark is not None and s.benchmark.pod_variants}


@dataclasses.dataclass
class Compiled:
    system: str
    variant: str
    topology: str
    remat: str
    per_chip_batch: int
    memory_bytes: Optional[int]
    flops_per_chip: Optional[float]
    compile_s: float
    error: str = ""
    analytic_flops_per_chip: Optional[float] = None  # the system's FLOP count x the per-chip batch
    optimal_seconds: Optional[float] = None  # the TPU compiler's cost model, raw (`perf.priced_seconds` reads it)
    compiled: Any = dataclasses.field(default=None, repr=False)  # the executable (its HLO for inspection)


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pod_compile", description=__doc__.split("\n")[0])
    p.add_argument("--systems", default=None,
                   help="comma-separated systems (default: every one with pod variants)")
    p.add_argument("--topologies", default="v5e:16x16,v5p:4x4x4", help="comma-separated topology names")
    p.add_argument("--batch", type=int, default=1, help="per-chip batch of the reported row")
    p.add_argument("--max_batch", type=int, default=64, help="largest per-chip batch tried in the search")
    p.add_argument("--tiny", action="store_true", help="tiny configs on v5e:2x2, no search: seconds")
    p.add_argument("--write", action="store_true")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    if args.tiny:
        args.topologies, args.max_batch = "v5e:2x2", 0
    args.paper = paper_variants()
    args.systems = [s for s in args.systems.split(",") if s] if args.systems else list(args.paper)
    unknown = sorted(set(args.systems) - set(args.paper))
    if unknown:
        raise ValueError(f"--systems: {unknown} have no pod variants; expected some of {sorted(args.paper)}")
    args.topologies = [t for t in args.topologies.split(",") if t]
    return args


def compile_step(system: str, variant: str, mesh, topology: str, per_chip_batch: int, remat: str,
                 unroll: bool = False) -> Compiled:
    """The trainer's step of `system`'s `variant` for `mesh`, compiled (never run) at the given batch; with
    `unroll`, every scan unrolled (`layers.unrolled_scans`) so that the cost analysis counts every layer."""
    options = CaseOptions(dtype="bfloat16", remat_policy=remat, frozen_dtype="bfloat16")
    case = make_case(system, variant, 1, options)
    global_batch = per_chip_batch * mesh.size
    case.config.batch_size = global_batch
    example = state_lib.example_batch_like(case.batch)
    batch = {k: jax.ShapeDtypeStruct((global_batch, *v.shape[1:]), v.dtype, sharding=sharding.batch_sharding(mesh))
             for k, v in example.items()}
    analytic = case.flops["train"] * per_chip_batch
    start = time.perf_counter()
    try:
        with layers.unrolled_scans() if unroll else contextlib.nullcontext():
            setup = loop.setup_train_step(case.config, case.task, example, mesh, 1000, 100)
            compiled = setup.train_step.lower(setup.abstract, batch).compile()
    except Exception as error:  # an out-of-memory or sharding failure is a result here, not a crash
        return Compiled(system, variant, topology, remat, per_chip_batch, None, None,
                        time.perf_counter() - start, f"{type(error).__name__}: {str(error)[:400]}", analytic)
    cost = compiled.cost_analysis() or {}
    return Compiled(system, variant, topology, remat, per_chip_batch, perf.compiled_memory_bytes(compiled),
                    cost.get("flops"), time.perf_counter() - start, "", analytic, cost.get("optimal_seconds"),
                    compiled)


def compile_and_predict(lower: Callable[[], Any], floor_s: float) -> dict:
    """`lower()` (building and lowering a program) inside `layers.unrolled_scans()`, compiled, and the TPU
    compiler's cost model read (`perf.priced_seconds`): {memory, error, predicted_s, unpriced, floor_s,
    compile_s}. An out-of-memory or sharding failure is a result here (its error), not a crash."""
    start, predicted, unpriced = time.perf_counter(), None, None
    try:
        with layers.unrolled_scans():  # jitted functions built inside `lower` are traced inside the context
            compiled = lower().compile()
        memory, error = perf.compiled_memory_bytes(compiled), ""
        seconds = (compiled.cost_analysis() or {}).get("optimal_seconds")
        if seconds is not None:
            predicted, unpriced = perf.priced_seconds(seconds, floor_s)
    except Exception as exc:
        memory, error = None, f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"memory": memory, "error": error, "predicted_s": predicted, "unpriced": unpriced, "floor_s": floor_s,
            "compile_s": time.perf_counter() - start}


def fits(row: Compiled, topology: str) -> bool:
    return not row.error and row.memory_bytes is not None and row.memory_bytes <= TOPOLOGIES[topology][1]


def largest_batch(system: str, variant: str, mesh, topology: str, remat: str, max_batch: int) -> Optional[int]:
    """The largest power-of-two per-chip batch up to `max_batch` whose compiled step fits the chip's HBM."""
    best, batch = None, 1
    while batch <= max_batch:
        row = compile_step(system, variant, mesh, topology, batch, remat)
        print(f"  {system} {topology} remat={remat} batch {batch}: "
              f"{row.error or f'{row.memory_bytes / GIB:.2f} GiB per chip'} ({row.compile_s:.0f} s)", flush=True)
        if not fits(row, topology):
            break
        best, batch = batch, batch * 2
    return best


def measure(args) -> list[dict]:
    rows = []
    for topology in args.topologies:
        mesh = sharding.topology_mesh(topology)
        for system in args.systems:
            for variant in (TINY,) if args.tiny else args.paper[system]:
                row = compile_step(system, variant, mesh, topology, args.batch, "none")
                print(f"{system} {variant} on {topology}: "
                      f"{row.error or f'{row.memory_bytes / GIB:.2f} GiB per chip'} ({row.compile_s:.0f} s)", flush=True)
                result = {"row": row, "largest": {}}
                if args.max_batch:
                    remats = ("none", "full") if systems.get(system).benchmark.remat else ("none",)
                    for remat in remats:
                        result["largest"][remat] = largest_batch(system, variant, mesh, topology, remat,
                                                                 args.max_batch)
                rows.append(result)
                if args.write:  # after every row: a long run that stops keeps what it measured
                    write(rows, args)
    return rows


def write(results: list[dict], args) -> None:
    systems_part = "" if set(args.systems) == set(args.paper) else "-" + "+".join(args.systems)
    key = f"pod-compile{'-tiny' if args.tiny else ''}{systems_part}-{'+'.join(args.topologies)}:tpu-bfloat16"
    report.write_section(args.benchmarks_file, key, section_body(results, args, args.argv))


def _largest_cell(largest: dict, remat: str, max_batch: int) -> str:
    if not max_batch:
        return "-"
    if remat not in largest:
        return "n/a"
    value = largest[remat]
    return "none fits" if value is None else f">= {value}" if value == max_batch else str(value)


def section_body(results: list[dict], args, argv) -> str:
    lines = ["| system | topology | mesh | per-chip batch | memory per chip (XLA) | HBM | GFLOP per chip per step "
             "(analytic) | GFLOP (XLA) | largest per-chip batch, no remat | with remat full | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        r = result["row"]
        label, hbm, axes = TOPOLOGIES[r.topology][:3]
        memory = r.error or f"{r.memory_bytes / GIB:.2f} GiB"
        flops = "n/a" if r.flops_per_chip is None else f"{r.flops_per_chip / 1e9:,.1f}"
        analytic = f"{r.analytic_flops_per_chip / 1e9:,.1f}"
        largest = [_largest_cell(result["largest"], k, args.max_batch) for k in ("none", "full")]
        mesh = " x ".join(f"{k} {v}" for k, v in axes.items())
        lines.append(f"| {r.system} ({r.variant}) | {label} | {mesh} | {r.per_chip_batch} | {memory} | "
                     f"{hbm / GIB:.0f} GiB | {analytic} | {flops} | {largest[0]} | {largest[1]} | {r.compile_s:.0f} |")
    return "\n".join([
        f"### Train steps compiled for TPU pods (AOT, on the CPU){' (tiny)' if args.tiny else ''}",
        "",
        *lines,
        "",
        f"- Command: `python -m benchmarks.pod_compile {shlex.join(argv)}`",
        f"- Machine: {report.machine_description(('jax', 'jaxlib', 'libtpu', 'flax'))}",
        f"- Date: {report.today()}",
        "- Each row is the trainer's train step (the system's task and recipe optimizer, state sharded by the "
        "logical-axis rules over `data x fsdp`, batch split over both) compiled for the topology with "
        "`jax.experimental.topologies`; nothing runs. bf16 compute and frozen weights, fp32 trainable master "
        "weights. Memory is XLA's per-chip estimate (arguments + temporaries + outputs - donated aliases). "
        "Analytic FLOPs: the system's count per training example (`jaxemo/systems/`) x the per-chip batch. XLA's "
        "FLOPs: the cost analysis of the per-chip program, which counts a scanned layer's body once (one layer "
        "plus the rest, not the whole step) and the recomputation. n/a: the system has no remat option. "
        "The largest batch is the largest power of two "
        f"up to {args.max_batch} whose step fits the chip's HBM (XLA's estimate; leave headroom)."
        if args.max_batch else "No batch search (--max_batch=0).",
    ])


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    results = measure(args)
    print("\n" + section_body(results, args, argv))
    if args.write:
        write(results, args)
        print(f"\nwrote the section of {args.benchmarks_file}")
    return results


if __name__ == "__main__":
    main()
