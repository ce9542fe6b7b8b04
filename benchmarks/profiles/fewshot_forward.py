"""Why the few-shot population trails the released Trainer on the CPU: the reduced wav2vec2's forward pass per
clip, jaxemo (one trial, and a population's vmapped trials with their own weights) against PyTorch (the
released evaluation's batch of 1 on one thread, and a batch of 32), whole model and feature encoder alone.

    python -m benchmarks.profiles.fewshot_forward             # the model of `benchmarks.fewshot_released`

Evaluation is most of a few-shot trial's FLOPs (100 clips per epoch against k = 8 training clips), so the
forward pass per clip sets the pace of both sides. GFLOP/s from the analytic count
(`jaxemo.systems.speech_ser.flops`: a third of the training FLOPs per clip).
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import fewshot_released
from jaxemo.systems import speech_ser

CLIPS = 32


def seconds(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def jaxemo_rows(config, trials: int) -> list[tuple[str, float]]:
    task = speech_ser.build_task(speech_ser.with_target_head(config))
    samples = task.max_samples
    wave = jnp.asarray(np.random.default_rng(0).standard_normal((CLIPS, samples)), jnp.float32)
    batch = {"waveform": wave, "waveform_mask": jnp.ones((CLIPS, samples), bool)}
    params = jax.jit(lambda key: nn.unbox(task.init(key, batch)["params"]))(jax.random.key(0))
    logits = jax.jit(task.logits)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (trials, *x.shape)) + 0, params)
    per_trial = jax.jit(jax.vmap(task.logits, in_axes=(0, None)))
    rows = [("jaxemo, one trial, batch 32", seconds(lambda: logits(params, batch)) / CLIPS),
            (f"jaxemo, {trials} trials vmapped (own weights), batch 32 each",
             seconds(lambda: per_trial(stacked, batch)) / (CLIPS * trials))]
    return rows


def torch_rows(config) -> list[tuple[str, float]]:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForSequenceClassification(fewshot_released.hf_config(config)).eval()
    samples = int(16000 * config.max_seconds)
    wave = torch.randn(CLIPS, samples)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            def one_by_one():
                for i in range(CLIPS):
                    model(wave[i:i + 1])

            def batched():
                model(wave)

            def encoder():
                model.wav2vec2.feature_extractor(wave)

            for name, fn in (("batch 1 (the released evaluation)", one_by_one), ("batch 32", batched),
                             ("feature encoder alone, batch 32", encoder)):
                fn()
                start = time.perf_counter()
                fn()
                rows.append((f"PyTorch, {threads} thread(s), {name}", (time.perf_counter() - start) / CLIPS))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=25)
    p.add_argument("--conv_impls", default="matmul,xla")
    args = p.parse_args(argv)
    base = fewshot_released.parse_args([])
    rows = []
    for impl in args.conv_impls.split(","):
        config = fewshot_released.make_config(base)
        with config.unlocked():
            config.model.overrides.conv_impl = impl
        rows += [(f"{name}, conv_impl={impl}", s) for name, s in jaxemo_rows(config, args.trials)]
    config = fewshot_released.make_config(base)
    rows += torch_rows(config)
    task = speech_ser.build_task(speech_ser.with_target_head(config))
    forward = task.flops_per_example / 3
    print(f"| forward pass of one {config.max_seconds} s clip ({forward / 1e9:.3f} GFLOP) | ms per clip "
          "| GFLOP/s |")
    print("|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {1e3 * s:.2f} | {forward / s / 1e9:.1f} |")


if __name__ == "__main__":
    main()
