"""Train- and inference-step throughput and MFU of any system, with its PyTorch twin beside it.

    python -m benchmarks.steps --system=vit_classifier --variants=S/16,B/16 --batch_size=32,16 --write
    python -m benchmarks.steps --system=mma_dfer --variants=dfew,tiny --batch_size=2,16 --write
    python -m benchmarks.steps --system=mma_dfer --variants=dfew --dtype=bfloat16 --batch_size=8 --write
    python -m benchmarks.steps --system=casp --write
    python -m benchmarks.steps --system=vit_classifier --tiny --notorch        # seconds: tests / CI

Every registered system with step cases (`jaxemo.systems.get(name).benchmark`: the model and task built from
its recipe config, loaded here, a random batch, analytic FLOPs per sample) is a `--system`; this module times
them all the same way. The JAX
train step is the trainer's own (`loop.setup_train_step`: the config's optimizer, sharded state, jitted step
with donation and the non-finite guard), the inference step the evaluator's jitted eval step. The PyTorch
column runs the system's twin (`benchmarks/twins/<name>_torch.py`, `benchmark_steps`) where it has one: the
same model and step in PyTorch, float32 on the CPU, on the same batch.

Method and numbers: BENCHMARKS.md. `--write` replaces that file's section for this system, backend and dtype.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import inspect
import os
import shlex
import sys
import time
from typing import Optional

import jax

from benchmarks import report
from experiments import configs
from jaxemo import layers, perf, systems
from jaxemo.systems.base import TINY, CaseOptions, StepCase
from jaxemo.train import loop, sharding, state as state_lib, step as step_lib

# Only the learning-rate schedule's shape depends on these; the step's cost does not.
SCHEDULE_TOTAL_STEPS, SCHEDULE_STEPS_PER_EPOCH = 100_000, 1_000
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "# Benchmarks\n\nWritten by `python -m benchmarks.steps --write`; see that module for the method.\n"


# ------------------------------------------------------------------------------------------------ flags


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.steps", description=__doc__.split("\n")[0])
    p.add_argument("--system", default="vit_classifier", choices=step_systems(), help="which system")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants of the system's cases (vit_classifier: S/16, B/16, ...; "
                        "mma_dfer: dfew, mafw, tiny; casp: synthetic, tiny); one variant with several "
                        "--batch_size values runs once per batch")
    p.add_argument("--batch_size", default=None, help="global batch: one integer, or one per variant")
    p.add_argument("--image_size", type=int, default=None, help="pixels, where the system has images")
    p.add_argument("--dtype", default="float32", choices=sorted(layers.DTYPES), help="JAX compute dtype")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed run (default: the system's per-variant CPU figure, 10 on accelerators)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs; the median counts (default 3 / 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after compilation")
    p.add_argument("--peak_size", type=int, default=None, help="matmul size for the peak (4096 CPU, 8192 else)")
    p.add_argument("--peak_repeats", type=int, default=5, help="timed runs of the peak matmul")
    p.add_argument("--torch", dest="torch", action="store_true", default=True, help="also time PyTorch (default)")
    p.add_argument("--notorch", dest="torch", action="store_false", help="skip the PyTorch column")
    p.add_argument("--torch_compile", default="",
                   help="also time the twin's model under torch.compile at these comma-separated batch sizes, "
                        "or 'all' (its first call, compilation included, is the `compile s` column); twins "
                        "whose benchmark_steps take `compile`")
    p.add_argument("--write", action="store_true", help="replace this backend/dtype's section of the file")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    p.add_argument("--section_suffix", default="",
                   help="write a section of its own beside the system's main one (e.g. 'accumulation')")
    p.add_argument("--tiny", action="store_true", help="the system's tiny variant at a small batch: seconds")
    p.add_argument("--remat_policy", default="none",
                   help="none, full, dots or dots_no_batch: one, or one per row. Recomputation changes memory, "
                        "not the step's math: systems whose twin runs without it still get a PyTorch row")
    p.add_argument("--grad_accum_steps", default="1",
                   help="micro-batches per train step (the recipe's gradient accumulation): one, or one per row")
    p.add_argument("--trainable", default=None, help="comma-separated regexes of trainable params (vit_classifier)")
    p.add_argument("--frozen_dtype", default="float32", choices=sorted(layers.DTYPES),
                   help="storage dtype of the frozen params")
    return resolve_defaults(p.parse_args(argv))


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the defaults that depend on the system, --tiny and the backend."""
    on_cpu = jax.default_backend() == "cpu"
    spec = systems.get(args.system).benchmark
    if args.tiny:
        args.variants = [TINY]
    else:
        names = args.variants.split(",") if args.variants else spec.default_variants
        args.variants = [v.strip() for v in names if v.strip()]
    if args.batch_size is None:
        args.batch_sizes = [8 if args.tiny else spec.batch_for(v) for v in args.variants]
    else:
        args.batch_sizes = [int(b) for b in args.batch_size.split(",")]
        if len(args.variants) == 1:
            args.variants *= len(args.batch_sizes)
        if len(args.batch_sizes) == 1:
            args.batch_sizes *= len(args.variants)
        if len(args.batch_sizes) != len(args.variants):
            raise ValueError(f"--batch_size has {len(args.batch_sizes)} values for {len(args.variants)} variants")
    args.remat_policies = [r.strip() for r in args.remat_policy.split(",")]
    if len(args.remat_policies) == 1:
        args.remat_policies *= len(args.variants)
    if len(args.remat_policies) != len(args.variants):
        raise ValueError(f"--remat_policy {args.remat_policy!r}: give one policy, or one per row "
                         f"({len(args.variants)} rows)")
    args.accum_steps = [int(a) for a in args.grad_accum_steps.split(",")]
    if len(args.accum_steps) == 1:
        args.accum_steps *= len(args.variants)
    if len(args.accum_steps) != len(args.variants):
        raise ValueError(f"--grad_accum_steps {args.grad_accum_steps!r}: give one value, or one per row "
                         f"({len(args.variants)} rows)")
    cpu_steps = spec.cpu_steps or {}
    args.steps_per_row = [args.steps or (1 if args.tiny else cpu_steps.get(v, 2) if on_cpu else 10)
                          for v in args.variants]
    args.repeats = args.repeats or (2 if args.tiny else 3 if on_cpu else 5)
    args.peak_size = args.peak_size or (256 if args.tiny else 4096 if on_cpu else 8192)
    if args.tiny:
        args.peak_repeats = min(args.peak_repeats, 2)
    args.trainable = args.trainable.split(",") if args.trainable else None
    args.spec = spec
    return args


def case_options(args, remat_policy: str) -> CaseOptions:
    return CaseOptions(dtype=args.dtype, remat_policy=remat_policy, frozen_dtype=args.frozen_dtype,
                       image_size=args.image_size, trainable=args.trainable)


def step_systems() -> tuple[str, ...]:
    """The registered systems that have step cases."""
    return tuple(s.name for s in systems.all_systems() if s.benchmark is not None)


def make_case(system: str, variant: str, batch_size: int, options: CaseOptions) -> StepCase:
    """A system's case: its recipe config for `variant` (`benchmark.config_for`), loaded, then `benchmark.case`."""
    spec = systems.get(system).benchmark
    if spec is None:
        raise ValueError(f"system {system!r} has no step cases; systems with some: {step_systems()}")
    name, config_variant = spec.config_for(variant)
    return spec.case(configs.load(name, config_variant), variant, batch_size, options)


# ------------------------------------------------------------------------------------------------ JAX


class _StepRunner:
    """Calls the compiled step `steps` times on one batch, threading the donated state through."""

    def __init__(self, step, state, batch, steps: int):
        self.step, self.state, self.batch, self.steps = step, state, batch, steps
        self.metrics = None

    def __call__(self):
        for _ in range(self.steps):
            self.state, self.metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, self.metrics))


def _jax_memory(compiled) -> tuple[Optional[int], str]:
    peak = perf.device_peak_bytes(jax.devices()[0])
    if peak is not None:
        return peak, "device peak"
    return perf.compiled_memory_bytes(compiled), "XLA est."


def _row(case: StepCase, step: str, framework: str, dtype: str, seconds, steps: int, **extra):
    return report.Measurement(model=case.label, batch=case.batch_size, dtype=dtype, framework=framework,
                             run_seconds=seconds, steps_per_run=steps, step=step,
                             flops_per_sample=case.flops[step], **extra)


def benchmark_jax(case: StepCase, steps: int, args) -> list[report.Measurement]:
    """The trainer's train step; then, if the system times it, the evaluator's eval step on the params left."""
    mesh = sharding.make_mesh({"data": -1})
    sharding.check_batch_size(case.batch_size, mesh)
    example = state_lib.example_batch_like(case.batch)
    setup = loop.setup_train_step(case.config, case.task, example, mesh, SCHEDULE_TOTAL_STEPS,
                                  SCHEDULE_STEPS_PER_EPOCH)
    state, shardings = state_lib.create_train_state(case.task, setup.tx, example, jax.random.key(case.config.seed),
                                                    mesh, setup.rules, setup.frozen_dtype)
    batch = sharding.shard_batch(case.batch, mesh)
    start = time.perf_counter()
    compiled = setup.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    runner = _StepRunner(compiled, state, batch, steps)
    seconds, others = report.with_others_cpu_share(lambda: perf.time_runs(runner, args.repeats, args.warmup))
    memory, source = _jax_memory(compiled)
    print(f"  final loss {float(runner.metrics['loss']):.4f}", flush=True)
    rows = [_row(case, "train", "JAX (jaxemo)", args.dtype, seconds, steps, compile_s=compile_s,
                 memory_bytes=memory, memory_source=source, rss_bytes=report.peak_rss_bytes(),
                 others_cpu_share=others)]
    if "inference" not in args.spec.steps:
        return rows
    print(_row_summary(rows[-1]), flush=True)
    params = runner.state.params
    del runner, compiled, state  # the train executable and the optimizer state
    gc.collect()
    report.reset_peak_rss()
    eval_step = step_lib.jit_eval_step(case.task, shardings.params, mesh)
    start = time.perf_counter()
    compiled = eval_step.lower(params, batch).compile()
    compile_s = time.perf_counter() - start

    def run():
        for _ in range(steps):
            out = compiled(params, batch)
        jax.block_until_ready(out)

    seconds, others = report.with_others_cpu_share(lambda: perf.time_runs(run, args.repeats, args.warmup))
    memory, source = _jax_memory(compiled)
    rows.append(_row(case, "inference", "JAX (jaxemo)", args.dtype, seconds, steps, compile_s=compile_s,
                     memory_bytes=memory, memory_source=source, rss_bytes=report.peak_rss_bytes(),
                     others_cpu_share=others))
    return rows


def jax_peak_flops(args) -> float:
    """Measured matmul peak of the JAX devices in --dtype (CPU devices share one pool of cores)."""
    matmul = perf.jax_matmul(args.peak_size, layers.dtype_from_name(args.dtype))
    one_device = perf.matmul_peak_flops(matmul, args.peak_size, args.peak_repeats)
    return one_device * (1 if jax.default_backend() == "cpu" else jax.device_count())


# ------------------------------------------------------------------------------------------------ PyTorch


def import_twin(system: str):
    """(torch, the system's twin module), or None with a printed note when either cannot be imported."""
    try:
        import torch

        twin = importlib.import_module(f"benchmarks.twins.{system}_torch")
    except ImportError as e:
        print(f"note: PyTorch column skipped ({e}); install the `test` extra and run from the repository root",
              flush=True)
        return None
    if not hasattr(twin, "benchmark_steps"):
        print(f"note: PyTorch column skipped: benchmarks/twins/{system}_torch.py has no benchmark_steps", flush=True)
        return None
    torch.set_num_threads(report.cpu_count())
    return torch, twin


def benchmark_torch(torch_twin, case: StepCase, steps: int, args, compile: bool = False
                    ) -> list[report.Measurement]:
    """The twin's steps in eager mode or, with `compile`, with its model under `torch.compile`: then the first
    call (tracing and compilation included) is timed apart as the row's compile seconds."""
    torch, twin = torch_twin
    torch.manual_seed(0)
    step_fns = twin.benchmark_steps(torch, case, compile=True) if compile else twin.benchmark_steps(torch, case)
    framework = f"{twin.FRAMEWORK[:-1]}, torch.compile)" if compile else twin.FRAMEWORK
    rows = []
    for name in args.spec.steps:
        if rows:
            print(_row_summary(rows[-1]), flush=True)
            gc.collect()
            report.reset_peak_rss()

        def run(fn=step_fns[name]):
            for _ in range(steps):
                fn()

        first_call_s = min(perf.time_runs(step_fns[name], 1, warmup=0)) if compile else None
        seconds, others = report.with_others_cpu_share(lambda: perf.time_runs(run, args.repeats, args.warmup))
        rows.append(_row(case, name, framework, "float32", seconds, steps, rss_bytes=report.peak_rss_bytes(),
                         others_cpu_share=others, compile_s=first_call_s))
    return rows


def wants_compile(spec: str, batch_size: int) -> bool:
    return spec == "all" or str(batch_size) in [b.strip() for b in spec.split(",")]


def twin_compiles(torch_twin) -> bool:
    return "compile" in inspect.signature(torch_twin[1].benchmark_steps).parameters


def torch_peak_flops(torch, args) -> float:
    a, b = torch.randn(args.peak_size, args.peak_size), torch.randn(args.peak_size, args.peak_size)
    return perf.matmul_peak_flops(lambda: torch.mm(a, b), args.peak_size, args.peak_repeats)


# ------------------------------------------------------------------------------------------------ report


def section_key(args) -> str:
    suffix = f"-{args.section_suffix}" if args.section_suffix else ""
    return f"{args.spec.section}{'-tiny' if args.tiny else ''}{suffix}:{jax.default_backend()}-{args.dtype}"


def _share(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{100 * value:.0f}%"


def section_body(results, args, argv, peak_notes: list[str], rss_reset: bool) -> str:
    spec = args.spec
    memory_text = ("device peak = `device.memory_stats()['peak_bytes_in_use']` (process high-water mark)"
                   if perf.device_peak_bytes(jax.devices()[0]) is not None else
                   "XLA est. = the compiler's estimate from `compiled.memory_analysis()` (temp + arguments + "
                   "outputs - donated aliases), not a measurement")
    rss_text = ("peak RSS of the whole process while the row ran (reset before each row)" if rss_reset else
                "peak RSS of the whole process so far (cannot be reset here: later rows include earlier ones)")
    runs = [f"  - {m.model} {m.step} {m.framework}: {', '.join(f'{s:.3g}' for s in m.run_seconds)} s; other "
            f"processes used {_share(m.others_cpu_share)} of the CPU" for m in results]
    steps = ", ".join(f"{v} batch {b}: {n}" for v, b, n in zip(args.variants, args.batch_sizes, args.steps_per_row))
    return "\n".join([
        f"### {spec.title}: {jax.default_backend()}, {args.dtype}{' (tiny)' if args.tiny else ''}"
        f"{f' ({args.section_suffix})' if args.section_suffix else ''}",
        "",
        report.markdown_table(results),
        "",
        f"- Command: `python -m benchmarks.steps {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
        f"- Timing: median of {args.repeats} runs after {args.warmup} warm-up run(s), each run {steps} step(s); "
        f"compilation (`lower().compile()`, the `compile s` column) is excluded. samples/s counts {spec.unit}s.",
        *[f"- {note}" for note in spec.notes],
        (f"- Peak: {args.peak_size}x{args.peak_size} matmul in the row's dtype, median of {args.peak_repeats} "
         f"runs, measured before and after the rows; the larger counts, and rows on the same device and "
         f"dtype share the larger of the frameworks' peaks:"),
        *[f"  - {note}" for note in peak_notes],
        f"- Memory: {memory_text}; RSS = {rss_text}.",
        "- Timed runs, and the share of the CPU that other processes took meanwhile (a clean run is near 0%):",
        *runs,
    ])


def measure_peaks(args, torch_twin) -> dict[str, tuple[float, Optional[float]]]:
    """{label: (FLOP/s, others' CPU share)}: JAX's matmul in --dtype and, with PyTorch, torch's fp32 one."""
    measure = {f"JAX {args.dtype}": lambda: jax_peak_flops(args)}
    if torch_twin is not None:
        measure["PyTorch float32"] = lambda: torch_peak_flops(torch_twin[0], args)
    peaks = {label: report.with_others_cpu_share(fn) for label, fn in measure.items()}
    for label, (flops, others) in peaks.items():
        print(f"peak {label}: {flops / 1e12:.3f} TFLOP/s (other processes: {_share(others)} of the CPU)",
              flush=True)
    return peaks


def assign_peaks(results, args, before: dict, after: dict) -> list[str]:
    """Sets each row's peak (the larger of the two measurements, shared across frameworks where the device
    and dtype agree); returns one note per peak."""
    best = {label: max(before[label][0], after[label][0]) for label in before}
    if args.dtype == "float32" and "PyTorch float32" in best:  # both on the CPU in fp32: one machine peak
        best = dict.fromkeys(best, max(best.values()))
    for row in results:
        row.peak_flops = best["PyTorch float32" if row.framework.startswith("PyTorch") else f"JAX {args.dtype}"]
    return [f"{label}: {before[label][0] / 1e12:.3f} TFLOP/s before (others used {_share(before[label][1])} "
            f"of the CPU), {after[label][0] / 1e12:.3f} after ({_share(after[label][1])})" for label in before]


def run_rows(args, torch_twin) -> tuple[list[report.Measurement], bool]:
    """(the measurements of every variant and framework, whether the peak RSS could be reset before each)."""
    results, rss_reset = [], True
    for variant, batch_size, remat, steps, accum in zip(args.variants, args.batch_sizes, args.remat_policies,
                                                        args.steps_per_row, args.accum_steps):
        case = with_accumulation(make_case(args.system, variant, batch_size, case_options(args, remat)), accum)
        frameworks = ["jax"]
        if torch_twin and case.torch_comparable:
            frameworks.append("torch")
            if wants_compile(args.torch_compile, batch_size) and twin_compiles(torch_twin):
                frameworks.append("torch.compile")
        for framework in frameworks:
            print(f"{case.label} batch {batch_size}: {framework} ...", flush=True)
            gc.collect()
            rss_reset &= report.reset_peak_rss()
            rows = (benchmark_jax(case, steps, args) if framework == "jax"
                    else benchmark_torch(torch_twin, case, steps, args, compile=framework == "torch.compile"))
            print(_row_summary(rows[-1]), flush=True)
            results += rows
    return results, rss_reset


def with_accumulation(case: StepCase, accum: int) -> StepCase:
    """The case's train step over `accum` micro-batches of its batch (the same update: the loss is a mean)."""
    if accum == 1:
        return case
    case.config.batch_size = case.batch_size
    case.config.optimizer.grad_accum_steps = accum
    label = (f"{case.label[:-1]}, {accum} micro-batches)" if case.label.endswith(")")
             else f"{case.label} ({accum} micro-batches)")
    return dataclasses.replace(case, label=label)


def _row_summary(row: report.Measurement) -> str:
    return (f"  {row.step}: {row.samples_per_s:.2f} samples/s, runs {', '.join(f'{s:.3g}' for s in row.run_seconds)}"
            f" s, other processes used {_share(row.others_cpu_share)} of the CPU")


def main(argv=None) -> list[report.Measurement]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch_twin = None
    if args.torch and jax.default_backend() != "cpu":
        print("note: PyTorch column skipped: it is a CPU float32 reference, JAX runs on "
              f"{jax.default_backend()}", flush=True)
    elif args.torch:
        torch_twin = import_twin(args.system)
    peaks_before = measure_peaks(args, torch_twin)
    results, rss_reset = run_rows(args, torch_twin)
    peak_notes = assign_peaks(results, args, peaks_before, measure_peaks(args, torch_twin))
    body = section_body(results, args, argv, peak_notes, rss_reset)
    print("\n" + body)
    if args.write:
        report.write_section(args.benchmarks_file, section_key(args), body, HEADER)
        print(f"\nwrote section {section_key(args)!r} of {args.benchmarks_file}")
    return results


if __name__ == "__main__":
    main()
