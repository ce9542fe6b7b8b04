"""How much of CASP's adaptation time is dropout: one offline contrastive epoch (as the reference: two forward
passes per batch; both views in one pass; dropout off) and episodic vmapped adaptation (dropout on / off),
plus the cost of drawing the dropout masks (jax.random's generators and `layers.HashDropout`).

    python -m benchmarks.profiles.casp_dropout              # MOSI-sized: 1,284 clips, batch 24; 64 episodic samples
    python -m benchmarks.profiles.casp_dropout --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import casp as casp_config
from jaxemo import layers
from jaxemo.data import synthetic_sentiment
from jaxemo.systems import casp
from jaxemo.tta import core, methods, modes

DROPOUTS = ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "out_dropout")


@dataclasses.dataclass(frozen=True)
class OnePassContrastive(methods.Contrastive):
    """CASP's stage-1 loss with the full and the dropped view in one forward pass (the same math)."""

    def loss(self, model, frozen, adapted, batch, rng):
        drop_rng, rng = jax.random.split(rng)
        dropped = core.drop_modality(batch, drop_rng, self.per_sample_drop)
        both = {k: jnp.concatenate([batch[k], dropped[k]]) for k in core.INPUT_KEYS}
        _, rep = core.apply(model, frozen, adapted, both, rng, train=True)
        n = batch["text"].shape[0]
        return methods.nt_xent(rep[:n], rep[n:], self.temperature, core.row_mask(batch)), {}


def timed(fn, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return first, float(np.median(runs))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    config, model, frozen, adapted, samples = casp.adaptation_case(casp_config.get_config("synthetic"),
                                                                   8 if args.tiny else 64, args.tiny)
    data = modes.stack_source(synthetic_sentiment.make_sentiment(config.target, "target_train", config.seed))
    data = {k: v[:48] if args.tiny else v for k, v in data.items() if k in core.INPUT_KEYS}
    offline = casp.offline_config(config)
    batches = jax.device_put(modes.batched(data, offline.batch_size))
    no_dropout = model.clone(**dict.fromkeys(DROPOUTS, 0.0))
    tx = offline.optimizer.make()
    for name, method, net in (("reference (two passes)", methods.Contrastive(), model),
                              ("both views in one pass", OnePassContrastive(), model),
                              ("one pass, dropout off", OnePassContrastive(), no_dropout)):
        state = [adapted, tx.init(adapted)]

        def epoch(method=method, net=net, state=state):
            state[0], state[1], losses, _ = modes.adapt_epoch(method, net, offline.optimizer, frozen, state[0],
                                                              state[1], batches, jax.random.key(0))
            jax.block_until_ready(losses)

        first, median = timed(epoch, args.repeats)
        print(f"offline epoch, {name}: {median:.2f} s (first, compiling: {first:.1f} s)", flush=True)
    episodic = modes.EpisodicConfig(5, 4, core.OptimizerConfig(config.tta.learning_rate, config.tta.clip_norm))
    method = modes.episodic_method(methods.Contrastive())
    keys = modes.sample_keys(jax.random.key(0), np.arange(len(samples["text"])))
    for name, net in (("dropout on", model), ("dropout off", no_dropout)):
        run = jax.jit(lambda f, a, s, k, net=net: modes.episodic_batch(method, net, episodic, f, a, s, k))
        first, median = timed(lambda: jax.block_until_ready(run(frozen, adapted, samples, keys)), args.repeats)
        print(f"episodic K=5, {len(samples['text'])} samples vmapped, {name}: "
              f"{1e3 * median / len(samples['text']):.1f} ms per sample", flush=True)
    shape = (48, 8, 50, 50)  # one attention dropout mask of a batch of 24 x 2 views
    for name, draw in (("bernoulli (threefry)", lambda key: jax.random.bernoulli(key, 0.9, shape)),
                       ("16-bit draws", lambda key: jax.random.bits(key, shape, jnp.uint16) < 58982),
                       ("8-bit draws", lambda key: jax.random.bits(key, shape, jnp.uint8) < 230)):
        fn = jax.jit(draw)
        for impl in ("threefry2x32", "unsafe_rbg"):
            key = jax.random.key(0, impl=impl)
            _, median = timed(lambda: jax.block_until_ready(fn(key)), 10)
            print(f"mask {shape}, {name}, {impl}: {1e9 * median / np.prod(shape):.1f} ns per element")
    ones = jnp.ones(shape)
    hashed = jax.jit(lambda key: layers.HashDropout(0.1).apply({}, ones, False, rngs={"dropout": key}))
    _, median = timed(lambda: jax.block_until_ready(hashed(jax.random.key(0))), 10)
    print(f"mask {shape}, layers.HashDropout (applied): {1e9 * median / np.prod(shape):.1f} ns per element")


if __name__ == "__main__":
    main()
