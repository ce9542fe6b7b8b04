"""The kernels behind MMA-DFER's CPU step, JAX against PyTorch: fp32 matmuls at ViT-B's shapes and attention at
16 frames x 203 tokens x 12 heads of 64 (forward, and forward + backward).

    python -m benchmarks.profiles.cpu_kernels
    XLA_FLAGS=--xla_cpu_use_onednn=true python -m benchmarks.profiles.cpu_kernels     # any XLA:CPU flag
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from benchmarks import report
from jaxemo import layers

# (rows, contraction, columns): 4096^2, ViT-B MLP fc1 / fc2 and a q/k/v projection on one clip's 16 x 203 tokens.
MATMULS = ((4096, 4096, 4096), (3248, 768, 3072), (3248, 3072, 768), (3248, 768, 768))
ATTENTION = (16, 203, 12, 64)  # batch, tokens, heads, head dim


def seconds(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def torch_seconds(torch, fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    import torch

    torch.set_num_threads(report.cpu_count())
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    matmul = jax.jit(lambda a, b: a @ b)
    for m, k, n in MATMULS:
        flops = 2 * m * k * n
        a, b = jnp.ones((m, k)), jnp.ones((k, n))
        ta, tb = torch.randn(m, k), torch.randn(k, n)
        print(f"matmul {m}x{k}x{n}: JAX {flops / seconds(matmul, a, b) / 1e9:.0f} GFLOP/s, PyTorch "
              f"{flops / torch_seconds(torch, lambda: ta @ tb) / 1e9:.0f} GFLOP/s")
    batch, tokens, heads, dim = ATTENTION
    flops = 4 * batch * heads * tokens * tokens * dim
    q, k, v, g = (jax.random.normal(key, ATTENTION) for key in jax.random.split(jax.random.key(0), 4))
    for name, attend in (("jax.nn.dot_product_attention", jax.nn.dot_product_attention),
                         ("jaxemo layers.dot_product_attention", layers.dot_product_attention)):
        forward = jax.jit(attend)
        backward = jax.jit(lambda q, k, v, attend=attend: jax.vjp(attend, q, k, v)[1](g))
        print(f"attention, {name}: forward {flops / seconds(forward, q, k, v) / 1e9:.0f} GFLOP/s, forward + "
              f"backward {3 * flops / seconds(backward, q, k, v) / 1e9:.0f} GFLOP/s")
    tq, tk, tv = (torch.randn(batch, heads, tokens, dim, requires_grad=True) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        forward_s = torch_seconds(torch, lambda: sdpa(tq, tk, tv))
    backward_s = torch_seconds(torch, lambda: sdpa(tq, tk, tv).sum().backward())
    print(f"attention, PyTorch SDPA: forward {flops / forward_s / 1e9:.0f} GFLOP/s, forward + backward "
          f"{3 * flops / backward_s / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
