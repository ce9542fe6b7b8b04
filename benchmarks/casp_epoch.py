"""CASP's offline contrastive epoch: jaxemo's one compiled epoch against the reference's PyTorch step loop.

    python -m benchmarks.casp_epoch --write      # MOSI-sized: 1,284 clips, batch 24, 3 timed epochs
    python -m benchmarks.casp_epoch --tiny       # seconds: tests

Rows (same weights, same data, float32):
  JAX (one lax.scan)       `jaxemo.tta.modes.adapt_epoch`: the whole epoch is one jitted `lax.scan` of the one
                           update step over the batches (CASP's `Contrastive` method)
  PyTorch (reference loop) `benchmarks/twins/casp_torch.contrastive_epoch`: per batch a full and a dropped view,
                           NT-Xent as CASP's `ContrastiveLoss` computes it (a Python-level term per anchor),
                           backward, clipping to 0.8, Adam on the LayerNorms
  PyTorch (vectorised)     the same loop with NT-Xent as one masked log-softmax (what a careful port would do)
FLOPs per epoch: every clip's two views forward and backward (`jaxemo.systems.casp.flops`, matmuls only;
backward = activation gradients, as only LayerNorms adapt). MFU against a float32 matmul peak measured in
the same run. `--write` replaces this backend's section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys

import jax
import numpy as np

from benchmarks import report
from experiments.configs import casp as casp_config
from jaxemo import perf
from jaxemo.data import synthetic_sentiment
from jaxemo.systems import casp
from jaxemo.train import optim
from jaxemo.tta import core, methods, modes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "casp-offline-epoch"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.casp_epoch", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per row (the median counts)")
    p.add_argument("--tiny", action="store_true", help="a 1-layer model on short sequences, 48 clips: seconds")
    p.add_argument("--torch", dest="torch", action="store_true", default=True, help="time PyTorch (default)")
    p.add_argument("--notorch", dest="torch", action="store_false")
    p.add_argument("--write", action="store_true", help="write BENCHMARKS.md's section")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    return p.parse_args(argv)


def target_data(config, tiny: bool) -> dict:
    data = modes.stack_source(synthetic_sentiment.make_sentiment(config.target, "target_train", config.seed))
    data = {k: v for k, v in data.items() if k in core.INPUT_KEYS}
    return {k: v[:48] for k, v in data.items()} if tiny else data


def time_jax(config, model, frozen, adapted, batches: dict, repeats: int) -> tuple[list[float], float]:
    """(seconds of each timed epoch, seconds of the first, compiling, epoch)."""
    offline = casp.offline_config(config)
    method, tx = methods.Contrastive(), offline.optimizer.make()
    frozen, adapted = jax.device_put(frozen), jax.device_put(adapted)
    state = [adapted, tx.init(adapted)]
    batches = jax.device_put(batches)

    def epoch(i):
        state[0], state[1], losses, _ = modes.adapt_epoch(method, model, offline.optimizer, frozen, state[0],
                                                          state[1], batches, jax.random.key(i))
        jax.block_until_ready(losses)

    first = perf.time_runs(lambda: epoch(0), 1, warmup=0)[0]
    return [perf.time_runs(lambda i=i: epoch(i), 1, warmup=0)[0] for i in range(1, repeats + 1)], first


def time_torch(net, batches: dict, repeats: int, loop: bool) -> list[float]:
    from benchmarks.twins import casp_torch

    torch = casp_torch.modules().torch
    torch.set_num_threads(report.cpu_count())
    torch.manual_seed(0)
    rows = [[torch.from_numpy(np.ascontiguousarray(batches[m][i])) for m in ("text", "audio", "vision")]
            for i in range(len(batches["text"]))]
    epoch = casp_torch.contrastive_epoch(net, rows, loop=loop)
    return perf.time_runs(epoch, repeats, warmup=1)


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    config, model, frozen, adapted, _ = casp.adaptation_case(casp_config.get_config("synthetic"), 1, args.tiny)
    data = target_data(config, args.tiny)
    n = len(data["text"])
    batch_size = casp.offline_config(config).batch_size
    # Whole batches only: the reference drops nothing either, but a ragged last batch would be a second shape
    # for PyTorch and a masked one for JAX; 1,284 = 53.5 x 24, so both run 53 full batches.
    usable = n - n % batch_size
    batches = {k: np.asarray(v[:usable]).reshape(usable // batch_size, batch_size, *np.shape(v)[1:])
               for k, v in data.items()}
    size = 256 if args.tiny else 4096
    peak = perf.matmul_peak_flops(perf.jax_matmul(size, np.float32), size, repeats=2 if args.tiny else 5)
    d = config.target
    f = casp.model_flops(model, (d.text_len, d.audio_len, d.vision_len), (d.text_dim, d.audio_dim, d.vision_dim))
    flops_per_epoch = usable * 2 * (f.forward + f.backward)

    rows = []
    seconds, first = time_jax(config, model, frozen, adapted, batches, args.repeats)
    rows.append(dict(framework="JAX (one lax.scan)", seconds=seconds, first=first))
    print(f"JAX epoch: {statistics.median(seconds):.2f} s (first, compiling: {first:.1f} s)", flush=True)
    if args.torch:
        from benchmarks.twins import casp_torch

        for loop, name in ((True, "PyTorch (reference loop)"), (False, "PyTorch (vectorised NT-Xent)")):
            net = casp_torch.build(model.fusion, (d.text_dim, d.audio_dim, d.vision_dim), proj_dim=model.proj_dim,
                                   heads=model.num_heads, depth=model.depth, attn_dropout=model.attn_dropout,
                                   relu_dropout=model.relu_dropout, res_dropout=model.res_dropout,
                                   embed_dropout=model.embed_dropout, out_dropout=model.out_dropout)
            casp_torch.load_jaxemo_params(net, optim.merge_params(adapted, frozen))
            seconds = time_torch(net, batches, args.repeats, loop)
            rows.append(dict(framework=name, seconds=seconds, first=None))
            print(f"{name} epoch: {statistics.median(seconds):.2f} s", flush=True)
    for row in rows:
        row["median"] = statistics.median(row["seconds"])
        row["flops"] = flops_per_epoch / row["median"]
    reference = next((r["median"] for r in rows if r["framework"] == "PyTorch (reference loop)"), None)
    body = section(rows, args, argv, config, model, peak, usable, batch_size, flops_per_epoch, reference)
    print("\n" + body)
    if args.write:
        key = f"{SECTION}{'-tiny' if args.tiny else ''}:{jax.default_backend()}"
        report.write_section(args.benchmarks_file, key, body)
        print(f"\nwrote section {key!r} of {args.benchmarks_file}")
    return rows


def section(rows, args, argv, config, model, peak, clips, batch_size, flops_per_epoch, reference) -> str:
    lines = [f"### CASP offline contrastive epoch: {jax.default_backend()}, float32{' (tiny)' if args.tiny else ''}",
             "", "| implementation | epoch s | clips/s | speed-up vs the reference loop | achieved GFLOP/s | MFU % "
                 "| first epoch s (compiling) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = "-" if reference is None else f"{reference / r['median']:.2f}x"
        first = "n/a" if r["first"] is None else f"{r['first']:.1f}"
        lines.append(f"| {r['framework']} | {r['median']:.2f} | {clips / r['median']:.1f} | {speed} | "
                     f"{r['flops'] / 1e9:.1f} | {100 * r['flops'] / peak:.1f} | {first} |")
    lines += [
        "",
        f"- Command: `python -m benchmarks.casp_epoch {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
        (f"- Model: CASP late fusion, {config.model.depth} layers of width {model.proj_dim}, dropout on; {clips} "
         f"MOSI-shaped synthetic clips in {clips // batch_size} batches of {batch_size}; per batch one modality "
         f"zeroed for the whole batch, the full and the dropped view, NT-Xent (T = 0.5), clipping to 0.8, Adam "
         f"1e-3 on the LayerNorms. {flops_per_epoch / 1e9:.1f} GFLOP per epoch (matmuls)."),
        (f"- Timing: median of {args.repeats} epochs (PyTorch after one warm-up epoch; JAX after its first, "
         f"compiling epoch, reported apart). MFU against a float32 matmul measured in the same run: "
         f"{peak / 1e12:.3f} TFLOP/s."),
        "- Runs: " + "; ".join(f"{r['framework']}: {', '.join(f'{s:.3g}' for s in r['seconds'])} s" for r in rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
