"""Train-step throughput and MFU of jaxemo's ViT classifier, with the same model in PyTorch beside it.

    python -m experiments.benchmark --models=S/16,B/16 --batch_size=32,16 --write    # CPU fp32, JAX + PyTorch
    python -m experiments.benchmark --dtype=bfloat16 --batch_size=256,128 --write    # on a GPU (no PyTorch)
    python -m experiments.benchmark --tiny --notorch                                 # seconds: tests / CI

The JAX step is the trainer's own (`jaxemo.train`: the vit_classifier config's AdamW, sharded state, jitted
step with donation and the NaN guard); the PyTorch step is HF transformers' `ViTForImageClassification` of
the same sizes with cross-entropy, backward, gradient clipping and AdamW, in float32 on the CPU. Method and
numbers: BENCHMARKS.md. `--write` replaces that file's section for this backend and dtype.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import time
from typing import Optional

import jax
import numpy as np

from experiments import vit_classifier
from experiments.configs import vit_classifier as vit_classifier_config
from jaxemo import bench
from jaxemo.train import optim, sharding, tasks
from jaxemo.train import state as state_lib
from jaxemo.train import step as step_lib

TINY = "tiny"
NUM_CLASSES = 1000
# Sized for a few minutes on a 2-core CPU; pass --batch_size on an accelerator.
DEFAULT_BATCH = {"Ti": 64, "S": 32, "B": 16, "L": 8, "H": 4, TINY: 8}
# Only the learning-rate schedule's shape depends on these; the step's cost does not.
SCHEDULE_TOTAL_STEPS, SCHEDULE_STEPS_PER_EPOCH = 100_000, 1_000
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "# Benchmarks\n\nWritten by `python -m experiments.benchmark --write`; see that module for the method.\n"


# ------------------------------------------------------------------------------------------------ flags


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="S/16,B/16", help="comma-separated ViT variants, e.g. S/16,B/16")
    p.add_argument("--batch_size", default=None,
                   help="global batch: one integer, or one per model (default: S 32, B 16, ...)")
    p.add_argument("--image_size", type=int, default=None, help="pixels (default 224; 32 with --tiny)")
    p.add_argument("--dtype", default="float32", choices=sorted(state_lib.DTYPES), help="JAX compute dtype")
    p.add_argument("--steps", type=int, default=None, help="train steps per timed run (default 2 on CPU, 10 else)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs; the median counts (default 3 / 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after compilation")
    p.add_argument("--peak_size", type=int, default=None, help="matmul size for the peak (4096 CPU, 8192 else)")
    p.add_argument("--peak_repeats", type=int, default=5, help="timed runs of the peak matmul")
    p.add_argument("--torch", dest="torch", action="store_true", default=True, help="also time PyTorch (default)")
    p.add_argument("--notorch", dest="torch", action="store_false", help="skip the PyTorch column")
    p.add_argument("--write", action="store_true", help="replace this backend/dtype's section of the file")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    p.add_argument("--tiny", action="store_true", help="a 4-layer width-64 ViT at 32 px: runs in seconds")
    p.add_argument("--remat_policy", default="none", help="none, full, dots or dots_no_batch")
    p.add_argument("--trainable", default=None, help="comma-separated regexes of trainable params (default all)")
    p.add_argument("--frozen_dtype", default="float32", choices=sorted(state_lib.DTYPES),
                   help="storage dtype of the params --trainable leaves frozen")
    return resolve_defaults(p.parse_args(argv))


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the defaults that depend on --tiny and on the backend."""
    on_cpu = jax.default_backend() == "cpu"
    args.models = [TINY] if args.tiny else [m.strip() for m in args.models.split(",") if m.strip()]
    if args.batch_size is None:
        args.batch_sizes = [DEFAULT_BATCH[m.split("/")[0]] for m in args.models]
    else:
        args.batch_sizes = [int(b) for b in args.batch_size.split(",")]
        if len(args.batch_sizes) == 1:
            args.batch_sizes *= len(args.models)
        if len(args.batch_sizes) != len(args.models):
            raise ValueError(f"--batch_size has {len(args.batch_sizes)} values for {len(args.models)} models")
    args.image_size = args.image_size or (32 if args.tiny else 224)
    args.steps = args.steps or (1 if args.tiny else 2 if on_cpu else 10)
    args.repeats = args.repeats or (2 if args.tiny else 3 if on_cpu else 5)
    args.peak_size = args.peak_size or (256 if args.tiny else 4096 if on_cpu else 8192)
    if args.tiny:
        args.peak_repeats = min(args.peak_repeats, 2)
    args.trainable = args.trainable.split(",") if args.trainable else None
    return args


# ------------------------------------------------------------------------------------------------ models


def model_config(name: str, args):
    """The vit_classifier config (`paper`, or `tiny` for --tiny) with the benchmark's overrides."""
    config = vit_classifier_config.get_config(TINY if name == TINY else "paper")
    if name != TINY:
        config.model.variant = name
    config.model.update(image_size=args.image_size, dtype=args.dtype, remat_policy=args.remat_policy,
                        drop_path_rate=0.0)  # HF's ViT has no stochastic depth: both sides do the same work
    config.data.num_classes = NUM_CLASSES
    config.frozen_dtype = args.frozen_dtype
    return config


def model_label(name: str, model) -> str:
    if name == TINY:
        return f"ViT-tiny (w{model.width} d{model.depth} p{model.patch_size[0]})"
    return f"ViT-{name}"


def random_batch(batch_size: int, model, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, w = model.image_size
    return {"image": rng.integers(0, 256, (batch_size, h, w, model.in_channels), dtype=np.uint8),
            "label": rng.integers(0, model.num_classes, (batch_size,), dtype=np.int32)}


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


def benchmark_jax(name: str, config, batch_size: int, args) -> bench.Measurement:
    model = vit_classifier.build_model(config)
    task = tasks.ClassificationTask(model, config.data.num_classes, trainable_patterns=args.trainable)
    tx, schedule = optim.make_optimizer(config.optimizer, SCHEDULE_TOTAL_STEPS, SCHEDULE_STEPS_PER_EPOCH)
    mesh = sharding.make_mesh({"data": -1})
    sharding.check_batch_size(batch_size, mesh)
    local_batch = random_batch(batch_size, model)
    state, shardings = state_lib.create_train_state(
        task, tx, state_lib.example_batch_like(local_batch), jax.random.key(config.seed), mesh,
        frozen_dtype=state_lib.dtype_from_name(args.frozen_dtype))
    train_step = step_lib.jit_train_step(step_lib.make_train_step(task, tx, schedule), shardings, mesh)
    batch = sharding.shard_batch(local_batch, mesh)

    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    runner = _StepRunner(compiled, state, batch, args.steps)
    seconds, others = bench.with_others_cpu_share(lambda: bench.time_runs(runner, args.repeats, args.warmup))
    memory, source = _jax_memory(compiled, jax.devices()[0])
    print(f"  final loss {float(runner.metrics['loss']):.4f}", flush=True)
    return bench.Measurement(
        model=model_label(name, model), batch=batch_size, image_size=args.image_size, dtype=args.dtype,
        framework="JAX (jaxemo)", run_seconds=seconds, steps_per_run=args.steps,
        flops_per_sample=bench.train_flops(bench.vit_forward_flops(model)), compile_s=compile_s,
        memory_bytes=memory, memory_source=source, rss_bytes=bench.peak_rss_bytes(), others_cpu_share=others)


def _jax_memory(compiled, device) -> tuple[Optional[int], str]:
    peak = bench.device_peak_bytes(device)
    if peak is not None:
        return peak, "device peak"
    return bench.compiled_memory_bytes(compiled), "XLA est."


def jax_peak_flops(args) -> float:
    """Measured matmul peak of the JAX devices in --dtype (CPU devices share one pool of cores)."""
    matmul = bench.jax_matmul(args.peak_size, state_lib.dtype_from_name(args.dtype))
    one_device = bench.matmul_peak_flops(matmul, args.peak_size, args.peak_repeats)
    return one_device * (1 if jax.default_backend() == "cpu" else jax.device_count())


# ------------------------------------------------------------------------------------------------ PyTorch


def import_torch():
    """(torch, transformers), or None with a printed note when either is not installed."""
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"note: PyTorch column skipped ({e}); install the `test` extra to get it", flush=True)
        return None
    torch.set_num_threads(bench.cpu_count())
    return torch, transformers


def hf_vit(transformers, model):
    """HF `ViTForImageClassification` with the sizes of the jaxemo `model`, randomly initialised."""
    config = transformers.ViTConfig(
        hidden_size=model.width, num_hidden_layers=model.depth, num_attention_heads=model.num_heads,
        intermediate_size=model.mlp_dim, image_size=model.image_size[0], patch_size=model.patch_size[0],
        num_channels=model.in_channels, num_labels=model.num_classes, layer_norm_eps=model.layer_norm_eps,
        hidden_act="gelu", qkv_bias=model.qkv_bias, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.ViTForImageClassification(config).train()


def torch_train_step(torch, hf_model, optimizer_config, batch: dict):
    """A callable doing one full fp32 train step: forward, cross-entropy, backward, clipping, AdamW."""
    o = optimizer_config
    optimizer = torch.optim.AdamW(hf_model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                  eps=o.get("eps", 1e-8), weight_decay=o.weight_decay)
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    labels = torch.from_numpy(batch["label"]).long()

    def step():
        logits = hf_model(pixel_values=images.float() / 255.0).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        if o.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(hf_model.parameters(), o.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def benchmark_torch(modules, name: str, config, batch_size: int, args) -> bench.Measurement:
    torch, transformers = modules
    torch.manual_seed(0)
    model = vit_classifier.build_model(config)  # only its sizes are used
    hf_model = hf_vit(transformers, model)
    step = torch_train_step(torch, hf_model, config.optimizer, random_batch(batch_size, model))

    def run():
        for _ in range(args.steps):
            step()

    seconds, others = bench.with_others_cpu_share(lambda: bench.time_runs(run, args.repeats, args.warmup))
    return bench.Measurement(
        model=model_label(name, model), batch=batch_size, image_size=args.image_size, dtype="float32",
        framework=f"PyTorch ({hf_model.config._attn_implementation})", run_seconds=seconds,
        steps_per_run=args.steps, flops_per_sample=bench.train_flops(bench.vit_forward_flops(model)),
        rss_bytes=bench.peak_rss_bytes(), others_cpu_share=others)


def torch_peak_flops(torch, args) -> float:
    a, b = torch.randn(args.peak_size, args.peak_size), torch.randn(args.peak_size, args.peak_size)
    return bench.matmul_peak_flops(lambda: torch.mm(a, b), args.peak_size, args.peak_repeats)


# ------------------------------------------------------------------------------------------------ report


def section_key(args) -> str:
    kind = "vit-train-step-tiny" if args.tiny else "vit-train-step"
    return f"{kind}:{jax.default_backend()}-{args.dtype}"


def _share(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{100 * value:.0f}%"


def section_body(results, args, argv, peak_notes: list[str], rss_reset: bool) -> str:
    memory_text = ("device peak = `device.memory_stats()['peak_bytes_in_use']` (process high-water mark)"
                   if bench.device_peak_bytes(jax.devices()[0]) is not None else
                   "XLA est. = the compiler's estimate from `compiled.memory_analysis()` (temp + arguments + "
                   "outputs - donated aliases), not a measurement")
    rss_text = ("peak RSS of the whole process while the row ran (reset before each row)" if rss_reset else
                "peak RSS of the whole process so far (cannot be reset here: later rows include earlier ones)")
    runs = [f"  - {m.model} {m.framework}: {', '.join(f'{s:.3g}' for s in m.run_seconds)} s; other processes "
            f"used {_share(m.others_cpu_share)} of the CPU" for m in results]
    return "\n".join([
        f"### ViT train step: {jax.default_backend()}, {args.dtype}{' (tiny)' if args.tiny else ''}",
        "",
        bench.markdown_table(results),
        "",
        f"- Command: `python -m experiments.benchmark {shlex.join(argv)}`",
        f"- Machine: {bench.machine_description()}",
        f"- Date: {bench.today()}",
        (f"- Timing: median of {args.repeats} runs of {args.steps} train steps after {args.warmup} warm-up "
         f"run(s); compilation (`lower().compile()`, the `compile s` column) is excluded. Random uint8 "
         f"images and labels, one batch reused."),
        (f"- Peak: {args.peak_size}x{args.peak_size} matmul in the row's dtype, median of {args.peak_repeats} "
         f"runs, measured before and after the rows; the larger counts, and rows on the same device and "
         f"dtype share the larger of the frameworks' peaks:"),
        *[f"  - {note}" for note in peak_notes],
        f"- Memory: {memory_text}; RSS = {rss_text}.",
        "- Timed runs, and the share of the CPU that other processes took meanwhile (a clean run is near 0%):",
        *runs,
    ])


def measure_peaks(args, torch_modules) -> dict[str, tuple[float, Optional[float]]]:
    """{label: (FLOP/s, others' CPU share)}: JAX's matmul in --dtype and, with PyTorch, torch's fp32 one."""
    measure = {f"JAX {args.dtype}": lambda: jax_peak_flops(args)}
    if torch_modules is not None:
        measure["PyTorch float32"] = lambda: torch_peak_flops(torch_modules[0], args)
    peaks = {label: bench.with_others_cpu_share(fn) for label, fn in measure.items()}
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


def run_rows(args, torch_modules) -> tuple[list[bench.Measurement], bool]:
    """(one measurement per model and framework, whether the peak RSS could be reset before each row)."""
    results, rss_reset = [], True
    for name, batch_size in zip(args.models, args.batch_sizes):
        config = model_config(name, args)
        for framework in ("jax", "torch") if torch_modules else ("jax",):
            print(f"{name} batch {batch_size}: {framework} ...", flush=True)
            gc.collect()
            rss_reset &= bench.reset_peak_rss()
            if framework == "jax":
                row = benchmark_jax(name, config, batch_size, args)
            else:
                row = benchmark_torch(torch_modules, name, config, batch_size, args)
            print(f"  {row.samples_per_s:.2f} samples/s, runs {', '.join(f'{s:.3g}' for s in row.run_seconds)} s, "
                  f"other processes used {_share(row.others_cpu_share)} of the CPU", flush=True)
            results.append(row)
    return results, rss_reset


def main(argv=None) -> list[bench.Measurement]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch_modules = None
    if args.torch and jax.default_backend() != "cpu":
        print("note: PyTorch column skipped: it is a CPU float32 reference, JAX runs on "
              f"{jax.default_backend()}", flush=True)
    elif args.torch:
        torch_modules = import_torch()
    peaks_before = measure_peaks(args, torch_modules)
    results, rss_reset = run_rows(args, torch_modules)
    peak_notes = assign_peaks(results, args, peaks_before, measure_peaks(args, torch_modules))
    body = section_body(results, args, argv, peak_notes, rss_reset)
    print("\n" + body)
    if args.write:
        bench.write_section(args.benchmarks_file, section_key(args), body, HEADER)
        print(f"\nwrote section {section_key(args)!r} of {args.benchmarks_file}")
    return results


if __name__ == "__main__":
    main()
