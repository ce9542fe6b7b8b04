"""Trials per hour of many small trainings: vmapped population groups against the same trials one at a time.

    python -m benchmarks.population --write        # CPU: 64 trials of a small ViT classifier
    python -m benchmarks.population --tiny         # seconds: tests

Every trial trains the vit_classifier `tiny` recipe shrunk to a small classifier (width 64, 2 layers, 32 px
synthetic images, 10 classes) on its own synthetic training set with its own seed and learning rate (drawn
log-uniformly), evaluating on its own validation set every `--eval_every` steps with early stopping
(patience 2 on validation loss), as a cross-validation or few-shot protocol does.

  population   `jaxemo.train.population.Population`: groups of `--group_size` trials, each group one jitted
               `vmap` of the trainer's step, validation batched over trials.
  one at a time the same trials in a Python loop, each with the trainer's jitted step (`loop.setup_train_step`,
               compiled once and reused by every trial: the learning rate is injected, so a new value does
               not recompile) and the evaluator's jitted eval step, with the same early stopping.

Both include reading the data and evaluating. Compilation is excluded from trials/hour: each side first runs
once untimed (the first group, the first trial), and `compile s` is that run's time minus a timed one's. The
one-at-a-time side times `--sequential_trials` of the trials; trials/hour scales each side by its own count. FLOPs:
`perf.vit_forward_flops` x 3 per training sample (evaluation not counted); MFU against a matmul peak
measured in the same run. `--write` replaces the section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

import jax
import numpy as np

from benchmarks import population_timing, report
from experiments import configs
from jaxemo import perf
from jaxemo.data import synthetic
from jaxemo.systems import vit_classifier
from jaxemo.train import population

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "population-trials"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.population",
                                description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=64, help="trials in the population")
    p.add_argument("--group_size", type=int, default=32, help="trials per vmapped group (0: from memory)")
    p.add_argument("--sequential_trials", type=int, default=8, help="trials timed one at a time")
    p.add_argument("--steps", type=int, default=100, help="train steps per trial (at most; early stopping)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_every", type=int, default=25)
    p.add_argument("--train_size", type=int, default=512, help="training examples per trial")
    p.add_argument("--eval_size", type=int, default=128, help="validation examples per trial")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--peak_size", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="4 trials of 6 steps: seconds")
    p.add_argument("--write", action="store_true")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    if args.tiny:
        args.trials, args.group_size, args.sequential_trials, args.steps, args.eval_every = 4, 4, 2, 6, 3
        args.train_size, args.eval_size, args.batch_size, args.width, args.depth = 64, 32, 8, 32, 1
    args.peak_size = args.peak_size or (256 if args.tiny else 2048 if jax.default_backend() == "cpu" else 8192)
    return args


def make_config(args):
    config = configs.load("vit_classifier", "tiny")
    config.model.update(width=args.width, depth=args.depth, num_heads=max(1, args.width // 32),
                        mlp_dim=2 * args.width)
    config.data.update(train_size=args.train_size, eval_size=args.eval_size)
    config.update(batch_size=args.batch_size, eval_batch_size=args.eval_size, total_steps=args.steps,
                  eval_every_steps=args.eval_every, log_every_steps=args.steps)
    config.optimizer.update(schedule="constant", warmup_steps=0)
    config.best.update(metric="loss", mode="min", patience=2)
    config.population.group_size = args.group_size
    return config


class InMemory:
    """A source's examples generated once and kept in memory, as a cached dataset is read: the synthetic
    images are drawn per access, which would otherwise cost more than a training step of this model."""

    def __init__(self, source):
        self.examples = [source[i] for i in range(len(source))]

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]


def make_trials(args) -> list[population.Trial]:
    rates = np.exp(np.random.default_rng(0).uniform(np.log(1e-4), np.log(1e-2), args.trials))
    return [population.Trial(f"trial{i:04d}", seed=i,
                             train=InMemory(synthetic.SyntheticImages(args.train_size, image_size=32, seed=i)),
                             eval=InMemory(synthetic.SyntheticImages(args.eval_size, image_size=32, seed=10_000 + i)),
                             hyperparams={"learning_rate": float(rates[i])}) for i in range(args.trials)]


def measure(args) -> dict:
    config = make_config(args)
    task = vit_classifier.build_task(config)
    trials = make_trials(args)
    peak = perf.matmul_peak_flops(perf.jax_matmul(args.peak_size, np.float32), args.peak_size)
    print(f"peak {peak / 1e12:.3f} TFLOP/s", flush=True)
    sequential = population_timing.time_one_at_a_time(config, task, trials[:args.sequential_trials])
    print(f"one at a time: {len(sequential['rows'])} trials in {sequential['seconds']:.1f} s "
          f"(+ {sequential['compile_s']:.1f} s compile)", flush=True)
    vmapped = population_timing.time_population(config, task, trials)
    print(f"population: {len(vmapped['rows'])} trials in {vmapped['seconds']:.1f} s (+ {vmapped['compile_s']:.1f} s "
          f"compile), groups of {vmapped['group_size']}", flush=True)
    agree = [abs(a["best_value"] - b["best_value"]) for a, b in zip(sequential["rows"], vmapped["rows"])]
    steps_agree = sum(a["steps_run"] == b["steps_run"] for a, b in zip(sequential["rows"], vmapped["rows"]))
    return {"config": config, "task": task, "peak": peak, "sequential": sequential, "population": vmapped,
            "best_value_difference": (float(np.median(agree)), max(agree)), "steps_agree": steps_agree}


def section_body(result: dict, args, argv) -> str:
    model = result["task"].model
    flops_per_step = perf.train_flops(perf.vit_forward_flops(model)) * args.batch_size
    lines = ["| mode | trials timed | trials/hour | train steps/s | samples/s | achieved GFLOP/s | MFU % | "
             "compile s | group |", "|---|---|---|---|---|---|---|---|---|"]
    for name, key, group in (("one at a time", "sequential", "1"),
                             ("population (vmapped groups)", "population", str(result["population"]["group_size"]))):
        r = result[key]
        trials = len(r["rows"])
        steps_per_s = r["steps"] / r["seconds"]
        achieved = steps_per_s * flops_per_step
        lines.append(f"| {name} | {trials} | {population.trials_per_hour(trials, r['seconds']):,.0f} | "
                     f"{steps_per_s:.1f} | {steps_per_s * args.batch_size:,.0f} | {achieved / 1e9:.2f} | "
                     f"{100 * achieved / result['peak']:.1f} | {r['compile_s']:.1f} | {group} |")
    seq = result["sequential"]["seconds"] / len(result["sequential"]["rows"])
    pop = result["population"]["seconds"] / len(result["population"]["rows"])
    return "\n".join([
        f"### Population training: trials per hour, {jax.default_backend()}, float32, ViT width {model.width} "
        f"depth {model.depth}, batch {args.batch_size}{' (tiny)' if args.tiny else ''}",
        "",
        *lines,
        "",
        f"- Speed-up of the population over one trial at a time: **{seq / pop:.1f}x** per trial "
        f"({1e3 * seq:.0f} ms vs {1e3 * pop:.0f} ms per trial, compilation excluded).",
        f"- Command: `python -m benchmarks.population {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
        f"- Trials: {args.trials} ViT classifiers (width {model.width}, depth {model.depth}, patch "
        f"{model.patch_size[0]}, 32 px, 10 classes; {perf.vit_forward_flops(model) / 1e6:.1f} MFLOP forward per "
        f"image), each on its own {args.train_size} synthetic images with its own seed and learning rate "
        f"(log-uniform 1e-4..1e-2, AdamW), batch {args.batch_size}, at most {args.steps} steps, validation on "
        f"{args.eval_size} images every {args.eval_every} steps, early stopping on validation loss (patience 2). "
        f"The one-at-a-time side ran the first {args.sequential_trials} trials; {result['steps_agree']} of them "
        f"stopped at the same step on both sides; their best validation losses differ by "
        f"{result['best_value_difference'][0]:.1e} (median) and {result['best_value_difference'][1]:.1e} (largest): "
        f"batched and unbatched matmuls sum in different orders, and over {args.steps} Adam steps at the larger "
        f"learning rates the float32 round-off grows (the tests check equality to 1e-5 on short runs).",
        "- Train steps/s counts every trial's steps (a vmapped step of G trials is G steps); achieved FLOP/s "
        "and MFU count training only (evaluation and data reading are in the wall time but not in the FLOPs), "
        f"against a {args.peak_size}x{args.peak_size} float32 matmul peak of "
        f"{result['peak'] / 1e12:.3f} TFLOP/s measured in the same run.",
    ])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    result = measure(args)
    body = section_body(result, args, argv)
    print("\n" + body)
    if args.write:
        key = f"{SECTION}{'-tiny' if args.tiny else ''}-w{args.width}d{args.depth}b{args.batch_size}"
        report.write_section(args.benchmarks_file, f"{key}:{jax.default_backend()}-float32", body)
        print(f"\nwrote section {SECTION} of {args.benchmarks_file}")
    return result


if __name__ == "__main__":
    main()
