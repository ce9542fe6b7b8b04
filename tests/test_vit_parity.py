"""Numerical parity of jaxemo's ViT with HuggingFace / timm-layout PyTorch ViTs after weight conversion."""

import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxemo.convert.vit import fit_pos_embed, from_hf_vit, from_timm_vit, to_timm_vit  # noqa: E402
from jaxemo.vit import ViT, resize_pos_embed, sincos_pos_embed_2d  # noqa: E402

WIDTH, DEPTH, HEADS, MLP, PATCH = 64, 3, 4, 128, 8
TOL = dict(atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ helpers


def hf_config(image_size=(32, 32), channels=3, qkv_bias=True, **overrides):
    return transformers.ViTConfig(
        hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=MLP,
        image_size=image_size, patch_size=PATCH, num_channels=channels, layer_norm_eps=1e-6, hidden_act="gelu",
        qkv_bias=qkv_bias, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides,
    )


def perturbed(model, seed=0):
    """HF init leaves LN at 1/0 and biases at 0; random offsets make every parameter matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def numpy_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def checkpoint_names(state):
    """transformers>=5 in-memory names -> the names stored in hub ViT checkpoints."""
    renames = [(r"(^|\.)layers\.(\d+)\.", r"\1encoder.layer.\2."), (r"attention\.([qkv])_proj", None),
               (r"attention\.o_proj", "attention.output.dense"), (r"mlp\.fc1", "intermediate.dense"),
               (r"mlp\.fc2", "output.dense")]
    qkv = {"q": "query", "k": "key", "v": "value"}

    def rename(key):
        for pattern, repl in renames:
            repl = repl or (lambda m: "attention.attention." + qkv[m.group(1)])
            key = re.sub(pattern, repl, key)
        return key

    return {rename(k): v for k, v in state.items()}


def timm_names(state, depth=DEPTH):
    """A timm-layout state dict (fused qkv) holding the same weights as a transformers>=5 ViTModel."""
    out = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    for i in range(depth):
        hf, timm = f"layers.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[timm + f"attn.qkv.{part}"] = np.concatenate(
                [state[hf + f"attention.{n}_proj.{part}"] for n in "qkv"])
            for src, dst in (("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                             ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[timm + f"{dst}.{part}"] = state[hf + f"{src}.{part}"]
    return out


def jax_vit(image_size=(32, 32), channels=3, scan=True, **overrides):
    return ViT(image_size=image_size, in_channels=channels, patch_size=(PATCH, PATCH), width=WIDTH, depth=DEPTH,
               num_heads=HEADS, mlp_dim=MLP, layer_norm_eps=1e-6, approximate_gelu=False, scan_layers=scan,
               **overrides)


def run_jax(model, params, pixel_values):
    images = jnp.asarray(pixel_values.numpy().transpose(0, 2, 3, 1))  # NCHW -> NHWC
    return model.apply({"params": params}, images, return_hidden_states=True)


def run_hf(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values, output_hidden_states=True)


def assert_matches_hf(hf_out, aux):
    hidden = [h.numpy() for h in hf_out.hidden_states]
    np.testing.assert_allclose(np.asarray(aux["embeddings"]), hidden[0], **TOL)
    assert aux["hidden_states"].shape[0] == len(hidden) - 1
    for i, h in enumerate(hidden[1:]):
        np.testing.assert_allclose(np.asarray(aux["hidden_states"][i]), h, **TOL, err_msg=f"block {i}")
    np.testing.assert_allclose(np.asarray(aux["tokens"]), hf_out.last_hidden_state.numpy(), **TOL)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == np.float32 and y.dtype == np.float32
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def hf_vit():
    torch.manual_seed(0)
    return perturbed(transformers.ViTModel(hf_config(), add_pooling_layer=False))


@pytest.fixture(scope="module")
def pixels():
    return torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))


# ------------------------------------------------------------------------------------- HF ViT parity


@pytest.mark.parametrize("scan", [True, False])
def test_hf_vit_matches(hf_vit, pixels, scan):
    params = from_hf_vit(hf_vit.state_dict(), depth=DEPTH, num_heads=HEADS, scan=scan)
    encoder_keys = set(params["encoder"])
    assert encoder_keys == ({"layers"} if scan else {f"layers_{i}" for i in range(DEPTH)})
    _, aux = run_jax(jax_vit(scan=scan), params, pixels)
    assert_matches_hf(run_hf(hf_vit, pixels), aux)


def test_hf_checkpoint_names_give_same_params(hf_vit):
    state = numpy_state(hf_vit)
    old = checkpoint_names(state)
    assert "encoder.layer.2.attention.attention.value.bias" in old and "encoder.layer.0.output.dense.weight" in old
    assert_trees_equal(from_hf_vit(old, DEPTH, HEADS), from_hf_vit(state, DEPTH, HEADS))


@pytest.mark.parametrize("names", ["v5", "checkpoint"])
def test_hf_classifier_logits(pixels, names):
    torch.manual_seed(1)
    model = perturbed(transformers.ViTForImageClassification(hf_config(num_labels=5)), seed=1)
    state = numpy_state(model) if names == "v5" else checkpoint_names(numpy_state(model))
    params = from_hf_vit(state, DEPTH, HEADS, prefix="vit.")
    assert params["head"]["kernel"].shape == (WIDTH, 5)
    logits, aux = run_jax(jax_vit(num_classes=5, pool="token"), params, pixels)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    np.testing.assert_allclose(np.asarray(logits), expected, **TOL)


def test_vit_without_qkv_bias_matches(pixels):
    torch.manual_seed(3)
    model = perturbed(transformers.ViTModel(hf_config(qkv_bias=False), add_pooling_layer=False), seed=3)
    params = from_hf_vit(model.state_dict(), DEPTH, HEADS)
    assert "bias" not in params["encoder"]["layers"]["block"]["attn"]["query"]
    _, aux = run_jax(jax_vit(qkv_bias=False), params, pixels)
    assert_matches_hf(run_hf(model, pixels), aux)
    timm = to_timm_vit(params)
    assert "blocks.0.attn.qkv.bias" not in timm
    assert_trees_equal(from_timm_vit(timm, HEADS)[0], params)


def test_spectrogram_vit_matches():
    """1-channel, non-square input (64 x 32) as AudioMAE-style spectrogram encoders use."""
    torch.manual_seed(2)
    model = perturbed(transformers.ViTModel(hf_config(image_size=(64, 32), channels=1), add_pooling_layer=False),
                      seed=2)
    spec = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 1, 64, 32)).astype(np.float32))
    params = from_hf_vit(model.state_dict(), DEPTH, HEADS)
    assert params["patch_embed"]["kernel"].shape == (PATCH, PATCH, 1, WIDTH)
    _, aux = run_jax(jax_vit(image_size=(64, 32), channels=1), params, spec)
    assert_matches_hf(run_hf(model, spec), aux)


# ----------------------------------------------------------------------------------------- timm layout


def test_timm_layout_matches_hf(hf_vit, pixels):
    state = timm_names(numpy_state(hf_vit))
    params, unused = from_timm_vit(state, HEADS)
    assert unused == []
    assert_trees_equal(params, from_hf_vit(hf_vit.state_dict(), DEPTH, HEADS))
    _, aux = run_jax(jax_vit(), params, pixels)
    assert_matches_hf(run_hf(hf_vit, pixels), aux)


@pytest.mark.parametrize("scan", [True, False])
def test_timm_round_trip(hf_vit, scan):
    state = timm_names(numpy_state(hf_vit))
    rng = np.random.default_rng(3)
    state["head.weight"] = rng.standard_normal((7, WIDTH)).astype(np.float32)
    state["head.bias"] = rng.standard_normal(7).astype(np.float32)
    params, _ = from_timm_vit(state, HEADS, scan=scan)
    back = to_timm_vit(params, scan=scan)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("scan", [True, False])
def test_export_of_initialised_model_round_trips(scan):
    """`to_timm_vit` takes params shaped like `model.init`'s (logically partitioned boxes, jax arrays)."""
    model = jax_vit(scan=scan, num_classes=3)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.default_rng(6)  # random values instead of a (slow) real init; the boxes are kept
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)
    assert isinstance(params["norm"]["scale"], nn.Partitioned)
    back, unused = from_timm_vit(to_timm_vit(params, scan=scan), HEADS, scan=scan)
    assert unused == []
    assert_trees_equal(back, jax.tree.map(np.asarray, nn.unbox(params)))


def test_bfloat16_tensors_are_accepted(hf_vit):
    state = {k: torch.from_numpy(v).bfloat16() for k, v in timm_names(numpy_state(hf_vit)).items()}
    params, _ = from_timm_vit(state, HEADS)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    np.testing.assert_array_equal(params["cls_token"], state["cls_token"].float().numpy())


def test_timm_reports_unused_keys(hf_vit):
    state = {f"module.{k}": v for k, v in timm_names(numpy_state(hf_vit)).items()}
    state["module.decoder_embed.weight"] = np.zeros((32, WIDTH), np.float32)
    state["module.mask_token"] = np.zeros((1, 1, 32), np.float32)
    params, unused = from_timm_vit(state, HEADS, prefix="module.")
    assert unused == ["module.decoder_embed.weight", "module.mask_token"]
    assert params["encoder"]["layers"]["block"]["norm1"]["scale"].shape == (DEPTH, WIDTH)


def test_timm_fc_norm_used_when_norm_absent(hf_vit):
    state = timm_names(numpy_state(hf_vit))
    state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
    params, unused = from_timm_vit(state, HEADS)
    assert unused == []
    np.testing.assert_array_equal(params["norm"]["scale"], state["fc_norm.weight"])


def test_missing_key_raises(hf_vit):
    state = timm_names(numpy_state(hf_vit))
    del state["blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.qkv\.weight.*timm"):
        from_timm_vit(state, HEADS)
    hf_state = checkpoint_names(numpy_state(hf_vit))
    del hf_state["encoder.layer.0.layernorm_after.bias"]
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.layernorm_after\.bias"):
        from_hf_vit(hf_state, DEPTH, HEADS)
    classifier_state = {f"vit.{k}": v for k, v in numpy_state(hf_vit).items()}
    with pytest.raises(ValueError, match=r"'embeddings\.cls_token'.*prefix=''.*prefix='vit\.'"):
        from_hf_vit(classifier_state, DEPTH, HEADS)  # forgot prefix="vit."


def test_shape_mismatch_and_extra_layers_raise(hf_vit):
    state = timm_names(numpy_state(hf_vit))
    state["blocks.2.mlp.fc2.weight"] = np.zeros((WIDTH, MLP + 1), np.float32)
    with pytest.raises(ValueError, match=r"blocks\.2\.mlp\.fc2\.weight.*\(64, 129\).*\(64, 128\)"):
        from_timm_vit(state, HEADS)
    with pytest.raises(ValueError, match=r"layers\.2\."):  # depth too small must not silently truncate
        from_hf_vit(hf_vit.state_dict(), DEPTH - 1, HEADS)


def test_converter_does_not_import_torch():
    code = "import sys, jaxemo.convert.vit; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------- position embeddings


def torch_resize(pos_embed, old_grid, new_grid, num_prefix):
    grid = torch.from_numpy(pos_embed[:, num_prefix:]).reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False,
                                           antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1]).numpy()
    return np.concatenate([pos_embed[:, :num_prefix], grid], axis=1)


@pytest.mark.parametrize("old_grid, new_grid", [((64, 8), (32, 8)), ((7, 7), (14, 14)), ((6, 5), (4, 9))])
def test_resize_pos_embed_matches_torch(old_grid, new_grid):
    pos = np.random.default_rng(4).standard_normal((1, 1 + old_grid[0] * old_grid[1], 16)).astype(np.float32)
    ours = resize_pos_embed(pos, old_grid, new_grid, num_prefix=1)
    assert ours.shape == (1, 1 + new_grid[0] * new_grid[1], 16)
    np.testing.assert_array_equal(ours[:, :1], pos[:, :1])
    np.testing.assert_allclose(ours, torch_resize(pos, old_grid, new_grid, 1), atol=1e-5, rtol=1e-5)


def test_fit_pos_embed_appends_prompt_positions():
    pos = np.random.default_rng(5).standard_normal((1, 1 + 7 * 7, 16)).astype(np.float32)
    table = fit_pos_embed(torch.from_numpy(pos), (7, 7), (14, 14), num_extra=3, rng=11)
    assert table.shape == (1, 1 + 14 * 14 + 3, 16) and table.dtype == np.float32
    np.testing.assert_array_equal(table[:, :-3], resize_pos_embed(pos, (7, 7), (14, 14)))
    expected = np.random.default_rng(11).standard_normal((1, 3, 16)).astype(np.float32)
    np.testing.assert_array_equal(table[:, -3:], expected)
    np.testing.assert_array_equal(fit_pos_embed(pos, (7, 7), (7, 7)), pos)


def mae_sincos_2d(embed_dim, grid_h, grid_w):
    """MAE / AudioMAE get_2d_sincos_pos_embed (with a CLS row), rewritten from its formula."""

    def one_axis(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64)))
    emb = np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)


def test_sincos_matches_mae_formula():
    ours = sincos_pos_embed_2d(32, (5, 3), num_prefix=1)
    assert ours.shape == (1, 1 + 15, 32)
    np.testing.assert_allclose(ours[0], mae_sincos_2d(32, 5, 3), atol=1e-6)
