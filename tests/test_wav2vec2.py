"""wav2vec 2.0 / HuBERT: parity with transformers' PyTorch models (random init) through the converter and the
convert CLI, per-component parity, training-mode randomness, bad input, scan vs loop, FLOPs against XLA."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxemo import layers, perf  # noqa: E402
from jaxemo.convert import wav2vec2 as convert  # noqa: E402
from jaxemo.models import wav2vec2  # noqa: E402

torch.set_num_threads(1)
TOL = dict(atol=2e-5, rtol=2e-5)  # reached: max abs error 4e-6 on values up to 4 (CPU, float32)
LENGTHS = (4000, 3000)  # 12 and 9 frames
LAYOUTS = {"base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
           "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)}
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=16)


# ------------------------------------------------------------------------------------------ helpers


def hf_config(model_type="wav2vec2", layout="base", **overrides):
    cls = transformers.HubertConfig if model_type == "hubert" else transformers.Wav2Vec2Config
    return cls(**{**TINY, **LAYOUTS[layout], **overrides})


def perturbed(model, seed=0):
    """HF init leaves norms at 1/0 and some biases at 0; random offsets make every parameter matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def hf_model(cls, config, seed=0):
    torch.manual_seed(seed)
    return perturbed(cls(config), seed)


def numpy_state(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def old_weight_norm_names(state):
    """torch.nn.utils.weight_norm's names (older checkpoints) instead of the parametrization's."""
    rename = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    out = {}
    for key, value in state.items():
        for new, old in rename.items():
            key = key.replace(new, old)
        out[key] = value
    return out


@functools.lru_cache(maxsize=None)
def waveform():
    rng = np.random.default_rng(0)
    wave = rng.standard_normal((2, LENGTHS[0])).astype(np.float32)
    mask = np.arange(LENGTHS[0])[None] < np.array(LENGTHS)[:, None]
    return np.where(mask, wave, 0).astype(np.float32), mask


def run_hf(model, masked, **kwargs):
    wave, mask = waveform()
    attention_mask = torch.from_numpy(mask.astype(np.int64)) if masked else None
    with torch.no_grad():
        return model(torch.from_numpy(wave), attention_mask=attention_mask, output_hidden_states=True, **kwargs)


@functools.lru_cache(maxsize=None)
def jitted(module):
    return jax.jit(lambda params, *args, **kw: module.apply({"params": params}, *args, **kw),
                   static_argnames=("deterministic", "output_hidden_states"))


def run_jax(module, params, masked, **kwargs):
    wave, mask = waveform()
    return jitted(module)(params, jnp.asarray(wave), jnp.asarray(mask) if masked else None, **kwargs)


def close(ours, theirs, what, tol=TOL):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), **tol, err_msg=what)


def assert_backbone_matches(hf_out, last, aux, check_extract=True):
    assert len(aux["hidden_states"]) == len(hf_out.hidden_states)
    for i, (ours, theirs) in enumerate(zip(aux["hidden_states"], hf_out.hidden_states)):
        close(ours, theirs, f"hidden_states[{i}]")
    close(last, hf_out.last_hidden_state, "last_hidden_state")
    if check_extract:
        close(aux["extract_features"], hf_out.extract_features, "extract_features")


@pytest.fixture(scope="module")
def models():
    """(model_type, layout) -> (transformers model, jaxemo config, converted params), built once."""
    cache = {}

    def get(model_type, layout, head=False, **overrides):
        key = (model_type, layout, head, tuple(sorted(overrides.items())))
        if key not in cache:
            config = hf_config(model_type, layout, num_labels=3, **overrides)
            prefix = "Hubert" if model_type == "hubert" else "Wav2Vec2"
            cls = getattr(transformers, prefix + ("ForSequenceClassification" if head else "Model"))
            model = hf_model(cls, config, seed=len(cache))
            jax_config = convert.config_from_hf(config.to_dict())
            cache[key] = model, jax_config, convert.convert_state_dict(numpy_state(model), jax_config)
        return cache[key]

    return get


# ------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("layout", ["base", "large"])
@pytest.mark.parametrize("masked", [False, True])
def test_wav2vec2_model_matches(models, layout, masked):
    hf, config, params = models("wav2vec2", layout)
    assert config.do_stable_layer_norm == (layout == "large") and config.model_type == "wav2vec2"
    last, aux = run_jax(wav2vec2.Wav2Vec2Model(config), params["backbone"], masked)
    assert last.shape == (2, 12, 32) and len(aux["hidden_states"]) == config.num_hidden_layers + 1
    assert_backbone_matches(run_hf(hf, masked), last, aux)
    np.testing.assert_array_equal(aux["frame_mask"].sum(-1), [12, 9] if masked else [12, 12])


@pytest.mark.parametrize("layout, overrides", [("base", dict(feat_proj_layer_norm=False, num_conv_pos_embeddings=15)),
                                               ("large", {})])
def test_hubert_model_matches(models, layout, overrides):
    """Padded (the unmasked path is wav2vec2's); base without the feature-projection norm, an odd pos kernel."""
    hf, config, params = models("hubert", layout, **overrides)
    assert config.model_type == "hubert"
    assert ("layer_norm" in params["backbone"]["feature_projection"]) == config.feat_proj_layer_norm
    last, aux = run_jax(wav2vec2.Wav2Vec2Model(config), params["backbone"], True)
    assert_backbone_matches(run_hf(hf, True), last, aux, check_extract=False)  # HubertModel has no extract_features
    with torch.no_grad():
        conv = hf.feature_extractor(torch.from_numpy(waveform()[0])).transpose(1, 2)
    close(aux["extract_features"], conv, "extract_features (HuBERT: the conv features)")


@pytest.mark.parametrize("model_type, layout, weighted, masks", [("wav2vec2", "base", False, (False, True)),
                                                                 ("wav2vec2", "large", True, (True,)),
                                                                 ("hubert", "base", True, (False,))])
def test_sequence_classification_matches(models, model_type, layout, weighted, masks):
    hf, config, params = models(model_type, layout, head=True, use_weighted_layer_sum=weighted)
    assert set(params) == {"backbone", "projector", "classifier"} | ({"layer_weights"} if weighted else set())
    model = wav2vec2.Wav2Vec2ForSequenceClassification(config, num_labels=3)
    for masked in masks:
        logits, aux = run_jax(model, params, masked, output_hidden_states=True)
        hf_out = run_hf(hf, masked)
        for i, (ours, theirs) in enumerate(zip(aux["hidden_states"], hf_out.hidden_states)):
            close(ours, theirs, f"hidden_states[{i}] masked={masked}")
        close(logits, hf_out.logits, f"logits masked={masked}")


def test_mask_time_indices_match(models):
    """An explicit time mask replaces those frames by masked_spec_embed, as transformers' mask_time_indices."""
    hf, config, params = models("wav2vec2", "large")
    mask_time = np.zeros((2, 12), bool)
    mask_time[0, 2:5] = mask_time[1, 6:8] = True
    last, aux = run_jax(wav2vec2.Wav2Vec2Model(config), params["backbone"], True, mask_time=jnp.asarray(mask_time))
    assert_backbone_matches(run_hf(hf, True, mask_time_indices=torch.from_numpy(mask_time)), last, aux)


def test_components_match(models):
    """Feature encoder, position conv and one layer alone: where a full-model mismatch would come from."""
    hidden = np.random.default_rng(1).standard_normal((2, 12, 32)).astype(np.float32)
    for layout in ("base", "large"):
        hf, config, params = models("wav2vec2", layout)
        backbone = params["backbone"]
        with torch.no_grad():
            layer = hf.encoder.layers[0](torch.from_numpy(hidden))
        layer = layer[0] if isinstance(layer, tuple) else layer
        block = jax.tree.map(lambda a: a[0], backbone["encoder"]["blocks"]["layers"]["block"])
        close(jax.jit(wav2vec2.EncoderLayer(config).apply)({"params": block}, hidden), layer, f"{layout} layer 0")
    # (base) the feature encoder and the position conv; the large layout's are covered by the full model
    wave = waveform()[0]
    hf, config, params = models("wav2vec2", "base")
    backbone = params["backbone"]
    with torch.no_grad():
        features = hf.feature_extractor(torch.from_numpy(wave)).transpose(1, 2)
        pos = hf.encoder.pos_conv_embed(torch.from_numpy(hidden))
    ours = jax.jit(wav2vec2.FeatureEncoder(config).apply)({"params": backbone["feature_extractor"]}, wave)
    close(ours, features, "feature encoder")
    ours = jax.jit(wav2vec2.PositionalConvEmbedding(config).apply)({"params": backbone["encoder"]["pos_conv_embed"]},
                                                                   hidden)
    close(ours, pos, "position conv")
    # the im2col implementation (population training) on the same weights
    taps = config.replace(conv_impl="matmul")
    ours = jax.jit(wav2vec2.FeatureEncoder(taps).apply)({"params": backbone["feature_extractor"]}, wave)
    close(ours, features, "feature encoder, conv_impl=matmul")
    ours = jax.jit(wav2vec2.PositionalConvEmbedding(taps).apply)({"params": backbone["encoder"]["pos_conv_embed"]},
                                                                 hidden)
    close(ours, pos, "position conv, conv_impl=matmul")


def test_frame_mask_matches_transformers(models):
    hf, config, _ = models("wav2vec2", "base")
    sample_mask = np.arange(5000)[None] < np.array([5000, 4321, 1000, 400])[:, None]
    theirs = hf._get_feature_vector_attention_mask(15, torch.from_numpy(sample_mask.astype(np.int64)))
    np.testing.assert_array_equal(wav2vec2.frame_mask(config, jnp.asarray(sample_mask)), theirs.numpy())


# ------------------------------------------------------------------------------- converter and CLI


def test_prefixed_pretraining_and_ctc_keys(models, caplog):
    hf, config, params = models("wav2vec2", "base")
    torch.manual_seed(5)
    pretraining = transformers.Wav2Vec2ForPreTraining(hf_config("wav2vec2", "base", codevector_dim=16,
                                                                proj_codevector_dim=16, num_codevectors_per_group=4))
    pretraining.wav2vec2.load_state_dict(hf.state_dict())
    state = numpy_state(pretraining)
    assert any(k.startswith("quantizer.") for k in state) and all(k.startswith(("wav2vec2.", "quantizer.",
                                                                                "project_")) for k in state)
    state["lm_head.weight"] = np.zeros((5, 32), np.float32)  # a ForCTC head
    with caplog.at_level("INFO", logger="jaxemo.convert.wav2vec2"):
        converted = convert.convert_state_dict(state, config)
    assert "quantizer.weight_proj.weight" in caplog.text and "lm_head.weight" in caplog.text
    assert set(converted) == {"backbone"}
    jax.tree.map(np.testing.assert_array_equal, converted, params)


def test_converter_errors(models):
    hf, config, _ = models("wav2vec2", "base")
    state = numpy_state(hf)
    missing = dict(state)
    del missing["encoder.layers.1.feed_forward.output_dense.bias"]
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.feed_forward\.output_dense\.bias"):
        convert.convert_state_dict(missing, config)
    with pytest.raises(ValueError, match=r"unexpected keys.*encoder\.layers\.2\.layer_norm\.weight"):
        convert.convert_state_dict({**state, "encoder.layers.2.layer_norm.weight": np.ones(32, np.float32)}, config)
    wrong = {**state, "feature_projection.projection.weight": np.zeros((32, 17), np.float32)}
    with pytest.raises(ValueError, match=r"feature_projection\.projection\.weight.*\(32, 17\).*\(32, 16\)"):
        convert.convert_state_dict(wrong, config)
    with pytest.raises(ValueError, match=r"unexpected keys.*conv_layers\.0\.conv\.bias"):  # large weights, base cfg
        convert.convert_state_dict(numpy_state(models("wav2vec2", "large")[0]), config)


def test_cli_safetensors_directory_round_trip(models, tmp_path):
    from safetensors.torch import save_file

    from jaxemo.convert import __main__ as convert_command

    hf, config, params = models("wav2vec2", "large", head=True, use_weighted_layer_sum=True)
    checkpoint_dir = tmp_path / "hf"
    checkpoint_dir.mkdir()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(checkpoint_dir / "model.safetensors"))
    hf.config.to_json_file(str(checkpoint_dir / "config.json"))
    written = convert_command.main(["wav2vec2", str(checkpoint_dir), str(tmp_path / "out")])
    jax.tree.map(np.testing.assert_array_equal, written, params)
    loaded_config, loaded = convert.load(str(tmp_path / "out"))
    assert loaded_config == config and json.load(open(tmp_path / "out" / "0" / convert.CONFIG_FILE))
    assert convert.load(str(tmp_path / "out"), params=False, dtype="bfloat16") == (
        config.replace(dtype="bfloat16"), None)
    loaded = jax.tree.map(np.asarray, loaded)  # numpy leaves, as the parity test's: its compiled forward is reused
    logits, _ = run_jax(wav2vec2.Wav2Vec2ForSequenceClassification(loaded_config, 3), loaded, True)
    close(logits, run_hf(hf, True).logits, "logits after the CLI")


def architecture(config):
    """The fields that shape the params and the forward pass (not dropout rates or the unused head width)."""
    skip = {"hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop",
            "classifier_proj_size", "scan_layers"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def test_cli_bin_with_old_weight_norm_names_infers_the_layout(models, tmp_path, capsys):
    from jaxemo.convert import __main__ as convert_command

    for layout, overrides in (("base", dict(feat_proj_layer_norm=False, num_conv_pos_embeddings=15)), ("large", {})):
        hf, config, params = models("hubert", layout, **overrides)
        state = {k: torch.from_numpy(v) for k, v in old_weight_norm_names(numpy_state(hf)).items()}
        assert "encoder.pos_conv_embed.conv.weight_g" in state
        path = tmp_path / layout / "pytorch_model.bin"
        path.parent.mkdir()
        torch.save(state, str(path))
        out = str(tmp_path / f"out_{layout}")
        convert_command.main(["hubert", str(path), out, "--num_heads", "2"])
        assert "layout inferred from the weights" in capsys.readouterr().out
        loaded_config, loaded = convert.load(out)
        assert architecture(loaded_config) == architecture(config)
        jax.tree.map(np.testing.assert_array_equal, loaded, params)  # the very params of the parity tests
        loop_config, loop = convert.load(out, scan_layers=False)
        assert not loop_config.scan_layers
        jax.tree.map(np.testing.assert_array_equal, loop["backbone"]["encoder"]["blocks"],
                     layers.scan_to_loop(params["backbone"]["encoder"]["blocks"], 2))


# ------------------------------------------------------------------------------- training mode


QUIET = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
             mask_time_prob=0.0)


def test_span_mask_distribution_matches_transformers():
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    lengths = np.array([99, 49])
    attention = np.arange(99)[None] < lengths[:, None]
    np.random.seed(0)
    theirs = np.stack([_compute_mask_indices((2, 99), 0.3, 5, torch.from_numpy(attention.astype(np.int64)), 2)
                       for _ in range(400)])
    draw = jax.jit(jax.vmap(lambda key: wav2vec2.compute_span_mask(key, (2, 99), 0.3, 5, 2, jnp.asarray(lengths))))
    ours = np.asarray(draw(jax.random.split(jax.random.key(0), 400)))
    assert not ours[:, 1, 49:].any()  # never in the padding
    np.testing.assert_allclose(ours.mean((0, 2)), theirs.mean((0, 2)), atol=0.015)
    assert 0.15 < ours[:, 0].mean() < 0.3


def test_training_time_masking(models):
    _, config, params = models("wav2vec2", "base")
    model = wav2vec2.Wav2Vec2Model(config.replace(**{**QUIET, "mask_time_prob": 0.3, "mask_time_length": 4,
                                                     "mask_time_min_masks": 1}))
    wave = jnp.asarray(np.random.default_rng(2).standard_normal((2, 16000)), jnp.float32)
    sample_mask = jnp.arange(16000)[None] < jnp.array([[16000], [8000]])
    apply = jitted(model)
    last, aux = apply(params["backbone"], wave, sample_mask, deterministic=False, rngs={"dropout": jax.random.key(3)})
    mask_time = np.asarray(aux["mask_time"])
    frames = np.asarray(aux["frame_mask"])
    assert frames.sum(-1).tolist() == [49, 24]
    assert mask_time.any(-1).all() and not (mask_time & ~frames).any()
    # the same frames given explicitly, deterministic: the same output (masking is the only randomness)
    again, _ = apply(params["backbone"], wave, sample_mask, mask_time=jnp.asarray(mask_time))
    close(again, last, "explicit mask_time", dict(atol=1e-6, rtol=1e-6))
    fractions = [np.asarray(apply(params["backbone"], wave, sample_mask, deterministic=False,
                                  rngs={"dropout": key})[1]["mask_time"]).sum(-1) / [49, 24]
                 for key in jax.random.split(jax.random.key(4), 20)]
    assert 0.12 < np.mean(fractions) < 0.35


@pytest.mark.parametrize("layout", ["base", "large"])
def test_layerdrop_one_skips_every_layer(models, layout):
    _, config, params = models("wav2vec2", layout)
    model = wav2vec2.Wav2Vec2Model(config.replace(**{**QUIET, "layerdrop": 1.0}))
    last, aux = run_jax(model, params["backbone"], True, deterministic=False, rngs={"dropout": jax.random.key(1)})
    first = np.asarray(aux["hidden_states"][0])
    for hidden in aux["hidden_states"][1:]:
        np.testing.assert_array_equal(hidden, first)
    if layout == "base":
        np.testing.assert_array_equal(last, first)
    else:
        norm = params["backbone"]["encoder"]["layer_norm"]
        mean, var = first.mean(-1, keepdims=True), first.var(-1, keepdims=True)
        close(last, (first - mean) / np.sqrt(var + 1e-5) * norm["scale"] + norm["bias"], "final norm only")
    assert not np.allclose(run_jax(wav2vec2.Wav2Vec2Model(config), params["backbone"], True)[0], last)


def test_training_without_randomness_equals_eval(models):
    _, config, params = models("wav2vec2", "base", head=True)
    quiet = wav2vec2.Wav2Vec2ForSequenceClassification(config.replace(**QUIET), num_labels=3)
    train, _ = run_jax(quiet, params, True, deterministic=False)  # no rng needed: everything is off
    evaluated, _ = run_jax(wav2vec2.Wav2Vec2ForSequenceClassification(config, num_labels=3), params, True)
    close(train, evaluated, "train == eval", dict(atol=1e-6, rtol=1e-6))
    noisy = wav2vec2.Wav2Vec2ForSequenceClassification(config.replace(**{**QUIET, "hidden_dropout": 0.5}), 3)
    dropped, _ = run_jax(noisy, params, True, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert not np.allclose(dropped, evaluated)


# ------------------------------------------------------------------------------- bad input, layouts, FLOPs


def test_bad_inputs_raise():
    model = wav2vec2.create("tiny")
    wave = jnp.zeros((2, 4000))
    params = jax.eval_shape(model.init, jax.random.key(0), wave)["params"]  # the checks come before any compute
    with pytest.raises(ValueError, match=r"waveform must be \[batch, samples\], got shape \(4000,\)"):
        model.apply({"params": params}, wave[0])
    with pytest.raises(ValueError, match=r"sample_mask must have the waveform's shape \(2, 4000\), got shape "
                                         r"\(2, 3999\)"):
        model.apply({"params": params}, wave, jnp.ones((2, 3999), bool))
    with pytest.raises(ValueError, match=r"mask_time must be \[batch, frames\] = \(2, 12\), got shape \(2, 11\)"):
        model.apply({"params": params}, wave, mask_time=jnp.ones((2, 11), bool))
    with pytest.raises(ValueError, match="too short"):
        model.apply({"params": params}, jnp.zeros((2, 300)))
    with pytest.raises(ValueError, match="unknown wav2vec2 preset 'huge'"):
        wav2vec2.Wav2Vec2Config.preset("huge")


def test_scan_and_loop_agree_and_do_not_retrace(models):
    hf, config, params = models("wav2vec2", "base", head=True)
    loop_config = config.replace(scan_layers=False)
    loop_params = convert.convert_state_dict(numpy_state(hf), loop_config)
    assert set(loop_params["backbone"]["encoder"]["blocks"]) == {"layers_0", "layers_1"}
    jax.tree.map(np.testing.assert_array_equal, layers.scan_to_loop(params["backbone"]["encoder"]["blocks"], 2),
                 loop_params["backbone"]["encoder"]["blocks"])
    traces = []
    model = wav2vec2.Wav2Vec2ForSequenceClassification(loop_config, 3)

    @jax.jit
    def forward(p, wave, mask):
        traces.append(1)
        return model.apply({"params": p}, wave, mask)[0]

    wave, mask = waveform()
    first = forward(loop_params, wave, mask)
    second = forward(loop_params, wave * 0.5, mask)
    assert len(traces) == 1 and not np.allclose(first, second)
    scanned, _ = run_jax(wav2vec2.Wav2Vec2ForSequenceClassification(config, 3), params, True)
    close(first, scanned, "loop vs scan", dict(atol=1e-6, rtol=1e-6))


def test_param_axes_and_presets():
    model = wav2vec2.create("tiny", num_labels=4)
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4000)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    assert all(hasattr(leaf, "names") and len(leaf.names) == len(leaf.value.shape) for leaf in leaves)
    assert boxed["backbone"]["encoder"]["blocks"]["layers"]["block"]["attention"]["query"]["kernel"].names == (
        "layers", "embed", "heads", "kv")
    large = wav2vec2.Wav2Vec2Config.preset("hubert-large")
    assert (large.hidden_size, large.num_hidden_layers, large.do_stable_layer_norm, large.model_type) == (
        1024, 24, True, "hubert")
    assert wav2vec2.Wav2Vec2Config.preset("tiny", remat=True).remat_policy == "full"
    hidden = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    pooled = wav2vec2.masked_mean(jnp.asarray(hidden), jnp.asarray([[True, True, False], [False, False, False]]))
    np.testing.assert_allclose(pooled, [[1, 2], [0, 0]])  # an all-padding example pools to 0, not NaN
    from_hf = convert.config_from_hf({"model_type": "hubert", "foo": 1, "dtype": "float16"})
    assert from_hf.activation_dropout == 0.1 and from_hf.dtype == "float32"  # HF's dtype is torch's, not ours
    with pytest.raises(ValueError, match="model_type='wavlm' is not supported"):
        convert.config_from_hf({"model_type": "wavlm"})


def test_bfloat16_compute_follows_float32(models):
    _, config, params = models("wav2vec2", "large", head=True, use_weighted_layer_sum=True)
    reference, _ = run_jax(wav2vec2.Wav2Vec2ForSequenceClassification(config, 3), params, True)
    half = wav2vec2.Wav2Vec2ForSequenceClassification(config.replace(dtype="bfloat16"), 3)
    logits, aux = run_jax(half, params, True)
    assert logits.dtype == jnp.bfloat16 and aux["hidden_states"][-1].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(logits, np.float32), reference, atol=0.1, rtol=0.05)


def test_flops_match_xla_cost_analysis():
    # wav2vec2-base's widths with 2 unscanned layers (XLA counts a scanned body once): the elementwise work XLA
    # also counts (norms, GELU, softmax) stays under 1% (the tiny config's 16 channels would be dominated by it)
    config = wav2vec2.Wav2Vec2Config.preset("base", num_hidden_layers=2, scan_layers=False)
    model = wav2vec2.create(config=config, num_labels=5)
    wave = jnp.zeros((2, 16000))
    params = jax.eval_shape(model.init, jax.random.key(0), wave)["params"]
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    xla = forward.lower(params, wave).compile().cost_analysis()["flops"] / 2
    analytic = perf.wav2vec2_forward_flops(config, 16000, num_labels=5)
    assert analytic == pytest.approx(xla, rel=0.03), (analytic, xla)
    # wav2vec2-base on 1 s of 16 kHz audio (49 frames): 4.90 G in the conv encoder, 0.47 G in the position
    # conv, 8.41 G in the 12 layers, 0.06 G in the projection
    base = wav2vec2.Wav2Vec2Config.preset("base")
    assert perf.wav2vec2_forward_flops(base, 16000) == pytest.approx(13.82e9, rel=1e-3)


def test_masked_feature_norm_makes_padding_invisible():
    """feature_norm_mask: a zero-padded clip gives the unpadded clip's hidden states on its real frames."""
    config = wav2vec2.Wav2Vec2Config.preset("tiny", feature_norm_mask=True, conv_impl="matmul")
    model = wav2vec2.Wav2Vec2Model(config)
    wave = np.random.default_rng(3).standard_normal((1, 1200)).astype(np.float32)
    padded = np.pad(wave, ((0, 0), (0, 800)))
    mask = np.arange(2000)[None] < 1200
    params = model.init(jax.random.key(0), padded, mask)
    alone, _ = jax.jit(model.apply)(params, wave)
    ours, aux = jax.jit(model.apply)(params, padded, mask)
    frames = int(aux["frame_mask"].sum())
    assert frames == alone.shape[1]
    np.testing.assert_allclose(np.asarray(ours)[:, :frames], np.asarray(alone), atol=2e-5, rtol=2e-5)
    plain, _ = jax.jit(wav2vec2.Wav2Vec2Model(config.replace(feature_norm_mask=False)).apply)(params, padded, mask)
    assert not np.allclose(np.asarray(plain)[:, :frames], np.asarray(alone), atol=1e-3)
