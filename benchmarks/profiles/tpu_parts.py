"""What the TPU compiler's cost model blames: the parts of the paper-size steps compiled alone for one v5e chip.

    python -m benchmarks.profiles.tpu_parts                  # every part (minutes, on this CPU with libtpu)
    python -m benchmarks.profiles.tpu_parts --parts=attention_core,vit_block
    python -m benchmarks.profiles.tpu_parts --chained=vit_blocks1,vit_blocks2 --by_op=8

Each part is built from jaxemo's own modules, lowered for one chip of `v5e:16x16`
(`jax.experimental.topologies`; nothing runs), compiled with every scan unrolled, and read as
`benchmarks.tpu_predict` reads a whole step: `cost_analysis()['optimal_seconds']` through
`jaxemo.perf.priced_seconds`, whose floor is the compiled program's own FLOPs at the chip's bf16 peak (the
model's time can never be below it). Forward and backward unless the part says otherwise; bf16 compute,
float32 parameters. The model's figures, not measurements: they point at where a step's time goes.

Parts (ViT-B/16, 16 images of 224 px unless named): `vit_dense` the layer's four dense matmuls alone,
`attention_core` the two attention einsums and the softmax (12 heads of 64, 197 tokens), `vit_block` one
encoder block, `vit_blocks1` / `vit_blocks2` the model's layer stack (`layers.BlockStack`) of one and two
blocks on tokens,
without embedding or head (`_remat`: each block recomputed in the backward,
`remat_policy=full`; `_dots`: only the dense matmuls' outputs saved, the attention core and the elementwise ops
recomputed, `remat_policy=dots_no_batch`), `vit_depth1` / `vit_depth2` the whole ViT with one and two
layers (their difference is one layer inside the model),
`adamw_layer` optax's clipped AdamW update over one layer's float32 parameters,
`rand_augment` UniEmoX's on-device RandAugment (forward only), `wav2vec2` / `wav2vec2_encoder` wav2vec2-base on
4 clips of 5 s and its CNN feature encoder alone, `scan8` / `unrolled8` eight 4096-wide bf16 matmuls under
`lax.scan` read as is and unrolled (the reason every prediction unrolls).

`--by_op=N` also lists each part's N costliest source operations by the compiler's own per-instruction
estimate (`estimated_cycles` in the compiled HLO's backend config, at v5e's clock; instructions grouped by
their JAX `op_name`, layer indices and loop wrappers removed). Those cycles are not the predicted time: the
model overlaps instructions and prices the asynchronous copies between HBM and on-chip memory (which carry no
cycles) in its schedule, so their sum can fall on either side of it. `--chained=A,B` prints, per source
operation, what part B (two chained copies of A) costs beyond twice A.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxemo import layers, perf, vit
from jaxemo.data import augment
from jaxemo.models import wav2vec2
from jaxemo.train import sharding

TOPOLOGY = "v5e:16x16"
IMAGES, TOKENS, WIDTH, HEADS, MLP = 16, 197, 768, 12, 3072
BF16 = jnp.bfloat16
V5E_CLOCK_HZ = 1.5e9  # 197 TFLOP/s = 4 MXUs x 128 x 128 multiply-adds x 2 x 1.5 GHz


def _grad(apply):
    """fn(params, x) -> grads of sum(apply(params, x)) w.r.t. params and x (forward and backward)."""
    def fn(params, x):
        return jax.grad(lambda p, x: jnp.sum(apply(p, x).astype(jnp.float32)), argnums=(0, 1))(params, x)
    return fn


def _module_part(module, x_shape, x_dtype=BF16):
    """(forward-and-backward fn, abstract params, abstract input) of a Flax module on one input."""
    x = jax.ShapeDtypeStruct(x_shape, x_dtype)
    init = lambda: module.init(jax.random.key(0), jnp.zeros(x_shape, x_dtype))["params"]  # noqa: E731
    params = nn.unbox(jax.eval_shape(init))
    return _grad(lambda p, x: _first(module.apply({"params": p}, x))), params, x


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def parts() -> dict:
    """name -> (fn, example args as ShapeDtypeStructs without sharding)."""
    out = {}

    def dense4(p, x):
        qkv = jnp.einsum("btd,de->bte", x, p["qkv"].astype(BF16))
        y = jnp.einsum("btd,de->bte", qkv[..., :WIDTH], p["out"].astype(BF16))
        h = jnp.einsum("btd,de->bte", y, p["fc1"].astype(BF16))
        return jnp.einsum("bte,ed->btd", h, p["fc2"].astype(BF16))

    dense_params = {"qkv": jax.ShapeDtypeStruct((WIDTH, 3 * WIDTH), jnp.float32),
                    "out": jax.ShapeDtypeStruct((WIDTH, WIDTH), jnp.float32),
                    "fc1": jax.ShapeDtypeStruct((WIDTH, MLP), jnp.float32),
                    "fc2": jax.ShapeDtypeStruct((MLP, WIDTH), jnp.float32)}
    tokens = jax.ShapeDtypeStruct((IMAGES, TOKENS, WIDTH), BF16)
    out["vit_dense"] = (_grad(dense4), (dense_params, tokens))

    def attention_core(qkv, _):
        q, k, v = (qkv[..., i, :, :] for i in range(3))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(WIDTH // HEADS)
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores).astype(BF16), v)

    qkv = jax.ShapeDtypeStruct((IMAGES, TOKENS, 3, HEADS, WIDTH // HEADS), BF16)
    out["attention_core"] = (_grad(attention_core), (qkv, jax.ShapeDtypeStruct((), jnp.float32)))

    block = layers.EncoderBlock(HEADS, MLP, dtype=BF16)
    fn, params, x = _module_part(block, (IMAGES, TOKENS, WIDTH))
    out["vit_block"] = (fn, (params, x))
    for depth in (1, 2):
        for remat, suffix in (("none", ""), ("full", "_remat"), ("dots_no_batch", "_dots")):
            stack = layers.BlockStack(depth, functools.partial(layers.EncoderBlock, HEADS, MLP, dtype=BF16),
                                      remat_policy=remat)
            fn, params, x = _module_part(stack, (IMAGES, TOKENS, WIDTH))
            out[f"vit_blocks{depth}{suffix}"] = (fn, (params, x))
    for depth in (1, 2):
        model = vit.create("B/16", depth=depth, dtype=BF16, num_classes=1000)
        fn, params, x = _module_part(model, (IMAGES, 224, 224, 3), jnp.float32)
        out[f"vit_depth{depth}"] = (fn, (params, x))

    layer_params = jax.eval_shape(lambda: nn.unbox(block.init(jax.random.key(0), jnp.zeros((1, TOKENS, WIDTH)))))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.05))
    opt_state = jax.eval_shape(tx.init, layer_params["params"])

    def adamw(params, grads_and_state):
        grads, state = grads_and_state
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    out["adamw_layer"] = (adamw, (layer_params["params"], (layer_params["params"], opt_state)))

    images = jax.ShapeDtypeStruct((IMAGES, 224, 224, 3), jnp.float32)
    out["rand_augment"] = (lambda key, x: augment.rand_augment(key, x),
                           (jax.ShapeDtypeStruct((), jax.random.key(0).dtype), images))

    config = wav2vec2.Wav2Vec2Config.preset("base", dtype="bfloat16", conv_impl="xla")
    clips = (4, 5 * 16000)
    fn, params, x = _module_part(wav2vec2.Wav2Vec2Model(config), clips, jnp.float32)
    out["wav2vec2"] = (fn, (params, x))
    fn, params, x = _module_part(wav2vec2.FeatureEncoder(config), clips, jnp.float32)
    out["wav2vec2_encoder"] = (fn, (params, x))

    def stack(ws, x, scanned: bool):
        body = lambda h, w: (jnp.tanh(h @ w), None)  # noqa: E731
        return jax.lax.scan(body, x, ws, unroll=scanned is False)[0]

    ws = jax.ShapeDtypeStruct((8, 4096, 4096), BF16)
    h = jax.ShapeDtypeStruct((8192, 4096), BF16)
    out["scan8"] = (functools.partial(stack, scanned=True), (ws, h))
    out["unrolled8"] = (functools.partial(stack, scanned=False), (ws, h))
    return out


def predict(fn, args, mesh) -> dict:
    """The part compiled for the one chip of `mesh` (scans unrolled unless the part asks for them)."""
    on_chip = NamedSharding(mesh, P())
    placed = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_chip), args)
    compiled = jax.jit(fn).lower(*placed).compile()
    cost = compiled.cost_analysis() or {}
    flops = float(cost.get("flops", 0.0))
    floor = flops / perf.TPU_TOPOLOGIES[TOPOLOGY].peak_flops
    priced, unpriced = perf.priced_seconds(float(cost.get("optimal_seconds", float("nan"))), floor)
    return {"flops": flops, "floor_s": floor, "predicted_s": priced, "unpriced": unpriced,
            "bytes": float(cost.get("bytes accessed", float("nan"))), "cycles": cycles_by_op(compiled.as_text())}


def _source_op(op_name: str) -> str:
    """An HLO instruction's JAX `op_name`, with the jit wrapper, layer indices and loop/call wrappers removed, so
    that the same operation of a scanned, unrolled or rematerialised layer reads the same."""
    wrappers = r"jit\([^)]*\)/|layers_\d+/?|while/body/|closed_call/|checkpoint/|rematted_computation/"
    name = re.sub(wrappers, "", op_name)
    return name or "(no op_name)"


def cycles_by_op(hlo_text: str) -> collections.Counter:
    """Source operation -> the compiler's estimated cycles summed over the entry computation's instructions."""
    entry = re.search(r"^ENTRY .*?^}", hlo_text, re.S | re.M)
    totals = collections.Counter()
    for line in entry.group(0).splitlines()[1:-1] if entry else []:
        cycles = re.search(r'"estimated_cycles":"(\d+)"', line)
        if cycles:
            op_name = re.search(r'op_name="([^"]*)"', line)
            totals[_source_op(op_name.group(1) if op_name else "")] += int(cycles.group(1))
    return totals


def _cycles_ms(cycles: float) -> float:
    return 1e3 * cycles / V5E_CLOCK_HZ


def print_by_op(name: str, row: dict, top: int) -> None:
    cycles = row["cycles"]
    print(f"\n{name}: estimated cycles of all instructions {_cycles_ms(sum(cycles.values())):.3f} ms at "
          f"{V5E_CLOCK_HZ / 1e9:.1f} GHz (predicted {1e3 * row['predicted_s']:.3f} ms); the costliest:")
    for op, c in cycles.most_common(top):
        print(f"  {_cycles_ms(c):7.3f} ms  {op}")


def print_chained(single: str, chained: str, rows: dict, top: int) -> None:
    a, b = rows[single]["cycles"], rows[chained]["cycles"]
    excess = {op: b[op] - 2 * a[op] for op in set(a) | set(b)}
    total = sum(excess.values())
    predicted = rows[chained]["predicted_s"] - 2 * rows[single]["predicted_s"]
    print(f"\n{chained} beyond twice {single}: predicted {1e3 * predicted:+.3f} ms, of which on instructions' "
          f"cycles {_cycles_ms(total):+.3f} ms; by source operation:")
    for op, c in sorted(excess.items(), key=lambda kv: -abs(kv[1]))[:top]:
        print(f"  {_cycles_ms(c):+7.3f} ms  {op}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="", help="comma-separated (default: all)")
    p.add_argument("--by_op", type=int, default=0, help="list each part's N costliest source operations")
    p.add_argument("--chained", default="", help="A,B: what part B costs beyond twice part A, by source operation")
    args = p.parse_args(argv)
    topology = sharding.topology_mesh(TOPOLOGY)
    mesh = Mesh(np.asarray(topology.devices.flat[:1]), ("chip",))
    every = parts()
    chained = [n for n in args.chained.split(",") if n]
    if chained and len(chained) != 2:
        raise ValueError(f"--chained={args.chained!r}: expected two parts, A,B")
    names = [n for n in args.parts.split(",") if n] or ([] if chained else list(every))
    names += [n for n in chained if n not in names]
    unknown = sorted(set(names) - set(every))
    if unknown:
        raise ValueError(f"--parts: unknown {unknown}; expected some of {sorted(every)}")
    print(f"| part (one {TOPOLOGY} chip; the compiler's model) | GFLOP | floor ms | predicted ms | of floor | "
          "unpriced ops | GB accessed |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for name in names:
        fn, example = every[name]
        with layers.unrolled_scans():
            rows[name] = row = predict(fn, example, mesh)
        share = row["floor_s"] / row["predicted_s"] if row["predicted_s"] else float("nan")
        print(f"| {name} | {row['flops'] / 1e9:.2f} | {1e3 * row['floor_s']:.3f} | "
              f"{1e3 * row['predicted_s']:.3f} | "
              f"{100 * share:.0f}% | {row['unpriced']} | {row['bytes'] / 1e9:.2f} |", flush=True)
    for name in names if args.by_op else ():
        print_by_op(name, rows[name], args.by_op)
    if chained:
        print_chained(*chained, rows, args.by_op or 12)
    return rows


if __name__ == "__main__":
    main()
