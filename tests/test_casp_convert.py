"""CASP reference checkpoints <-> jaxemo params (`jaxemo.convert.casp`), checked against the PyTorch twin of
the reference backbones (`benchmarks/twins/casp_torch.py`, whose `state_dict()` has the reference's keys)."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from benchmarks.twins import casp_torch
from jaxemo.convert import casp as convert
from jaxemo.models import msa

torch = pytest.importorskip("torch")

DIMS = (12, 5, 20)
SIZES = dict(proj_dim=16, num_heads=4, depth=2)


def inputs(seed=0, batch=3, steps=(7, 9, 6)):
    rng = np.random.default_rng(seed)
    text, audio, vision = (rng.standard_normal((batch, t, d)).astype(np.float32) for t, d in zip(steps, DIMS))
    audio[0, 5:] = 0.0  # MMSA-style zero padding
    text[1, 3] = 0.0  # with proj_text bias[0] = 0 its projected channel 0 is 0: the zero-position quirk
    return text, audio, vision


def jaxemo_params(fusion, seed=0):
    """Random init, perturbed so that no bias is 0 and no LayerNorm scale 1 (a swapped leaf would show)."""
    model = msa.SentimentRegressor(fusion=fusion, zero_position_quirk=True, **SIZES)
    params = nn.unbox(model.init(jax.random.key(seed), *inputs())["params"])
    rng = np.random.default_rng(seed + 1)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32), params)
    params["proj_text"]["bias"][0] = 0.0
    return model, params


def twin(fusion):
    return casp_torch.build(fusion, DIMS, proj_dim=SIZES["proj_dim"], heads=SIZES["num_heads"],
                            depth=SIZES["depth"])


def as_torch(state_dict):
    return {k: torch.from_numpy(v) for k, v in state_dict.items()}


def assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == np.float32 and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_reference_state_dict_runs_the_same_forward_and_round_trips(fusion):
    model, params = jaxemo_params(fusion)
    text, audio, vision = inputs()
    score, rep = model.apply({"params": params}, text, audio, vision)

    state_dict = convert.to_reference_state_dict(params, fusion)
    net = twin(fusion)
    assert list(state_dict) == list(net.state_dict())  # the reference's keys, in its order
    net.load_state_dict(as_torch(state_dict), strict=True)
    net.eval()
    with torch.no_grad():
        ref_score, ref_rep = net([torch.from_numpy(x) for x in (text, audio, vision)])
    np.testing.assert_allclose(score, ref_score.numpy(), atol=1e-5)
    np.testing.assert_allclose(rep, ref_rep.numpy(), atol=1e-5)

    back, info = convert.convert_reference_state_dict(net.state_dict(), num_heads=SIZES["num_heads"])
    assert_same_tree(back, params)
    encoders = ["encoders.0.", "encoders.1.", "encoders.2."] if fusion == "late" else ["fusion."]
    assert info["fusion"] == fusion and info["depth"] == 2 and info["proj_dim"] == 16 and info["dims"] == DIMS
    assert info["ignored"] == sorted(e + b for e in encoders for b in ("version", "embed_positions._float_tensor"))
    assert_same_tree(convert.from_reference_state_dict(net.state_dict(), fusion, num_heads=4), params)


def test_reference_keys_and_buffers():
    _, params = jaxemo_params("late")
    state_dict = convert.to_reference_state_dict(params, "late")
    assert list(state_dict)[:8] == ["proj.0.weight", "proj.0.bias", "proj.1.weight", "proj.1.bias",
                                    "proj.2.weight", "proj.2.bias", "encoders.0.version",
                                    "encoders.0.embed_positions._float_tensor"]
    assert state_dict["proj.1.weight"].shape == (16, 5, 1)
    assert state_dict["encoders.2.layers.1.self_attn.in_proj_weight"].shape == (48, 16)
    assert state_dict["encoders.0.layers.0.layer_norms.1.bias"].shape == (16,)
    assert state_dict["out_layer_proj0.weight"].shape == (16, 48)
    assert state_dict["out_layer.weight"].shape == (1, 16)
    np.testing.assert_array_equal(state_dict["encoders.1.version"], [2.0])
    assert state_dict["encoders.1.embed_positions._float_tensor"].shape == (1,)
    # the fused in_proj is [q; k; v] with each output axis laid out (head, head_dim)
    attn = params["encoder_audio"]["layers_1"]["self_attn"]
    np.testing.assert_array_equal(state_dict["encoders.1.layers.1.self_attn.in_proj_weight"][16:32],
                                  attn["key"]["kernel"].reshape(16, 16).T)
    np.testing.assert_array_equal(state_dict["encoders.1.layers.1.self_attn.in_proj_bias"][32:],
                                  attn["value"]["bias"].reshape(16))
    with pytest.raises(ValueError, match="look like 'late' fusion"):
        convert.to_reference_state_dict(params, "early")


def test_checkpoint_files_plain_nested_and_data_parallel(tmp_path):
    _, params = jaxemo_params("early")
    state_dict = as_torch(convert.to_reference_state_dict(params, "early"))
    files = {"plain.pt": state_dict, "nested.pth": {"state_dict": state_dict, "epoch": 3},
             "parallel.pt": {"module." + k: v for k, v in state_dict.items()}}
    for name, content in files.items():
        torch.save(content, tmp_path / name)
        loaded, fusion, info = convert.load_reference_checkpoint(str(tmp_path / name), num_heads=4)
        assert fusion == "early" and info["depth"] == 2 and info["path"] == str(tmp_path / name)
        assert info["prefix"] == ("module." if name == "parallel.pt" else "")
        assert_same_tree(loaded, params)


def test_whole_pickled_model_says_how_to_resave(tmp_path):
    path = tmp_path / "mosei.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)  # what CASP's torch.save(model, name) writes
    with pytest.raises(ValueError, match=r"whole model") as error:
        convert.load_reference_checkpoint(str(path))
    assert "weights_only=False).state_dict()" in str(error.value) and "mosei_state_dict.pt" in str(error.value)


def test_missing_unexpected_and_mismatched_keys_are_named():
    _, params = jaxemo_params("late")
    state_dict = convert.to_reference_state_dict(params, "late")
    missing = {k: v for k, v in state_dict.items() if k != "encoders.1.layers.0.fc2.bias"}
    with pytest.raises(ValueError, match=r"missing key 'encoders\.1\.layers\.0\.fc2\.bias'"):
        convert.from_reference_state_dict(missing, num_heads=4)
    unexpected = {**state_dict, "encoders.0.layers.0.self_attn.bias_k": np.zeros((1, 1, 16), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected key.*encoders\.0\.layers\.0\.self_attn\.bias_k"):
        convert.from_reference_state_dict(unexpected, num_heads=4)
    deeper = {**state_dict, "encoders.0.layers.2.fc1.weight": np.zeros((64, 16), np.float32)}
    with pytest.raises(ValueError, match=r"different depths"):
        convert.from_reference_state_dict(deeper, num_heads=4)
    with pytest.raises(ValueError, match=r"fusion='early'.*Latefusion"):
        convert.from_reference_state_dict(state_dict, fusion="early", num_heads=4)
    with pytest.raises(ValueError, match=r"not divisible by num_heads=3"):
        convert.from_reference_state_dict(state_dict, num_heads=3)
    # the buffers carry no weights: a state dict without them converts too
    no_buffers = {k: v for k, v in state_dict.items() if not k.endswith(("version", "_float_tensor"))}
    assert_same_tree(convert.from_reference_state_dict(no_buffers, num_heads=4), params)


def test_casp_experiment_starts_from_a_reference_checkpoint(tmp_path):
    from experiments import casp as experiment
    from experiments.configs import casp as casp_config

    config = casp_config.get_config("tiny")
    assert config.source_checkpoint == ""
    dims = tuple(config.data[f"{m}_dim"] for m in msa.MODALITIES)
    model = msa.SentimentRegressor(fusion="late", proj_dim=config.model.proj_dim, num_heads=config.model.num_heads,
                                   depth=config.model.depth)
    example = [np.zeros((1, 4, d), np.float32) for d in dims]
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(3), *example)["params"]))
    path = tmp_path / "source_state_dict.pt"
    torch.save(as_torch(convert.to_reference_state_dict(params, "late")), path)

    config.source_checkpoint = str(path)
    workdir = tmp_path / "run"
    assert_same_tree(experiment.train_source(config, str(workdir)), params)
    assert not os.path.exists(workdir / "source")  # nothing trained

    config.model.fusion = "early"
    with pytest.raises(ValueError, match=r"'late' fusion.*config\.model\.fusion='early'"):
        experiment.train_source(config, str(workdir))
    config.model.update(fusion="late", depth=config.model.depth + 1)
    with pytest.raises(ValueError, match=r"config\.model\.depth"):
        experiment.train_source(config, str(workdir))
