"""jaxemo's MAE against transformers' `ViTMAEForPreTraining` (random weights, the same masking noise), and the
MAE checkpoint converters (transformers and official MAE / timm naming, encoder-only and full)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxemo import vit
from jaxemo.convert import mae as convert_mae
from jaxemo.models import mae

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = dict(image_size=(32, 32), patch_size=(8, 8), width=32, depth=2, num_heads=2, mlp_dim=64, decoder_width=16,
             decoder_depth=2, decoder_heads=2, decoder_mlp_dim=48)
BATCH = 3


def hf_model(norm_pix_loss: bool, mask_ratio: float = 0.75):
    config = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=48, layer_norm_eps=1e-6, hidden_act="gelu", mask_ratio=mask_ratio,
        norm_pix_loss=norm_pix_loss, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # LayerNorms, biases and the mask token off their init
        for name, p in model.named_parameters():
            if "pos_embed" not in name and "position_embeddings" not in name:
                p.add_(0.05 * torch.randn_like(p))
        # transformers 5 leaves the fixed sin-cos tables at zero in a randomly initialised model; the hub's
        # checkpoints hold MAE's tables, which these are.
        model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(vit.sincos_pos_embed_2d(32, (4, 4))))
        model.decoder.decoder_pos_embed.copy_(torch.from_numpy(vit.sincos_pos_embed_2d(16, (4, 4))))
    return model


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32)
    noise = rng.uniform(size=(BATCH, 16)).astype(np.float32)
    return images, noise


def run_hf(model, images, noise):
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        out = model(pixels, noise=torch.from_numpy(noise), output_hidden_states=True)
        latent = model.vit(pixels, noise=torch.from_numpy(noise)).last_hidden_state
    return out, latent.numpy()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_mae_matches_transformers_vitmae(inputs, norm_pix_loss):
    images, noise = inputs
    hf = hf_model(norm_pix_loss)
    params = convert_mae.from_hf_mae(hf.state_dict(), num_heads=2, decoder_heads=2)
    model = mae.MAE(**SIZES, norm_pix_loss=norm_pix_loss)
    loss, aux = jax.jit(lambda p, x, n: model.apply({"params": p}, x, noise=n, return_hidden_states=True))(
        params, images, noise)
    out, latent = run_hf(hf, images, noise)
    np.testing.assert_array_equal(aux["mask"], out.mask.numpy())
    np.testing.assert_array_equal(aux["ids_restore"], out.ids_restore.numpy())
    for i in range(SIZES["depth"]):  # every encoder block's output, on the visible tokens
        np.testing.assert_allclose(aux["hidden_states"][i], out.hidden_states[i + 1].numpy(), atol=1e-5)
    np.testing.assert_allclose(aux["latent"], latent, atol=1e-5)
    np.testing.assert_allclose(aux["pred"], out.logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(float(loss), float(out.loss), rtol=1e-5)


def timm_named(hf_state: dict) -> dict:
    """The same weights under the official MAE names (fused qkv), as `mae_visualize_vit_*.pth` holds them."""
    s = {k: v.numpy() for k, v in hf_state.items()}
    out = {"cls_token": s["vit.embeddings.cls_token"], "pos_embed": s["vit.embeddings.position_embeddings"],
           "patch_embed.proj.weight": s["vit.embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": s["vit.embeddings.patch_embeddings.projection.bias"],
           "norm.weight": s["vit.layernorm.weight"], "norm.bias": s["vit.layernorm.bias"],
           "mask_token": s["decoder.mask_token"], "decoder_pos_embed": s["decoder.decoder_pos_embed"]}
    for name in ("decoder_embed", "decoder_norm", "decoder_pred"):
        out[f"{name}.weight"], out[f"{name}.bias"] = s[f"decoder.{name}.weight"], s[f"decoder.{name}.bias"]
    for src, dst, depth in (("vit.layers", "blocks", 2), ("decoder.decoder_layers", "decoder_blocks", 2)):
        for i in range(depth):
            a, b = f"{src}.{i}.", f"{dst}.{i}."
            for part in ("weight", "bias"):
                out[b + f"attn.qkv.{part}"] = np.concatenate([s[a + f"attention.{p}_proj.{part}"] for p in "qkv"])
                for theirs, ours in (("attention.o_proj", "attn.proj"), ("layernorm_before", "norm1"),
                                     ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                    out[b + f"{ours}.{part}"] = s[a + f"{theirs}.{part}"]
    return out


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_official_mae_naming_full_and_encoder_only():
    hf = hf_model(False)
    from_hf = convert_mae.from_hf_mae(hf.state_dict(), num_heads=2, decoder_heads=2)
    full = timm_named(hf.state_dict())
    params, unused = convert_mae.from_timm_mae(full, num_heads=2, decoder_heads=2)
    assert unused == []
    assert_trees_equal(params, from_hf)

    encoder_only = {k: v for k, v in full.items() if not k.startswith(("decoder_", "mask_token"))}
    encoder_only["head.weight"] = np.zeros((10, 32), np.float32)  # a fine-tuned checkpoint's extra head
    encoder_only["head.bias"] = np.zeros((10,), np.float32)
    encoder, unused = convert_mae.from_timm_mae(encoder_only, num_heads=2)
    assert set(encoder) == {"encoder"} and unused == []
    model = mae.MAE(**SIZES)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                                               jnp.zeros((1, 32, 32, 3))))["params"]
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.unbox(shapes))
    merged = convert_mae.merge_encoder(init, encoder)
    assert_trees_equal(merged["encoder"], from_hf["encoder"])
    assert_trees_equal(merged["decoder"], init["decoder"])  # the decoder starts from the model's init


def test_converter_errors_name_the_key_and_the_shapes():
    full = timm_named(hf_model(False).state_dict())
    missing = {k: v for k, v in full.items() if k != "blocks.1.mlp.fc2.weight"}
    with pytest.raises(ValueError, match=r"no key 'blocks\.1\.mlp\.fc2\.weight'"):
        convert_mae.from_timm_mae(missing, num_heads=2, decoder_heads=2)
    wrong = dict(full, **{"decoder_pred.weight": np.zeros((7, 16), np.float32),
                          "decoder_pred.bias": np.zeros((7,), np.float32)})
    params, _ = convert_mae.from_timm_mae(wrong, num_heads=2, decoder_heads=2)  # a head of any size converts...
    init, _ = convert_mae.from_timm_mae(full, num_heads=2, decoder_heads=2)
    with pytest.raises(ValueError, match=r"decoder_pred/kernel: checkpoint shape \(16, 7\), model shape \(16, 192\)"):
        convert_mae.merge_encoder(init, params)  # ...and is refused where the model's shape differs
    learned = dict(full, pos_embed=full["pos_embed"] + 0.5)
    with pytest.raises(ValueError, match="pos_embed: not MAE's fixed 2-D sin-cos table"):
        convert_mae.from_timm_mae(learned, num_heads=2)


def test_masking_is_per_sample_static_and_the_loss_sees_only_hidden_patches():
    model = mae.MAE(**SIZES, mask_ratio=0.75)
    images = jnp.asarray(np.random.default_rng(1).standard_normal((4, 32, 32, 3)), jnp.float32)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, images)
    apply = jax.jit(lambda v, x, key: model.apply(v, x, rngs={"masking": key}))
    loss, aux = apply(variables, images, jax.random.key(2))
    assert aux["mask"].shape == (4, 16) and aux["pred"].shape == (4, 16, 8 * 8 * 3)
    np.testing.assert_array_equal(aux["mask"].sum(axis=1), [12] * 4)  # int(16 * 0.25) = 4 visible
    assert len({tuple(m) for m in np.asarray(aux["mask"])}) > 1  # each sample its own mask
    assert aux["latent"].shape == (4, 1 + 4, 32) and aux["projected_cls"].shape == (4, 16)
    # Changing the pixels of a visible patch changes no term of the loss's targets.
    visible = int(np.argmin(np.asarray(aux["mask"][0])))
    row, col = divmod(visible, 4)
    edited = images.at[0, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].set(9.0)
    target_only = lambda x: mae.reconstruction_loss(x, aux["pred"], aux["mask"], (8, 8), False)
    np.testing.assert_allclose(float(target_only(edited)), float(target_only(images)), rtol=1e-6)
    np.testing.assert_allclose(float(target_only(images)), float(loss), rtol=1e-6)
    np.testing.assert_allclose(mae.unpatchify(mae.patchify(images, (8, 8)), (4, 4), (8, 8), 3), images)


def test_reference_decoder_slice_keeps_the_cls_prediction():
    model = mae.MAE(**SIZES, decoder_slice="reference")
    images = jnp.ones((2, 32, 32, 3))
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, images)
    loss, aux = jax.jit(lambda v: model.apply(v, images, rngs={"masking": jax.random.key(2)}))(variables)
    assert aux["pred"].shape == (2, 1, 192) and np.isfinite(float(loss))
    with pytest.raises(ValueError, match="decoder_slice='cls'"):
        mae.MAE(**SIZES, decoder_slice="cls").init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                                                   images)


def test_convert_command_writes_checkpoints_that_load_params_reads(tmp_path):
    from safetensors.torch import save_file

    from jaxemo.convert import __main__ as convert_command
    from jaxemo.train import checkpoint

    hf = hf_model(False)
    expected = convert_mae.from_hf_mae(hf.state_dict(), num_heads=2, decoder_heads=2)
    safetensors_path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, safetensors_path)
    out = str(tmp_path / "hf")
    convert_command.main(["mae_hf", safetensors_path, out, "--num_heads=2", "--decoder_heads=2"])
    assert_trees_equal(checkpoint.load_params(out), expected)

    pth = str(tmp_path / "mae_visualize.pth")
    torch.save({"model": {k: torch.from_numpy(v) for k, v in timm_named(hf.state_dict()).items()}}, pth)
    out = str(tmp_path / "official")
    convert_command.main(["mae", pth, out, "--num_heads=2", "--decoder_heads=2"])
    assert_trees_equal(checkpoint.load_params(out), expected)
    with pytest.raises(FileExistsError, match="already exists"):
        convert_command.main(["mae", pth, out, "--num_heads=2", "--decoder_heads=2"])
    with pytest.raises(FileNotFoundError, match="nope.pth: no such checkpoint file"):
        convert_command.main(["mae", str(tmp_path / "nope.pth"), str(tmp_path / "x")])
    with pytest.raises(ValueError, match="no default head count for a ViT of width 32"):
        convert_command.main(["mae", pth, str(tmp_path / "y")])
