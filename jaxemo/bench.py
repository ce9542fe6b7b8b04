"""Benchmark helpers: analytic FLOP counts, timing, measured peak FLOP/s, memory, machine facts, BENCHMARKS.md.

Conventions (shared by every benchmark that reports MFU):
  * a matmul of [m, k] x [k, n] costs 2 * m * k * n FLOPs (one multiply-add = 2 FLOPs);
  * only matmuls and convolutions are counted: softmax, LayerNorm, GELU, residual adds, the optimizer
    update and other elementwise work are ignored (a few percent of a ViT's FLOPs at width >= 384);
  * a training step costs 3x the forward pass (the backward pass does two matmuls per forward matmul:
    one for the input gradient, one for the weight gradient), even where a gradient is not needed (the
    patch embedding never needs the gradient of the images), as in the PaLM / MaxText MFU convention;
    except for models with frozen parts (MMA-DFER, `mma_dfer_flops`): there the backward counts what has
    to be computed, i.e. activation gradients through every layer but weight gradients only for the
    trainable weights, since 3x forward would credit a frozen encoder with work nobody does;
  * recomputation (remat) is not counted: MFU is model FLOPs, not hardware FLOPs;
  * MFU = achieved model FLOP/s / peak FLOP/s, the peak being a large matmul timed in the same process in
    the same dtype on the same device, not a datasheet number.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import re
import resource
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

GIB = 1024**3


# ------------------------------------------------------------------------------------------------ FLOPs


def vit_forward_flops(model) -> int:
    """Matmul FLOPs of one sample through a `jaxemo.vit.ViT` forward pass.

    With N patches of P x P x C pixels, T tokens (CLS + patches + prompts), width D, MLP width M, depth L
    and K classes:

        patch embedding   2 * N * P*P*C * D
        per layer         8 * T * D^2      query, key, value and output projections
                          4 * T^2 * D      attention scores q k^T and the weighted sum of v (all heads)
                          4 * T * D * M    the two MLP matmuls
        head              2 * D * K        on the pooled token only
    """
    (ph, pw), d = model.patch_size, model.width
    gh, gw = model.grid
    patches, tokens = gh * gw, model.num_tokens
    patch_embed = 2 * patches * ph * pw * model.in_channels * d
    per_layer = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * model.mlp_dim
    head = 2 * d * model.num_classes if model.num_classes else 0
    return patch_embed + model.depth * per_layer + head


def train_flops(forward_flops: int) -> int:
    """Forward + backward (2x forward) FLOPs of one training step, per sample."""
    return 3 * forward_flops


def _transformer_layer_flops(tokens: int, width: int, mlp_dim: int) -> tuple[int, int]:
    """(weight matmuls, attention matmuls) of one pre-LN transformer layer on `tokens` tokens; see
    `vit_forward_flops`: 8*T*D^2 + 4*T*D*M with weights, 4*T^2*D without (q k^T and the weighted sum of v)."""
    return 8 * tokens * width * width + 4 * tokens * width * mlp_dim, 4 * tokens * tokens * width


@dataclasses.dataclass(frozen=True)
class MMADFERFlops:
    """Matmul FLOPs of one MMA-DFER clip (T frames + its fbank), split the way the backward pass needs.

    `weights[part]` are matmuls with a weight matrix, `attention[part]` the weightless attention matmuls
    (q k^T and the weighted sum of v), `patch_embed[part]` the patch embeddings (a convolution on the pixels
    or the fbank); `trainable` names the parts whose weights train (the reference's split).
    """

    patch_embed: dict[str, int]
    weights: dict[str, int]
    attention: dict[str, int]
    trainable: frozenset[str]

    @property
    def parts(self) -> dict[str, int]:
        """Forward FLOPs per part: video_encoder, audio_encoder, adapters, joint_proj, temporal, head."""
        names = [*self.weights] + [p for p in self.attention if p not in self.weights]
        return {p: self.patch_embed.get(p, 0) + self.weights.get(p, 0) + self.attention.get(p, 0) for p in names}

    @property
    def forward(self) -> int:
        return sum(self.parts.values())

    def backward(self, recompute_attention_scores: bool = False) -> tuple[int, int]:
        """(activation-gradient FLOPs, weight-gradient FLOPs) of the backward pass.

        Activation gradients flow through every layer, frozen ones included (the prompts, positions and
        adapters that train sit at the input and after every layer): 1x the forward FLOPs of each weight
        matmul, 2x those of each attention matmul (both of its operands need a gradient), and nothing for
        the patch embeddings (no gradient is needed for the pixels or the fbank). Weight gradients (1x
        forward) exist only for trainable weights: frozen encoders get none.

        `recompute_attention_scores` adds one q k^T per encoder attention to the backward, as
        `torch.utils.flop_counter` counts `scaled_dot_product_attention`'s backward (flash-style kernels
        recompute the scores); the temporal transformer's attention is plain matmuls in the reference.
        """
        encoder_attention = sum(v for p, v in self.attention.items() if p.endswith("_encoder"))
        activations = sum(self.weights.values()) + 2 * sum(self.attention.values())
        if recompute_attention_scores:
            activations += encoder_attention // 2
        return activations, sum(v for p, v in self.weights.items() if p in self.trainable)

    def train(self, recompute_attention_scores: bool = False) -> int:
        """Forward + backward FLOPs of one training sample (the optimizer's elementwise update is ignored)."""
        return self.forward + sum(self.backward(recompute_attention_scores))


def mma_dfer_flops(model) -> MMADFERFlops:
    """Analytic matmul FLOPs of one clip through `jaxemo.models.mma_dfer.MMADFER` (read from its fields).

    With T frames of N patches (P x P x 3 pixels), an fbank of Na patches (P x P x 1), width D, MLP width M,
    depth L, prompts p and latent width K; each frame has Tv = 1 + N + p tokens, the audio Ta = 1 + Na + p
    (plus the fusion tokens with `fusion="tokens"`, which every layer computes):

        video encoder   T * (2*N*P*P*3*D + L * (8*Tv*D^2 + 4*Tv*D*M + 4*Tv^2*D))    frozen
        audio encoder        2*Na*P*P*D  + L * (8*Ta*D^2 + 4*Ta*D*M + 4*Ta^2*D)     frozen
        adapters        L * 2 * (2*T*Tv + 2*Ta) * D*K   down and up projections, both modalities (bottleneck)
        joint_proj      2*T*D*Dt                         trainable, as everything below
        temporal        per layer 8*S*Dt^2 + 4*S*Dt*Mt + 4*S^2*Dt, S = T + 1 tokens of width Dt
        head            2*Dt*C

    At paper size (16 x 224 px, 512 x 128 fbank, ViT-B/16 encoders) that is 643.7 GFLOPs forward and, by
    `MMADFERFlops.train`, 1,327.1 per training sample (1,340.6 counted as torch.utils.flop_counter counts
    SDPA's backward: `train(recompute_attention_scores=True)`), the dossier's measured figures.
    """
    p, d, m, depth = model.patch_size, model.width, model.mlp_dim, model.depth
    extra = model.num_fusion_tokens if model.fusion == "tokens" else 0
    frames = model.num_frames
    video_patches = (model.image_size // p) ** 2
    audio_patches = (model.audio_shape[0] // p) * (model.audio_shape[1] // p)
    video_tokens = 1 + video_patches + model.num_prompts + extra
    audio_tokens = 1 + audio_patches + model.num_prompts + extra
    video_dense, video_attention = _transformer_layer_flops(video_tokens, d, m)
    audio_dense, audio_attention = _transformer_layer_flops(audio_tokens, d, m)
    dt, steps = model.temporal_width, frames + 1
    temporal_dense, temporal_attention = _transformer_layer_flops(steps, dt, model.temporal_mlp_dim)
    adapters = 0
    if model.fusion == "bottleneck":
        adapters = depth * 2 * (2 * frames * video_tokens + 2 * audio_tokens) * d * model.latent_dim
    return MMADFERFlops(
        patch_embed={"video_encoder": frames * 2 * video_patches * p * p * 3 * d,
                     "audio_encoder": 2 * audio_patches * p * p * d},
        weights={"video_encoder": frames * depth * video_dense, "audio_encoder": depth * audio_dense,
                 "adapters": adapters, "joint_proj": 2 * frames * d * dt,
                 "temporal": model.temporal_depth * temporal_dense, "head": 2 * dt * model.num_classes},
        attention={"video_encoder": frames * depth * video_attention, "audio_encoder": depth * audio_attention,
                   "temporal": model.temporal_depth * temporal_attention},
        trainable=frozenset({"adapters", "joint_proj", "temporal", "head"}),
    )


@dataclasses.dataclass(frozen=True)
class MSAFlops:
    """Matmul FLOPs of one sample through `jaxemo.models.msa.SentimentRegressor`.

    `forward` is the whole forward pass. `backward` is what a test-time adaptation step adds when only
    LayerNorm parameters train: activation gradients through every layer above the input projections
    (1x each weight matmul, 2x each attention matmul; the projections need none, their inputs are data),
    and no weight gradients beyond the LayerNorms' elementwise ones.
    """

    projections: int
    weights: int  # every other matmul with a weight matrix (encoders and head)
    attention: int

    @property
    def forward(self) -> int:
        return self.projections + self.weights + self.attention

    @property
    def backward(self) -> int:
        return self.weights + 2 * self.attention


def msa_flops(model, seq_lens: Sequence[int], dims: Sequence[int]) -> MSAFlops:
    """(text, audio, vision) lengths and feature dims -> `MSAFlops`, read from the model's fields:

        projections   sum_m 2 T_m D_m P
        encoder       depth * (8 T P^2 + 4 T P (4P))  weights,  depth * 4 T^2 P  attention   (T tokens)
        late fusion   one encoder per modality on T_m; head 2 (3P) P + 2 (2 P^2) + 2 P on the first tokens
        early fusion  one encoder on T_t + T_a + T_v; head 2 (2 P^2) + 2 P
    """
    p, depth = model.proj_dim, model.depth
    projections = sum(2 * t * d * p for t, d in zip(seq_lens, dims))
    encoders = list(seq_lens) if model.fusion == "late" else [sum(seq_lens)]
    dense = sum(depth * (8 * t * p * p + 4 * t * p * 4 * p) for t in encoders)
    attention = sum(depth * 4 * t * t * p for t in encoders)
    head = 2 * 2 * p * p + 2 * p + (2 * len(seq_lens) * p * p if model.fusion == "late" else 0)
    return MSAFlops(projections, dense + head, attention)


# ------------------------------------------------------------------------------------------------ timing


def time_runs(run: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `run`, after `warmup` untimed calls.

    `run` must return only once its work is finished (e.g. end with `jax.block_until_ready`).
    """
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def cpu_seconds_of_others() -> Optional[float]:
    """CPU seconds used since boot by every other process and the kernel (Linux `/proc/stat` busy time
    minus this process's own); None where `/proc/stat` does not exist."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy - own.ru_utime - own.ru_stime


def with_others_cpu_share(fn: Callable[[], Any]) -> tuple[Any, Optional[float]]:
    """(fn(), the fraction of all cores that other processes used meanwhile, or None if unknown).

    On a shared machine this tells a clean timing (a few percent) from one that competed for the cores.
    """
    before, start = cpu_seconds_of_others(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    if before is None:
        return result, None
    return result, max(0.0, cpu_seconds_of_others() - before) / (wall * cpu_count())


def matmul_peak_flops(matmul: Callable[[], Any], size: int, repeats: int = 5, min_run_s: float = 0.2) -> float:
    """Peak FLOP/s from `matmul`, a blocking callable doing one [size, size] x [size, size] product.

    Each timed run repeats the product enough times to last about `min_run_s` (dispatch overhead would
    otherwise dominate a fast accelerator); the result is the median over `repeats` runs.
    """
    matmul()  # compile / allocate
    one = min(time_runs(matmul, 2, warmup=0))
    iterations = max(1, int(min_run_s / max(one, 1e-9)))

    def run():
        for _ in range(iterations):
            matmul()

    seconds = statistics.median(time_runs(run, repeats, warmup=0))
    return 2 * size**3 * iterations / seconds


def jax_matmul(size: int, dtype, device: Optional[jax.Device] = None) -> Callable[[], Any]:
    """A blocking [size, size] x [size, size] product in `dtype` on `device` (see `matmul_peak_flops`)."""
    device = device or jax.devices()[0]
    keys = jax.random.split(jax.random.key(0))
    a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
    product = jax.jit(jnp.matmul)
    return lambda: product(a, b).block_until_ready()


# ------------------------------------------------------------------------------------------------ memory


def compiled_memory_bytes(compiled) -> Optional[int]:
    """XLA's estimate of a compiled program's footprint: temp + arguments + outputs - donated aliases."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes)


def device_peak_bytes(device: jax.Device) -> Optional[int]:
    """The allocator's high-water mark on an accelerator (process lifetime); None where not reported (CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("peak_bytes_in_use")


def reset_peak_rss() -> bool:
    """Resets the process's peak RSS (Linux `/proc/self/clear_refs`); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since the last `reset_peak_rss`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


# ------------------------------------------------------------------------------------------------ results


@dataclasses.dataclass
class Measurement:
    """One table row: a framework's train step throughput on one model and batch."""

    model: str
    batch: int
    image_size: int
    dtype: str
    framework: str
    run_seconds: list[float]  # wall time of each timed run
    steps_per_run: int
    flops_per_sample: int  # analytic: of a training sample (3x forward for the ViT), or of a forward pass
    peak_flops: Optional[float] = None  # measured in the same process, row's dtype and device(s)
    compile_s: Optional[float] = None
    memory_bytes: Optional[int] = None
    memory_source: str = ""
    rss_bytes: Optional[int] = None
    others_cpu_share: Optional[float] = None  # of all cores, used by other processes during the timed runs
    step: str = "train"  # or "inference" (forward only)

    @property
    def samples_per_s(self) -> float:
        return self.batch * self.steps_per_run / statistics.median(self.run_seconds)

    @property
    def achieved_flops(self) -> float:
        return self.samples_per_s * self.flops_per_sample

    @property
    def mfu(self) -> float:
        return self.achieved_flops / self.peak_flops if self.peak_flops else float("nan")


TABLE_COLUMNS = ("model", "batch", "image px", "dtype", "framework", "samples/s", "GFLOP/sample",
                 "achieved TFLOP/s", "measured peak TFLOP/s", "MFU %", "compile s", "memory")


def _memory_cell(m: Measurement) -> str:
    parts = []
    if m.memory_bytes is not None:
        parts.append(f"{m.memory_bytes / GIB:.2f} GiB {m.memory_source}".strip())
    if m.rss_bytes is not None:
        parts.append(f"RSS {m.rss_bytes / GIB:.2f} GiB")
    return "; ".join(parts) or "n/a"


def table_row(m: Measurement) -> list[str]:
    return [m.model, str(m.batch), str(m.image_size), m.dtype, m.framework, f"{m.samples_per_s:.2f}",
            f"{m.flops_per_sample / 1e9:.2f}", f"{m.achieved_flops / 1e12:.3f}", f"{m.peak_flops / 1e12:.3f}",
            f"{100 * m.mfu:.1f}", "n/a" if m.compile_s is None else f"{m.compile_s:.1f}", _memory_cell(m)]


MMA_DFER_COLUMNS = ("model", "step", "batch", "dtype", "framework", "clips/s", "GFLOP/clip", "achieved TFLOP/s",
                    "measured peak TFLOP/s", "MFU %", "compile s", "memory")


def mma_dfer_table_row(m: Measurement) -> list[str]:
    """A row of `MMA_DFER_COLUMNS`: the ViT row without the image size (the model label has the input sizes)
    and with the step (train / inference)."""
    row = table_row(m)
    return [row[0], m.step, *row[1:2], *row[3:]]


def markdown_table(rows: Sequence[Measurement], columns: Sequence[str] = TABLE_COLUMNS,
                   row: Callable[[Measurement], list[str]] = table_row) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row(m)) + " |" for m in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def package_version(name: str) -> Optional[str]:
    """Installed version without importing the package (None if absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_description(packages: Sequence[str] = ("jax", "jaxlib", "flax", "torch", "transformers")) -> str:
    """One line: CPU model, cores, RAM, package versions, JAX backend and devices."""
    ram = _ram_bytes()
    devices = jax.devices()
    parts = [_cpu_model(), f"{cpu_count()} cores"] + ([f"{ram / GIB:.1f} GiB RAM"] if ram else [])
    parts += [f"{p} {v}" for p in packages if (v := package_version(p))]
    parts.append(f"JAX backend {jax.default_backend()} ({len(devices)} x {devices[0].device_kind})")
    return ", ".join(parts)


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------------------------------------------------ BENCHMARKS.md


def section_markers(key: str) -> tuple[str, str]:
    return f"<!-- {key} begin -->", f"<!-- {key} end -->"


def replace_section(text: str, key: str, body: str) -> str:
    """`text` with the section between `key`'s markers replaced by `body` (appended if there is none)."""
    begin, end = section_markers(key)
    section = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + section + "\n"


def write_section(path: str, key: str, body: str, header: str = "# Benchmarks\n") -> None:
    """Writes `body` into `path` between `key`'s markers, keeping every other section of the file."""
    text = header
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    with open(path, "w") as f:
        f.write(replace_section(text, key, body))


# ------------------------------------------------------------------------------------------------ plots


_PLOT_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")


def save_line_plot(path: str, series: dict, xlabel: str, ylabel: str, title: str, size=(900, 560)) -> None:
    """A log-log line chart as a PNG (PIL only): `series` maps a label to [(x, y), ...] with x, y > 0."""
    from PIL import Image, ImageDraw, ImageFont

    points = [(x, y) for values in series.values() for x, y in values if x > 0 and y > 0]
    if not points:
        raise ValueError("save_line_plot: no positive points to draw")
    width, height = size
    left, right, top, bottom = 80, 260, 40, 60
    lx = [np.log10(x) for x, _ in points]
    ly = [np.log10(y) for _, y in points]
    x0, x1 = np.floor(min(lx)), np.ceil(max(lx)) if max(lx) > min(lx) else np.floor(min(lx)) + 1
    y0, y1 = np.floor(min(ly)), np.ceil(max(ly)) if max(ly) > min(ly) else np.floor(min(ly)) + 1
    to_px = lambda x, y: (left + (np.log10(x) - x0) / (x1 - x0) * (width - left - right),
                          height - bottom - (np.log10(y) - y0) / (y1 - y0) * (height - top - bottom))
    image = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    draw.text((left, 10), title, fill="black", font=font)
    for decade in range(int(x0), int(x1) + 1):
        px, _ = to_px(10.0 ** decade, 10.0 ** y0)
        draw.line([(px, top), (px, height - bottom)], fill="#dddddd")
        draw.text((px - 10, height - bottom + 6), f"1e{decade}", fill="black", font=font)
    for decade in range(int(y0), int(y1) + 1):
        _, py = to_px(10.0 ** x0, 10.0 ** decade)
        draw.line([(left, py), (width - right, py)], fill="#dddddd")
        draw.text((left - 40, py - 6), f"1e{decade}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text(((width - right + left) // 2 - 60, height - 25), xlabel, fill="black", font=font)
    draw.text((5, top - 20), ylabel, fill="black", font=font)
    for i, (label, values) in enumerate(series.items()):
        colour = _PLOT_COLOURS[i % len(_PLOT_COLOURS)]
        xy = [to_px(x, y) for x, y in sorted(values) if x > 0 and y > 0]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        draw.line([(width - right + 15, top + 10 + 18 * i), (width - right + 35, top + 10 + 18 * i)], fill=colour,
                  width=3)
        draw.text((width - right + 40, top + 4 + 18 * i), label, fill="black", font=font)
    image.save(path)
