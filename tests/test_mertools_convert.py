"""jaxemo.convert.mertools: MERTools' attention baseline state dicts (its exact keys and module tree, from the
torch twin's `build_mertools` / `build_topn`) -> MERToolsAttention params, with jaxemo's fusion order
(audio, video, text) differing from MERTools' (audio, text, video); utterance and frame level; the inverse;
errors that name the key; the CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxemo.convert import mertools
from jaxemo.convert.torch_state import load_state_dict
from jaxemo.models import agt

torch = pytest.importorskip("torch")
from benchmarks.twins import mertools_attention_torch as twin  # noqa: E402

DIMS = {"audio": 10, "text": 12, "video": 7}  # MERTools' slots
FRAMES = {"audio": 6, "text": 4, "video": 5}
LENGTHS = {"audio": [6, 3, 1], "text": [2, 4, 4], "video": [5, 1, 3]}
JAXEMO_ORDER = (("audio", "audio"), ("video", "video"), ("text", "text"))
HIDDEN = 16


def mertools_net(feat_type="utt", output_dim2=1, seed=0):
    torch.manual_seed(seed)  # torch's default init: every weight and bias random
    return twin.build_mertools(DIMS["audio"], DIMS["text"], DIMS["video"], HIDDEN, 0.3, feat_type,
                               output_dim2=output_dim2).eval()


def saved_state_dict(net, tmp_path, wrap=False):
    """net's state dict through torch.save and jaxemo's loader; `wrap`: as MERTools' get_models(args) holds it."""
    module = net
    if wrap:
        module = torch.nn.Module()
        module.model = net
    path = os.path.join(tmp_path, "attention.pth")
    torch.save(module.state_dict(), path)
    return load_state_dict(path), path


def inputs(frames, batch=3, seed=0):
    """jaxemo's features (end-padded frames, masks) and MERTools' batch (front-padded, its key names)."""
    rng = np.random.default_rng(seed)
    features, masks, batch_in = {}, {}, {}
    for slot, dim in DIMS.items():
        if not frames:
            features[slot] = rng.standard_normal((batch, dim)).astype(np.float32)
            batch_in[slot + "s"] = features[slot]
            continue
        mask = np.asarray(agt.lengths_to_mask(np.asarray(LENGTHS[slot]), FRAMES[slot]))
        x = rng.standard_normal((batch, FRAMES[slot], dim)).astype(np.float32)
        features[slot] = np.where(mask[..., None], x, 3.0)  # end padding of any value
        masks[slot] = mask
        batch_in[slot + "s"] = np.array(agt.front_pad(jnp.asarray(features[slot]), jnp.asarray(mask)))
    return features, masks or None, {k: torch.from_numpy(v) for k, v in batch_in.items()}


def jaxemo_logits(params, info, features, masks):
    model = agt.MERToolsAttention(**info["model_fields"], dropout=0.3)
    return jax.jit(model.apply)({"params": params}, features, masks)


@pytest.mark.parametrize("feat_type", ["utt", "frm_unalign"])
def test_mertools_state_dict_gives_its_logits(feat_type, tmp_path):
    net = mertools_net(feat_type)
    state_dict, _ = saved_state_dict(net, tmp_path, wrap=feat_type == "utt")  # get_models' "model." prefix
    params, info = mertools.convert_mertools_state_dict(state_dict, JAXEMO_ORDER)
    frames = feat_type != "utt"
    assert info["modalities"] == ("audio", "video", "text") and info["slots"] == ("audio", "text", "video")
    assert info["hidden_dim"] == HIDDEN and info["num_classes"] == 6 and info["layout"] == "attention"
    assert info["model_fields"]["lstm_front_padding"] is frames and set(info["frame_level"].values()) == {frames}
    assert info["dropped"] == ["fc_out_2.bias", "fc_out_2.weight"]
    assert info["prefix"] == ("" if frames else "model.")
    if frames:
        assert set(params["encoder_audio"]["rnn"]) == {"input_kernel", "recurrent_kernel", "bias_ih", "bias_hh"}
    features, masks, batch = inputs(frames)
    with torch.no_grad():
        t_features, t_logits, _ = net(batch)
    logits, aux = jaxemo_logits(params, info, features, masks)
    np.testing.assert_allclose(np.asarray(logits), t_logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["features"]), t_features.numpy(), rtol=1e-5, atol=1e-5)
    # the fusion weights come out in jaxemo's order: MERTools' fc_att outputs (audio, text, video) permuted
    with torch.no_grad():
        hidden = [getattr(net, f"{slot}_encoder")(batch[slot + "s"]) for slot in ("audio", "text", "video")]
        weights = net.fc_att(net.attention_mlp(torch.cat(hidden, 1))).numpy()
    np.testing.assert_allclose(np.asarray(aux["weights"]), weights[:, [0, 2, 1]], rtol=1e-5, atol=1e-5)

    # the inverse: MERTools' exact keys in its module order, loadable with strict=True, the same weights
    back = mertools.to_mertools_state_dict(params, JAXEMO_ORDER, output_dim2=1)
    reference = net.state_dict()
    assert list(back) == list(reference)
    for key, value in reference.items():
        expected = np.zeros(value.shape) if key.startswith("fc_out_2") else value.numpy()  # no valence head
        np.testing.assert_array_equal(back[key], expected, err_msg=key)
    mertools_net(feat_type, seed=1).load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # MER2024: output_dim2 = 0
def test_attention_topn_any_order():
    torch.manual_seed(2)
    dims = [10, 12, 7, 5]
    net = twin.build_topn(dims, HIDDEN, 0.3).eval()  # MER2024: output_dim2 = 0, an empty valence head
    sources = {"d": "encoder3", "b": "encoder1", "a": "encoder0", "c": "encoder2"}  # jaxemo's order: d, b, a, c
    params, info = mertools.convert_mertools_state_dict(net.state_dict(), sources)
    assert info["layout"] == "attention_topn" and info["modalities"] == ("d", "b", "a", "c")
    assert info["dims"] == {"d": 5, "b": 12, "a": 10, "c": 7}
    rng = np.random.default_rng(1)
    feats = {f"feat{i}": rng.standard_normal((3, d)).astype(np.float32) for i, d in enumerate(dims)}
    with torch.no_grad():
        t_logits = net({k: torch.from_numpy(v) for k, v in feats.items()})[1].numpy()
    features = {name: feats["feat" + slot[len("encoder"):]] for name, slot in sources.items()}
    logits, _ = jaxemo_logits(params, info, features, None)
    np.testing.assert_allclose(np.asarray(logits), t_logits, rtol=1e-5, atol=1e-5)
    back = mertools.to_mertools_state_dict(params, sources)
    assert {k: v.shape for k, v in back.items()} == {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_errors_name_the_key():
    state = {k: v.numpy() for k, v in mertools_net().state_dict().items()}
    missing = {k: v for k, v in state.items() if k != "text_encoder.linear_2.weight"}
    with pytest.raises(ValueError, match="text_encoder.linear_2.weight"):
        mertools.convert_mertools_state_dict(missing, JAXEMO_ORDER)
    wrong = {**state, "fc_att.weight": np.zeros((2, HIDDEN), np.float32)}
    with pytest.raises(ValueError, match=r"'fc_att.weight' has shape \(2, 16\)"):
        mertools.convert_mertools_state_dict(wrong, JAXEMO_ORDER)
    with pytest.raises(ValueError, match=r"missing \['text'\]"):
        mertools.convert_mertools_state_dict(state, [("audio", "audio"), ("video", "video")])
    with pytest.raises(ValueError, match="encoder0"):
        mertools.convert_mertools_state_dict(state, [("a", "encoder0"), ("b", "text"), ("c", "video")])
    with pytest.raises(ValueError, match="unexpected key.*extra.weight"):
        mertools.convert_mertools_state_dict({**state, "extra.weight": np.zeros(1)}, JAXEMO_ORDER)
    frames = {k: v.numpy() for k, v in mertools_net("frm_align").state_dict().items()}
    with pytest.raises(ValueError, match="rnn.weight_ih_l1"):
        mertools.convert_mertools_state_dict({**frames, "audio_encoder.rnn.weight_ih_l1": np.zeros(1)},
                                             JAXEMO_ORDER)
    with pytest.raises(ValueError, match="audio_encoder"):
        mertools.convert_mertools_state_dict({"fc_att.weight": np.zeros((3, 4))}, JAXEMO_ORDER)
    with pytest.raises(ValueError, match="name=slot"):
        mertools.parse_sources("hubert=audio,clip")


def test_cli_round_trip(tmp_path):
    from jaxemo.convert import __main__ as cli
    from jaxemo.train import checkpoint

    net = mertools_net()
    _, path = saved_state_dict(net, tmp_path)
    out = os.path.join(tmp_path, "converted")
    cli.main(["mertools", path, out, "--features", "hubert=audio,clip=video,baichuan=text"])
    with open(os.path.join(out, "0", "model_config.json")) as f:
        config = json.load(f)
    assert config == {"name": "attention", "modalities": ["hubert", "clip", "baichuan"], "hidden_dim": HIDDEN,
                      "num_classes": 6, "lstm_front_padding": False}
    loaded = checkpoint.load_params(out)
    expected, _ = mertools.convert_mertools_state_dict(net.state_dict(), {"hubert": "audio", "clip": "video",
                                                                          "baichuan": "text"})
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded), expected)
