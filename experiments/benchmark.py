"""Train-step throughput and MFU of jaxemo's models, with the same model in PyTorch beside it.

    python -m experiments.benchmark --models=S/16,B/16 --batch_size=32,16 --write    # CPU fp32, JAX + PyTorch
    python -m experiments.benchmark --dtype=bfloat16 --batch_size=256,128 --write    # on a GPU (no PyTorch)
    python -m experiments.benchmark --tiny --notorch                                 # seconds: tests / CI
    python -m experiments.benchmark --model=mma_dfer --variants=dfew,tiny --batch_size=2,16 --write
    python -m experiments.benchmark --model=mma_dfer --variants=dfew --dtype=bfloat16 --batch_size=8 --write

ViT (`--model=vit`, the default): the JAX step is the trainer's own (`jaxemo.train`: the vit_classifier
config's AdamW, sharded state, jitted step with donation and the NaN guard); the PyTorch step is HF
transformers' `ViTForImageClassification` of the same sizes with cross-entropy, backward, gradient clipping
and AdamW, in float32 on the CPU.

MMA-DFER (`--model=mma_dfer`, config variants of experiments/configs/mma_dfer.py): the train step is the
trainer's own on `experiments.mma_dfer.build_task` (on-device augmentation, frozen encoders, AdamW on the
trainable parameters), the inference step the Evaluator's jitted eval step (forward + statistics). The
PyTorch rows run `jaxemo.reference.mma_dfer_torch` (the reference's forward re-expressed, SDPA attention):
a full train step with AdamW on the parameters the reference trains (the rest `requires_grad=False`) and a
forward under `torch.inference_mode()`, on the same batch.

Method and numbers: BENCHMARKS.md. `--write` replaces that file's section for this model, backend and dtype.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shlex
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from experiments import mma_dfer, vit_classifier
from experiments.configs import mma_dfer as mma_dfer_config
from experiments.configs import vit_classifier as vit_classifier_config
from jaxemo import bench
from jaxemo.train import optim, sharding, tasks
from jaxemo.train import state as state_lib
from jaxemo.train import step as step_lib

TINY = "tiny"
NUM_CLASSES = 1000
# Sized for a few minutes on a 2-core CPU; pass --batch_size on an accelerator.
DEFAULT_BATCH = {"Ti": 64, "S": 32, "B": 16, "L": 8, "H": 4, TINY: 8}
# MMA-DFER, by config variant: the paper's sizes at the largest batch that fits a 24 GiB CPU machine in
# reasonable time, and the tiny variant; --tiny uses 8 (it divides over the tests' 8 simulated devices).
MMA_DFER_BATCH = {"dfew": 2, "mafw": 2, TINY: 16}
# Only the learning-rate schedule's shape depends on these; the step's cost does not.
SCHEDULE_TOTAL_STEPS, SCHEDULE_STEPS_PER_EPOCH = 100_000, 1_000
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "# Benchmarks\n\nWritten by `python -m experiments.benchmark --write`; see that module for the method.\n"


# ------------------------------------------------------------------------------------------------ flags


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit", choices=("vit", "mma_dfer"), help="which model to benchmark")
    p.add_argument("--models", default="S/16,B/16", help="comma-separated ViT variants, e.g. S/16,B/16")
    p.add_argument("--variants", default="dfew,tiny",
                   help="--model=mma_dfer: comma-separated config variants (dfew, mafw, tiny); one variant with "
                        "several --batch_size values runs once per batch")
    p.add_argument("--batch_size", default=None,
                   help="global batch: one integer, or one per model (default: S 32, B 16, ...; MMA-DFER: "
                        "dfew 2, tiny 16)")
    p.add_argument("--image_size", type=int, default=None,
                   help="pixels (ViT: default 224, 32 with --tiny; MMA-DFER: the config's)")
    p.add_argument("--dtype", default="float32", choices=sorted(state_lib.DTYPES), help="JAX compute dtype")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per timed run (default 2 on CPU, 10 else; MMA-DFER on CPU: 1, tiny variant 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs; the median counts (default 3 / 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after compilation")
    p.add_argument("--peak_size", type=int, default=None, help="matmul size for the peak (4096 CPU, 8192 else)")
    p.add_argument("--peak_repeats", type=int, default=5, help="timed runs of the peak matmul")
    p.add_argument("--torch", dest="torch", action="store_true", default=True, help="also time PyTorch (default)")
    p.add_argument("--notorch", dest="torch", action="store_false", help="skip the PyTorch column")
    p.add_argument("--write", action="store_true", help="replace this backend/dtype's section of the file")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    p.add_argument("--tiny", action="store_true",
                   help="a 4-layer width-64 ViT at 32 px (MMA-DFER: the tiny variant at batch 8): runs in seconds")
    p.add_argument("--remat_policy", default="none",
                   help="none, full, dots or dots_no_batch; --model=mma_dfer: one, or one per row. The PyTorch "
                        "reference has no recomputation, so rows with remat get no PyTorch row")
    p.add_argument("--trainable", default=None, help="comma-separated regexes of trainable params (default all)")
    p.add_argument("--frozen_dtype", default="float32", choices=sorted(state_lib.DTYPES),
                   help="storage dtype of the params --trainable leaves frozen")
    return resolve_defaults(p.parse_args(argv))


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the defaults that depend on --tiny and on the backend."""
    on_cpu = jax.default_backend() == "cpu"
    names = args.variants if args.model == "mma_dfer" else args.models
    args.models = [TINY] if args.tiny else [m.strip() for m in names.split(",") if m.strip()]
    if args.batch_size is None:
        if args.model == "mma_dfer":
            args.batch_sizes = [8 if args.tiny else MMA_DFER_BATCH[m] for m in args.models]
        else:
            args.batch_sizes = [DEFAULT_BATCH[m.split("/")[0]] for m in args.models]
    else:
        args.batch_sizes = [int(b) for b in args.batch_size.split(",")]
        if len(args.batch_sizes) == 1:
            args.batch_sizes *= len(args.models)
        if len(args.models) == 1 and args.model == "mma_dfer":
            args.models *= len(args.batch_sizes)
        if len(args.batch_sizes) != len(args.models):
            raise ValueError(f"--batch_size has {len(args.batch_sizes)} values for {len(args.models)} models")
    args.remat_policies = [r.strip() for r in args.remat_policy.split(",")]
    if len(args.remat_policies) == 1:
        args.remat_policies *= len(args.models)
    if len(args.remat_policies) != len(args.models) or (args.model == "vit" and len(set(args.remat_policies)) > 1):
        raise ValueError(f"--remat_policy {args.remat_policy!r}: give one policy, or (--model=mma_dfer) one per "
                         f"row ({len(args.models)} rows)")
    if args.model == "mma_dfer":  # a paper-size step takes seconds on a CPU, a tiny-variant one milliseconds
        default_steps = lambda m: 1 if args.tiny else 10 if m == TINY or not on_cpu else 1
        args.steps_per_model = [args.steps or default_steps(m) for m in args.models]
    else:
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


@dataclasses.dataclass
class _TimedTrain:
    """A timed run of the trainer's jitted step, and what it leaves behind (the state after the runs)."""

    seconds: list[float]
    others_cpu_share: Optional[float]
    compile_s: float
    memory: Optional[int]
    memory_source: str
    runner: _StepRunner
    shardings: Any
    mesh: Any


def time_jax_train_step(task, config, local_batch: dict, steps: int, args) -> _TimedTrain:
    """Builds the trainer's state and jitted step for `task` (config's optimizer), compiles and times it."""
    tx, schedule = optim.make_optimizer(config.optimizer, SCHEDULE_TOTAL_STEPS, SCHEDULE_STEPS_PER_EPOCH)
    mesh = sharding.make_mesh({"data": -1})
    sharding.check_batch_size(len(local_batch["label"]), mesh)
    state, shardings = state_lib.create_train_state(
        task, tx, state_lib.example_batch_like(local_batch), jax.random.key(config.seed), mesh,
        frozen_dtype=state_lib.dtype_from_name(args.frozen_dtype))
    train_step = step_lib.jit_train_step(step_lib.make_train_step(task, tx, schedule), shardings, mesh)
    batch = sharding.shard_batch(local_batch, mesh)

    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    runner = _StepRunner(compiled, state, batch, steps)
    seconds, others = bench.with_others_cpu_share(lambda: bench.time_runs(runner, args.repeats, args.warmup))
    memory, source = _jax_memory(compiled, jax.devices()[0])
    print(f"  final loss {float(runner.metrics['loss']):.4f}", flush=True)
    return _TimedTrain(seconds, others, compile_s, memory, source, runner, shardings, mesh)


def benchmark_jax(name: str, config, batch_size: int, args) -> bench.Measurement:
    model = vit_classifier.build_model(config)
    task = tasks.ClassificationTask(model, config.data.num_classes, trainable_patterns=args.trainable)
    timed = time_jax_train_step(task, config, random_batch(batch_size, model), args.steps, args)
    return bench.Measurement(
        model=model_label(name, model), batch=batch_size, image_size=args.image_size, dtype=args.dtype,
        framework="JAX (jaxemo)", run_seconds=timed.seconds, steps_per_run=args.steps,
        flops_per_sample=bench.train_flops(bench.vit_forward_flops(model)), compile_s=timed.compile_s,
        memory_bytes=timed.memory, memory_source=timed.memory_source, rss_bytes=bench.peak_rss_bytes(),
        others_cpu_share=timed.others_cpu_share)


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


# ------------------------------------------------------------------------------------------------ MMA-DFER


def mma_dfer_model_config(variant: str, args, remat_policy: str):
    """The mma_dfer config variant with the benchmark's overrides (dtype, remat, no stochastic depth)."""
    config = mma_dfer_config.get_config(variant)
    config.model.update(dtype=args.dtype, remat_policy=remat_policy,
                        encoder_drop_path_rate=0.0)  # the PyTorch re-expression has none: the same work
    if args.image_size:
        config.model.image_size = args.image_size
    config.frozen_dtype = args.frozen_dtype
    return config


def mma_dfer_label(variant: str, model) -> str:
    remat = "" if model.remat_policy == "none" else f", remat {model.remat_policy}"
    return (f"MMA-DFER {variant} (w{model.width} d{model.depth} p{model.patch_size}; {model.num_frames} x "
            f"{model.image_size}px, fbank {model.audio_shape[0]}x{model.audio_shape[1]}{remat})")


def mma_dfer_batch(batch_size: int, model, seed: int = 0) -> dict:
    """Random stored clips as the trainer gets them: uint8 frames at the model's size, fbank, label."""
    rng = np.random.default_rng(seed)
    size = model.image_size
    return {"video": rng.integers(0, 256, (batch_size, model.num_frames, size, size, 3), dtype=np.uint8),
            "fbank": rng.standard_normal((batch_size, *model.audio_shape)).astype(np.float32),
            "label": rng.integers(0, model.num_classes, (batch_size,), dtype=np.int32)}


def _mma_dfer_row(variant, model, step: str, framework: str, batch_size: int, seconds, steps: int, args,
                  **extra) -> bench.Measurement:
    flops = bench.mma_dfer_flops(model)
    return bench.Measurement(
        model=mma_dfer_label(variant, model), batch=batch_size, image_size=model.image_size,
        dtype=args.dtype if framework.startswith("JAX") else "float32", framework=framework,
        run_seconds=seconds, steps_per_run=steps, step=step,
        flops_per_sample=flops.train() if step == "train" else flops.forward, **extra)


def benchmark_mma_dfer_jax(variant: str, config, batch_size: int, steps: int, args) -> list[bench.Measurement]:
    """The trainer's train step, then the Evaluator's eval step on the params it left."""
    task = mma_dfer.build_task(config)
    model = task.model
    local_batch = mma_dfer_batch(batch_size, model)
    timed = time_jax_train_step(task, config, local_batch, steps, args)
    train = _mma_dfer_row(variant, model, "train", "JAX (jaxemo)", batch_size, timed.seconds, steps, args,
                          compile_s=timed.compile_s, memory_bytes=timed.memory, memory_source=timed.memory_source,
                          rss_bytes=bench.peak_rss_bytes(), others_cpu_share=timed.others_cpu_share)
    print(_row_summary(train), flush=True)

    params, mesh = timed.runner.state.params, timed.mesh
    param_shardings = timed.shardings.params
    del timed  # the train executable and the optimizer state
    gc.collect()
    bench.reset_peak_rss()
    eval_step = step_lib.jit_eval_step(task, param_shardings, mesh)
    batch = sharding.shard_batch(local_batch, mesh)
    start = time.perf_counter()
    compiled = eval_step.lower(params, batch).compile()
    compile_s = time.perf_counter() - start

    def run():
        for _ in range(steps):
            out = compiled(params, batch)
        jax.block_until_ready(out)

    seconds, others = bench.with_others_cpu_share(lambda: bench.time_runs(run, args.repeats, args.warmup))
    memory, source = _jax_memory(compiled, jax.devices()[0])
    inference = _mma_dfer_row(variant, model, "inference", "JAX (jaxemo)", batch_size, seconds, steps, args,
                              compile_s=compile_s, memory_bytes=memory, memory_source=source,
                              rss_bytes=bench.peak_rss_bytes(), others_cpu_share=others)
    return [train, inference]


def torch_mma_dfer_steps(torch, net, optimizer_config, batch: dict):
    """(train step, inference step) callables of the PyTorch reference on one batch: the train step is
    forward, cross-entropy, backward and AdamW on the parameters the reference trains (the rest frozen);
    the inference step a forward under `inference_mode`. Pixels go from uint8 to [0, 1] inside both."""
    from jaxemo.reference import mma_dfer_torch

    o = optimizer_config
    trainable = mma_dfer_torch.freeze_like_reference(net)
    optimizer = torch.optim.AdamW(trainable, lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.get("eps", 1e-8),
                                  weight_decay=o.weight_decay)
    video = torch.from_numpy(batch["video"]).permute(0, 1, 4, 2, 3).contiguous()  # uint8 [B, T, 3, H, W]
    fbank = torch.from_numpy(batch["fbank"])[:, None]  # [B, 1, time, mel]
    labels = torch.from_numpy(batch["label"]).long()

    def train_step():
        net.train()
        logits = net(video.float() / 255.0, fbank)[0]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        if o.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(trainable, o.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def inference_step():
        net.eval()
        with torch.inference_mode():
            return net(video.float() / 255.0, fbank)[0]

    return train_step, inference_step


def benchmark_mma_dfer_torch(modules, variant: str, config, batch_size: int, steps: int,
                             args) -> list[bench.Measurement]:
    from jaxemo.reference import mma_dfer_torch

    torch, _ = modules
    torch.manual_seed(0)
    model = mma_dfer.build_model(config)  # only its sizes are used
    net = mma_dfer_torch.build(mma_dfer_torch.Sizes.of(model), attn_implementation="sdpa")
    train_step, inference_step = torch_mma_dfer_steps(torch, net, config.optimizer,
                                                      mma_dfer_batch(batch_size, model))
    rows = []
    for name, step in (("train", train_step), ("inference", inference_step)):
        if rows:
            print(_row_summary(rows[-1]), flush=True)
            gc.collect()
            bench.reset_peak_rss()

        def run(step=step):
            for _ in range(steps):
                step()

        seconds, others = bench.with_others_cpu_share(lambda: bench.time_runs(run, args.repeats, args.warmup))
        rows.append(_mma_dfer_row(variant, model, name, "PyTorch (sdpa)", batch_size, seconds, steps, args,
                                  rss_bytes=bench.peak_rss_bytes(), others_cpu_share=others))
    return rows


# ------------------------------------------------------------------------------------------------ report


def section_key(args) -> str:
    kind = "mma-dfer-steps" if args.model == "mma_dfer" else "vit-train-step"
    return f"{kind}{'-tiny' if args.tiny else ''}:{jax.default_backend()}-{args.dtype}"


def _share(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{100 * value:.0f}%"


def section_body(results, args, argv, peak_notes: list[str], rss_reset: bool) -> str:
    memory_text = ("device peak = `device.memory_stats()['peak_bytes_in_use']` (process high-water mark)"
                   if bench.device_peak_bytes(jax.devices()[0]) is not None else
                   "XLA est. = the compiler's estimate from `compiled.memory_analysis()` (temp + arguments + "
                   "outputs - donated aliases), not a measurement")
    rss_text = ("peak RSS of the whole process while the row ran (reset before each row)" if rss_reset else
                "peak RSS of the whole process so far (cannot be reset here: later rows include earlier ones)")
    mma = args.model == "mma_dfer"
    runs = [f"  - {m.model}{f' {m.step}' if mma else ''} {m.framework}: "
            f"{', '.join(f'{s:.3g}' for s in m.run_seconds)} s; other processes used {_share(m.others_cpu_share)} "
            f"of the CPU" for m in results]
    if mma:
        title = "MMA-DFER train and inference steps"
        table = bench.markdown_table(results, bench.MMA_DFER_COLUMNS, bench.mma_dfer_table_row)
        steps = ", ".join(f"{m} batch {b}: {n}" for m, b, n in zip(args.models, args.batch_sizes,
                                                                   args.steps_per_model))
        timing = (f"- Timing: median of {args.repeats} runs after {args.warmup} warm-up run(s), each run "
                  f"{steps} step(s); compilation (`lower().compile()`, the `compile s` column) is excluded. "
                  f"Random uint8 clips (frames at the model's size), N(0, 1) fbanks and labels, one batch reused.")
        flops = ("- GFLOP/clip: `jaxemo.bench.mma_dfer_flops` (matmuls only); train rows count the forward, "
                 "activation gradients through every layer (frozen ones too) and weight gradients only for "
                 "the trainable weights (`MMADFERFlops.train()`), inference rows the forward. Remat's "
                 "recomputation is not counted.")
    else:
        title = "ViT train step"
        table = bench.markdown_table(results)
        timing = (f"- Timing: median of {args.repeats} runs of {args.steps} train steps after {args.warmup} "
                  f"warm-up run(s); compilation (`lower().compile()`, the `compile s` column) is excluded. "
                  f"Random uint8 images and labels, one batch reused.")
        flops = None
    return "\n".join([
        f"### {title}: {jax.default_backend()}, {args.dtype}{' (tiny)' if args.tiny else ''}",
        "",
        table,
        "",
        f"- Command: `python -m experiments.benchmark {shlex.join(argv)}`",
        f"- Machine: {bench.machine_description()}",
        f"- Date: {bench.today()}",
        timing,
        *([flops] if flops else []),
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
    for i, (name, batch_size) in enumerate(zip(args.models, args.batch_sizes)):
        mma = args.model == "mma_dfer"
        remat = args.remat_policies[i]
        config = mma_dfer_model_config(name, args, remat) if mma else model_config(name, args)
        same_work_in_torch = torch_modules and (not mma or remat == "none")
        for framework in ("jax", "torch") if same_work_in_torch else ("jax",):
            print(f"{name} batch {batch_size}: {framework} ...", flush=True)
            gc.collect()
            rss_reset &= bench.reset_peak_rss()
            if mma and framework == "jax":
                rows = benchmark_mma_dfer_jax(name, config, batch_size, args.steps_per_model[i], args)
            elif mma:
                rows = benchmark_mma_dfer_torch(torch_modules, name, config, batch_size, args.steps_per_model[i],
                                                args)
            elif framework == "jax":
                rows = [benchmark_jax(name, config, batch_size, args)]
            else:
                rows = [benchmark_torch(torch_modules, name, config, batch_size, args)]
            print(_row_summary(rows[-1]), flush=True)
            results += rows
    return results, rss_reset


def _row_summary(row: bench.Measurement) -> str:
    return (f"  {row.step}: {row.samples_per_s:.2f} samples/s, runs {', '.join(f'{s:.3g}' for s in row.run_seconds)}"
            f" s, other processes used {_share(row.others_cpu_share)} of the CPU")


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
