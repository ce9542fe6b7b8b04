"""What jaxemo needs at run time to measure itself: analytic FLOP rules, peak FLOP/s, memory estimates, TPU
topologies. The trainer reports MFU with these; the benchmark drivers, tables and plots live in `benchmarks/`.

FLOP conventions (every MFU jaxemo reports):
  * a matmul of [m, k] x [k, n] costs 2 * m * k * n FLOPs (one multiply-add = 2 FLOPs);
  * only matmuls and convolutions are counted: softmax, LayerNorm, GELU, residual adds, the optimizer
    update and other elementwise work are ignored (a few percent of a ViT's FLOPs at width >= 384);
  * a training step costs 3x the forward pass (the backward pass does two matmuls per forward matmul:
    one for the input gradient, one for the weight gradient), even where a gradient is not needed (the
    patch embedding never needs the gradient of the images), as in the PaLM / MaxText MFU convention;
    except for models with frozen parts (MMA-DFER): there the backward counts what has to be computed, i.e.
    activation gradients through every layer but weight gradients only for the trainable weights, since 3x
    forward would credit a frozen encoder with work nobody does;
  * recomputation (remat) is not counted: MFU is model FLOPs, not hardware FLOPs;
  * MFU = achieved model FLOP/s / peak FLOP/s: the datasheet peak on a known accelerator, else a large matmul
    timed in the same process in the same dtype on the same device.

Each system's own count (`jaxemo/systems/<name>/`, `SYSTEM.flops`) is built from the rules here.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

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


def transformer_layer_flops(tokens: int, width: int, mlp_dim: int) -> tuple[int, int]:
    """(weight matmuls, attention matmuls) of one pre-LN transformer layer on `tokens` tokens; see
    `vit_forward_flops`: 8*T*D^2 + 4*T*D*M with weights, 4*T^2*D without (q k^T and the weighted sum of v)."""
    return 8 * tokens * width * width + 4 * tokens * width * mlp_dim, 4 * tokens * tokens * width



def wav2vec2_forward_flops(config, num_samples: int, num_labels: Optional[int] = None) -> int:
    """Matmul / conv FLOPs of one `num_samples`-sample clip through a wav2vec 2.0 / HuBERT forward pass
    (`jaxemo.models.wav2vec2.Wav2Vec2Config` fields).

    With conv layers i (F_i frames out, kernel k_i, C_{i-1} -> C_i channels), F frames of width D, MLP width M,
    L layers, position conv kernel K in G groups, projector width P and C labels:

        feature encoder    sum_i 2 * F_i * k_i * C_{i-1} * C_i
        projection         2 * F * C_last * D
        position conv      2 * (F + 1 - K % 2) * K * (D / G) * D     (F + 1 outputs for even K, one dropped)
        layers             L * (8 * F * D^2 + 4 * F * D * M + 4 * F^2 * D)
        head               2 * F * D * P + 2 * P * C               (with `num_labels`)

    Norms, activations, softmax and masking are not counted.
    """
    c = config
    total, length, channels = 0, num_samples, 1
    for dim, kernel, stride in zip(c.conv_dim, c.conv_kernel, c.conv_stride):
        length = (length - kernel) // stride + 1
        total += 2 * length * kernel * channels * dim
        channels = dim
    f, d, k = length, c.hidden_size, c.num_conv_pos_embeddings
    total += 2 * f * channels * d
    total += 2 * (f + 1 - k % 2) * k * (d // c.num_conv_pos_embedding_groups) * d
    total += c.num_hidden_layers * (8 * f * d * d + 4 * f * d * c.intermediate_size + 4 * f * f * d)
    if num_labels is not None:
        total += 2 * f * d * c.classifier_proj_size + 2 * c.classifier_proj_size * num_labels
    return total


# ------------------------------------------------------------------------------------------------ peak FLOP/s


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


# Dense (no sparsity) peak FLOP/s of one chip by `device_kind`, from the vendors' datasheets. fp32 on a GPU is
# its CUDA-core rate (XLA's default fp32 matmuls there); TPUs run fp32 matmuls in bf16 passes.
DATASHEET_PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "TPU v6 lite": {"bfloat16": 918e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5": {"bfloat16": 459e12},
    "TPU v4": {"bfloat16": 275e12},
}


@functools.cache
def peak_flops(dtype_name: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of all of this job's devices in `dtype_name`, where it comes from): the datasheet figure
    per chip times the chips on an accelerator listed in `DATASHEET_PEAK_FLOPS`; elsewhere (the CPU, whose
    simulated devices share its cores) a matmul measured once per process."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        for kind, peaks in DATASHEET_PEAK_FLOPS.items():
            if device.device_kind.startswith(kind):
                per_chip = peaks.get(dtype_name, peaks["bfloat16"])
                return per_chip * jax.device_count(), f"datasheet {kind} {dtype_name}"
    size = 1024 if device.platform == "cpu" else 8192
    dtype = jnp.dtype(dtype_name)
    measured = matmul_peak_flops(jax_matmul(size, dtype, device), size, repeats=3, min_run_s=0.1)
    devices = 1 if device.platform == "cpu" else jax.device_count()
    return measured * devices, f"measured {size}^2 {dtype_name} matmul"


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
    return (device.memory_stats() or {}).get("peak_bytes_in_use")


def priced_seconds(optimal_seconds: float, floor: float = 0.0) -> tuple[float, int]:
    """The TPU compiler's `optimal_seconds` (`compiled.cost_analysis()`) split into (the time of the ops its cost
    model prices, how many ops it does not price). libtpu adds -1 s for every op it cannot price: a lone f32
    softmax on v5e 2x2 whose input XLA prefetches into VMEM (slice-start / ConcatBitcast) reads -0.99991, i.e.
    9.1e-5 s - 1; a ViT-B/16 train step on v5e-256 reads -215.98 (216 such ops). Only the sum is reported, so
    the priced time is known up to whole seconds: it is read as the smallest `value + n` (n >= 0 unpriced ops)
    that is at least `floor` (the step's FLOPs / peak: no chip runs faster). Exact while the priced time is
    below `floor` + 1 s; a step the model prices at a second or more (UniEmoX fine-tuning's on-device
    RandAugment) is ambiguous by whole seconds, and callers say so."""
    unpriced = max(0, math.ceil(floor - optimal_seconds)) if optimal_seconds < floor else 0
    return optimal_seconds + unpriced, unpriced


# ------------------------------------------------------------------------------------------ TPU topologies


class Topology(NamedTuple):
    label: str
    hbm_bytes: int  # per chip
    mesh_axes: dict  # the data x fsdp mesh its programs compile for
    peak_flops: float  # dense bf16 FLOP/s per chip (datasheet)


_V5E_PEAK, _V5P_PEAK = DATASHEET_PEAK_FLOPS["TPU v5 lite"]["bfloat16"], DATASHEET_PEAK_FLOPS["TPU v5"]["bfloat16"]
TPU_TOPOLOGIES = {
    "v5e:16x16": Topology("TPU v5e-256", 16 * GIB, {"data": 16, "fsdp": 16}, _V5E_PEAK),
    "v5p:4x4x4": Topology("TPU v5p-128 (64 chips)", 95 * GIB, {"data": 4, "fsdp": 16}, _V5P_PEAK),  # fit the torus
    "v5e:2x2": Topology("TPU v5e-4", 16 * GIB, {"data": 2, "fsdp": 2}, _V5E_PEAK),
}
