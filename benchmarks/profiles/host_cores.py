"""Why the host's cores as XLA devices do not speed the populations up on this CPU: each side-by-side
comparison's jaxemo side run in fresh processes on one core, on every core as one device, and on every core as
one device per core (the trials axis sharded over them), with the CPU time each run kept its cores busy.

    python -m benchmarks.profiles.host_cores                       # AGT round 0 and few-shot SER (minutes)
    python -m benchmarks.profiles.host_cores --workloads=agt --tiny

Each run is the workload's benchmark (`benchmarks.agt_round0`, `benchmarks.fewshot_released`) with
`--no_released`; the one-core run is pinned with `sched_setaffinity` before the process starts. From the
times without compilation:

  one device's use of the cores   one core's time / one device's time on every core (at most the core count)
  ceiling of N devices            one device's time / (one core's time / N): what perfect sharding over N
                                  devices could gain over one device, if every core ran as fast as the one alone
  cores busy                      the run's CPU time / its wall time (process CPU time, every thread)

A ceiling under the target (1.6x) says the target is out of reach on the machine whatever the sharding does:
one device already keeps the cores busy with XLA's intra-op threads.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKLOADS = {
    "agt": ("benchmarks.agt_round0", ["--no_released"]),
    "fewshot": ("benchmarks.fewshot_released", ["--no_released", "--eval_conv_impl=xla"]),
}
REPORTED = re.compile(r"jaxemo: (?:\d+ trials in )?([\d.]+) s \(([\d.]+) s compiling, ([\d.]+) s of CPU time\)")


def run(module: str, extra: list[str], devices: int, one_core: bool) -> dict:
    """The workload's jaxemo side in a fresh process: its reported wall, compile and CPU seconds."""
    command = [sys.executable, "-m", module, *extra, f"--host_devices={devices}"]
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, preexec_fn=pin)
    found = REPORTED.search(result.stdout)
    if result.returncode or not found:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    wall, compile_s, cpu_s = map(float, found.groups())
    return {"wall_s": wall, "compile_s": compile_s, "cpu_s": cpu_s, "work_s": wall - compile_s}


def reading(one_core: dict, one_device: dict, devices: dict, cores: int) -> dict:
    """The derived figures of the module docstring from the three runs."""
    return {"one_device_use": one_core["work_s"] / one_device["work_s"],
            "ceiling": one_device["work_s"] / (one_core["work_s"] / cores),
            "measured_gain": one_device["work_s"] / devices["work_s"]}


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiles.host_cores",
                                description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {sorted(WORKLOADS)}")
    p.add_argument("--tiny", action="store_true", help="the workloads' tiny sizes (seconds each)")
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    names = [n for n in args.workloads.split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise ValueError(f"--workloads: unknown {unknown}; expected some of {sorted(WORKLOADS)}")
    print("| workload | run | wall s | compiling s | wall less compiling s | CPU s | cores busy |\n"
          "|---|---|---|---|---|---|---|")
    out = {}
    for name in names:
        module, extra = WORKLOADS[name]
        extra = extra + (["--tiny"] if args.tiny else [])
        runs = {"one core, 1 device": run(module, extra, 1, one_core=True),
                f"{cores} cores, 1 device": run(module, extra, 1, one_core=False),
                f"{cores} cores, {cores} devices": run(module, extra, cores, one_core=False)}
        for label, r in runs.items():
            print(f"| {name} | {label} | {r['wall_s']:.1f} | {r['compile_s']:.1f} | {r['work_s']:.1f} | "
                  f"{r['cpu_s']:.1f} | {r['cpu_s'] / r['wall_s']:.2f} |", flush=True)
        out[name] = {"runs": runs, **reading(*runs.values(), cores)}
    for name, r in out.items():
        print(f"{name}: one device uses the cores {r['one_device_use']:.2f}x one core; the ceiling of {cores} "
              f"devices over one is {r['ceiling']:.2f}x; measured {r['measured_gain']:.2f}x")
    return out


if __name__ == "__main__":
    main()
