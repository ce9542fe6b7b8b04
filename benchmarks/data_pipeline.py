"""Input-pipeline throughput for DFEW-shaped clips: array_record read + TSN sampling + batching (grain).

    python -m benchmarks.data_pipeline --write       # a few minutes on 2 cores; writes BENCHMARKS.md
    python -m benchmarks.data_pipeline --tiny        # seconds: tests / CI

It writes a small synthetic dataset with a TFDS builder (`SyntheticDfew`, array_record, the storage path of
`jaxemo.data.builders`): each element is a whole clip of decoded uint8 frames [T, 224, 224, 3] with T drawn
around DFEW's mean of 77 frames (57..97), a precomputed fbank float32 [512, 128], a label and an id. Frames
are smooth moving colour fields plus 1 bit of noise, so that array_record's default zstd:3 compresses them
1.26x, like photographs rather than not at all (random pixels) or 20x (smooth fields alone).

Then it times `jaxemo.data.pipeline.train_dataset(..., transform=sample_clip)` (shuffled reads of whole
clips, the reference's 16-segment TSN frame choice, batching to video [B, 16, 224, 224, 3] uint8 + fbank) at
several grain worker counts: after a warm-up, the median of several windows of consecutive batches. The
temporary dataset is deleted at the end. Method and numbers: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time

import grain
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from benchmarks import report
from jaxemo.data import pipeline, video

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "input-pipeline:dfew-clips"
HEADER = "# Benchmarks\n"

# MMA-DFER training cost per sample, measured on the reference model (research/mma_dfer.md §1.8, §3).
MMA_DFER_TRAIN_FLOPS = 1.3406e12
H100_BF16_DENSE_FLOPS = 989e12  # datasheet, SXM, dense
PACKAGES = ("jax", "grain", "array_record", "tensorflow-datasets", "numpy")


# ------------------------------------------------------------------------------------------------ dataset


@dataclasses.dataclass
class SyntheticDfewConfig(tfds.core.BuilderConfig):
    num_clips: int = 48
    min_frames: int = 57
    max_frames: int = 97  # inclusive; mean 77 as DFEW
    frame_size: int = 224
    fbank_frames: int = 512
    num_classes: int = 7
    seed: int = 0


class SyntheticDfew(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """DFEW-shaped clips written the way `jaxemo.data.builders` write datasets (TFDS, array_record, no TF)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SyntheticDfewConfig(name="default")]  # noqa: RUF012 (TFDS API)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """TFDS 4.9.10 resolves a packaged builder's code path through `importlib_resources` (not installed:
        `download_and_prepare` fails); its own fallback, `inspect.getfile`, used directly."""
        return epath.Path(inspect.getfile(cls))

    def _info(self):
        c = self.builder_config
        return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
            "frames": tfds.features.Tensor(shape=(None, c.frame_size, c.frame_size, 3), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
            "fbank": tfds.features.Tensor(shape=(c.fbank_frames, 128), dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=c.num_classes),
            "id": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        c = self.builder_config
        for i in range(c.num_clips):
            rng = np.random.default_rng([c.seed, i])
            num_frames = int(rng.integers(c.min_frames, c.max_frames + 1))
            yield i, {"frames": synthetic_frames(rng, num_frames, c.frame_size), "num_frames": num_frames,
                      "fbank": rng.normal(size=(c.fbank_frames, 128)).astype(np.float32),
                      "label": i % c.num_classes, "id": f"{i:05d}"}


def synthetic_frames(rng: np.random.Generator, num_frames: int, size: int, noise: int = 2) -> np.ndarray:
    """uint8 [num_frames, size, size, 3]: a smooth colour field panning one pixel per frame, plus uniform
    integer noise in [0, noise) (1 bit by default: zstd:3 then compresses the frames 1.26x)."""
    big = size + num_frames
    coarse = rng.uniform(40, 200, (6, 6, 3))
    axis = np.linspace(0, 5, big)
    low, frac = np.minimum(axis.astype(int), 4), axis - np.minimum(axis.astype(int), 4)
    rows = coarse[low] * (1 - frac)[:, None, None] + coarse[low + 1] * frac[:, None, None]  # [big, 6, 3]
    field = rows[:, low] * (1 - frac)[None, :, None] + rows[:, low + 1] * frac[None, :, None]  # [big, big, 3]
    field = field.astype(np.uint8)
    frames = np.stack([field[t:t + size, t:t + size] for t in range(num_frames)])
    return frames + rng.integers(0, noise, frames.shape, dtype=np.uint8)


def build(data_dir: str, config: SyntheticDfewConfig):
    builder = SyntheticDfew(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
               if ".array_record" in f)


# ------------------------------------------------------------------------------------------------ timing


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used) for every process in /proc."""
    table, tick = {}, os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # fields after the command name, from `state`
        except OSError:
            continue
        table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def own_tree_cpu_seconds() -> float:
    """CPU seconds of this process and its live descendants (grain's worker processes)."""
    table = _process_table()
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(table[pid][1] for pid in tree if pid in table)


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes and the kernel have used since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def with_cpu_use(fn):
    """(fn(), CPU seconds this process and its workers used meanwhile, the share of all cores that other
    processes used meanwhile or None where /proc/stat is missing). `report.with_others_cpu_share` would count
    grain's workers as other processes."""
    before, before_tree, start = machine_busy_seconds(), own_tree_cpu_seconds(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    own = own_tree_cpu_seconds() - before_tree
    if before is None:
        return result, own, None
    others = machine_busy_seconds() - before - own
    return result, own, max(0.0, others) / (wall * report.cpu_count())


@dataclasses.dataclass
class Row:
    workers: int
    window_seconds: list[float]
    clips_per_window: int
    decoded_bytes_per_clip: float  # mean size of a whole stored clip (frames + fbank), decoded
    delivered_bytes_per_clip: int  # one batch row: 16 frames + fbank + scalars
    startup_s: float
    cpu_s_per_clip: float  # CPU time of this process and its workers per clip delivered
    others_cpu_share: float | None

    @property
    def clips_per_s(self) -> float:
        return self.clips_per_window / statistics.median(self.window_seconds)

    def cells(self) -> list[str]:
        share = "n/a" if self.others_cpu_share is None else f"{100 * self.others_cpu_share:.0f}%"
        windows = ", ".join(f"{self.clips_per_window / s:.1f}" for s in self.window_seconds)
        rate = self.clips_per_s
        return [str(self.workers), f"{rate:.1f}", f"{rate * self.decoded_bytes_per_clip / 1e6:.0f}",
                f"{rate * self.delivered_bytes_per_clip / 1e6:.0f}", f"{1000 * self.cpu_s_per_clip:.1f}", windows,
                f"{self.startup_s:.1f}", share]


COLUMNS = ("workers", "clips/s (median)", "MB/s read (whole clips, decoded)", "MB/s delivered (batches)",
           "CPU ms per clip", "clips/s of each window", "first batch s", "others' CPU share")


def time_pipeline(source, workers: int, batch_size: int, batches_per_window: int, windows: int, warmup: int,
                  num_segments: int, decoded_bytes_per_clip: float, read_options: grain.ReadOptions) -> Row:
    transform = functools.partial(video.sample_clip, num_segments=num_segments, train=True)
    dataset = pipeline.train_dataset(source, batch_size, seed=0, process_index=0, process_count=1,
                                     worker_count=workers, transform=transform, read_options=read_options)
    iterator = iter(dataset)
    start = time.perf_counter()
    batch = next(iterator)
    startup = time.perf_counter() - start
    delivered = sum(v[0].nbytes for v in batch.values())
    for _ in range(warmup):
        next(iterator)

    def run():
        seconds = []
        for _ in range(windows):
            start = time.perf_counter()
            for _ in range(batches_per_window):
                next(iterator)
            seconds.append(time.perf_counter() - start)
        return seconds

    seconds, cpu_seconds, share = with_cpu_use(run)
    if hasattr(iterator, "close"):
        iterator.close()
    return Row(workers, seconds, batches_per_window * batch_size, decoded_bytes_per_clip, delivered, startup,
               cpu_seconds / (windows * batches_per_window * batch_size), share)


def time_reads(source, count: int, seed: int = 0) -> tuple[float, float]:
    """(clips/s, decoded MB/s) of `source[i]` at random i in this thread alone (no grain)."""
    order = np.random.default_rng(seed).permutation(len(source))[:count]
    start = time.perf_counter()
    total = 0
    for i in order:
        total += sum(np.asarray(v).nbytes for v in source[int(i)].values())
    seconds = time.perf_counter() - start
    return count / seconds, total / seconds / 1e6


def saturation(rows: list[Row], tolerance: float = 0.1) -> Row:
    """The fewest workers within `tolerance` of the best throughput."""
    best = max(r.clips_per_s for r in rows)
    return min((r for r in rows if r.clips_per_s >= (1 - tolerance) * best), key=lambda r: r.workers)


# ------------------------------------------------------------------------------------------------ report


def requirement_lines() -> list[str]:
    lines = ["| sustained model FLOP/s | clips/s a train step consumes |", "|---|---|"]
    lines.append(f"| 100 TFLOP/s | {100e12 / MMA_DFER_TRAIN_FLOPS:.0f} |")
    for share in (0.3, 0.4, 0.5):
        flops = share * H100_BF16_DENSE_FLOPS
        lines.append(f"| {100 * share:.0f}% of an H100's dense bf16 peak ({flops / 1e12:.0f} TFLOP/s, datasheet "
                     f"989) | {flops / MMA_DFER_TRAIN_FLOPS:.0f} |")
    return lines


def section(args, rows: list[Row], reads: tuple[float, float], config: SyntheticDfewConfig, stored: int,
            decoded_per_clip: float, build_s: float) -> str:
    sat = saturation(rows)
    best = max(rows, key=lambda r: r.clips_per_s)
    need = 0.4 * H100_BF16_DENSE_FLOPS / MMA_DFER_TRAIN_FLOPS
    ratio = config.num_clips * decoded_per_clip / stored
    cheapest = min(rows, key=lambda r: r.cpu_s_per_clip)
    more = [r for r in rows if r.workers > sat.workers]
    beyond = (f"; more workers ({', '.join(str(r.workers) for r in more)}) give "
              f"{', '.join(f'{r.clips_per_s:.0f}' for r in more)} clips/s") if more else ""
    command = "python -m benchmarks.data_pipeline " + " ".join(shlex.quote(a) for a in args.argv)
    out = [
        "### Input pipeline: DFEW-shaped clips through grain (host CPU)", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
        *["| " + " | ".join(r.cells()) + " |" for r in rows], "",
        (f"- **Saturation**: at {sat.workers} worker(s) ({sat.clips_per_s:.1f} clips/s, within 10% of the best, "
         f"{best.clips_per_s:.1f} at {best.workers}){beyond}, on {report.cpu_count()} cores. With 0 workers "
         f"grain's {args.read_options.num_threads} read threads already keep the cores busy (zstd "
         f"and array copies release the GIL); worker processes add the cost of shipping each batch back."),
        (f"- **What is timed**: `pipeline.train_dataset(source, {args.batch_size}, seed=0, worker_count=N, "
         f"transform=partial(video.sample_clip, num_segments={args.num_segments}, train=True))` over the TFDS "
         f"array_record data source: shuffled reads of whole clips (decompress, parse), the reference's TSN "
         f"choice of {args.num_segments} frames, batching to `video` uint8 [{args.batch_size}, "
         f"{args.num_segments}, {config.frame_size}, {config.frame_size}, 3] + `fbank` float32 "
         f"[{args.batch_size}, {config.fbank_frames}, 128]. No augmentation (it runs on the device) and no "
         f"train step: the consumer only calls `next`. grain read options: {args.read_options}."),
        ("- **Columns**: MB/s read = clips/s x the mean decoded size of a whole stored clip; MB/s delivered = "
         "clips/s x one batch row; CPU ms per clip = CPU time of this process and its workers / clips "
         "(from /proc); others' CPU share = what processes outside the benchmark used of all cores meanwhile "
         "(a clean run is near 0%)."),
        (f"- **Timing**: per worker count, one iterator; the first batch (`first batch s`, includes starting "
         f"the workers) and {args.warmup} more are not timed (the read threads keep up to "
         f"{args.read_options.prefetch_buffer_size} batches in flight), then {args.windows} windows "
         f"of {args.batches} consecutive batches ({args.batches * args.batch_size} clips); clips/s is the "
         f"median window. Reads hit the page cache (the dataset was just written): this is the pipeline's CPU "
         f"cost, not a disk's bandwidth."),
        (f"- **Data**: {config.num_clips} synthetic clips, T uniform in {config.min_frames}..{config.max_frames} "
         f"(mean {(config.min_frames + config.max_frames) / 2:.0f}, as DFEW), each element a whole clip of "
         f"decoded uint8 frames (not pre-sampled 16-frame clips, which would fix the frame choice) + fbank, "
         f"{decoded_per_clip / 1e6:.1f} MB decoded; {stored / 1e6:.0f} MB on disk with TFDS's array_record "
         f"options (`group_size:1`, array_record's default zstd:3): {ratio:.2f}x (frames are smooth moving "
         f"fields + 1 bit of noise; real faces' ratio is not known here). Built in {build_s:.0f} s, deleted "
         f"afterwards."),
        (f"- **Reads alone** (`source[i]` at random i, one thread, no grain): {reads[0]:.1f} clips/s, "
         f"{reads[1]:.0f} MB/s decoded."),
        f"- Command: `{command.strip()}`",
        f"- Machine: {report.machine_description(PACKAGES)}",
        f"- Date: {report.today()}", "",
        ("**What a train step needs (derived from the dossier, not measured).** MMA-DFER costs 1.34 TFLOPs per "
         "training sample (research/mma_dfer.md §1.8, counted on the reference model), so a step that sustains "
         "X FLOP/s consumes X / 1.34e12 clips/s:"), "",
        *requirement_lines(), "",
        (f"At 40% of an H100 that is about {need:.0f} clips/s: in this layout {need * decoded_per_clip / 1e9:.1f} "
         f"GB/s of whole clips decoded ({need * decoded_per_clip / ratio / 1e9:.1f} GB/s from disk at "
         f"{ratio:.2f}x) to use {args.num_segments} of ~77 frames each, and at the cheapest CPU cost measured "
         f"above ({1000 * cheapest.cpu_s_per_clip:.1f} ms per clip) about "
         f"{need * cheapest.cpu_s_per_clip:.0f} cores of this machine's kind, i.e. "
         f"{need / max(best.clips_per_s, 1e-9):.1f}x its best rate."),
        "",
        ("**Measured MMA-DFER train steps**: `python -m benchmarks.steps --system=mma_dfer --write` (the section "
         "\"MMA-DFER train and inference steps\"; on a GPU, `python -m benchmarks.gpu_suite`): a measured step's "
         "samples/s is the clips/s this pipeline must deliver; the table above assumes the FLOP/s."),
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="0,1,2,4", help="comma-separated grain worker counts")
    p.add_argument("--batch_size", type=int, default=8, help="MMA-DFER's batch (8)")
    p.add_argument("--num_clips", type=int, default=48, help="clips in the temporary dataset")
    p.add_argument("--frame_size", type=int, default=224)
    p.add_argument("--num_segments", type=int, default=16)
    # The read threads keep up to `prefetch_buffer_size` (32) batches in flight and finish them in bursts:
    # windows and warm-up are as long as that, so that a burst does not decide a window.
    p.add_argument("--batches", type=int, default=32, help="batches per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows per worker count (median counts)")
    p.add_argument("--warmup", type=int, default=32, help="untimed batches after the first")
    p.add_argument("--threads", type=int, default=pipeline.DEFAULT_READ_OPTIONS.num_threads,
                   help="grain read threads per reading process")
    p.add_argument("--prefetch", type=int, default=pipeline.DEFAULT_READ_OPTIONS.prefetch_buffer_size,
                   help="batches each reading process may work ahead")
    p.add_argument("--data_dir", default=None, help="build here and keep it (default: a deleted temp dir)")
    p.add_argument("--tiny", action="store_true", help="32 px frames, 8 clips, 0 workers: seconds")
    p.add_argument("--write", action="store_true", help="replace this benchmark's section of BENCHMARKS.md")
    p.add_argument("--benchmarks_file", default=os.path.join(REPO_ROOT, "BENCHMARKS.md"))
    args = p.parse_args(argv)
    args.argv = list(argv)
    if args.tiny:
        args.frame_size, args.num_clips, args.workers = 32, 8, "0"
        args.batch_size, args.batches, args.windows, args.warmup = 2, 2, 2, 1
    args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    args.read_options = grain.ReadOptions(num_threads=args.threads, prefetch_buffer_size=args.prefetch)
    return args


def run(args) -> tuple[list[Row], str]:
    tfds.disable_progress_bar()
    config = SyntheticDfewConfig(name=f"c{args.num_clips}_s{args.frame_size}", num_clips=args.num_clips,
                                 frame_size=args.frame_size)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="jaxemo_data_benchmark_")
    try:
        start = time.perf_counter()
        builder = build(data_dir, config)
        build_s = time.perf_counter() - start
        source = builder.as_data_source(split="train")
        stored = disk_bytes(data_dir)
        decoded = float(np.mean([sum(np.asarray(v).nbytes for v in source[i].values())
                                 for i in range(len(source))]))
        reads = time_reads(source, min(len(source), 24))
        rows = []
        for workers in args.worker_counts:
            row = time_pipeline(source, workers, args.batch_size, args.batches, args.windows, args.warmup,
                                args.num_segments, decoded, args.read_options)
            print(" | ".join(row.cells()), flush=True)
            rows.append(row)
        return rows, section(args, rows, reads, config, stored, decoded, build_s)
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def main(argv=None) -> list[Row]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows, body = run(args)
    print(body)
    if args.write:
        report.write_section(args.benchmarks_file, SECTION, body, header=HEADER)
        print(f"wrote section {SECTION!r} of {args.benchmarks_file}")
    return rows


if __name__ == "__main__":
    # Run the importable module's main, so that grain's workers unpickle `SyntheticDfew` by reference (a class
    # defined in __main__ is pickled by value, and TFDS's classproperty does not pickle).
    from benchmarks import data_pipeline  # noqa: PLW0406

    data_pipeline.main()
