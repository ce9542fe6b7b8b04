"""ViT shapes per variant, scan/loop equivalence, prompts, hooks and input validation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxemo import layers, vit

TINY = dict(image_size=(32, 32), width=32, depth=3, num_heads=4, mlp_dim=64, patch_size=(8, 8))


@pytest.mark.parametrize("variant,width,depth,heads", [
    ("Ti/16", 192, 12, 3), ("S/16", 384, 12, 6), ("B/16", 768, 12, 12), ("L/16", 1024, 24, 16),
    ("H/14", 1280, 32, 16),
])
def test_variant_output_shapes(variant, width, depth, heads):
    model = vit.create(variant, image_size=(224, 224), num_classes=7)
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    (logits, aux) = jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
    patch = int(variant.split("/")[1])
    tokens = 1 + (224 // patch) ** 2
    assert logits.shape == (2, 7)
    assert aux["tokens"].shape == (2, tokens, width)
    qkv = nn.unbox(variables["params"])["encoder"]["layers"]["block"]["attn"]["query"]["kernel"]
    assert qkv.shape == (depth, width, heads, width // heads)


def test_spectrogram_input_with_prompts_and_leading_axes():
    model = vit.create("B/16", image_size=(512, 128), in_channels=1, num_prompts=6, depth=1)
    clips = jnp.zeros((2, 3, 512, 128, 1))
    variables = jax.eval_shape(model.init, jax.random.key(0), clips)
    pooled, aux = jax.eval_shape(lambda v, x: model.apply(v, x), variables, clips)
    assert pooled.shape == (2, 3, 768)
    assert aux["tokens"].shape == (2, 3, 1 + 32 * 8 + 6, 768)  # AudioMAE grid + 6 prompts: 263 tokens
    assert variables["params"]["pos_embed"].value.shape == (1, 263, 768)


def _init(model, x):
    return nn.unbox(jax.jit(model.init)({"params": jax.random.key(0)}, x)["params"])


def _apply(model, params, x, **kwargs):
    """Jitted apply: one compilation instead of slow op-by-op dispatch."""
    static = ("deterministic", "return_hidden_states")
    return jax.jit(model.apply, static_argnames=static)({"params": params}, x, **kwargs)


def test_scan_and_loop_stacks_agree():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    scanned = vit.ViT(num_classes=5, num_prompts=2, **TINY)
    params = _init(scanned, x)
    params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
    looped_params = {**params, "encoder": layers.scan_to_loop(params["encoder"], TINY["depth"])}
    out_scan, aux_scan = _apply(scanned, params, x, return_hidden_states=True)
    out_loop, aux_loop = _apply(scanned.clone(scan_layers=False), looped_params, x, return_hidden_states=True)
    np.testing.assert_allclose(out_scan, out_loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux_scan["hidden_states"], aux_loop["hidden_states"], rtol=1e-5, atol=1e-5)
    roundtrip = layers.loop_to_scan(looped_params["encoder"], TINY["depth"])
    jax.tree.map(np.testing.assert_array_equal, roundtrip, params["encoder"])


def test_unrolled_scans_count_every_layer_and_compute_the_same():
    """`layers.unrolled_scans`: the same params and outputs, and XLA's FLOP count sees all `depth` layers (a
    scanned stack is priced as one layer), which is what the TPU cost-model predictions rely on."""
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    model = vit.ViT(num_classes=5, **{**TINY, "depth": 4})
    params = _init(model, x)
    def compiled():  # a new function each time: jit would reuse a program traced outside the context
        return jax.jit(lambda p, x: model.apply({"params": p}, x)[0]).lower(params, x).compile()

    scanned = compiled()
    with layers.unrolled_scans():
        assert layers.scan_unroll(4) == 4
        unrolled = compiled()
    assert layers.scan_unroll(4) == 1
    np.testing.assert_allclose(scanned(params, x), unrolled(params, x), rtol=1e-5, atol=1e-5)
    texts = [c.as_text() for c in (scanned, unrolled)]
    assert " while(" in texts[0] and " while(" not in texts[1]
    scanned_dots, unrolled_dots = (t.count(" dot(") for t in texts)  # one layer's or 4 layers', + the head's
    assert unrolled_dots - 1 == 4 * (scanned_dots - 1), (scanned_dots, unrolled_dots)


def test_loop_layout_matches_a_loop_initialised_model():
    x = jnp.ones((1, 32, 32, 3))
    looped = _init(vit.ViT(scan_layers=False, **TINY), x)
    assert sorted(k for k in looped["encoder"]) == ["layers_0", "layers_1", "layers_2"]
    scanned = layers.loop_to_scan(looped["encoder"], TINY["depth"])
    assert scanned["layers"]["block"]["mlp"]["fc1"]["kernel"].shape == (3, 32, 64)


class _CountingHook(nn.Module):
    """Adds a learned per-layer vector scaled by the layer index: exercises per-layer hook params."""

    @nn.compact
    def __call__(self, x, layer_index, deterministic):
        bias = self.param("bias", layers.with_axes(nn.initializers.ones, "embed"), (x.shape[-1],))
        return x + bias * jnp.asarray(layer_index, x.dtype)


@pytest.mark.parametrize("scan", [True, False])
def test_block_hook_runs_after_every_block(scan):
    x = jnp.zeros((1, 32, 32, 3))
    model = vit.ViT(block_hook=_CountingHook, scan_layers=scan, **TINY)
    params = _init(model, x)
    if scan:
        assert params["encoder"]["layers"]["hook"]["bias"].shape == (3, 32)
    else:
        assert params["encoder"]["layers_2"]["hook"]["bias"].shape == (32,)
    with_hook = _apply(model, params, x, return_hidden_states=True)[1]["hidden_states"]
    no_hook = _apply(vit.ViT(scan_layers=scan, **TINY), params, x, return_hidden_states=True)
    assert not np.allclose(with_hook[1], no_hook[1]["hidden_states"][1])


def test_sincos_positions_have_no_params_and_depend_on_grid():
    model = vit.ViT(pos_embedding="sincos", **TINY)
    params = _init(model, jnp.zeros((1, 32, 32, 3)))
    assert "pos_embed" not in params
    table = vit.sincos_pos_embed_2d(32, (4, 4))
    assert table.shape == (1, 17, 32) and np.all(table[0, 0] == 0)


def test_drop_path_is_active_only_in_training():
    model = vit.ViT(drop_path_rate=0.5, **TINY)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    params = _init(model, x)
    apply = jax.jit(lambda x, key, deterministic: model.apply(
        {"params": params}, x, deterministic=deterministic, rngs={"dropout": key})[0], static_argnums=2)
    np.testing.assert_array_equal(apply(x, jax.random.key(1), True), apply(x, jax.random.key(2), True))
    assert not np.allclose(apply(x, jax.random.key(1), False), apply(x, jax.random.key(2), False))


def test_remat_policy_gives_the_same_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    plain = vit.ViT(num_classes=3, **TINY)
    params = _init(plain, x)

    # A random projection of the tokens: their plain sum is constant through the final LayerNorm (scale 1 at
    # init), so its gradients were float rounding noise (~1e-6) rather than gradients (here up to ~170).
    weights = jax.random.normal(jax.random.key(1), (2, 17, 32))

    def grads(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x)[1]["tokens"] * weights)))(params)

    want, got = grads(plain), grads(plain.clone(remat_policy="full"))
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want))
    assert scale > 10  # real gradients; the key biases' are zero in exact arithmetic (softmax ignores them)
    # Rounding differs between the programs: ~1e-5 absolute seen (6e-5 on the largest, ~170); 1e-6 x scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale), got, want)


def test_every_param_carries_logical_axes():
    model = vit.ViT(num_classes=3, num_prompts=2, **TINY)
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    assert leaves and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
    for leaf in leaves:
        assert len(leaf.names) == len(leaf.value.shape)


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="'Q/16'.*expected"):
        vit.create("Q/16")
    model = vit.ViT(**TINY)
    with pytest.raises(ValueError, match=r"\[batch\.\.\., 32, 32, 3\].*\(2, 30, 32, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((2, 30, 32, 3)))
    with pytest.raises(ValueError, match="remat_policy='sometimes'"):
        vit.ViT(remat_policy="sometimes", **TINY).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
