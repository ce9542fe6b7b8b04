"""MMA-DFER checkpoint conversion: parity with a PyTorch re-expression of the reference forward pass,
round trips, initialisation from MAE-Face / AudioMAE, and errors naming the offending key.

The PyTorch model (`benchmarks/twins/mma_dfer_torch.py`) follows katerynaCh/MMA-DFER
(`models/Generate_Model.py::GenerateModel.forward`, `models/models_vit.py`, `AudioMAE/audio_models_vit.py`,
`models/Temporal_Model.py`); here it runs at a tiny size. Its encoder blocks are transformers' `ViTLayer`
(the same pre-LN block as timm's, eps 1e-6, exact GELU); the fusion, prompts, joint projection and temporal
transformer are written out there.
"""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional

from jaxemo.convert.mma_dfer import (
    from_pretrained_encoders,
    from_reference_checkpoint,
    to_reference_checkpoint,
)
from jaxemo.convert.vit import to_timm_vit
from jaxemo.models import mma_dfer
from benchmarks.twins import mma_dfer_torch

WIDTH, DEPTH, HEADS, MLP, PATCH, LATENT = 32, 12, 2, 64, 8, 8
FRAMES, IMAGE, AUDIO = 4, 32, (64, 32)
PROMPTS, GROUPS = 6, 2
STRIDE = 6  # the reference's hard-coded `ii % 6` schedule (== DEPTH // GROUPS here)
T_WIDTH, T_DEPTH, T_HEADS, T_MLP, CLASSES = 16, 2, 2, 32, 7
TOL = {"atol": 1e-5, "rtol": 1e-5}
SIZES = mma_dfer_torch.Sizes(
    num_frames=FRAMES, image_size=IMAGE, audio_shape=AUDIO, patch_size=PATCH, width=WIDTH, depth=DEPTH,
    num_heads=HEADS, mlp_dim=MLP, num_prompts=PROMPTS, prompt_groups=GROUPS, prompt_stride=STRIDE,
    latent_dim=LATENT, temporal_width=T_WIDTH, temporal_depth=T_DEPTH, temporal_heads=T_HEADS,
    temporal_mlp_dim=T_MLP, num_classes=CLASSES)


def jax_model(**overrides):
    config = {"num_classes": CLASSES, "num_frames": FRAMES, "image_size": IMAGE, "audio_shape": AUDIO,
              "patch_size": PATCH, "width": WIDTH, "depth": DEPTH, "num_heads": HEADS, "mlp_dim": MLP,
              "num_prompts": PROMPTS, "prompt_groups": GROUPS, "latent_dim": LATENT, "temporal_width": T_WIDTH,
              "temporal_depth": T_DEPTH, "temporal_heads": T_HEADS, "temporal_mlp_dim": T_MLP}
    return mma_dfer.MMADFER(**{**config, **overrides})


# ----------------------------------------------------------------------------------------- fixtures


def set_gates(model, value):
    with torch.no_grad():
        for encoder, sign in ((model.video, 1.0), (model.audio, -1.0)):
            for i, gate in enumerate(encoder.gates):
                gate.fill_(sign * value * (1.0 + 0.1 * i) if value else 0.0)


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    model = mma_dfer_torch.build(SIZES)
    with torch.no_grad():  # every parameter off its init (LayerNorms off 1 / 0), gates non-zero
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    set_gates(model, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    video = rng.uniform(size=(2, FRAMES, IMAGE, IMAGE, 3)).astype(np.float32)
    audio = rng.standard_normal((2, *AUDIO)).astype(np.float32)
    return video, audio


def run_torch(model, video, audio):
    with torch.no_grad():
        outputs = model(torch.from_numpy(video).permute(0, 1, 4, 2, 3), torch.from_numpy(audio)[:, None])
    return [o.numpy() for o in outputs]


@pytest.fixture(scope="module")
def state(torch_model):
    return mma_dfer_torch.to_state_dict(torch_model)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def abstract_params(model, audio=AUDIO):
    video = jax.ShapeDtypeStruct((1, FRAMES, IMAGE, IMAGE, 3), jnp.float32)
    fbank = jax.ShapeDtypeStruct((1, *audio), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), video, fbank)["params"]


# ------------------------------------------------------------------------------------- parity


def test_official_block_twin_matches_the_vitlayer_twin(torch_model, state, inputs):
    """The benchmark's twin (timm's fused-qkv blocks, as the official code) computes what the ViTLayer twin
    does with the same weights, and is named the same."""
    torch.manual_seed(1)
    timm_model = mma_dfer_torch.build(SIZES, attn_implementation="timm").eval()
    named = mma_dfer_torch.reference_parameters(timm_model)
    assert set(named) == set(state)
    with torch.no_grad():
        for key, (param,) in named.items():
            param.copy_(torch.from_numpy(state[key]))
    for ours, reference in zip(run_torch(timm_model, *inputs), run_torch(torch_model, *inputs)):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_converted_model_matches_the_reference(torch_model, state, inputs):
    params, _ = from_reference_checkpoint(state, num_heads=HEADS, temporal_heads=T_HEADS)
    video, audio = inputs
    model = jax_model()
    logits, aux = jax.jit(lambda p: model.apply({"params": p}, video, audio))(params)
    expected_logits, expected_video_cls, expected_audio_cls = run_torch(torch_model, video, audio)
    errors = {}
    for name, ours, theirs in (("logits", logits, expected_logits),
                               ("video_cls", aux["video_cls"], expected_video_cls),
                               ("audio_cls", aux["audio_cls"], expected_audio_cls)):
        np.testing.assert_allclose(np.asarray(ours), theirs, err_msg=name, **TOL)
        errors[name] = float(np.max(np.abs(np.asarray(ours) - theirs)))
    print(f"max abs error vs PyTorch: {errors}")


def test_the_gates_make_the_adapters_matter(torch_model, inputs):
    """Guards the parity test: with zero gates the fusion would be skipped and go untested."""
    gated = run_torch(torch_model, *inputs)[0]
    set_gates(torch_model, 0.0)
    try:
        ungated = run_torch(torch_model, *inputs)[0]
    finally:
        set_gates(torch_model, 0.5)
    assert np.max(np.abs(gated - ungated)) > 1e-2


def test_data_parallel_prefix_gives_the_same_params(state):
    plain, plain_unused = from_reference_checkpoint(state, HEADS, T_HEADS)
    prefixed_state = {"module." + k: v for k, v in state.items()}
    prefixed, prefixed_unused = from_reference_checkpoint(prefixed_state, HEADS, T_HEADS)
    assert_trees_equal(prefixed, plain)
    assert prefixed_unused == ["module." + k for k in plain_unused]
    wrapped, _ = from_reference_checkpoint({"state_dict": state, "epoch": 25}, HEADS, T_HEADS)
    assert_trees_equal(wrapped, plain)


@pytest.mark.parametrize("unused_norms", [False, True])
def test_unused_keys_and_tree_match_the_model(state, unused_norms):
    params, unused = from_reference_checkpoint(state, HEADS, T_HEADS, reference_unused_norms=unused_norms)
    heads = [f"{e}.head.{p}" for e in ("audio_model", "image_encoder") for p in ("bias", "weight")]
    norms = [f"temporal_net.temporal_transformer.layers.{i}.{b}.fn.norm2.{p}"
             for i in range(T_DEPTH) for b in "01" for p in ("bias", "weight")]
    assert unused == sorted(heads + ([] if unused_norms else norms))
    expected = nn.unbox(abstract_params(jax_model(reference_unused_norms=unused_norms)))
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        assert ours.shape == theirs.shape
    if unused_norms:
        key = "temporal_net.temporal_transformer.layers.1.1.fn.norm2.weight"
        np.testing.assert_array_equal(params["temporal"]["block_1_mlp_unused_norm_scale"], state[key])


# ----------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("prefix, unused_norms", [("", False), ("module.", True)])
def test_round_trip(state, prefix, unused_norms):
    original = {prefix + k: v for k, v in state.items()}
    params, unused = from_reference_checkpoint(original, HEADS, T_HEADS, reference_unused_norms=unused_norms)
    back = to_reference_checkpoint(params, prefix=prefix, extra={k: original[k] for k in unused})
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_export_fills_the_never_called_norms(state):
    params, _ = from_reference_checkpoint(state, HEADS, T_HEADS)
    exported = to_reference_checkpoint(params)
    assert sorted(set(state) - set(exported)) == [f"{e}.head.{p}" for e in ("audio_model", "image_encoder")
                                                  for p in ("bias", "weight")]
    norm2 = "temporal_net.temporal_transformer.layers.0.0.fn.norm2."
    np.testing.assert_array_equal(exported[norm2 + "weight"], np.ones(T_WIDTH, np.float32))
    np.testing.assert_array_equal(exported[norm2 + "bias"], np.zeros(T_WIDTH, np.float32))


def test_export_of_initialised_params_round_trips():
    """`model.init`-shaped params (boxed) -> reference names -> the same values."""
    shapes = abstract_params(jax_model(reference_unused_norms=True))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)
    assert isinstance(params["video_encoder"]["pos_embed"], nn.Partitioned)
    back, unused = from_reference_checkpoint(to_reference_checkpoint(params), HEADS, T_HEADS,
                                             reference_unused_norms=True)
    assert unused == []
    assert_trees_equal(back, jax.tree.map(np.asarray, nn.unbox(params)))


# ------------------------------------------------------------------------------- errors


def test_missing_key_is_named(state):
    broken = dict(state)
    del broken["image_encoder.temporal_pre.3.weight"]
    with pytest.raises(ValueError, match=r"'image_encoder\.temporal_pre\.3\.weight'"):
        from_reference_checkpoint(broken, HEADS, T_HEADS)
    prefixed = {"module." + k: v for k, v in state.items()}
    del prefixed["module.temporal_net.temporal_transformer.layers.1.0.fn.fn.to_kv.weight"]
    with pytest.raises(ValueError, match=r"'module\.temporal_net\..*layers\.1\.0\.fn\.fn\.to_kv\.weight'"):
        from_reference_checkpoint(prefixed, HEADS, T_HEADS)
    broken = dict(state)
    del broken["audio_model.blocks.4.attn.qkv.weight"]
    with pytest.raises(ValueError, match=r"'audio_model\.blocks\.4\.attn\.qkv\.weight'"):
        from_reference_checkpoint(broken, HEADS, T_HEADS)


def test_wrong_shape_is_named(state):
    broken = dict(state, **{"audio_model.all_gate.2": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"'audio_model\.all_gate\.2' has shape \(2,\), expected \(1,\)"):
        from_reference_checkpoint(broken, HEADS, T_HEADS)
    broken = dict(state, **{"vision_proj.weight": np.zeros((T_WIDTH, WIDTH + 1), np.float32)})
    with pytest.raises(ValueError, match=r"'vision_proj\.weight' has shape \(16, 33\)"):
        from_reference_checkpoint(broken, HEADS, T_HEADS)
    with pytest.raises(ValueError, match=r"to_q\.weight.*temporal_heads=3"):
        from_reference_checkpoint(state, HEADS, temporal_heads=3)


def test_encoders_of_different_depth_are_refused(state):
    shallow = {k: v for k, v in state.items() if not k.startswith("audio_model.blocks.11.")}
    with pytest.raises(ValueError, match="12 blocks and the audio encoder 11"):
        from_reference_checkpoint(shallow, HEADS, T_HEADS)


def test_converter_imports_only_numpy():
    code = ("import sys, jaxemo.convert.mma_dfer; "
            "loaded = {'torch', 'jax', 'flax'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------- pretrained encoders

PRETRAIN_AUDIO = (256, 64)  # a 32 x 8 patch grid, as 512 x 128 is at patch 16
AUDIOMAE_GRID = (64, 8)  # AudioMAE's pretraining grid (1024 x 128 at patch 16)


def timm_vit_state(rng, channels, grid, decoder=True):
    """A random MAE-style checkpoint: timm encoder names, plus decoder / mask_token / head."""
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    out = {"cls_token": normal(1, 1, WIDTH), "pos_embed": normal(1, 1 + grid[0] * grid[1], WIDTH),
           "patch_embed.proj.weight": normal(WIDTH, channels, PATCH, PATCH),
           "patch_embed.proj.bias": normal(WIDTH),
           "norm.weight": normal(WIDTH), "norm.bias": normal(WIDTH)}
    for i in range(DEPTH):
        at = f"blocks.{i}."
        for name, shape in (("attn.qkv", (3 * WIDTH, WIDTH)), ("attn.proj", (WIDTH, WIDTH)),
                            ("mlp.fc1", (MLP, WIDTH)), ("mlp.fc2", (WIDTH, MLP)), ("norm1", (WIDTH,)),
                            ("norm2", (WIDTH,))):
            out[at + name + ".weight"], out[at + name + ".bias"] = normal(*shape), normal(shape[0])
    if decoder:
        out.update({"mask_token": normal(1, 1, 16), "decoder_embed.weight": normal(16, WIDTH),
                    "decoder_pred.weight": normal(PATCH * PATCH * channels, 16)})
    return out


def torch_bicubic(pos_embed, old_grid, new_grid):
    grid = torch.from_numpy(pos_embed[:, 1:]).reshape(1, *old_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1]).numpy()


@pytest.fixture(scope="module")
def template():
    shapes = abstract_params(jax_model(audio_shape=PRETRAIN_AUDIO), audio=PRETRAIN_AUDIO)
    rng = np.random.default_rng(2)  # random values in place of a (slow) real init; the boxes are kept
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)


def pretrained_states(mae_grid=(4, 4)):
    rng = np.random.default_rng(3)
    mae_face = timm_vit_state(rng, 3, mae_grid)
    mae_face["head.weight"], mae_face["head.bias"] = rng.standard_normal((2, WIDTH)), rng.standard_normal(2)
    return mae_face, timm_vit_state(rng, 1, AUDIOMAE_GRID)


def encoder_as_timm(params, side):
    vit = {k: params[f"{side}_encoder"][k] for k in ("cls_token", "pos_embed", "patch_embed", "norm")}
    vit["encoder"] = {"layers": {"block": params["fusion_layers"][f"{side}_block"]}}
    return to_timm_vit(vit)


@pytest.mark.parametrize("mae_grid", [(4, 4), (2, 2)])
def test_pretrained_encoders_build_the_reference_initialisation(template, mae_grid):
    mae_face, audiomae = pretrained_states(mae_grid)
    params, unused = from_pretrained_encoders(mae_face, {"model": audiomae, "epoch": 32}, template, rng_seed=5)
    decoder = ["decoder_embed.weight", "decoder_pred.weight", "mask_token"]
    assert unused == {"mae_face": sorted(decoder + ["head.bias", "head.weight"]), "audiomae": decoder}

    audio_pos = params["audio_encoder"]["pos_embed"]
    assert audio_pos.shape == (1, 1 + 32 * 8 + PROMPTS, WIDTH)
    np.testing.assert_array_equal(audio_pos[:, :1], audiomae["pos_embed"][:, :1])
    expected_audio_grid = torch_bicubic(audiomae["pos_embed"], AUDIOMAE_GRID, (32, 8))
    np.testing.assert_allclose(audio_pos[:, 1:-PROMPTS], expected_audio_grid, **TOL)
    video_pos = params["video_encoder"]["pos_embed"]
    expected_video_grid = torch_bicubic(mae_face["pos_embed"], mae_grid, (4, 4))
    if mae_grid == (4, 4):  # MAE-Face at 224 x 224 as the reference uses it: no resize
        np.testing.assert_array_equal(video_pos[:, 1:-PROMPTS], mae_face["pos_embed"][:, 1:])
    np.testing.assert_allclose(video_pos[:, 1:-PROMPTS], expected_video_grid, **TOL)

    prompt_rows = np.concatenate([video_pos[:, -PROMPTS:], audio_pos[:, -PROMPTS:]])
    assert 0.8 < prompt_rows.std() < 1.2 and abs(prompt_rows.mean()) < 0.15
    assert not np.allclose(video_pos[:, -PROMPTS:], audio_pos[:, -PROMPTS:])
    again, _ = from_pretrained_encoders(mae_face, audiomae, template, rng_seed=5)
    other, _ = from_pretrained_encoders(mae_face, audiomae, template, rng_seed=6)
    np.testing.assert_array_equal(again["audio_encoder"]["pos_embed"], audio_pos)
    assert not np.allclose(other["audio_encoder"]["pos_embed"][:, -PROMPTS:], audio_pos[:, -PROMPTS:])

    for side, source in (("video", mae_face), ("audio", audiomae)):
        timm = encoder_as_timm(params, side)
        for key, value in timm.items():
            if key != "pos_embed":
                np.testing.assert_array_equal(value, source[key], err_msg=f"{side} {key}")


def test_pretrained_encoders_leave_the_template_parts_untouched(template):
    params, _ = from_pretrained_encoders(*pretrained_states(), template)
    expected = jax.tree.map(np.asarray, nn.unbox(template))
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    loaded = {"cls_token", "pos_embed", "patch_embed", "norm"}
    for side in ("video", "audio"):
        for part, value in expected[f"{side}_encoder"].items():
            if part not in loaded:
                assert_trees_equal(params[f"{side}_encoder"][part], value)
        expected["fusion_layers"][f"{side}_block"] = params["fusion_layers"][f"{side}_block"]
        expected[f"{side}_encoder"] = params[f"{side}_encoder"]
    assert_trees_equal(params, expected)  # adapters, prompts and their updates, temporal, joint_proj, classifier


def test_pretrained_encoders_report_mismatches(template):
    mae_face, audiomae = pretrained_states()
    with pytest.raises(ValueError, match=r"audiomae_grid=\(64, 8\)"):
        from_pretrained_encoders(mae_face, timm_vit_state(np.random.default_rng(4), 1, (32, 8)), template)
    wider = timm_vit_state(np.random.default_rng(4), 3, (4, 4))
    for i in range(DEPTH):
        wider[f"blocks.{i}.mlp.fc1.weight"] = np.zeros((2 * MLP, WIDTH), np.float32)
        wider[f"blocks.{i}.mlp.fc1.bias"] = np.zeros(2 * MLP, np.float32)
        wider[f"blocks.{i}.mlp.fc2.weight"] = np.zeros((WIDTH, 2 * MLP), np.float32)
    mismatch = r"MAE-Face.*fusion_layers/video_block/mlp/fc1/bias.*\(12, 128\).*\(12, 64\)"
    with pytest.raises(ValueError, match=mismatch):
        from_pretrained_encoders(wider, audiomae, template)
    del audiomae["blocks.3.norm1.weight"]
    with pytest.raises(ValueError, match=r"'blocks\.3\.norm1\.weight'"):
        from_pretrained_encoders(mae_face, audiomae, template)


def test_convert_command_reads_the_reference_checkpoint(state, tmp_path):
    from jaxemo.convert import __main__ as convert_command
    from jaxemo.train import checkpoint

    path = str(tmp_path / "model_best.pth")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    convert_command.main(["mma_dfer", path, str(tmp_path / "out"), f"--num_heads={HEADS}",
                          f"--temporal_heads={T_HEADS}"])
    expected, _ = from_reference_checkpoint(state, num_heads=HEADS, temporal_heads=T_HEADS)
    loaded = checkpoint.load_params(str(tmp_path / "out"))
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
