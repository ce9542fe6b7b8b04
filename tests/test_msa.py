"""CASP's sentiment backbones: sizes as the reference code computes them, positions, masking, fusion order."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxemo.models import msa
from jaxemo.train import optim


def inputs(batch=2, steps=(6, 9, 7), dims=(12, 5, 20), seed=0):
    rng = np.random.default_rng(seed)
    text, audio, vision = (rng.standard_normal((batch, t, d)).astype(np.float32) for t, d in zip(steps, dims))
    lengths = np.full((batch,), steps[1], np.int32), np.full((batch,), steps[2], np.int32)
    return text, audio, vision, *lengths


def init(model, *args):
    return nn.unbox(model.init(jax.random.key(0), *args)["params"])


def count(params, keep=lambda path: True):
    return sum(v.size for k, v in traverse_util.flatten_dict(params).items() if keep(k))


@pytest.mark.parametrize("fusion, adapted, representation", [("late", 2400, 120), ("early", 800, 40)])
def test_parameter_counts_match_the_reference(fusion, adapted, representation):
    # dossier A.2/A.3: one layer 19,720 (MHA 6,560 + FC1 6,560 + FC2 6,440 + 2 LN 160), one 5-layer encoder
    # with its final LayerNorm 98,680; CASP adapts only the per-layer LayerNorms.
    model = msa.SentimentRegressor(fusion=fusion)
    params = init(model, *inputs())
    encoder = params["encoder_text"] if fusion == "late" else params["fusion"]
    assert count(encoder["layers_0"]) == 19_720
    assert count(encoder) == 98_680
    assert count(params, optim.path_matcher(msa.ADAPTED_BY_CASP)) == adapted
    projections = sum(count(params[f"proj_{m}"]) for m in msa.MODALITIES)
    assert projections == (12 + 5 + 20) * 40 + 3 * 40  # 1x1 conv with bias
    score, rep = model.apply({"params": params}, *inputs())
    assert score.shape == (2,) and rep.shape == (2, representation)


def test_sinusoidal_table_is_fairseqs():
    table = msa.sinusoidal_table(6, 40)
    half = 20
    freqs = np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))
    np.testing.assert_allclose(table[3], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]), rtol=1e-6)
    assert not table[0].any()  # the padding position


def test_zero_position_quirk_only_where_the_first_channel_is_zero():
    x = jnp.ones((1, 4, 40)).at[0, 2, 0].set(0.0)
    plain, quirk = msa.positions(x, False), msa.positions(x, True)
    table = msa.sinusoidal_table(5, 40)
    np.testing.assert_allclose(plain[0], table[1:5])
    np.testing.assert_allclose(quirk[0, 2], 0.0)
    np.testing.assert_allclose(quirk[0, [0, 1, 3]], table[[1, 2, 4]])


def test_padding_mask_makes_padded_steps_irrelevant():
    text, audio, vision, _, _ = inputs()
    audio_length, vision_length = np.array([4, 9], np.int32), np.array([7, 3], np.int32)
    changed_audio, changed_vision = audio.copy(), vision.copy()
    changed_audio[0, 4:] += 5.0
    changed_vision[1, 3:] -= 5.0
    masked = msa.SentimentRegressor(use_padding_mask=True)
    params = init(masked, text, audio, vision, audio_length, vision_length)
    before = masked.apply({"params": params}, text, audio, vision, audio_length, vision_length)[0]
    after = masked.apply({"params": params}, text, changed_audio, changed_vision, audio_length, vision_length)[0]
    np.testing.assert_allclose(before, after, atol=1e-5)
    unmasked = msa.SentimentRegressor()  # the reference attends over padding
    assert not np.allclose(unmasked.apply({"params": params}, text, audio, vision)[0],
                           unmasked.apply({"params": params}, text, changed_audio, changed_vision)[0], atol=1e-4)


def test_early_fusion_reads_the_first_text_token_of_one_shared_encoder():
    model = msa.SentimentRegressor(fusion="early")
    text, audio, vision, *_ = inputs()
    params = init(model, text, audio, vision)
    _, state = model.apply({"params": params}, text, audio, vision, mutable=["intermediates"])
    hidden = state["intermediates"]["fusion"]["layer_4"][0]
    assert hidden.shape == (2, 6 + 9 + 7, 40)  # text, audio and vision concatenated along time
    _, rep = model.apply({"params": params}, text, audio, vision)
    final_norm = params["fusion"]["layer_norm"]
    mean, var = hidden[:, 0].mean(-1, keepdims=True), hidden[:, 0].var(-1, keepdims=True)
    expected = (hidden[:, 0] - mean) / jnp.sqrt(var + 1e-5) * final_norm["scale"] + final_norm["bias"]
    np.testing.assert_allclose(rep, expected, atol=1e-5)


def test_dropout_only_in_training():
    model = msa.SentimentRegressor()
    args = inputs()
    params = init(model, *args)
    eval_a, eval_b = (model.apply({"params": params}, *args)[0] for _ in range(2))
    np.testing.assert_array_equal(eval_a, eval_b)
    train = [model.apply({"params": params}, *args, deterministic=False, rngs={"dropout": jax.random.key(i)})[0]
             for i in range(2)]
    assert not np.allclose(train[0], train[1])


def test_hash_dropout_keeps_the_rate_and_draws_a_new_mask_per_key():
    """`layers.HashDropout`: the keep rate and the 1/(1-p) scale of dropout, one mask per key (also per key
    under vmap), nothing in evaluation; CASP's model with dropout_impl="hash" is the same function in
    evaluation and another random one in training."""
    from jaxemo import layers

    x = jnp.ones((4, 50, 500))
    drop = lambda key, deterministic=False: layers.HashDropout(0.25).apply(  # noqa: E731
        {}, x, deterministic, rngs={"dropout": key})
    a, b = np.asarray(drop(jax.random.key(0))), np.asarray(drop(jax.random.key(1)))
    assert abs((a > 0).mean() - 0.75) < 0.005 and set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert 0.5 < ((a > 0) == (b > 0)).mean() < 0.7  # independent masks agree on 0.75^2 + 0.25^2 of elements
    np.testing.assert_array_equal(a, drop(jax.random.key(0)))
    np.testing.assert_array_equal(drop(jax.random.key(0), True), x)
    per_sample = jax.vmap(drop)(jax.random.split(jax.random.key(2), 2))
    assert not np.array_equal(per_sample[0], per_sample[1])
    args = inputs()
    threefry, hashed = msa.SentimentRegressor(), msa.SentimentRegressor(dropout_impl="hash")
    params = init(threefry, *args)
    np.testing.assert_array_equal(threefry.apply({"params": params}, *args)[0],
                                  hashed.apply({"params": params}, *args)[0])
    train = [m.apply({"params": params}, *args, deterministic=False, rngs={"dropout": jax.random.key(3)})[0]
             for m in (threefry, hashed)]
    assert np.all(np.isfinite(train[1])) and not np.allclose(train[0], train[1])
    with pytest.raises(ValueError, match="dropout_impl='philox'"):
        init(msa.SentimentRegressor(dropout_impl="philox"), *args)


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="fusion='middle'"):
        init(msa.SentimentRegressor(fusion="middle"), *inputs())
