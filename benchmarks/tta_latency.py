"""Test-time adaptation latency and throughput: episodic vmapped vs a per-sample loop vs plain inference.

    python -m benchmarks.tta_latency --write                 # CPU: MOSI-sized late-fusion model, all rows
    python -m benchmarks.tta_latency --tiny                  # seconds: tests
    python -m benchmarks.tta_latency --pod=v5e:16x16 --write # the TPU compiler's predicted episodic time

Rows, for K = 1, 5, 10 adaptation steps per sample (CASP's contrastive loss on `views` copies of the
sample, LayerNorms adapted, Adam + clipping) and for batches of 1, 64, 256 and 1024 test samples:
  episodic (vmap)   `jaxemo.tta.modes.episodic_batch`: one compiled call adapts and predicts the whole batch
  per-sample loop   `modes.episodic_single`, the same adapt-then-predict jitted for one sample, called
                    sample by sample from Python (how a per-sample loop over a test set runs)
  PyTorch loop      the same weights in `benchmarks/twins/casp_torch.py` (the reference's backbone), adapted
                    sample by sample with autograd and `torch.optim.Adam` (`casp_torch.adapt_then_predict`)
  inference         the source model's jitted forward on the batch (no adaptation; K does not apply)
and the wall time of CASP's whole offline pipeline on MOSI-sized data (1,284 clips, 15 contrastive epochs
with 6 snapshots, pseudo-label selection, 5 pseudo-label epochs, batch 24). Inputs are synthetic with
MOSI's aligned_50 shapes (50 steps; text 768, audio 5, vision 20); the weights are a random initialisation
(the cost does not depend on them). `--write` replaces this backend's section of BENCHMARKS.md and saves the
plot as benchmarks/tta_latency_<backend>.png.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import jax
import numpy as np

from benchmarks import report
from experiments.configs import casp as casp_config
from jaxemo import perf
from jaxemo.systems import casp
from jaxemo.data import synthetic_sentiment
from jaxemo.tta import core, methods, modes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "tta-latency"


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tta_latency", description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="1,64,256,1024", help="comma-separated numbers of test samples")
    p.add_argument("--steps", default="1,5,10", help="comma-separated K (adaptation steps per sample)")
    p.add_argument("--views", type=int, default=4, help="augmented copies of a sample per step")
    p.add_argument("--chunk", type=int, default=256,
                   help="larger batches run as vmapped chunks of this many samples (one compiled shape)")
    p.add_argument("--loop_max", type=int, default=256,
                   help="the per-sample loop is timed over at most this many samples of a batch")
    p.add_argument("--min_seconds", type=float, default=2.0, help="repeat a timed call until this much time")
    p.add_argument("--offline", dest="offline", action="store_true", default=True, help="time the offline pipeline")
    p.add_argument("--nooffline", dest="offline", action="store_false")
    p.add_argument("--tiny", action="store_true", help="a 1-layer model on short sequences: seconds")
    p.add_argument("--dropout_impl", default="threefry", choices=("threefry", "hash"),
                   help="jaxemo's dropout masks (`model.dropout_impl`; hash: `layers.HashDropout`, cheaper on "
                   "the CPU)")
    p.add_argument("--torch", dest="torch", action="store_true", default=True,
                   help="also time PyTorch's per-sample loop on the same weights (default)")
    p.add_argument("--notorch", dest="torch", action="store_false")
    p.add_argument("--write", action="store_true", help="write BENCHMARKS.md's section and the plot")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    p.add_argument("--pod", default="", help="instead of timing: compile (not run) episodic adaptation of "
                   "CMU-MOSEI-sized samples (K=5, 8 views, bf16), the sample axis over this TPU topology's chips, "
                   "and predict its time from the compiler's cost model")
    p.add_argument("--samples_per_chip", default="1", help="with --pod: samples per chip to compile (16 took more "
                   "than this 24 GiB host's memory to compile: the K steps unrolled over a vmapped 5-layer model)")
    p.add_argument("--plot_dir", default=None,
                   help="where the plot goes (default: benchmarks/ beside --benchmarks_file)")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.steps = [int(k) for k in args.steps.split(",")]
    args.plot_dir = args.plot_dir or os.path.join(os.path.dirname(os.path.abspath(args.benchmarks_file)), "benchmarks")
    return args


def setup(args):
    """(config, model, frozen, adapted, samples {key: [max batch, ...]}) at MOSI's sizes (or tiny)."""
    config = casp_config.get_config("synthetic")
    config.model.dropout_impl = args.dropout_impl
    return casp.adaptation_case(config, max(args.batches), args.tiny)


def timed(fn, min_seconds: float, warm: bool = False) -> tuple[float, float]:
    """(seconds of the first call, which compiles, median seconds of later calls, at least 1, until
    `min_seconds` have passed or 3 calls). `warm`: already compiled, no first call (NaN is returned)."""
    first = float("nan")
    if not warm:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - start
    runs, total = [], 0.0
    while len(runs) < 3 and (not runs or total < min_seconds):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
        total += runs[-1]
    return first, statistics.median(runs)


def measure(args, config, model, frozen, adapted, samples, torch_net=None, on_batch=None) -> list[dict]:
    method = modes.episodic_method(methods.Contrastive(config.tta.temperature))
    optimizer = core.OptimizerConfig(config.tta.learning_rate, config.tta.clip_norm)
    rng = jax.random.key(config.seed)
    keys = modes.sample_keys(rng, np.arange(max(args.batches)))
    rows = []
    for batch in args.batches:
        part = {k: v[:batch] for k, v in samples.items()}
        inference = jax.jit(lambda f, a, x: core.predict(model, f, a, x))
        first, seconds = timed(lambda: inference(frozen, adapted, part), args.min_seconds)
        rows.append(_row("inference", None, batch, batch, seconds, first))
        print(_describe(rows[-1]), flush=True)
        for k in args.steps:
            episodic = modes.EpisodicConfig(k, args.views, optimizer)
            chunk = min(batch, args.chunk)
            chunks = [({k_: v[i:i + chunk] for k_, v in part.items()}, keys[i:i + chunk])
                      for i in range(0, batch, chunk)]
            run = lambda: [modes.episodic_batch(method, model, episodic, frozen, adapted, c, ck) for c, ck in chunks]
            first, seconds = timed(run, args.min_seconds, warm=batch > chunk and chunk in args.batches)
            rows.append(_row("episodic (vmap)", k, batch, batch, seconds, first))
            print(_describe(rows[-1]), flush=True)
            n = min(batch, args.loop_max)
            one = {k_: v[:1][0] for k_, v in part.items()}

            def loop():
                out = None
                for i in range(n):
                    sample = {k_: v[i] for k_, v in part.items()}
                    out = modes.episodic_single(method, model, episodic, frozen, adapted, sample, keys[i])
                    out.block_until_ready()
                return out

            compile_start = time.perf_counter()
            modes.episodic_single(method, model, episodic, frozen, adapted, one, keys[0]).block_until_ready()
            compile_s = time.perf_counter() - compile_start
            _, seconds = timed(loop, args.min_seconds)
            rows.append(_row("per-sample loop", k, batch, n, seconds, compile_s))
            print(_describe(rows[-1]), flush=True)
            if torch_net is not None:
                rows.append(_torch_loop_row(torch_net, part, n, k, batch, args, config))
                print(_describe(rows[-1]), flush=True)
        if on_batch is not None:
            on_batch(rows)
    return rows


def torch_model(model, frozen, adapted, dims):
    """The same weights in the PyTorch re-expression of CASP's backbone, frozen as CASP's `fix_para`."""
    from benchmarks.twins import casp_torch
    from jaxemo.train import optim

    net = casp_torch.build(model.fusion, dims, depth=model.depth)
    casp_torch.load_jaxemo_params(net, optim.merge_params(adapted, frozen))
    casp_torch.freeze_like_casp(net)
    return net


def _torch_loop_row(net, part, n, k, batch, args, config) -> dict:
    """PyTorch's per-sample loop (`casp_torch.adapt_then_predict`) over the first n samples of the batch."""
    import torch

    from benchmarks.twins import casp_torch

    norms = casp_torch.layer_norm_state(net)
    samples = [tuple(torch.from_numpy(np.asarray(part[m][i])) for m in ("text", "audio", "vision"))
               for i in range(n)]
    torch.manual_seed(config.seed)

    def loop():
        return [casp_torch.adapt_then_predict(net, norms, s, k, args.views, config.tta.temperature,
                                              config.tta.learning_rate, config.tta.clip_norm) for s in samples]

    first, seconds = timed(loop, args.min_seconds)
    return _row("PyTorch loop", k, batch, n, seconds, first)


def _row(kind: str, k, batch: int, timed_samples: int, seconds: float, first_call_s: float) -> dict:
    return {"kind": kind, "K": k, "batch": batch, "timed_samples": timed_samples, "seconds": seconds,
            "per_sample_ms": 1e3 * seconds / timed_samples, "samples_per_s": timed_samples / seconds,
            "first_call_s": first_call_s}


def _describe(row: dict) -> str:
    k = "-" if row["K"] is None else row["K"]
    return (f"{row['kind']:>16} K={k:<3} batch {row['batch']:>5}: {row['per_sample_ms']:9.3f} ms/sample, "
            f"{row['samples_per_s']:9.1f} samples/s (first call {row['first_call_s']:.1f} s)")


def offline_wall_time(config, model, frozen, adapted) -> tuple[float, int]:
    """Seconds of CASP's full offline pipeline on MOSI-sized synthetic target data, and the sample count."""
    data = {k: v for k, v in modes.stack_source(synthetic_sentiment.make_sentiment(
        config.target, "target_train", config.seed)).items() if k in core.INPUT_KEYS}
    offline = casp.offline_config(config)
    start = time.perf_counter()
    result = modes.casp_offline(model, frozen, adapted, data, offline, jax.random.key(config.seed))
    jax.block_until_ready(result.adapted)
    return time.perf_counter() - start, len(data["text"])


def flops_per_sample(config, model, k, views: int) -> tuple[int, int]:
    """(episodic FLOPs per sample for K steps, inference FLOPs per sample): each step runs the full and the
    modality-dropped view of every copy forward and backward; then one forward predicts."""
    d = config.data
    f = casp.model_flops(model, (d.text_len, d.audio_len, d.vision_len), (d.text_dim, d.audio_dim, d.vision_dim))
    return (k or 0) * views * 2 * (f.forward + f.backward) + f.forward, f.forward


def table(rows: list[dict], config, model, views: int, peak: float) -> str:
    columns = ("mode", "K", "batch", "ms / sample", "samples/s", "GFLOP/sample", "achieved GFLOP/s", "MFU %",
               "first call s")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        flops = flops_per_sample(config, model, r["K"], views)[0 if r["K"] else 1]
        achieved = flops * r["samples_per_s"]
        timed_note = "" if r["timed_samples"] == r["batch"] else f" ({r['timed_samples']} timed)"
        lines.append("| " + " | ".join([
            r["kind"], "-" if r["K"] is None else str(r["K"]), f"{r['batch']}{timed_note}", f"{r['per_sample_ms']:.3f}",
            f"{r['samples_per_s']:.1f}", f"{flops / 1e9:.3f}", f"{achieved / 1e9:.1f}", f"{100 * achieved / peak:.1f}",
            "-" if np.isnan(r["first_call_s"]) else f"{r['first_call_s']:.1f}"]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    series = {}
    for r in rows:
        label = r["kind"] if r["K"] is None else f"{r['kind']}, K={r['K']}"
        series.setdefault(label, []).append((r["batch"], r["per_sample_ms"]))
    report.save_line_plot(path, series, "test samples per call (batch)", "ms per sample",
                         "Test-time adaptation cost per sample (log-log)")


MOSEI = {"text_len": 50, "audio_len": 50, "vision_len": 50, "text_dim": 768, "audio_dim": 74, "vision_dim": 35}
MOSEI_TEST = 4659  # CMU-MOSEI's test split
POD_STEPS, POD_VIEWS = 5, 8  # the episodic configuration the latency figures use


def compile_for_pod(args, on_row=None) -> list[dict]:
    """Episodic adaptation (`modes.episodic_batch`: K Adam steps on 8 views of each sample, then its score) of
    CMU-MOSEI-sized samples compiled for a TPU topology, the sample axis over every chip, params replicated;
    its memory and the TPU compiler's predicted time (`optimal_seconds` with the K steps unrolled,
    `perf.priced_seconds`), MFU, and the MOSEI test set's projected time."""
    from jax.sharding import NamedSharding, PartitionSpec

    from benchmarks import pod_compile
    from jaxemo.train import sharding

    mesh = sharding.topology_mesh(args.pod)
    topology = perf.TPU_TOPOLOGIES[args.pod]
    config = casp_config.get_config("synthetic")
    for part in (config.data, config.target):
        part.update(MOSEI)
    config.model.dtype = "bfloat16"
    config, model, frozen, adapted, samples = casp.adaptation_case(config, 2, args.tiny)
    method = modes.episodic_method(methods.Contrastive(config.tta.temperature))
    episodic = modes.EpisodicConfig(POD_STEPS, POD_VIEWS, core.OptimizerConfig(config.tta.learning_rate,
                                                                               config.tta.clip_norm))
    axis = PartitionSpec(tuple(mesh.axis_names))
    whole = NamedSharding(mesh, PartitionSpec())
    replicated = lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=whole)  # noqa: E731
    per_sample = flops_per_sample(config, model, POD_STEPS, POD_VIEWS)[0]
    rows = []
    for per_chip in (int(v) for v in args.samples_per_chip.split(",")):
        n = per_chip * mesh.size
        batch = {k: jax.ShapeDtypeStruct((n, *v.shape[1:]), v.dtype, sharding=NamedSharding(mesh, axis))
                 for k, v in samples.items()}
        keys = modes.sample_keys(jax.random.key(0), np.arange(1))
        keys = jax.ShapeDtypeStruct((n,), keys.dtype, sharding=NamedSharding(mesh, axis))
        def lower(batch=batch, keys=keys):  # a fresh jit: traced inside the unrolled-scans context
            return jax.jit(modes.episodic_batch.__wrapped__, static_argnums=(0, 1, 2)).lower(
                method, model, episodic, jax.tree.map(replicated, frozen), jax.tree.map(replicated, adapted),
                batch, keys)

        row = {"topology": topology.label, "chips": mesh.size, "per_chip": per_chip, "samples": n,
               **pod_compile.compile_and_predict(lower, per_chip * per_sample / topology.peak_flops)}
        memory, error, predicted = row["memory"], row["error"], row["predicted_s"]
        if predicted:
            row.update(mfu=row["floor_s"] / predicted, per_sample_us=1e6 * predicted / n,
                       test_set_s=-(-MOSEI_TEST // n) * predicted)
        rows.append(row)
        if on_row is not None:  # a run stopped later (a host out of memory) keeps its rows
            on_row(rows)
        fits = error or f"{memory / perf.GIB:.2f} GiB per chip"
        print(f"{topology.label}: {per_chip} sample(s) per chip: {fits}"
              + (f", predicted {1e3 * predicted:.2f} ms per call, MFU {100 * row['mfu']:.2f}%"
                 if predicted else "")
              + f" ({row['compile_s']:.0f} s)", flush=True)
    return rows


def pod_section(rows: list[dict], args, argv) -> str:
    lines = ["| topology | samples per call | per chip | memory per chip (XLA) | floor ms (FLOPs / peak) | "
             "**predicted ms per call** | **predicted MFU %** | unpriced ops | µs per sample | MOSEI test set "
             "(4,659), s | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = r["error"] or f"{r['memory'] / perf.GIB:.2f} GiB"
        cells = (["-"] * 5 if not r["predicted_s"] or r["error"] else
                 [f"{1e3 * r['predicted_s']:.3f}", f"{100 * r['mfu']:.2g}", str(r["unpriced"]),
                  f"{r['per_sample_us']:.2f}", f"{r['test_set_s']:.3f}"])
        lines.append(f"| {r['topology']} | {r['samples']:,} | {r['per_chip']} | {memory} | "
                     f"{1e3 * r['floor_s']:.4f} | {' | '.join(cells)} | {r['compile_s']:.0f} |")
    return "\n".join([
        f"### CASP episodic adaptation compiled for a TPU topology (AOT, on the CPU): K={POD_STEPS}, "
        f"{POD_VIEWS} views, bf16, CMU-MOSEI-sized samples{' (tiny model)' if args.tiny else ''}",
        "",
        *lines,
        "",
        f"- Command: `python -m benchmarks.tta_latency {shlex.join(argv)}`",
        f"- Machine (compiling only): {report.machine_description(('jax', 'jaxlib', 'libtpu', 'flax'))}",
        f"- Date: {report.today()}",
        "- The TPU compiler's cost model, not a measurement: `cost_analysis()['optimal_seconds']` of one "
        "`modes.episodic_batch` call (every sample adapted on its own: K Adam steps of CASP's contrastive loss on "
        f"{POD_VIEWS} views, then its score; the K steps unrolled; `jaxemo.perf.priced_seconds` leaves out the "
        "ops libtpu does not price), the sample axis split over all chips, weights replicated. MFU: the analytic "
        "FLOPs per sample (`flops_per_sample`) x samples per chip / (bf16 peak x predicted time). Test set: "
        f"ceil({MOSEI_TEST:,} / samples per call) calls.",
    ])


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.pod:
        key = f"{SECTION}-pod{'-tiny' if args.tiny else ''}:{args.pod}"

        def write(rows):
            report.write_section(args.benchmarks_file, key, pod_section(rows, args, argv))

        rows = compile_for_pod(args, write if args.write else None)
        print("\n" + pod_section(rows, args, argv))
        return rows
    config, model, frozen, adapted, samples = setup(args)
    peak = perf.matmul_peak_flops(perf.jax_matmul(256 if args.tiny else 4096, np.float32), 256 if args.tiny
                                   else 4096, repeats=2 if args.tiny else 5)
    print(f"peak JAX float32 matmul: {peak / 1e12:.3f} TFLOP/s", flush=True)
    torch_net = None
    if args.torch:
        d = config.data
        torch_net = torch_model(model, frozen, adapted, (d.text_dim, d.audio_dim, d.vision_dim))
    def write(rows, others=None, offline=None):
        """The section with the rows so far: a long run that stops early keeps what it measured."""
        if not args.write:
            return
        os.makedirs(args.plot_dir, exist_ok=True)
        suffix = "" if args.dropout_impl == "threefry" else f"-{args.dropout_impl}-dropout"
        name = f"tta_latency{suffix.replace('-', '_')}_{jax.default_backend()}.png"
        plot_path = os.path.join(args.plot_dir, name)
        plot(rows, plot_path)
        adapted_count = sum(x.size for x in jax.tree.leaves(adapted))
        body = section(rows, args, argv, config, model, peak, others, offline, plot_path, adapted_count)
        report.write_section(args.benchmarks_file,
                             f"{SECTION}{'-tiny' if args.tiny else ''}{suffix}:{jax.default_backend()}", body)

    rows, others = report.with_others_cpu_share(lambda: measure(args, config, model, frozen, adapted, samples,
                                                               torch_net, on_batch=write))
    offline = None
    if args.offline and not args.tiny:
        offline = offline_wall_time(config, model, frozen, adapted)
        print(f"offline CASP pipeline: {offline[0]:.1f} s on {offline[1]} clips", flush=True)
    write(rows, others, offline)
    return rows


def section(rows, args, argv, config, model, peak, others, offline, plot_path, adapted_count: int) -> str:
    d = config.data
    lines = [
        f"### Test-time adaptation latency: {jax.default_backend()}, float32{' (tiny)' if args.tiny else ''}",
        "",
        table(rows, config, model, args.views, peak),
        "",
        f"![per-sample cost]({os.path.relpath(plot_path, os.path.dirname(args.benchmarks_file))})",
        "",
        f"- Command: `python -m benchmarks.tta_latency {shlex.join(argv)}`",
        f"- Machine: {report.machine_description()}",
        f"- Date: {report.today()}",
        (f"- Model: CASP late fusion, {config.model.depth} layers of width {config.model.proj_dim}; inputs "
         f"{d.text_len}/{d.audio_len}/{d.vision_len} steps of {d.text_dim}/{d.audio_dim}/{d.vision_dim} dims "
         f"(text/audio/vision); each adaptation step: {args.views} copies of the sample, full and "
         f"modality-dropped view, dropout on (jaxemo's masks: {config.model.dropout_impl}), Adam on the "
         f"{adapted_count:,} LayerNorm parameters."),
        (f"- Batches above {args.chunk} run as vmapped chunks of {args.chunk} samples (the shape compiled for "
         f"batch {args.chunk}, so their first call is not repeated: `-`); at once, a batch of 1024 needs "
         f"66 GB on the CPU."),
        (f"- Timing: the first call (compilation included) is the last column; then the median of up to 3 "
         f"calls, repeated until {args.min_seconds:g} s. The per-sample loops (JAX and PyTorch) are timed over "
         f"at most {args.loop_max} samples of a batch (their cost per sample does not depend on the batch)."),
        (f"- GFLOP/sample: `jaxemo.systems.casp.flops` (matmuls; backward = activation gradients only, as only "
         f"LayerNorms adapt). MFU against a {256 if args.tiny else 4096}^2 float32 matmul measured in the same "
         f"run: {peak / 1e12:.3f} TFLOP/s. Other processes used "
         f"{'unknown' if others is None else f'{100 * others:.0f}%'} of the CPU meanwhile."),
    ]
    if offline:
        lines.append(f"- CASP's full offline pipeline (15 contrastive epochs, 6 snapshots, stable selection, 5 "
                     f"pseudo-label epochs, batch 24, compilation included) on {offline[1]} MOSI-sized clips: "
                     f"**{offline[0]:.1f} s**.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
