"""Every GPU section of BENCHMARKS.md in one command, sized for one H200 in under 8 minutes.

    python -m experiments.gpu_suite                       # on a GPU machine: writes BENCHMARKS.md's GPU sections
    python -m experiments.gpu_suite --dry_run             # on the CPU, tiny shapes, into a scratch file (tests)

Runs, each as its own process with its own time limit (a failure is reported and the rest still run):
  vit        ViT-B/16 train step, bf16, batch 256 (`experiments.benchmark --system=vit_classifier`)
  mma_dfer   MMA-DFER paper-size train and inference steps, bf16 compute and frozen weights, batch 8 (the
             paper's) and 32, and 64 with `remat_policy=full` (`experiments.benchmark --system=mma_dfer`)
  casp       CASP's source train and inference steps at MOSI size (`--system=casp`)
  tta        test-time adaptation latency, episodic vmap vs per-sample loop (`experiments.tta_latency`)
  population trials per hour, vmapped groups vs one at a time (`experiments.population_benchmark`)
  fewshot    few-shot SER trials per hour, wav2vec2-base on 5 s clips, population vs one at a time, and the
             projected wall time of the 33,600 trials (`experiments.fewshot_benchmark`)
  agt        the MER-SEMI folds x draws x rounds trainings at MER2024's feature sizes, population groups vs
             fold by fold (`experiments.agt_benchmark`)
  uniemox    UniEmoX pretraining (ViT-L/16 student + CLIP-B/16 teacher, batch 128) and fine-tuning (ViT-L/16,
             batch 64) steps, bf16 (`--system=uniemox`)
Attention goes through `jax.nn.dot_product_attention`, which picks cuDNN's fused kernel on the GPU.
A system added later adds its rows here. The device tool's notes (BENCHMARKS.md, "GPU rows") say what the
GPU machine lacks and how to bring it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (module, arguments on the GPU, arguments of the CPU dry run, time limit on the GPU in seconds)
RUNS = {
    "vit": ("experiments.benchmark",
            ["--system=vit_classifier", "--variants=B/16", "--dtype=bfloat16", "--batch_size=256", "--notorch"],
            ["--system=vit_classifier", "--tiny", "--notorch"], 60),
    "mma_dfer": ("experiments.benchmark",
                 ["--system=mma_dfer", "--variants=dfew", "--dtype=bfloat16", "--frozen_dtype=bfloat16",
                  "--batch_size=8,32,64", "--remat_policy=none,none,full", "--notorch"],
                 ["--system=mma_dfer", "--tiny", "--notorch"], 120),
    "casp": ("experiments.benchmark", ["--system=casp", "--batch_size=1024", "--notorch"],
             ["--system=casp", "--tiny", "--notorch"], 45),
    "tta": ("experiments.tta_latency", ["--batches=1,256,4096", "--chunk=4096", "--notorch"],
            ["--tiny", "--batches=1,4", "--steps=1", "--notorch", "--nooffline"], 60),
    "population": ("experiments.population_benchmark",
                   ["--trials=512", "--group_size=256", "--sequential_trials=8", "--steps=100"], ["--tiny"], 50),
    "uniemox": ("experiments.benchmark",
                ["--system=uniemox", "--variants=pretrain-L/16,finetune-L/16", "--dtype=bfloat16",
                 "--frozen_dtype=bfloat16", "--batch_size=128,64", "--notorch"],
                ["--system=uniemox", "--tiny", "--notorch"], 55),
    "fewshot": ("experiments.fewshot_benchmark",
                ["--preset=base", "--seconds=5", "--dtype=bfloat16", "--trials=100", "--group_size=50",
                 "--sequential_trials=2", "--epochs=2", "--k=8", "--conv_impl=xla"], ["--tiny"], 60),
    "agt": ("experiments.agt_benchmark",
            ["--paper_dims", "--train_size=5000", "--hidden=128", "--draws=6", "--epochs=2", "--rounds=1",
             "--per_round=2000", "--no_torch"], ["--tiny"], 30),
}


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_suite", description=__doc__.split("\n")[0])
    p.add_argument("--dry_run", action="store_true", help="tiny shapes on any backend, into --benchmarks_file")
    p.add_argument("--only", default=",".join(RUNS), help="comma-separated runs")
    p.add_argument("--benchmarks_file", default=None,
                   help="default: BENCHMARKS.md (a scratch BENCHMARKS.md under /tmp with --dry_run)")
    args = p.parse_args(argv)
    if args.benchmarks_file is None:
        args.benchmarks_file = ("/tmp/jaxemo_gpu_suite_dry_run.md" if args.dry_run
                                else os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args.only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(args.only) - set(RUNS))
    if unknown:
        raise ValueError(f"--only: unknown runs {unknown}; expected some of {sorted(RUNS)}")
    return args


def command(name: str, args) -> list[str]:
    """The command of one run: [python, -m, module, its arguments (the dry run's with --dry_run)...]."""
    module, gpu_argv, dry_argv, _ = RUNS[name]
    argv = (dry_argv if args.dry_run else gpu_argv) + ["--write", f"--benchmarks_file={args.benchmarks_file}"]
    if name == "tta":
        argv.append(f"--plot_dir={os.path.dirname(os.path.abspath(args.benchmarks_file))}")
    return [sys.executable, "-m", module, *argv]


def run(name: str, args) -> dict:
    limit = RUNS[name][3]
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
    results = [run(name, args) for name in args.only]
    failed = [r["name"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} of {len(results)} runs wrote their sections to {args.benchmarks_file}"
          + (f"; failed: {failed}" if failed else ""), flush=True)
    return results


if __name__ == "__main__":
    sys.exit(1 if any(not r["ok"] for r in main()) else 0)
