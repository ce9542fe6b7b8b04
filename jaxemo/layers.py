"""Transformer building blocks shared by every jaxemo model.

Every parameter carries logical axis names (see `jaxemo.train.sharding.DEFAULT_RULES`), so one rules table
decides how a model is laid out over a device mesh. No module hard-codes an activation sharding (that would
break `jax.vmap`, e.g. per-sample test-time adaptation): `constrain` pins the residual stream by logical names
only inside the trainer's and evaluator's sharded steps (`activation_sharding`) and does nothing elsewhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
ModuleFactory = Callable[..., nn.Module]

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_from_name(name: str) -> Dtype:
    """A compute dtype by its config name ("float32", "bfloat16", "float16")."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is unknown; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def with_axes(init: Callable, *axes: Optional[str]) -> Callable:
    """An initializer whose parameter is boxed with logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def dense(features: int, name: str, axes: tuple[Optional[str], Optional[str]], dtype: Optional[Dtype] = None,
          use_bias: bool = True, kernel_init: Callable = nn.initializers.xavier_uniform(),
          bias_init: Callable = nn.initializers.zeros) -> nn.Dense:
    """`nn.Dense` whose kernel is boxed with the logical axes `(input, output)` and its bias with the output's."""
    in_axis, out_axis = axes
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=with_axes(kernel_init, in_axis, out_axis),
                    bias_init=with_axes(bias_init, out_axis))


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    # use_fast_variance=False computes the variance as torch does, which matters for checkpoint parity.
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        use_fast_variance=False,
        scale_init=with_axes(nn.initializers.ones, "embed"),
        bias_init=with_axes(nn.initializers.zeros, "embed"),
        name=name,
    )


def drop_path(x: jax.Array, rate, deterministic: bool, rng_owner: nn.Module) -> jax.Array:
    """Stochastic depth: drops the whole residual branch per sample, scaled by 1 / keep (as timm).

    `rate` may be a traced scalar (a per-layer rate scanned over the stack).
    """
    if deterministic:
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng_owner.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


DROPOUT_IMPLS = ("threefry", "hash")


def _lowbias32(v: jax.Array) -> jax.Array:
    """Wellons' lowbias32 integer hash of uint32 values."""
    v = v ^ (v >> 16)
    v = v * jnp.uint32(0x7FEB352D)
    v = v ^ (v >> 15)
    v = v * jnp.uint32(0x846CA68B)
    return v ^ (v >> 16)


class HashDropout(nn.Module):
    """Dropout whose keep mask hashes each element's index with one 32-bit draw from the `dropout` rng
    (`_lowbias32`, a counter-based generator) instead of drawing threefry bits per element: on XLA:CPU about 6x
    cheaper (0.5 ns per element applied against 3.1 for threefry's bernoulli alone: `python -m
    benchmarks.profiles.casp_dropout`), the same keep rate, another mask."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
        index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
        threshold = jnp.uint32(min(int((1.0 - self.rate) * 2.0**32), 2**32 - 1))
        keep = _lowbias32(index * jnp.uint32(0x9E3779B9) + seed) < threshold
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)


def dropout_module(rate: float, impl: str = "threefry") -> nn.Module:
    """`nn.Dropout(rate)` (impl="threefry", jax.random's bits) or `HashDropout(rate)` (impl="hash"), created in
    the caller's scope (the default keeps nn.Dropout's name there, and so its random stream)."""
    if impl == "threefry":
        return nn.Dropout(rate)
    if impl == "hash":
        return HashDropout(rate)
    raise ValueError(f"dropout impl {impl!r}: expected one of {DROPOUT_IMPLS}")


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections (`[..., tokens, embed]`)."""

    num_heads: int
    head_dim: Optional[int] = None
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()
    dropout_impl: str = "threefry"  # of the attention weights' dropout (`dropout`)

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, deterministic: bool = True):
        embed = x.shape[-1]
        head_dim = self.head_dim or embed // self.num_heads
        projection = functools.partial(
            nn.DenseGeneral,
            features=(self.num_heads, head_dim),
            use_bias=self.qkv_bias,
            dtype=self.dtype,
            kernel_init=with_axes(self.kernel_init, "embed", "heads", "kv"),
            bias_init=with_axes(nn.initializers.zeros, "heads", "kv"),
        )
        q = projection(name="query")(x)
        k = projection(name="key")(x)
        v = projection(name="value")(x)
        dropout = None
        if self.dropout_rate > 0.0 and not deterministic:
            dropout = functools.partial(dropout_module(self.dropout_rate, self.dropout_impl), deterministic=False)
        out = dot_product_attention(q, k, v, mask, dropout)
        return nn.DenseGeneral(
            features=embed,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=with_axes(self.kernel_init, "heads", "kv", "embed"),
            bias_init=with_axes(nn.initializers.zeros, "embed"),
            name="out",
        )(out)


def dot_product_attention(q, k, v, mask=None, dropout: Optional[Callable] = None):
    """Softmax attention on `[batch..., tokens, heads, head_dim]`; `mask` broadcasts to `[..., heads, q, k]`.

    On a GPU in half precision (no dropout) it is cuDNN's fused kernel. Elsewhere it is two einsums over a
    head-major `[..., heads, tokens, head_dim]` layout with the softmax in float32: XLA:CPU runs dots whose
    batch dims lead at 3x the speed of `jax.nn.dot_product_attention`'s token-major einsums (measured at
    ViT-B/16's 16 x 203 tokens, forward and backward), and TPU / GPU compile either layout alike.
    """
    if dropout is None and _use_cudnn(q):
        try:
            return _flat_batch(jax.nn.dot_product_attention, q, k, v, mask, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError):
            pass  # a shape or mask cuDNN does not take: the einsums below
    heads_first = lambda t: jnp.swapaxes(t, -3, -2)
    logits = jnp.einsum("...hqd,...hkd->...hqk", heads_first(q), heads_first(k),
                        preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout is not None:
        weights = dropout(weights)
    out = jnp.einsum("...hqk,...hkd->...hqd", weights.astype(v.dtype), heads_first(v))
    return heads_first(out)


def _use_cudnn(q) -> bool:
    return jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128


def _flat_batch(attention, q, k, v, mask, **kwargs):
    """`attention` (one leading batch axis, as `jax.nn.dot_product_attention`) on `[batch..., T, H, D]`."""
    batch_shape = q.shape[:-3]
    flat = lambda t: t.reshape((-1,) + t.shape[-3:])
    if mask is not None:
        mask = jnp.broadcast_to(mask, batch_shape + mask.shape[-3:]).reshape((-1,) + mask.shape[-3:])
    out = attention(flat(q), flat(k), flat(v), mask=mask, **kwargs)
    return out.reshape(batch_shape + out.shape[1:])


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's GELU approximation, x * sigmoid(1.702 x): its weights were trained with it."""
    return x * jax.nn.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """Two-layer feed-forward block with exact (timm) or tanh-approximated GELU, or CLIP's QuickGELU."""

    hidden_dim: int
    approximate_gelu: bool = False
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    quick_gelu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        embed = x.shape[-1]
        x = nn.Dense(
            self.hidden_dim,
            dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.xavier_uniform(), "embed", "mlp"),
            bias_init=with_axes(nn.initializers.normal(1e-6), "mlp"),
            name="fc1",
        )(x)
        x = quick_gelu(x) if self.quick_gelu else nn.gelu(x, approximate=self.approximate_gelu)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = nn.Dense(
            embed,
            dtype=self.dtype,
            kernel_init=with_axes(nn.initializers.xavier_uniform(), "mlp", "embed"),
            bias_init=with_axes(nn.initializers.normal(1e-6), "embed"),
            name="fc2",
        )(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    num_heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-6
    approximate_gelu: bool = False
    qkv_bias: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    quick_gelu: bool = False

    @nn.compact
    def __call__(self, x, drop_path_rate=0.0, mask=None, deterministic: bool = True):
        y = layer_norm(self.layer_norm_eps, self.dtype, "norm1")(x)
        y = MultiHeadAttention(
            self.num_heads,
            qkv_bias=self.qkv_bias,
            dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            name="attn",
        )(y, mask, deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = x + drop_path(y, drop_path_rate, deterministic, self)
        y = layer_norm(self.layer_norm_eps, self.dtype, "norm2")(x)
        y = Mlp(self.mlp_dim, self.approximate_gelu, self.dropout_rate, self.dtype, self.quick_gelu, name="mlp")(
            y, deterministic)
        return x + drop_path(y, drop_path_rate, deterministic, self)


# Logical axes of the residual stream [batch, tokens, width]. Under `activation_sharding` (the trainer's
# and the evaluator's sharded steps) `constrain` pins them by the rules table, which splits the batch over the
# data axes, so that XLA keeps activations split by batch (not gathered) while FSDP gathers the weights.
# Elsewhere (per-sample `vmap`, population trials) it does nothing.
ACTIVATION = ("activation_batch", "activation_length", "activation_embed")
_ACTIVATION_SHARDING: contextvars.ContextVar = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh, rules):
    """While tracing a sharded step: the mesh and the logical-axis rules `constrain` maps activations with."""
    token = _ACTIVATION_SHARDING.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def constrain(x: jax.Array, names=ACTIVATION) -> jax.Array:
    """Pins the sharding of an activation by logical axis names: the first dim is the batch, the last the
    width; a [batch, frames, tokens, width] array keeps its extra dims unsplit, a [batch, width] one drops the
    token axis."""
    active = _ACTIVATION_SHARDING.get()
    if active is None:
        return x
    mesh, rules = active
    batch, *rest = names
    if x.ndim >= len(names):
        names = (batch,) + (None,) * (x.ndim - len(names)) + tuple(rest)
    else:
        names = (batch,) + tuple(rest[len(rest) - (x.ndim - 1):])
    spec = nn.logical_to_mesh_axes(names, rules)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


class _StackLayer(nn.Module):
    """One step of a `BlockStack`: the block, then the optional per-layer hook."""

    block: ModuleFactory
    hook: Optional[ModuleFactory]
    deterministic: bool
    return_hidden_states: bool

    @nn.compact
    def __call__(self, x, per_layer, mask):
        index, rate = per_layer
        x = self.block(name="block")(constrain(x), rate, mask, self.deterministic)
        if self.hook is not None:
            x = self.hook(name="hook")(x, index, self.deterministic)
        x = constrain(x)
        return x, (x if self.return_hidden_states else None)


_UNROLL_SCANS: contextvars.ContextVar = contextvars.ContextVar("unroll_scans", default=False)


@contextlib.contextmanager
def unrolled_scans():
    """While tracing: every fixed-length scan jaxemo builds (layer stacks: `BlockStack`, MMA-DFER's fusion
    layers; the steps of episodic adaptation; gradient accumulation) is fully unrolled in the program
    (`unroll=length`); parameters keep their stacked layout. For cost models: XLA's cost analysis and the TPU
    compiler's `optimal_seconds` count a loop's body once, so a scanned 24-layer stack reads as one layer.
    Trace a fresh `jax.jit` inside it: a function traced before keeps its scanned program."""
    token = _UNROLL_SCANS.set(True)
    try:
        yield
    finally:
        _UNROLL_SCANS.reset(token)


def scan_unroll(length: int) -> int:
    """The `unroll` of a scan of `length` steps: 1, or `length` inside `unrolled_scans()`."""
    return length if _UNROLL_SCANS.get() else 1


class BlockStack(nn.Module):
    """`depth` blocks with per-layer stochastic depth (linearly spaced up to `drop_path_rate`).

    With `scan=True` the layers run under `nn.scan`, so compile time does not grow with depth, and their
    parameters are stacked on a leading "layers" axis under `layers/`; with `scan=False` they live under
    `layers_0 ... layers_{depth-1}`. `scan_to_loop` / `loop_to_scan` convert between the two layouts.

    `hook`, if given, is a module factory called after every block as `hook(x, layer_index, deterministic)`;
    its parameters are per layer (stacked under scan). Returns the output and, if `return_hidden_states`,
    the `[depth, ...]` stack of every block's output.
    """

    depth: int
    block: ModuleFactory
    hook: Optional[ModuleFactory] = None
    scan: bool = True
    remat_policy: str = "none"
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, mask=None, deterministic: bool = True, return_hidden_states: bool = False):
        layer_cls = _remat(_StackLayer, self.remat_policy)
        rates = np.linspace(0.0, self.drop_path_rate, self.depth, dtype=np.float32)
        if self.scan:
            scanned = nn.scan(
                layer_cls,
                variable_axes={True: 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast),
                length=self.depth,
                unroll=scan_unroll(self.depth),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            per_layer = (jnp.arange(self.depth), jnp.asarray(rates))
            layer = scanned(self.block, self.hook, deterministic, return_hidden_states, name="layers")
            return layer(x, per_layer, mask)
        hidden = []
        for i in range(self.depth):
            layer = layer_cls(self.block, self.hook, deterministic, return_hidden_states, name=f"layers_{i}")
            x, h = layer(x, (i, float(rates[i])), mask)
            hidden.append(h)
        return x, (jnp.stack(hidden) if return_hidden_states else None)


def _remat(layer_cls, policy_name: str):
    if policy_name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={policy_name!r} is unknown; expected one of {sorted(REMAT_POLICIES)}")
    if policy_name == "none":
        return layer_cls
    return nn.remat(layer_cls, policy=REMAT_POLICIES[policy_name], prevent_cse=False)


def scan_to_loop(stack_params: dict, depth: int) -> dict:
    """`{"layers": stacked}` -> `{"layers_0": ..., "layers_{depth-1}": ...}` (a BlockStack's params)."""
    stacked = stack_params["layers"]
    rest = {k: v for k, v in stack_params.items() if k != "layers"}
    for i in range(depth):
        rest[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return rest


def loop_to_scan(stack_params: dict, depth: int) -> dict:
    """Inverse of `scan_to_loop`."""
    layers = [stack_params[f"layers_{i}"] for i in range(depth)]
    rest = {k: v for k, v in stack_params.items() if not k.startswith("layers_")}
    rest["layers"] = jax.tree.map(lambda *a: jnp.stack(a), *layers)
    return rest
