"""Wall time of the MER-SEMI pipeline's trainings (folds x draws x rounds) as population groups against fold by
fold, beside MERTools' own PyTorch loop.

    python -m benchmarks.agt_pipeline --write                 # CPU: the tiny recipe's sizes
    python -m benchmarks.agt_pipeline --paper_dims --train_size=5000 --hidden=128 --draws=6 --epochs=2 \
        --rounds=1 --per_round=2000 --no_torch --write                   # GPU (`benchmarks.gpu_suite`)
    python -m benchmarks.agt_pipeline --tiny                          # seconds: tests
    python -m benchmarks.agt_pipeline --pod=v5e:2x2 --model=agt --hidden=128 --paper_dims \
        --trials_per_chip=1,64 --write           # the TPU compiler's predicted step time (AOT, on the CPU)

The trials are those of `jaxemo.systems.agt.semi` for one model shape (`--model`, hidden size / width
`--hidden`; the learning rate is drawn per draw, so every draw shares one compiled step): round 0 trains
`--draws` x `--folds` trials on the labelled folds; each of `--rounds` self-training rounds trains the best
draw's `--folds` trials on the folds plus `--per_round` more pseudo-labelled samples per round (here random
pool samples with random labels: the timing does not depend on them). Every trial runs `--epochs` epochs
(batch 32) and evaluates on its held-out fold after each; no early stopping. Three ways:

  population     `jaxemo.train.population.Population` groups (every trial of a round in one vmapped program)
  fold by fold   the same trials one after another, the trainer's jitted step and eval step compiled once
  PyTorch        the MERTools attention baseline (`benchmarks/twins/mertools_attention_torch.py`) trained
                 fold by fold as MERTools does: Adam with L2 1e-5, eval each epoch (`--model=attention` only;
                 `--torch_threads`, default 1: with the batch-32 matmuls of these models more threads are slower)

Compilation is excluded from the timed seconds (each side runs its first group / trial untimed first) and
reported apart. FLOPs: `jaxemo.systems.agt.flops` (`.train`) per training example, 1/3 of it per
evaluated example; MFU against a float32 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import jax
import numpy as np

from benchmarks import population_timing, report
from experiments.configs import agt_mer as agt_config
from jaxemo import perf
from jaxemo.data import sources
from jaxemo.systems.agt import cv, data as data_lib, task as task_lib
from jaxemo.train import population

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "agt-pipeline"
PAPER_DIMS = {"chinese-hubert-large": 1024, "clip-vit-large-patch14": 768, "Baichuan-13B-Base": 5120}


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="attention", choices=("attention", "agt"))
    p.add_argument("--hidden", type=int, default=64, help="hidden_dim (attention) or width (agt)")
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train_size", type=int, default=600)
    p.add_argument("--per_round", type=int, default=450)
    p.add_argument("--paper_dims", action="store_true", help="HuBERT-large 1024, CLIP-L 768, Baichuan-13B 5120")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--torch_threads", type=int, default=1,
                   help="intra-op threads of the PyTorch loop (its matmuls are tiny: one thread is fastest on the CPU)")
    p.add_argument("--tiny", action="store_true", help="seconds: 2 draws x 2 folds, 1 round, 1 epoch (tests)")
    p.add_argument("--pod", default="", help="instead of timing: compile (not run) round 0's population step for "
                   "this TPU topology (e.g. v5e:2x2), trials over its chips, and predict its time")
    p.add_argument("--trials_per_chip", default="1,64", help="with --pod: trials per chip to compile")
    p.add_argument("--write", action="store_true")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    if args.tiny:
        args.draws, args.folds, args.rounds, args.epochs, args.train_size, args.per_round = 2, 2, 1, 1, 64, 16
        args.hidden = 16
    return args


def make_config(args):
    config = agt_config.get_config("tiny")
    with config.unlocked():
        if args.paper_dims:
            config.data.feature_dims = PAPER_DIMS
        config.data.train_size = args.train_size
        config.data.pool_size = max(args.per_round * args.rounds, 1)
        config.num_epochs = args.epochs
        config.population.group_size = args.draws * args.folds
    return config


def round_trials(config, args, labelled, pool, round_index: int, draws: list) -> tuple:
    folds = data_lib.folds(len(labelled), args.folds, config.seed)
    extra = None
    if round_index:
        count = min(args.per_round * round_index, len(pool))
        labels = np.random.default_rng(round_index).integers(0, len(data_lib.CLASSES), count)
        extra = pool.take(np.arange(count), labels)
    train_sets = []
    for f in range(args.folds):
        rest = labelled.take(np.setdiff1d(np.arange(len(labelled)), folds[f]))
        train_sets.append(rest if extra is None else data_lib.concat(rest, extra))
    evals = [labelled.take(fold) for fold in folds]
    stage = cv.stage_config(config, min(len(t) for t in train_sets))
    trials = []
    for d, hyperparams in enumerate(draws):
        for f in range(args.folds):
            seed = 1000 * round_index + 10 * d + f
            trials.append(population.Trial(
                name=f"round{round_index}/draw{d}/fold{f}", seed=seed,
                train=sources.EpochShuffled(train_sets[f], seed, stage.num_epochs + 1), eval=evals[f],
                hyperparams={"learning_rate": float(hyperparams["learning_rate"])}))
    with stage.unlocked():
        stage.best.patience = 0  # the best epoch is tracked on each side; every trial runs every epoch
        stage.population.group_size = len(trials)
    return stage, trials, train_sets, evals


def torch_fold_by_fold(args, stage, trials, train_sets, evals) -> dict:
    """MERTools' loop for the same trials: one model per trial, Adam(weight_decay=1e-5), eval every epoch."""
    import torch

    from benchmarks.twins import mertools_attention_torch as twin

    torch.manual_seed(0)
    torch.set_num_threads(args.torch_threads)
    dims = {k: v.shape[1] for k, v in train_sets[0].features.items()}
    steps, seconds = 0, 0.0
    for i, trial in enumerate(trials):
        fold = i % args.folds
        train, val = train_sets[fold], evals[fold]
        x = {k: torch.from_numpy(v) for k, v in train.features.items()}
        y = torch.from_numpy(train.labels.astype(np.int64))
        vx = {k: torch.from_numpy(v) for k, v in val.features.items()}
        start = time.perf_counter()
        net = twin.build(dims, hidden_dim=args.hidden, dropout=0.3)
        optimizer = torch.optim.Adam(net.parameters(), lr=trial.hyperparams["learning_rate"], weight_decay=1e-5)
        for _ in range(int(stage.num_epochs)):
            net.train()
            order = torch.randperm(len(y))
            for b in range(stage.steps_per_epoch):
                index = order[b * stage.batch_size:(b + 1) * stage.batch_size]
                if not len(index):
                    index = order[:stage.batch_size]
                logits, _ = net({k: v[index] for k, v in x.items()})
                loss = torch.nn.functional.cross_entropy(logits, y[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
            net.eval()
            with torch.no_grad():
                predicted = net(vx)[0].argmax(1).numpy()
            data_lib.class_prior(predicted)  # the per-epoch score's work (weighted F1 is as cheap)
        seconds += time.perf_counter() - start
    return {"seconds": seconds, "steps": steps, "trials": len(trials), "compile_s": 0.0}


def data_and_task(config, args) -> tuple:
    """(labelled set, unlabelled pool, the task of one `--model` trial of width / hidden `--hidden`)."""
    labelled = data_lib._materialize(sources.make_source(config.data, "train", 0), "train")
    pool = data_lib._materialize(sources.make_source(config.data, "unlabeled", 0), "pool")
    model = config.models[args.model].copy_and_resolve_references()
    with model.unlocked():
        model.modalities = labelled.feature_names
        model["hidden_dim" if args.model == "attention" else "width"] = args.hidden
    dims = {k: (0, v.shape[1]) for k, v in labelled.features.items()}
    return labelled, pool, task_lib.build_task(task_lib.trial_config(config, model, (), dims))


def measure(args) -> dict:
    config = make_config(args)
    peak, _ = perf.peak_flops("float32")
    labelled, pool, task = data_and_task(config, args)
    draws = cv.draw_hyperparams({"learning_rate": (1e-3, 1e-4)}, args.draws, 0)
    totals = {"population": [0.0, 0.0, 0], "fold by fold": [0.0, 0.0, 0], "PyTorch": [0.0, 0.0, 0]}
    flops_total, rounds = 0.0, []
    for r in range(args.rounds + 1):
        stage, trials, train_sets, evals = round_trials(config, args, labelled, pool, r, draws if r == 0 else draws[:1])
        steps = stage.total_steps
        flops = len(trials) * (steps * stage.batch_size * task.flops_per_example
                               + stage.num_epochs * len(evals[0]) * task.flops_per_example / 3)
        flops_total += flops
        row = {"round": r, "trials": len(trials), "steps": steps}
        sides = [("population", lambda: population_timing.time_population(stage, task, trials)),
                 ("fold by fold", lambda: population_timing.time_one_at_a_time(stage, task, trials))]
        if args.model == "attention" and not args.no_torch:
            sides.append(("PyTorch", lambda: torch_fold_by_fold(args, stage, trials, train_sets, evals)))
        for name, run in sides:
            result = run()
            row[name] = result["seconds"]
            totals[name][0] += result["seconds"]
            totals[name][1] += result["compile_s"]
            totals[name][2] += len(trials)
            print(f"round {r}: {name}: {len(trials)} trials of {steps} steps in {result['seconds']:.1f} s "
                  f"(+{result['compile_s']:.1f} s compile)", flush=True)
        rounds.append(row)
    return {"args": args, "config": config, "task": task, "peak": peak, "rounds": rounds, "totals": totals,
            "flops": flops_total}


def section_body(result: dict, argv) -> str:
    args, task = result["args"], result["task"]
    dims = PAPER_DIMS if args.paper_dims else dict(agt_config.get_config("tiny").data.feature_dims)
    lines = ["| mode | trials | wall s (rounds 0..R) | trials/hour | achieved GFLOP/s | MFU % | compile s |",
             "|---|---|---|---|---|---|---|"]
    for name, (seconds, compile_s, trials) in result["totals"].items():
        if not trials:
            continue
        rate = result["flops"] / seconds
        per_round = " + ".join(f"{row[name]:.1f}" for row in result["rounds"])
        lines.append(f"| {name} | {trials} | {seconds:.1f} ({per_round}) | "
                     f"{population.trials_per_hour(trials, seconds):,.0f} | {rate / 1e9:.2f} | "
                     f"{100 * rate / result['peak']:.2f} | {compile_s:.1f} |")
    pop = result["totals"]["population"][0]
    ratios = [f"{name}: {seconds / pop:.1f}x the population's time" for name, (seconds, _, n) in
              result["totals"].items() if n and name != "population"]
    return "\n".join([
        f"### AGT MER-SEMI pipeline: folds x draws x rounds, {jax.default_backend()}, float32, `{args.model}` "
        f"hidden {args.hidden}",
        "",
        *lines,
        "",
        f"- {'; '.join(ratios)} (compilation excluded).",
        f"- Trials: round 0 = {args.draws} draws x {args.folds} folds, then {args.rounds} self-training round(s) "
        f"of {args.folds} folds with {args.per_round} more pseudo-labelled samples each; {args.train_size} "
        f"labelled samples, features {dims}, batch 32, {args.epochs} epochs, evaluation on the held-out fold "
        f"every epoch, no early stopping. {task.flops_per_example / 1e6:.2f} MFLOP per training example "
        f"(analytic, 3x forward). MFU against a float32 matmul peak of {result['peak'] / 1e12:.3f} TFLOP/s "
        f"measured in the same run.",
        f"- Command: `python -m benchmarks.agt_pipeline {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
    ])


# MER2024's labelled set and the released recipe (dossier: MERTools main-release.py; the sizes from the MER2024
# paper's Table 1): the protocol `compile_for_pod` projects.
MER2024_LABELLED = 5030
PAPER_PROTOCOL = {"draws": 50, "folds": 5, "epochs": 100, "rounds": 3, "per_round": 6000, "batch": 32}


def protocol_steps(group: int) -> tuple[int, int]:
    """(round 0's steps, the self-training rounds' steps) of the paper's protocol, population groups of `group`
    trials: round 0 trains draws x folds trials on 4/5 of the labelled set, each round the best draw's folds on
    that plus `per_round` more pseudo-labels per round so far; every trial `epochs` epochs of batch 32."""
    p = PAPER_PROTOCOL
    train = MER2024_LABELLED * (p["folds"] - 1) // p["folds"]
    steps_per_epoch = lambda n: -(-n // p["batch"])  # noqa: E731
    round0 = -(-p["draws"] * p["folds"] // group) * p["epochs"] * steps_per_epoch(train)
    rounds = sum(-(-p["folds"] // group) * p["epochs"] * steps_per_epoch(train + p["per_round"] * r)
                 for r in range(1, p["rounds"] + 1))
    return round0, rounds


def compile_for_pod(args, on_row=None) -> list[dict]:
    """Round 0's population step compiled for a TPU topology with `trials_per_chip` x chips trials (the `trials`
    axis over the chips), its memory and the TPU compiler's predicted step time (`optimal_seconds` with every
    scan unrolled, `perf.priced_seconds`, as `benchmarks.tpu_predict`), MFU and the protocol's projected hours."""
    from benchmarks import pod_compile
    from jaxemo.train import sharding

    mesh = sharding.topology_mesh(args.pod)
    topology = perf.TPU_TOPOLOGIES[args.pod]
    config = make_config(args)
    labelled, pool, task = data_and_task(config, args)
    rows = []
    for per_chip in (int(v) for v in args.trials_per_chip.split(",")):
        group = per_chip * mesh.size
        draws = cv.draw_hyperparams({"learning_rate": (1e-3, 1e-4)}, -(-group // args.folds), 0)
        stage, trials, _, _ = round_trials(config, args, labelled, pool, 0, draws)
        trials = trials[:group]
        with stage.unlocked():
            stage.population.group_size = group
        flops = per_chip * stage.batch_size * task.flops_per_example

        def lower(stage=stage, trials=trials):
            pop = population.Population(stage, task, trials, mesh=mesh)
            return pop._step.lower(*pop._abstract_step_args(pop.group_size))

        row = {"topology": topology.label, "chips": mesh.size, "trials_per_chip": per_chip, "group": group,
               "hbm": topology.hbm_bytes, **pod_compile.compile_and_predict(lower, flops / topology.peak_flops)}
        memory, error, predicted = row["memory"], row["error"], row["predicted_s"]
        if predicted:
            round0, later = protocol_steps(group)
            row.update(mfu=row["floor_s"] / predicted, round0_hours=round0 * predicted / 3600,
                       rounds_hours=later * predicted / 3600)
        rows.append(row)
        if on_row is not None:  # a run stopped later (a host out of memory) keeps its rows
            on_row(rows)
        print(f"{topology.label}: {per_chip} trial(s) per chip: {error or f'{memory / perf.GIB:.2f} GiB per chip'}"
              + (f", predicted {1e3 * predicted:.3f} ms per step, MFU {100 * row['mfu']:.2f}%"
                 if predicted else "")
              + f" ({row['compile_s']:.0f} s)", flush=True)
    return rows


def pod_section(rows: list[dict], args, argv) -> str:
    lines = ["| topology | trials per group | trials per chip | memory per chip (XLA) | floor ms (FLOPs / peak) | "
             "**predicted step ms** | **predicted MFU %** | unpriced ops | **protocol hours** (round 0 + "
             "3 rounds) | compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = r["error"] or f"{r['memory'] / perf.GIB:.2f} GiB"
        cells = (["-"] * 4 if not r["predicted_s"] or r["error"] else
                 [f"{1e3 * r['predicted_s']:.3f}", f"{100 * r['mfu']:.2g}", str(r["unpriced"]),
                  f"{r['round0_hours']:.3g} + {r['rounds_hours']:.3g}"])
        lines.append(f"| {r['topology']} | {r['group']} | {r['trials_per_chip']} | {memory} | "
                     f"{1e3 * r['floor_s']:.4f} | {' | '.join(cells)} | {r['compile_s']:.0f} |")
    p = PAPER_PROTOCOL
    return "\n".join([
        f"### AGT round-0 population step compiled for a TPU topology (AOT, on the CPU): `{args.model}` hidden "
        f"{args.hidden}, features {PAPER_DIMS if args.paper_dims else 'tiny'}",
        "",
        *lines,
        "",
        f"- Command: `python -m benchmarks.agt_pipeline {shlex.join(argv)}`",
        f"- Machine (compiling only): {report.machine_description(('jax', 'jaxlib', 'libtpu', 'flax'))}",
        f"- Date: {report.today()}",
        "- The TPU compiler's cost model, not a measurement: `cost_analysis()['optimal_seconds']` of round 0's "
        "vmapped train step (batch 32 per trial, the trials axis over the chips; `jaxemo.perf.priced_seconds` "
        "leaves out the ops libtpu does not price); MFU the analytic training FLOPs per chip / (bf16 peak x "
        f"predicted time). Protocol: {p['draws']} draws x {p['folds']} folds x {p['epochs']} epochs on 4/5 of "
        f"MER2024's {MER2024_LABELLED:,} labelled samples, then {p['rounds']} rounds of the best draw's "
        f"{p['folds']} folds with {p['per_round']:,} more pseudo-labels each; every step at the predicted time "
        "(the rounds' five trials leave a large group's chips idle). Evaluation passes not counted.",
    ])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.pod:
        key = f"{SECTION}-pod-{args.model}:{args.pod}-bfloat16"

        def write(rows):
            report.write_section(args.benchmarks_file, key, pod_section(rows, args, argv))

        rows = compile_for_pod(args, write if args.write else None)
        print("\n" + pod_section(rows, args, argv))
        return {"pod": rows}
    result = measure(args)
    body = section_body(result, argv)
    print("\n" + body)
    if args.write:
        key = (f"{SECTION}{'-tiny' if args.tiny else ''}-{args.model}{'-paper' if args.paper_dims else ''}:"
               f"{jax.default_backend()}")
        report.write_section(args.benchmarks_file, key, body)
        print(f"\nwrote section {SECTION} of {args.benchmarks_file}")
    return result


if __name__ == "__main__":
    main()
