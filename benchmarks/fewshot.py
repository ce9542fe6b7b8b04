"""Few-shot SER trials per hour: wav2vec 2.0 trials as population groups against one trial at a time, and the
projected wall time of the paper's 33,600 trials.

    python -m benchmarks.fewshot --write                       # CPU: a reduced encoder, 1 s clips
    python -m benchmarks.fewshot --preset=base --seconds=5 --dtype=bfloat16 --trials=256 \
        --group_size=64 --write                                           # GPU: wav2vec2-base, 5 s clips
    python -m benchmarks.fewshot --tiny                        # seconds: tests

Every trial is a few-shot trial of the protocol (`jaxemo.systems.speech_ser.fewshot`): one synthetic ESD
speaker, one target emotion, k shots (`--k`, balanced), full fine-tuning with a new 2-class head, batch
min(4, k), AdamW, evaluation every epoch on the speaker's `--eval_clips` evaluation clips (ESD: 100),
`--epochs` epochs, no early stopping (every trial runs the same steps on both sides). Both sides use the same
jitted train step (the population vmaps it) and include reading the data and evaluating:

  population    `jaxemo.train.population.Population` groups of `--group_size` trials
  one at a time the trials in a Python loop with the trainer's jitted step and eval step, compiled once

Compilation is excluded from trials/hour (each side runs once untimed first). FLOPs: the analytic
wav2vec2 count (`jaxemo.perf.wav2vec2_forward_flops`, `jaxemo.systems.speech_ser.flops`): 3x forward per
training clip, 1x per evaluation clip.

Projection: the paper's protocol (k in 2..64, 200 epochs for k <= 8 and 50 above, 100 evaluation clips per
epoch, 300 trials per k per start, 16 starts) without early stopping, an upper bound, at the population's
achieved FLOP/s; printed for `--preset=base --seconds=5`, the paper's model and clips. Trials never
communicate, so a slice of n chips with the `trials` axis sharded (the population's default) takes 1/n of one
chip's time at the same per-chip rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys

import jax
import numpy as np

from benchmarks import pod_compile, population_timing, report
from experiments import configs
from jaxemo import perf
from jaxemo.train import sharding
from jaxemo.models import wav2vec2
from jaxemo.systems import speech_ser
from jaxemo.systems.speech_ser import fewshot
from jaxemo.train import population

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "fewshot-trials"
PAPER_SCHEDULE = {2: 200, 4: 200, 8: 200, 16: 50, 24: 50, 32: 50, 64: 50}  # k -> epochs (no early stopping)
EARLIEST_STOP = {k: (31 if k <= 8 else 6) for k in PAPER_SCHEDULE}  # patience 30 (k <= 8) or 5, plus one epoch
PAPER_TRIALS_PER_K = 20 * 5 * 3
PAPER_STARTS = 16
ESD_EVAL_CLIPS = 100


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fewshot", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base", help="wav2vec2 preset (base, large, hubert-base, ...)")
    p.add_argument("--layers", type=int, default=None, help="transformer layers (default: the preset's)")
    p.add_argument("--hidden", type=int, default=None, help="hidden size (heads = hidden / 64)")
    p.add_argument("--conv_dim", type=int, default=None, help="channels of every feature-encoder conv")
    p.add_argument("--seconds", type=float, default=5.0, help="clip length (padded/truncated)")
    p.add_argument("--conv_impl", default=None, choices=wav2vec2.CONV_IMPLS,
                   help="default: matmul on the CPU (vmapped convs), xla elsewhere (the im2col patches of 5 s clips "
                   "take 25 GiB per trial on a TPU)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--eval_clips", type=int, default=ESD_EVAL_CLIPS, help="evaluation clips per trial")
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--group_size", type=int, default=32)
    p.add_argument("--sequential_trials", type=int, default=4)
    p.add_argument("--peak_size", type=int, default=None)
    p.add_argument("--cpu", action="store_true", help="the CPU defaults: a reduced encoder (2 layers, hidden "
                   "128, conv 64), 1 s clips, 32 trials in groups of 16")
    p.add_argument("--tiny", action="store_true", help="4 trials of the tiny preset: seconds")
    p.add_argument("--pod", default="", help="instead of timing: compile (not run) the population step for this "
                   "TPU topology (e.g. v5e:16x16) with the trials sharded over its chips")
    p.add_argument("--trials_per_chip", default="1,2,4", help="with --pod: trials per chip to compile")
    p.add_argument("--write", action="store_true")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    args.conv_impl = args.conv_impl or ("matmul" if jax.default_backend() == "cpu" and not args.pod else "xla")
    chosen = any(a.startswith("--preset") for a in argv)
    if args.cpu or (jax.default_backend() == "cpu" and not args.tiny and not chosen):
        args.cpu = True
        args.layers, args.hidden, args.conv_dim, args.seconds = args.layers or 2, args.hidden or 128, \
            args.conv_dim or 64, 1.0
        args.trials, args.group_size = min(args.trials, 32), min(args.group_size, 16)
    if args.tiny:
        args.preset, args.seconds, args.trials, args.group_size, args.sequential_trials = "tiny", 0.1, 4, 4, 2
        args.epochs, args.eval_clips, args.k = 2, 10, 4
    args.peak_size = args.peak_size or (256 if args.tiny else 2048 if jax.default_backend() == "cpu" else 8192)
    return args


def make_config(args):
    config = configs.load("fewshot_ser", "tiny")
    overrides = dict(conv_impl=args.conv_impl, hidden_dropout=0.1, attention_dropout=0.1, feat_proj_dropout=0.1,
                     layerdrop=0.0, mask_time_prob=0.05 if args.seconds >= 1 else 0.0)
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.hidden:
        overrides.update(hidden_size=args.hidden, num_attention_heads=max(1, args.hidden // 64),
                         intermediate_size=4 * args.hidden)
    if args.conv_dim:
        overrides["conv_dim"] = (args.conv_dim,) * 7
    config.model.update(preset=args.preset, overrides=overrides, dtype=args.dtype)
    config.max_seconds = args.seconds
    per_emotion = max(1, math.ceil(args.eval_clips / 5))
    config.data.update(num_speakers=max(1, math.ceil(args.trials / 5)), train_per_emotion=max(8, args.k),
                       eval_per_emotion=per_emotion, test_per_emotion=1, min_seconds=min(1.0, args.seconds),
                       max_seconds=args.seconds)
    config.protocol.update(k_values=(args.k,), trials=1, small_epochs=args.epochs, large_epochs=args.epochs,
                           small_patience=0, large_patience=0)
    config.optimizer.update(learning_rate=3e-5, grad_accum_steps=1)
    args.eval_clips = per_emotion * 5
    config.eval_batch_size = min(32, args.eval_clips)
    config.population.group_size = args.group_size
    config.log_every_steps = 10_000
    return fewshot.stage_config(config, args.k)


def make_trials(config, args) -> list[population.Trial]:
    data = fewshot.SpeakerData(config)
    trials = fewshot.make_trials(config, data, args.k, "plain")[:args.trials]
    return [dataclasses.replace(t, test=None) for t in trials]


def protocol_flops(task, schedule=None) -> float:
    """FLOPs of one starting model's 2,100 trials at the paper's schedule (`PAPER_SCHEDULE`, no early stopping;
    `EARLIEST_STOP`: every trial stopping as early as its patience allows, a lower bound)."""
    train, forward = task.flops_per_example, task.flops_per_example / 3
    per_trial_set = sum(epochs * (max(k, 1) * train + ESD_EVAL_CLIPS * forward)
                        for k, epochs in (schedule or PAPER_SCHEDULE).items())
    return PAPER_TRIALS_PER_K * per_trial_set


def measure(args) -> dict:
    config = make_config(args)
    task = speech_ser.build_task(config)
    trials = make_trials(config, args)
    peak = perf.matmul_peak_flops(perf.jax_matmul(args.peak_size, np.float32), args.peak_size)
    print(f"peak {peak / 1e12:.3f} TFLOP/s; {len(trials)} trials, {task.flops_per_example / 1e9:.2f} GFLOP per "
          f"training clip", flush=True)
    sequential = population_timing.time_one_at_a_time(config, task, trials[:args.sequential_trials])
    print(f"one at a time: {len(sequential['rows'])} trials in {sequential['seconds']:.1f} s "
          f"(+ {sequential['compile_s']:.1f} s compile)", flush=True)
    vmapped = population_timing.time_population(config, task, trials)
    print(f"population: {len(vmapped['rows'])} trials in {vmapped['seconds']:.1f} s (+ {vmapped['compile_s']:.1f} s "
          f"compile), groups of {vmapped['group_size']}", flush=True)
    return {"config": config, "task": task, "peak": peak, "sequential": sequential, "population": vmapped}


def _trial_flops(result, args, steps: float) -> float:
    """Training (3x forward per clip) and evaluation (1x per clip per epoch) FLOPs of one trial."""
    task, config = result["task"], result["config"]
    epochs = steps / max(1, loop_steps_per_epoch(config, args))
    return steps * config.batch_size * task.flops_per_example + epochs * args.eval_clips * task.flops_per_example / 3


def loop_steps_per_epoch(config, args) -> int:
    return max(args.k // config.batch_size, 1)


def section_body(result: dict, args, argv) -> str:
    task, config = result["task"], result["config"]
    backbone = task.model.config
    lines = ["| mode | trials timed | trials/hour | train steps/s | achieved GFLOP/s | MFU % | compile s | group |",
             "|---|---|---|---|---|---|---|---|"]
    rates = {}
    for name, key, group in (("one at a time", "sequential", "1"),
                             ("population (vmapped groups)", "population", str(result["population"]["group_size"]))):
        r = result[key]
        trials = len(r["rows"])
        flops = sum(_trial_flops(result, args, row["steps_run"]) for row in r["rows"])
        rates[key] = flops / r["seconds"]
        lines.append(f"| {name} | {trials} | {population.trials_per_hour(trials, r['seconds']):,.0f} | "
                     f"{r['steps'] / r['seconds']:.1f} | {rates[key] / 1e9:.2f} | {100 * rates[key] / result['peak']:.1f} | "
                     f"{r['compile_s']:.1f} | {group} |")
    seq = result["sequential"]["seconds"] / len(result["sequential"]["rows"])
    pop = result["population"]["seconds"] / len(result["population"]["rows"])
    model = (f"wav2vec2 `{args.preset}`" + (f" reduced to {backbone.num_hidden_layers} layers, hidden "
             f"{backbone.hidden_size}, conv {backbone.conv_dim[0]}" if args.cpu else "") + f", {args.seconds:g} s clips, "
             f"{args.dtype}, conv_impl={args.conv_impl}")
    total = protocol_flops(task) * PAPER_STARTS
    paper_scale = args.preset == "base" and args.seconds == 5.0 and not args.cpu
    if paper_scale:
        hours = total / rates["population"] / 3600
        projection = (f"- Projected wall time of the paper's 33,600 trials (16 starts x 2,100; 200 epochs for k <= 8, "
                      f"50 above, 100 evaluation clips per epoch, no early stopping: an upper bound) on this device at "
                      f"the population's rate: **{hours:,.1f} hours** ({total / 1e18:.2f} EFLOP); one at a time: "
                      f"{total / rates['sequential'] / 3600:,.1f} hours. On n chips with the trials axis sharded: "
                      f"1/n of one chip's time at its own rate (trials never communicate).")
    else:
        projection = (f"- Projection of the 33,600 trials: needs `--preset=base --seconds=5` (the paper's model and "
                      f"clips; {total / 1e18:.2f} EFLOP without early stopping), measured on an accelerator.")
    return "\n".join([
        f"### Few-shot SER trials per hour, {jax.default_backend()}, {model}, k={args.k}",
        "",
        *lines,
        "",
        f"- Speed-up of the population over one trial at a time: **{seq / pop:.1f}x** per trial "
        f"({1e3 * seq:.0f} ms vs {1e3 * pop:.0f} ms per trial, compilation excluded).",
        projection,
        f"- Command: `python -m benchmarks.fewshot {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
        f"- Trials: synthetic ESD speakers x target emotions, k={args.k} shots, batch {config.batch_size}, "
        f"{args.epochs} epochs of {loop_steps_per_epoch(config, args)} steps, {args.eval_clips} evaluation clips "
        f"per epoch; {task.flops_per_example / 1e9:.2f} GFLOP per training clip (3x forward, analytic). Achieved "
        f"FLOP/s counts training and evaluation; MFU against a {args.peak_size}x{args.peak_size} float32 matmul peak "
        f"of {result['peak'] / 1e12:.3f} TFLOP/s measured in the same run.",
    ])


def compile_for_pod(args, on_row=None) -> list[dict]:
    """The population's train step compiled for a TPU topology, `trials_per_chip` x chips trials per group
    (the `trials` axis over every chip), with XLA's per-chip memory (how many trials a chip holds) and the TPU
    compiler's predicted step time (`cost_analysis()["optimal_seconds"]` of the step with every scan unrolled,
    `perf.priced_seconds`; as `benchmarks.tpu_predict`), its MFU and the projected wall time of the protocol."""
    mesh = sharding.topology_mesh(args.pod)
    topology = perf.TPU_TOPOLOGIES[args.pod]
    label, hbm = topology.label, topology.hbm_bytes
    rows = []
    for per_chip in (int(v) for v in args.trials_per_chip.split(",")):
        group = per_chip * mesh.size
        with_group = argparse.Namespace(**{**vars(args), "trials": group, "group_size": group})
        config = make_config(with_group)
        config.data.num_speakers = min(config.data.num_speakers, 20)
        with config.unlocked():
            config.protocol.trials = math.ceil(group / (config.data.num_speakers * 5))
        task = speech_ser.build_task(config)
        trials = make_trials(config, with_group)[:group]
        flops = per_chip * config.batch_size * task.flops_per_example  # per chip per step

        def lower(config=config, task=task, trials=trials, group=group):
            pop = population.Population(config, task, trials, mesh=mesh)
            if pop.group_size != group:
                raise ValueError(f"the population's group is {pop.group_size} trials, not {group}")
            return pop._step.lower(*pop._abstract_step_args(pop.group_size))

        row = {"topology": label, "chips": mesh.size, "trials_per_chip": per_chip, "group": group, "hbm": hbm,
               **pod_compile.compile_and_predict(lower, flops / topology.peak_flops)}
        memory, error, predicted = row["memory"], row["error"], row["predicted_s"]
        if predicted:
            pod_rate = mesh.size * flops / predicted  # the pod's FLOP/s at the predicted MFU
            row.update(mfu=row["floor_s"] / predicted,
                       hours=PAPER_STARTS * protocol_flops(task) / pod_rate / 3600,
                       hours_earliest=PAPER_STARTS * protocol_flops(task, EARLIEST_STOP) / pod_rate / 3600)
        rows.append(row)
        if on_row is not None:  # a run stopped later (a host out of memory) keeps its rows
            on_row(rows)
        print(f"{label}: {per_chip} trial(s) per chip: "
              f"{error or f'{memory / perf.GIB:.2f} GiB per chip'}"
              + (f", predicted {1e3 * predicted:.1f} ms per step, MFU {100 * row['mfu']:.1f}%"
                 if predicted else "")
              + f" ({row['compile_s']:.0f} s)", flush=True)
    return rows


def pod_section(rows: list[dict], args, argv) -> str:
    lines = ["| topology | trials per group | trials per chip | memory per chip (XLA) | HBM | floor ms "
             "(FLOPs / peak) | **predicted step ms** | **predicted MFU %** | unpriced ops | **33,600 trials, "
             "hours** (no early stopping / earliest stops) | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = r["error"] or f"{r['memory'] / perf.GIB:.2f} GiB"
        predicted = r.get("predicted_s")
        cells = (["-"] * 4 if not predicted or r["error"] else
                 [f"{1e3 * predicted:.1f}", f"{100 * r['mfu']:.1f}", str(r["unpriced"]),
                  f"{r['hours']:,.1f} / {r['hours_earliest']:,.1f}"])
        lines.append(f"| {r['topology']} | {r['group']} | {r['trials_per_chip']} | {memory} | "
                     f"{r['hbm'] / perf.GIB:.0f} GiB | {1e3 * r['floor_s']:.1f} | {' | '.join(cells)} | "
                     f"{r['compile_s']:.0f} |")
    return "\n".join([
        f"### Few-shot SER population step compiled for a TPU pod (AOT, on the CPU): wav2vec2 `{args.preset}`, "
        f"{args.seconds:g} s clips, {args.dtype}, k={args.k}",
        "",
        *lines,
        "",
        f"- Command: `python -m benchmarks.fewshot {shlex.join(argv)}`",
        f"- Machine: {report.machine_description(('jax', 'jaxlib', 'libtpu', 'flax'))}",
        f"- Date: {report.today()}",
        "- The population's vmapped train step (every trial's params, Adam state and batch on its own chip: the "
        "`trials` axis is sharded over all chips) compiled with `jax.experimental.topologies`; nothing runs. "
        "Memory is XLA's per-chip estimate. Trials never communicate, so the 33,600 trials on n chips take "
        "33,600 / (n x trials per chip) group rounds.",
        "- Predicted step time, MFU and hours are the TPU compiler's cost model, not a measurement: "
        "`cost_analysis()['optimal_seconds']` of the step compiled with every scan unrolled (the wav2vec2 stack; "
        "`jaxemo.perf.priced_seconds` leaves out the ops libtpu does not price), MFU the analytic training FLOPs "
        "per chip (trials per chip x batch x 3x forward) / (bf16 peak x predicted time). Hours: the protocol's "
        "FLOPs (16 starts x 2,100 trials; 200 epochs for k <= 8, 50 above; 100 evaluation clips per epoch) at "
        "the pod's predicted FLOP/s, evaluation assumed at the training step's MFU; earliest stops: every trial "
        "stopping as soon as its patience allows (31 / 6 epochs), a lower bound.",
    ])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.pod:
        key = f"{SECTION}-pod-{args.preset}:{args.pod}-{args.dtype}"

        def write(rows):
            report.write_section(args.benchmarks_file, key, pod_section(rows, args, argv))

        rows = compile_for_pod(args, write if args.write else None)
        print("\n" + pod_section(rows, args, argv))
        return {"pod": rows}
    result = measure(args)
    body = section_body(result, args, argv)
    print("\n" + body)
    if args.write:
        key = f"{SECTION}{'-tiny' if args.tiny else ''}-{args.preset}{'-cpu' if args.cpu else ''}"
        report.write_section(args.benchmarks_file, f"{key}:{jax.default_backend()}-{args.dtype}", body)
        print(f"\nwrote section {SECTION} of {args.benchmarks_file}")
    return result


if __name__ == "__main__":
    main()
