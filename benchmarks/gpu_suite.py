"""Every GPU section of BENCHMARKS.md in one command, sized for one H200 in under 8 minutes.

    python -m benchmarks.gpu_suite                       # on a GPU machine: writes BENCHMARKS.md's GPU sections
    python -m benchmarks.gpu_suite --dry_run             # on the CPU, tiny shapes, into a scratch file (tests)

The runs come from the system registry (`jaxemo.systems`), each as its own process with its own time limit (a
failure is reported and the rest still run): for every system with step cases and GPU arguments
(`benchmark.gpu_args`), its train / inference step rows (`benchmarks.steps --system=<name>`), and every
whole-workload run it declares (`workloads`: test-time adaptation latency, population trials per hour,
few-shot SER trials, the AGT MER-SEMI trainings). `--only` takes their names; `--list` prints them. A system
added to the registry appears here without an edit. Attention goes through `jax.nn.dot_product_attention`,
which picks cuDNN's fused kernel on the GPU. The device tool's notes (BENCHMARKS.md, "GPU rows") say what the
GPU machine lacks and how to bring it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from jaxemo import systems
from jaxemo.systems.base import GpuRun

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runs() -> dict[str, GpuRun]:
    """The suite's runs by name, in registry order: each system's step rows, then its workloads."""
    out = {}
    for system in systems.all_systems():
        spec = system.benchmark
        found = []
        if spec is not None and spec.gpu_args:
            found.append(GpuRun(system.name, "benchmarks.steps",
                                (f"--system={system.name}", *spec.gpu_args, "--notorch"),
                                (f"--system={system.name}", "--tiny", "--notorch"), spec.gpu_limit_s, spec.title))
        found += system.workloads
        for run in found:
            if run.name in out:
                raise ValueError(f"GPU suite: two runs are named {run.name!r} (system {system.name})")
            out[run.name] = run
    return out


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0])
    p.add_argument("--dry_run", action="store_true", help="tiny shapes on any backend, into --benchmarks_file")
    p.add_argument("--only", default=None, help="comma-separated runs (default: all)")
    p.add_argument("--list", action="store_true", help="print the runs and their commands, run nothing")
    p.add_argument("--benchmarks_file", default=None,
                   help="default: BENCHMARKS.md (a scratch BENCHMARKS.md under /tmp with --dry_run)")
    args = p.parse_args(argv)
    if args.benchmarks_file is None:
        args.benchmarks_file = ("/tmp/jaxemo_gpu_suite_dry_run.md" if args.dry_run
                                else os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args.runs = runs()
    args.only = [name for name in args.only.split(",") if name] if args.only else list(args.runs)
    unknown = sorted(set(args.only) - set(args.runs))
    if unknown:
        raise ValueError(f"--only: unknown runs {unknown}; expected some of {sorted(args.runs)}")
    return args


def command(name: str, args) -> list[str]:
    """The command of one run: [python, -m, module, its arguments (the dry run's with --dry_run)...]."""
    run = args.runs[name]
    argv = [*(run.dry_run_args if args.dry_run else run.args), "--write",
            f"--benchmarks_file={args.benchmarks_file}"]
    return [sys.executable, "-m", run.module, *argv]


def run(name: str, args) -> dict:
    limit = args.runs[name].limit_s
    command_line = command(name, args)
    print(f"[{name}] {' '.join(command_line[1:])}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command_line, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=limit * (10 if args.dry_run else 1))
        ok, tail = done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as expired:
        ok, tail = False, f"stopped after {expired.timeout:.0f} s"
    seconds = time.perf_counter() - start
    print(f"[{name}] {'ok' if ok else 'FAILED'} in {seconds:.0f} s" + ("" if ok else f"\n{tail}"), flush=True)
    return {"name": name, "ok": ok, "seconds": seconds, "tail": tail}


def main(argv=None) -> list[dict]:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.list:
        for name in args.only:
            print(f"{name:12s} {args.runs[name].limit_s:4d} s  {' '.join(command(name, args)[1:])}")
        return []
    results = [run(name, args) for name in args.only]
    failed = [r["name"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} of {len(results)} runs wrote their sections to {args.benchmarks_file}"
          + (f"; failed: {failed}" if failed else ""), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(1 if any(not r["ok"] for r in main()) else 0)
