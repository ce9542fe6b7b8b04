"""AGT for MER2024: the MERTools attention baseline (structure, raw fusion weights, masked LSTM, PyTorch parity),
the Audio-Guided Transformer (shapes, masks, guides, gradients, no retrace) and the EM class prior."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxemo.models import agt
from jaxemo.systems.agt import prior as prior_lib
from jaxemo.systems.agt import task as task_lib

MODS = ("audio", "text", "vision")
DIMS = {"audio": 10, "text": 12, "vision": 7}
FRAMES = {"audio": 6, "vision": 5}


def utt_inputs(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((batch, d)).astype(np.float32) for m, d in DIMS.items()}


def frame_inputs(batch=3, seed=0, lengths=None):
    """audio and vision as frame sequences (end-padded, padding random), text as an utterance vector."""
    rng = np.random.default_rng(seed)
    lengths = lengths or {"audio": [6, 3, 1], "vision": [2, 5, 4]}
    features, masks = {"text": rng.standard_normal((batch, DIMS["text"])).astype(np.float32)}, {}
    for m, t in FRAMES.items():
        features[m] = rng.standard_normal((batch, t, DIMS[m])).astype(np.float32)
        masks[m] = np.asarray(agt.lengths_to_mask(np.asarray(lengths[m]), t))
    return features, masks


def repad(features, masks, seed=1, extra=3):
    """The same samples with other padding values and `extra` more padded frames."""
    rng = np.random.default_rng(seed)
    features, masks = dict(features), dict(masks)
    for m, mask in list(masks.items()):
        x = features[m]
        pad = rng.standard_normal((x.shape[0], extra, x.shape[2])).astype(np.float32) * 5
        x = np.concatenate([x, pad], 1)
        mask = np.concatenate([mask, np.zeros((x.shape[0], extra), bool)], 1)
        features[m] = np.where(mask[..., None], x, 7.0 * rng.standard_normal(x.shape).astype(np.float32))
        masks[m] = mask
    return features, masks


# XLA:CPU compilation is most of this file's time: keys are "rbg" (threefry's bit generator compiles several times
# slower), params are initialised once per model and input shapes, and each model's jitted apply is reused.
_INITS, _APPLIES, TRACES = {}, {}, {}


def key(seed):
    return jax.random.key(seed, impl="rbg")


def boxed_init(model, features, masks=None):
    signature = (repr(model), repr(jax.tree.map(np.shape, (features, masks))))
    if signature not in _INITS:
        _INITS[signature] = jax.jit(model.init)(key(0), features, masks)["params"]
    return _INITS[signature]


def init(model, features, masks=None):
    return dict(nn.unbox(boxed_init(model, features, masks)))  # a copy: tests replace entries


def run(model, params, features, masks=None, deterministic=True, rng=None):
    """model.apply under jit (op-by-op Flax would dominate the file's runtime)."""
    name = repr(model)
    if name not in _APPLIES:
        def apply(variables, *args, **kwargs):
            TRACES[name] = TRACES.get(name, 0) + 1
            return model.apply(variables, *args, **kwargs)

        _APPLIES[name] = jax.jit(apply, static_argnames="deterministic")
    rngs = None if rng is None else {"dropout": rng}
    return _APPLIES[name]({"params": params}, features, masks, deterministic=deterministic, rngs=rngs)


def shapes(params):
    return {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(params).items()}


# ---------------------------------------------------------------------------------------------------------
# MERTools baseline


def test_baseline_param_shapes_and_logical_axes():
    model = agt.create("attention", modalities=MODS, hidden_dim=16, dropout=0.3)
    assert repr(model) == repr(agt.MERToolsAttention(MODS, hidden_dim=16, dropout=0.3))
    from_config = task_lib.build_model({"name": "attention", "modalities": list(MODS), "hidden_dim": 16,
                                        "dropout": 0.3, "search": {"hidden_dim": (8, 16)}})
    assert repr(from_config) == repr(model)
    boxed = boxed_init(model, utt_inputs())
    params = shapes(nn.unbox(boxed))
    for m in MODS:
        assert params[f"encoder_{m}/linear_1/kernel"] == (DIMS[m], 16)
        assert params[f"encoder_{m}/linear_2/kernel"] == (16, 16)
        assert params[f"encoder_{m}/linear_3/kernel"] == (16, 16)
    assert params["attention_mlp/linear_1/kernel"] == (48, 16)
    assert params["fc_att/kernel"] == (16, 3) and params["fc_out_1/kernel"] == (16, 6)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)


def test_baseline_fusion_weights_are_raw_not_softmax():
    model = agt.MERToolsAttention(MODS, hidden_dim=16, dropout=0.3)
    features = utt_inputs()
    params = init(model, features)
    # fc_att: zero kernel, bias (2, -3, 0.5): every sample gets those weights as they are (they sum to -0.5)
    params["fc_att"] = {"kernel": jnp.zeros((16, 3)), "bias": jnp.asarray([2.0, -3.0, 0.5])}
    logits, aux = run(model, params, features)
    np.testing.assert_allclose(aux["weights"], np.tile([2.0, -3.0, 0.5], (3, 1)))
    hidden = [_mlp(params[f"encoder_{m}"], features[m]) for m in MODS]
    expected = 2.0 * hidden[0] - 3.0 * hidden[1] + 0.5 * hidden[2]
    np.testing.assert_allclose(aux["features"], expected, rtol=1e-5, atol=1e-6)
    head = params["fc_out_1"]
    np.testing.assert_allclose(logits, expected @ np.asarray(head["kernel"]) + head["bias"], rtol=1e-5, atol=1e-6)


def _mlp(p, x):
    for i in (1, 2, 3):
        x = np.maximum(x @ np.asarray(p[f"linear_{i}"]["kernel"]) + np.asarray(p[f"linear_{i}"]["bias"]), 0)
    return x


def test_baseline_dropout_only_in_training():
    model = agt.MERToolsAttention(MODS, hidden_dim=16, dropout=0.3)
    features = utt_inputs()
    params = init(model, features)
    evals = [run(model, params, features)[0] for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    trains = [run(model, params, features, deterministic=False, rng=key(i))[0] for i in range(2)]
    assert not np.allclose(trains[0], trains[1])


def test_baseline_frame_level_lstm_ignores_padding():
    model = agt.MERToolsAttention(MODS, hidden_dim=8, dropout=0.2)
    features, masks = frame_inputs()
    params = init(model, features, masks)
    rnn = shapes(params["encoder_audio"]["rnn"])
    assert rnn == {"input_kernel": (DIMS["audio"], 32), "recurrent_kernel": (8, 32), "bias_ih": (32,),
                   "bias_hh": (32,)}  # torch's two biases
    assert "encoder_audio/linear_2/kernel" not in shapes(params)  # the LSTM encoder has one linear
    logits, _ = run(model, params, features, masks)
    logits2, _ = run(model, params, *repad(features, masks))
    np.testing.assert_allclose(logits, logits2, rtol=1e-5, atol=1e-6)
    # the state is the last real frame's: a NumPy LSTM (torch's equations, gates i, f, g, o) over each sample's
    # own frames gives the same hidden state
    p = {k: np.asarray(v, np.float64) for k, v in params["encoder_audio"]["rnn"].items()}
    lstm = jax.jit(agt.LSTM(8).apply)
    full = lstm({"params": params["encoder_audio"]["rnn"]}, features["audio"], masks["audio"])
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    for b, n in enumerate(masks["audio"].sum(1)):
        h, c = np.zeros(8), np.zeros(8)
        for x in features["audio"][b, :n]:
            gates = x @ p["input_kernel"] + p["bias_ih"] + h @ p["recurrent_kernel"] + p["bias_hh"]
            i, f, g, o = np.split(gates, 4)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        np.testing.assert_allclose(full[b], h, rtol=1e-5, atol=1e-6)


def test_baseline_reference_front_padding():
    # MERTools pads in front and runs the LSTM over the zeros: the result depends on the padded length.
    model = agt.MERToolsAttention(MODS, hidden_dim=8, dropout=0.2, lstm_front_padding=True)
    features, masks = frame_inputs()
    params = init(agt.MERToolsAttention(MODS, hidden_dim=8, dropout=0.2), features, masks)  # the same tree
    front = agt.front_pad(jnp.asarray(features["audio"]), jnp.asarray(masks["audio"]))
    n = int(masks["audio"][1].sum())
    np.testing.assert_array_equal(front[1, -n:], features["audio"][1, :n])
    assert np.all(np.asarray(front[1, :-n]) == 0)
    logits, _ = run(model, params, features, masks)
    logits2, _ = run(model, params, *repad(features, masks))
    assert np.all(np.isfinite(logits)) and not np.allclose(logits, logits2, atol=1e-6)


@pytest.mark.parametrize("frames", [False, True])
def test_baseline_matches_pytorch_twin(frames):
    torch = pytest.importorskip("torch")
    from benchmarks.twins import mertools_attention_torch as twin

    model = agt.MERToolsAttention(MODS, hidden_dim=16, dropout=0.3, lstm_front_padding=frames)
    features, masks = frame_inputs() if frames else (utt_inputs(), None)
    params = init(model, features, masks)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32), params)
    net = twin.build(DIMS, hidden_dim=16, dropout=0.3, frame_level=FRAMES if frames else ()).eval()
    twin.load_jaxemo_params(net, params)
    inputs = dict(features)
    for m in masks or {}:  # MERTools' loader pads in front; its LSTM runs over the zeros
        inputs[m] = np.array(agt.front_pad(jnp.asarray(features[m]), jnp.asarray(masks[m])))
    with torch.no_grad():
        t_logits, t_fused = net({m: torch.from_numpy(x) for m, x in inputs.items()})
    logits, aux = run(model, params, features, masks)
    np.testing.assert_allclose(np.asarray(logits), t_logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["features"]), t_fused.numpy(), rtol=1e-5, atol=1e-5)


def twin_key(path: str) -> str:
    """A MERToolsAttention param path -> the torch twin's state-dict key (`build`'s layout)."""
    parts = path.split("/")
    if parts[0].startswith("encoder_"):
        parts = ["encoders", parts[0][len("encoder_"):]] + parts[1:]
    leaf = {"kernel": "weight", "input_kernel": "weight_ih_l0", "recurrent_kernel": "weight_hh_l0",
            "bias_ih": "bias_ih_l0", "bias_hh": "bias_hh_l0"}.get(parts[-1], parts[-1])
    return ".".join(parts[:-1] + [leaf])


def ks_statistic(a, b) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    gaps = np.searchsorted(np.sort(a), grid, side="right") / len(a) - np.searchsorted(np.sort(b), grid,
                                                                                       side="right") / len(b)
    return float(np.max(np.abs(gaps)))


def test_baseline_init_matches_torch_defaults():
    # every param maps one-to-one to the torch module's state dict (torch's two LSTM biases included), and
    # is drawn as torch draws it: Linear kernel and bias U(+-1/sqrt(fan_in)), LSTM weights and biases
    # U(+-1/sqrt(h)); the AGT keeps its own initialisers (module docstring)
    torch = pytest.importorskip("torch")
    from benchmarks.twins import mertools_attention_torch as twin

    hidden = 64
    model = agt.MERToolsAttention(MODS, hidden_dim=hidden, dropout=0.2)
    features, masks = frame_inputs()
    flat = traverse_util.flatten_dict(init(model, features, masks), sep="/")
    params = {k: np.asarray(v) for k, v in flat.items()}
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in twin.build(DIMS, hidden, 0.2, frame_level=FRAMES).state_dict().items()}
    assert sorted(twin_key(k) for k in params) == sorted(state)
    ours, theirs, biases, torch_biases = [], [], [], []
    for path, value in params.items():
        reference = state[twin_key(path)]
        assert value.shape == (reference.T.shape if path.endswith("kernel") else reference.shape), path
        if "/rnn/" in path:
            bound = 1 / np.sqrt(hidden)
        else:
            bound = 1 / np.sqrt(params[path.rsplit("/", 1)[0] + "/kernel"].shape[0])  # fan_in
        for x in (value, reference):
            assert np.max(np.abs(x)) <= bound * (1 + 1e-6), path
            if x.size >= 64:  # U(+-b): std b / sqrt(3); 0.25 is over 4 standard errors at 64 draws
                assert abs(x.std() / (bound / np.sqrt(3)) - 1) < 0.25, (path, x.std(), bound)
        assert np.std(value) > 0, path  # no zero-initialised bias
        ours.append(value.ravel() / bound)
        theirs.append(reference.ravel() / bound)
        if path.rsplit("/", 1)[1].startswith("bias"):
            biases.append(ours[-1])
            torch_biases.append(theirs[-1])
    # the text MLP's 3, 2 x (the LSTM's 2 + linear_1), attention_mlp's 3, fc_att, fc_out_1
    assert len(biases) == 3 + 2 * 3 + 3 + 2
    # scaled by their bounds, jaxemo's draws and torch's have one distribution, U(-1, 1): two-sample KS
    # statistics under the critical values at p = 1e-4 (~77,000 params: 0.011; ~1,500 biases: 0.08)
    assert ks_statistic(np.concatenate(ours), np.concatenate(theirs)) < 0.011
    assert ks_statistic(np.concatenate(biases), np.concatenate(torch_biases)) < 0.08


# ---------------------------------------------------------------------------------------------------------
# Audio-Guided Transformer


def agt_model(**overrides):
    fields = {"modalities": MODS, "width": 16, "num_heads": 2, "depth": 1, "self_depth": 1, "dropout": 0.1,
              "input_dropout": 0.1, **overrides}
    return agt.create("agt", **fields)


# Each transformer block adds seconds of XLA:CPU compile time: one case has intra-modal blocks and longer padding.
@pytest.mark.parametrize("guide, fuse, gate, self_depth, extra", [("audio", "guided", "softmax", 1, 2),
                                                                  ("video", "all", "sigmoid", 0, 0),
                                                                  ("text", "guided", "softmax", 0, 0)])
def test_agt_shapes_guides_and_masks(guide, fuse, gate, self_depth, extra):
    model = agt_model(guide=guide, fuse=fuse, gate=gate, self_depth=self_depth)
    features, masks = frame_inputs()
    params = init(model, features, masks)
    name = {"video": "vision"}.get(guide, guide)
    others = [m for m in MODS if m != name]
    assert set(k for k in params if k.startswith("context_")) == {f"context_{m}_0" for m in others}
    logits, aux = run(model, params, features, masks)
    streams = model.stream_names()
    assert logits.shape == (3, 6) and aux["features"].shape == (3, 16)
    assert aux["gates"].shape == (3, len(streams)) and streams[0] == name
    assert len(streams) == (5 if fuse == "all" else 3)  # the guide, 2 guided branches (+ the 2 others' own)
    if gate == "softmax":
        np.testing.assert_allclose(aux["gates"].sum(-1), 1.0, rtol=1e-6)
    logits2, _ = run(model, params, *repad(features, masks, extra=extra))  # other padding values (and length)
    np.testing.assert_allclose(logits, logits2, rtol=1e-4, atol=1e-5)


def test_agt_utterance_tokens_and_role_names():
    dims = {"chinese-hubert-large": 8, "clip-vit-large-patch14": 6, "Baichuan-13B-Base": 10}
    features = {name: np.ones((2, d), np.float32) for name, d in dims.items()}
    model = agt.create("agt", modalities=tuple(features), width=8, num_heads=2, utt_tokens=3, guide="video",
                       self_depth=0)
    assert model.guide_name() == "clip-vit-large-patch14"
    params = init(model, features)
    assert shapes(params)["proj_chinese-hubert-large/kernel"] == (8, 24)
    assert run(model, params, features)[0].shape == (2, 6)
    with pytest.raises(ValueError, match="guide"):
        agt.create("agt", modalities=("a", "b"), guide="audio")
    assert agt.resolve_guide("audio", ("a", "b"), {"audio": "b"}) == "b"
    with pytest.raises(ValueError, match="model name"):
        agt.create("mult", modalities=MODS)
    config = {"modalities": tuple(features), "width": 8, "guide": "video", "roles": {"video": "Baichuan-13B-Base"},
              "depth": None}
    assert task_lib.build_model(config).guide_name() == "Baichuan-13B-Base"  # roles from a mapping; None: default
    with pytest.raises(ValueError, match="modalities"):
        task_lib.build_model({"name": "attention"})


def test_agt_gradients_finite_and_dropout():
    # few dropout sites and no intra-modal block (layers.EncoderBlock, tested with the ViT): the backward pass
    # of each block costs seconds of compile time
    model = agt_model(dropout=0.0, input_dropout=0.3, self_depth=0, guide="text")
    features, masks = frame_inputs()
    params = init(agt_model(self_depth=0, guide="text"), features, masks)  # the same tree as the text-guided case
    labels = jnp.asarray([0, 3, 5])

    def loss(p, rng):
        logits, _ = model.apply({"params": p}, features, masks, deterministic=False, rngs={"dropout": rng})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    step = jax.jit(jax.value_and_grad(loss))
    value, grads = step(params, key(1))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    for name in ("proj_vision", "proj_text", "context_vision_0", "context_audio_0", "gate", "head"):
        assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads[name]))) > 0, name
    assert float(value) != float(step(params, key(2))[0])  # dropout draws differ by key


def test_agt_jit_does_not_retrace():
    model = agt_model()
    features, masks = frame_inputs()
    params = init(model, features, masks)
    run(model, params, features, masks)
    traces = TRACES[repr(model)]
    other, other_masks = frame_inputs(seed=5, lengths={"audio": [1, 2, 3], "vision": [5, 5, 1]})
    params = jax.tree.map(lambda x: x * 0.5, params)
    assert run(model, params, other, other_masks)[0].shape == (3, 6)
    assert TRACES[repr(model)] == traces  # new values, same shapes: no retrace


# ---------------------------------------------------------------------------------------------------------
# EM prior


def shifted_posteriors(train_prior, target_prior, n=20000, seed=0):
    """Calibrated posteriors under `train_prior` for samples drawn under `target_prior` (Gaussian classes)."""
    rng = np.random.default_rng(seed)
    c = len(train_prior)
    means = 2.0 * rng.standard_normal((c, 4))
    labels = rng.choice(c, size=n, p=target_prior)
    x = means[labels] + rng.standard_normal((n, 4))
    log_lik = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1)

    def posterior(prior):
        z = log_lik + np.log(prior)
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    return posterior(np.asarray(train_prior)), posterior(np.asarray(target_prior)), labels


def test_em_recovers_a_shifted_prior():
    train = np.asarray([0.30, 0.20, 0.20, 0.15, 0.10, 0.05])  # the synthetic MER labelled prior
    target = 0.3 * train + 0.7 * train[::-1]  # its pool prior (prior_shift 0.7)
    probs, true_posteriors, labels = shifted_posteriors(train, target)
    estimate, adjusted, iterations = prior_lib.em_prior(probs, train, max_iter=500, tol=1e-8)
    empirical = np.bincount(labels, minlength=6) / len(labels)
    assert np.max(np.abs(estimate - target)) < 0.03  # tolerance: 0.03 per class against the true prior
    assert np.max(np.abs(estimate - empirical)) < 0.03
    assert np.max(np.abs(probs.mean(0) - target)) > 0.05  # the unadjusted mean is not already there
    assert 1 < iterations < 500
    np.testing.assert_allclose(adjusted.sum(1), 1.0, rtol=1e-12)
    assert np.mean(np.abs(adjusted - true_posteriors)) < 0.01
    # the adjusted posteriors classify the shifted set better than the unadjusted ones
    assert np.mean(adjusted.argmax(1) == labels) > np.mean(probs.argmax(1) == labels)


def test_adjust_probs_reweights_and_renormalises():
    probs = np.asarray([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    out = prior_lib.adjust_probs(probs, [0.5, 0.25, 0.25], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(out.sum(-1), 1.0)
    np.testing.assert_allclose(out[0], [0.2, 0.8, 0.0])  # 0.5*0.5 : 0.5*2 -> 0.25 : 1.0
    same = prior_lib.adjust_probs(probs, [1, 1, 1], [2, 2, 2])  # equal priors (normalised): rows only renormalised
    np.testing.assert_allclose(same, probs / probs.sum(1, keepdims=True))
    # a row whose mass sits only on excluded classes becomes the target prior
    excluded = prior_lib.adjust_probs([[0.0, 0.0, 1.0]], [1, 1, 1], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(excluded[0], [0.5, 0.5, 0.0])


@pytest.mark.parametrize("call, name", [
    (lambda: prior_lib.em_prior(np.full((4, 3), 1 / 3), [0.5, 0.5, 0.0]), "train_prior"),
    (lambda: prior_lib.em_prior(np.full((4, 3), 1 / 3), [0.5, 0.5]), "train_prior"),
    (lambda: prior_lib.em_prior(np.full((4,), 1 / 3), [0.5, 0.5]), "probs"),
    (lambda: prior_lib.em_prior(-np.ones((4, 3)), [1, 1, 1]), "probs"),
    (lambda: prior_lib.em_prior(np.full((4, 3), 1 / 3), [1, 1, 1], max_iter=0), "max_iter"),
    (lambda: prior_lib.adjust_probs(np.full((4, 3), 1 / 3), [0, 1, 1], [1, 1, 1]), "train_prior"),
    (lambda: prior_lib.adjust_probs(np.full((4, 3), 1 / 3), [1, 1, 1], [1, 1]), "target_prior"),
    (lambda: prior_lib.adjust_probs(np.full((4, 3), 1 / 3), [1, 1, 1], [0, 0, 0]), "target_prior"),
])
def test_prior_degenerate_inputs_raise(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_modality_dropout_zeros_one_feature_of_the_dropped_training_samples():
    from ml_collections import config_dict

    config = config_dict.ConfigDict(dict(model=dict(name="attention", modalities=("audio", "video", "text")),
                                         augment=dict(modality_dropout=1.0)))
    task = task_lib.build_task(config)
    assert task.modality_dropout == 1.0
    rng = np.random.default_rng(0)
    batch = {f"features/{n}": rng.standard_normal((64, d)).astype(np.float32) + 3.0
             for n, d in (("audio", 5), ("video", 4), ("text", 6))}
    features, _ = task.inputs(batch, jax.random.key(1), train=True)
    zeroed = np.stack([~np.asarray(features[n]).any(-1) for n in ("audio", "video", "text")], 1)
    assert (zeroed.sum(1) == 1).all() and zeroed.mean(0).min() > 0.15  # one feature each, every one chosen
    kept = ~zeroed
    for i, n in enumerate(("audio", "video", "text")):
        np.testing.assert_array_equal(np.asarray(features[n])[kept[:, i]], batch[f"features/{n}"][kept[:, i]])
    features, _ = task.inputs(batch, train=False)  # evaluation sees every feature
    assert all(np.asarray(features[n]).all() for n in ("audio", "video", "text"))
    config.augment.modality_dropout = 0.0
    features, _ = task_lib.build_task(config).inputs(batch, jax.random.key(1), train=True)
    assert all((np.asarray(features[n]) == batch[f"features/{n}"]).all() for n in ("audio", "video", "text"))
