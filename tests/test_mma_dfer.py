"""MMA-DFER: the reference's parameter split, fusion behaviour, prompt schedule and input checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxemo.models import mma_dfer
from jaxemo.train import optim

TINY = dict(num_classes=7, num_frames=4, image_size=32, audio_shape=(64, 32), patch_size=8, width=32, depth=4,
            num_heads=2, mlp_dim=64, latent_dim=8, temporal_width=16, temporal_heads=2, temporal_mlp_dim=32)

# Dossier §1.5: trainable parameters of the reference for DFEW (7 classes), per part.
REFERENCE_PARTS = {
    "image.temporal_att_post": 1_188_864, "image.audio_proj_pre": 1_184_256, "image.temporal_pre": 1_181_184,
    "image.temporal_pre_norm": 3_072, "image.pos_embed": 155_904, "image prompts": 9_216, "image all_gate": 12,
    "audio.temporal_att_post": 1_188_864, "audio.pos_embed": 201_984, "audio prompts": 9_216,
    "audio all_gate": 12, "temporal_net": 2_112_512, "vision_proj": 393_728, "our_classifier": 3_591,
}


def _abstract_params(model, frames=16, size=224, audio=(512, 128)):
    video = jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.float32)
    fbank = jax.ShapeDtypeStruct((1, *audio), jnp.float32)
    return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), video, fbank)["params"])


def _split(params):
    return optim.split_params(params, optim.path_matcher(mma_dfer.TRAINABLE_PATTERNS))


def test_trainable_split_matches_the_reference_per_part():
    params = _abstract_params(mma_dfer.MMADFER(num_classes=7, reference_unused_norms=True))
    assert mma_dfer.count_parts(params) == REFERENCE_PARTS
    trainable, frozen = _split(params)
    assert optim.count_params(trainable) == 7_632_415
    # The reference's 171,679,732 frozen parameters include two heads it never uses (9,228 + 769,000).
    assert optim.count_params(frozen) == 171_679_732 - 9_228 - 769_000
    mafw = _abstract_params(mma_dfer.MMADFER(num_classes=11, reference_unused_norms=True))
    assert optim.count_params(_split(mafw)[0]) == 7_634_467


def test_without_the_parity_flag_only_the_unused_norms_are_missing():
    params = _abstract_params(mma_dfer.MMADFER(num_classes=7))
    assert optim.count_params(_split(params)[0]) == 7_632_415 - 2 * 2 * 512


def _tiny_inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.uniform(size=(batch, 4, 32, 32, 3)).astype(np.float32)
    audio = rng.standard_normal((batch, 64, 32)).astype(np.float32)
    return jnp.asarray(video), jnp.asarray(audio)


def _init(model, video, audio):
    return nn.unbox(jax.jit(model.init)(jax.random.key(0), video, audio)["params"])


@pytest.fixture(scope="module")
def tiny():
    """MMADFER(**TINY), its params and one jitted forward (logits, aux) that the tests below share: one compile
    per input shape instead of one per test."""
    model = mma_dfer.MMADFER(**TINY)
    params = _init(model, *_tiny_inputs())
    return model, params, jax.jit(lambda p, v, a: model.apply({"params": p}, v, a))


@pytest.fixture
def tiny_params(tiny):
    """A fresh copy of the params' dicts for each test (the tests replace entries)."""
    return jax.tree.map(lambda x: x, tiny[1])


def test_zero_gates_make_the_adapters_inert_at_initialisation(tiny, tiny_params):
    forward = tiny[2]
    video, audio = _tiny_inputs()
    params = tiny_params
    apply = lambda p: forward(p, video, audio)[0]  # noqa: E731
    perturbed = jax.tree.map(lambda x: x, params)
    adapter = perturbed["fusion_layers"]["adapter"]
    adapter["video_up"]["kernel"] = adapter["video_up"]["kernel"] + 1.0
    adapter["audio_down"]["kernel"] = adapter["audio_down"]["kernel"] * 3.0
    np.testing.assert_allclose(apply(perturbed), apply(params), rtol=1e-6, atol=1e-6)
    adapter["video_gate"] = jnp.full_like(adapter["video_gate"], 0.5)
    assert not np.allclose(apply(perturbed), apply(params), atol=1e-4)


def test_audio_reaches_the_video_stream_through_the_fusion(tiny, tiny_params):
    forward = tiny[2]
    video, audio = _tiny_inputs()
    params = tiny_params
    params["fusion_layers"]["adapter"]["video_gate"] = jnp.full((4, 1), 0.7)
    video_cls = lambda p, a: forward(p, video, a)[1]["video_cls"]  # noqa: E731
    other_audio = audio * 2.0 + 1.0
    assert not np.allclose(video_cls(params, audio), video_cls(params, other_audio), atol=1e-4)
    params["fusion_layers"]["adapter"]["video_gate"] = jnp.zeros((4, 1))
    np.testing.assert_allclose(video_cls(params, audio), video_cls(params, other_audio), rtol=1e-6)


@pytest.mark.parametrize("index,expected_rows", [(0, [0, 1, 2]), (1, []), (6, [3, 4, 5]), (7, []), (12, [])])
def test_progressive_prompt_updates_follow_the_schedule(index, expected_rows):
    tokens = jnp.zeros((1, 10, 2))
    table = jnp.zeros((2, 6, 2)).at[0, :3].set(1.0).at[1, 3:].set(2.0)
    out = mma_dfer.add_prompt_updates(tokens, table, jnp.asarray(index), stride=6)
    changed = np.nonzero(np.abs(np.asarray(out[0, 4:])).sum(-1))[0].tolist()
    assert changed == expected_rows
    assert np.all(np.asarray(out[0, :4]) == 0)


def test_fusion_tokens_are_invisible_before_the_fusion_layer():
    video, audio = _tiny_inputs()
    late = mma_dfer.MMADFER(fusion="tokens", fusion_layer=4, **TINY)  # == depth: never fused
    params = _init(late, video, audio)
    apply = jax.jit(lambda p: late.apply({"params": p}, video, audio)[0])
    noise = jax.random.normal(jax.random.key(3), params["fusion_tokens"].shape)  # not a constant: LN removes that
    moved = {**params, "fusion_tokens": params["fusion_tokens"] + noise}
    np.testing.assert_allclose(apply(moved), apply(params), rtol=1e-6, atol=1e-6)
    early = late.clone(fusion_layer=1)
    apply_early = jax.jit(lambda p: early.apply({"params": p}, video, audio)[0])
    assert not np.allclose(apply_early(moved), apply_early(params), atol=1e-4)


def test_each_clip_is_independent_of_its_batch(tiny, tiny_params):
    forward = tiny[2]
    video, audio = _tiny_inputs()  # the clip at index 1: in a batch of two, then alone
    params = tiny_params
    params["fusion_layers"]["adapter"]["video_gate"] = jnp.full((4, 1), 0.5)
    params["fusion_layers"]["adapter"]["audio_gate"] = jnp.full((4, 1), 0.5)
    apply = lambda v, a: forward(params, v, a)[0]  # noqa: E731
    np.testing.assert_allclose(apply(video, audio)[1:2], apply(video[1:2], audio[1:2]), rtol=1e-5, atol=1e-5)


def test_wrong_inputs_are_reported():
    model = mma_dfer.MMADFER(**TINY)
    video, audio = _tiny_inputs()
    with pytest.raises(ValueError, match=r"video \[batch, 4, 32, 32, 3\], got \(2, 3, 32, 32, 3\)"):
        model.init(jax.random.key(0), video[:, :3], audio)
    with pytest.raises(ValueError, match=r"audio \[batch, 64, 32\].*got \(2, 60, 32\)"):
        model.init(jax.random.key(0), video, audio[:, :60])
    with pytest.raises(ValueError, match="fusion='late'"):
        mma_dfer.MMADFER(fusion="late", **TINY).init(jax.random.key(0), video, audio)


def test_the_recipe_never_decays_the_unused_norms():
    """The reference's unused PreNorm LayerNorms get no gradient, and torch's AdamW skips them: they never change.
    Here their gradient is zero and the recipe keeps them (and nothing else) out of AdamW's decay."""
    from experiments.configs import mma_dfer as recipe

    config = recipe.get_config("dfew").optimizer
    model = mma_dfer.MMADFER(**{**TINY, "temporal_depth": 2}, reference_unused_norms=True)
    trainable, _ = _split(_abstract_params(model, frames=4, size=32, audio=(64, 32)))
    decayed = jax.tree_util.tree_flatten_with_path(optim.decay_mask(config.decay_exclude)(trainable))[0]
    kept = sorted(jax.tree_util.keystr(path) for path, decays in decayed if not decays)
    assert kept == sorted(f"['temporal']['block_{i}_{part}_unused_norm_{leaf}']" for i in range(2)
                          for part in ("attn", "mlp") for leaf in ("scale", "bias"))
    optimizer = optim.make_optimizer(config, total_steps=10, steps_per_epoch=10)
    params = {"temporal": {"block_0_attn_unused_norm_scale": jnp.ones(4), "block_0": {"scale": jnp.ones(4)}}}
    updates, _ = optimizer.tx.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params), params)
    np.testing.assert_array_equal(updates["temporal"]["block_0_attn_unused_norm_scale"], 0.0)
    decay = -config.learning_rate * config.weight_decay
    np.testing.assert_allclose(updates["temporal"]["block_0"]["scale"], decay, rtol=1e-5)


def test_modality_dropout_zeros_one_modality_per_dropped_clip_and_leaves_the_augmentation_alone():
    from jaxemo.systems import mma_dfer as system

    rng = np.random.default_rng(0)
    inputs = {"video": rng.integers(1, 256, (64, 4, 40, 40, 3), dtype=np.uint8),
              "fbank": rng.standard_normal((64, 16, 8)).astype(np.float32) + 5.0}
    key = jax.random.key(3)

    def run(p):
        out = jax.jit(lambda x: system.preprocess(key, x, True, size=32, brightness=0.5, sampler="mma_dfer",
                                                  modality_dropout=p))(inputs)
        return np.asarray(out["video"]), np.asarray(out["fbank"])

    video, fbank = run(0.0)
    assert video.reshape(64, -1).any(1).all() and (fbank == inputs["fbank"]).all()
    for p in (1.0, 0.5):
        dropped_video, dropped_fbank = run(p)
        no_video = ~dropped_video.reshape(64, -1).any(1)
        no_audio = ~dropped_fbank.reshape(64, -1).any(1)
        assert not (no_video & no_audio).any()  # at most one modality per clip
        kept = ~(no_video | no_audio)
        np.testing.assert_array_equal(dropped_video[kept], video[kept])  # the same crops and flips
        np.testing.assert_array_equal(dropped_fbank[kept], fbank[kept])
        share = (no_video | no_audio).mean()
        assert share == 1.0 if p == 1.0 else 0.3 < share < 0.7
        if p == 1.0:
            assert 0.3 < no_video.mean() < 0.7
