"""AdamW's weight-decay mask and layer-wise learning-rate decay (MAE / BEiT fine-tuning), through the one
optimizer factory."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import config_dict

from jaxemo import vit
from jaxemo.train import optim

TINY = dict(image_size=(16, 16), patch_size=(8, 8), width=8, depth=3, num_heads=2, mlp_dim=16, num_classes=4)


def adamw(**extra):
    config = config_dict.ConfigDict({"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.5,
                                     "schedule": "constant", **extra})
    return optim.make_optimizer(config, total_steps=10, steps_per_epoch=10)


def params(scan: bool = True):
    model = vit.ViT(**TINY, scan_layers=scan)
    return nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])


def one_step(optimizer, p, grads):
    updates, _ = optimizer.tx.update(grads, optimizer.tx.init(p), p)
    return optax.apply_updates(p, updates)


def test_plain_adamw_is_optax_adamw():
    p = params()
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), p)
    ours = one_step(adamw(), p, grads)
    tx = optax.adamw(0.1, weight_decay=0.5)
    reference = optax.apply_updates(p, tx.update(grads, tx.init(p), p)[0])
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_no_decay_on_biases_and_norms():
    p = jax.tree.map(lambda x: x + 1.0, params())  # every value non-zero, so decay shows
    zeros = jax.tree.map(jnp.zeros_like, p)
    moved = one_step(adamw(decay_exclude=("bias$", "scale$")), p, zeros)
    flat_p, flat_moved = (dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in (p, moved))
    for path, before in flat_p.items():
        name = optim._path_name(path)
        changed = not np.allclose(flat_moved[path], before)
        assert changed == (not name.endswith(("bias", "scale"))), name


def test_layer_decay_scales_each_block_by_its_depth():
    depth, decay = TINY["depth"], 0.5
    for scan in (True, False):
        p = params(scan)
        grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), p)
        optimizer = adamw(weight_decay=0.0, layer_decay=decay, layer_decay_depth=depth)
        step = jax.tree.map(lambda a, b: np.asarray(b - a), p, one_step(optimizer, p, grads))
        head = np.abs(step["head"]["kernel"]).max()  # layer depth + 1: factor 1
        np.testing.assert_allclose(np.abs(step["patch_embed"]["kernel"]).max(), head * decay ** (depth + 1), rtol=1e-4)
        np.testing.assert_allclose(np.abs(step["norm"]["scale"]).max(), head, rtol=1e-4)
        for i in range(depth):
            block = (jax.tree.map(lambda x: x[i], step["encoder"]["layers"]["block"]) if scan
                     else step["encoder"][f"layers_{i}"]["block"])
            np.testing.assert_allclose(np.abs(block["mlp"]["fc1"]["kernel"]).max(), head * decay ** (depth - i),
                                       rtol=1e-4)


def test_adam_weight_decay_is_torch_adam_l2():
    """MERTools trains with torch `Adam(weight_decay=1e-5)`: L2 in the gradient, not AdamW's decoupled decay."""
    import torch

    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    config = config_dict.ConfigDict({"name": "adam", "learning_rate": 0.05, "weight_decay": 0.3,
                                     "schedule": "constant"})
    tx = optim.make_optimizer(config, total_steps=10, steps_per_epoch=10).tx
    p, state = {"w": jnp.asarray(w0)}, None
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, p)
        p = optax.apply_updates(p, updates)
    w = torch.nn.Parameter(torch.tensor(w0))
    reference = torch.optim.Adam([w], lr=0.05, weight_decay=0.3)
    for g in grads:
        w.grad = torch.tensor(g)
        reference.step()
    np.testing.assert_allclose(np.asarray(p["w"]), w.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "weight_decay" in state.hyperparams  # injected: a population can draw it per trial
