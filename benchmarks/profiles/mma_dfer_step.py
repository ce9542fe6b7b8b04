"""Times MMA-DFER's train or inference step alone in its process, JAX or the PyTorch twin, with rusage.

    python -m benchmarks.profiles.mma_dfer_step --batch=1 --remat=dots_no_batch --step=train
    python -m benchmarks.profiles.mma_dfer_step --batch=1 --framework=torch --attention=timm
    python -m benchmarks.profiles.mma_dfer_step --batch=1 --profile      # + the top XLA ops by time (jax.profiler)

Prints per run: seconds, system seconds and minor page faults; then the median of the runs after the first.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import resource
import tempfile
import time

import numpy as np

from benchmarks import report
from benchmarks.steps import make_case
from jaxemo import perf
from jaxemo.systems.base import CaseOptions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="dfew", help="dfew (paper size) or tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--step", default="train", choices=("train", "inference"))
    p.add_argument("--framework", default="jax", choices=("jax", "torch"))
    p.add_argument("--remat", default="dots_no_batch", help="JAX remat policy")
    p.add_argument("--attention", default="timm", choices=("timm", "sdpa"), help="the twin's encoder blocks")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="JAX: trace one more run and list the top ops")
    return p.parse_args(argv)


def timed_runs(fn, runs: int) -> list[float]:
    seconds = []
    for i in range(runs):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        seconds.append(elapsed)
        print(f"run {i}: {elapsed:.2f} s, system {after.ru_stime - before.ru_stime:.1f} s, "
              f"minor faults {after.ru_minflt - before.ru_minflt}", flush=True)
    return seconds


def jax_step(case, step: str):
    import jax

    from jaxemo.train import loop, sharding, state as state_lib, step as step_lib

    mesh = sharding.make_mesh({"data": -1})
    example = state_lib.example_batch_like(case.batch)
    setup = loop.setup_train_step(case.config, case.task, example, mesh, 1000, 100)
    state, shardings = state_lib.create_train_state(case.task, setup.tx, example, jax.random.key(0), mesh,
                                                    setup.rules, setup.frozen_dtype)
    batch = sharding.shard_batch(case.batch, mesh)
    start = time.perf_counter()
    if step == "train":
        compiled = setup.train_step.lower(state, batch).compile()
        holder = [state]

        def run():
            holder[0], metrics = compiled(holder[0], batch)
            jax.block_until_ready(metrics)
    else:
        compiled = step_lib.jit_eval_step(case.task, shardings.params, mesh).lower(state.params, batch).compile()

        def run():
            jax.block_until_ready(compiled(state.params, batch))
    print(f"compile {time.perf_counter() - start:.1f} s, XLA memory estimate "
          f"{perf.compiled_memory_bytes(compiled) / 2**30:.2f} GiB", flush=True)
    return run


def torch_step(case, step: str, attention: str):
    import torch

    from benchmarks.twins import mma_dfer_torch

    torch.set_num_threads(report.cpu_count())
    torch.manual_seed(0)
    net = mma_dfer_torch.build(mma_dfer_torch.Sizes.of(case.task.model), attn_implementation=attention)
    return mma_dfer_torch.benchmark_steps(torch, case, net)[step]


def top_ops(run, count: int = 20) -> None:
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        run()
        jax.profiler.stop_trace()
        events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor", "Slinky")):
            total[e["name"]] += e["dur"]
            calls[e["name"]] += 1
    for name, us in total.most_common(count):
        print(f"{us / 1e6:8.3f} s  x{calls[name]:5d}  {name}")


def main(argv=None):
    args = parse_args(argv)
    remat = args.remat if args.framework == "jax" else "none"
    case = make_case("mma_dfer", args.variant, args.batch, CaseOptions(remat_policy=remat))
    run = jax_step(case, args.step) if args.framework == "jax" else torch_step(case, args.step, args.attention)
    seconds = timed_runs(run, args.runs)
    median = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
    flops = case.flops[args.step] * args.batch
    label = args.framework if args.framework == "jax" else f"torch ({args.attention} blocks)"
    print(f"{label} {args.variant} {args.step} batch {args.batch} (remat {remat}): {median:.2f} s per step, "
          f"{args.batch / median:.3f} clips/s, {flops / median / 1e9:.1f} GFLOP/s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.profile and args.framework == "jax":
        top_ops(run)


if __name__ == "__main__":
    main()
