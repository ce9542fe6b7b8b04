"""UniEmoX's fusion and losses against the reference's formulas in PyTorch, and the two-view student."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxemo.data import text as text_lib
from jaxemo.models import mae, uniemox

torch = pytest.importorskip("torch")
F = torch.nn.functional

STUDENT = mae.MAE(image_size=(32, 32), patch_size=(8, 8), width=32, depth=2, num_heads=2, mlp_dim=64,
                  decoder_width=16, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=32, mask_ratio=0.75)


def test_fusion_matches_the_reference_attention_fusion():
    rng = np.random.default_rng(0)
    alpha, beta = (rng.standard_normal((4, 16)).astype(np.float32) for _ in range(2))
    fusion = uniemox.Fusion(16)
    params = nn.unbox(fusion.init(jax.random.key(0), alpha, beta)["params"])
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(np.shape(x)).astype(np.float32),
                          params)
    ours = fusion.apply({"params": params}, alpha, beta)
    norm, linear = torch.nn.LayerNorm(16), torch.nn.Linear(16, 16)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(params["norm"]["scale"]))
        norm.bias.copy_(torch.from_numpy(params["norm"]["bias"]))
        linear.weight.copy_(torch.from_numpy(params["proj"]["kernel"].T))
        linear.bias.copy_(torch.from_numpy(params["proj"]["bias"]))
        reference = F.elu(linear(norm(torch.from_numpy(alpha)) + norm(torch.from_numpy(beta))))
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-6)


def test_losses_match_the_reference_formulas():
    rng = np.random.default_rng(1)
    fused, clip_image, text = (rng.standard_normal((5, 12)).astype(np.float32) for _ in range(3))
    scale = np.float32(np.log(100.0))
    weights = uniemox.LossWeights(reconstruction=0.5, similarity=2.0, contrastive=3.0)
    losses = uniemox.pretraining_losses(jnp.float32(0.7), fused, clip_image, text, scale, weights)
    g, c, t = (F.normalize(torch.from_numpy(x), dim=-1) for x in (fused, clip_image, text))
    similarity = 1 - F.cosine_similarity(g, c).mean()
    p, q = 100.0 * g @ t.T, 100.0 * c @ t.T
    contrastive = 1 - F.cosine_similarity(F.normalize(p, dim=-1), F.normalize(q, dim=-1)).mean()
    np.testing.assert_allclose(float(losses["similarity"]), float(similarity), rtol=1e-5)
    np.testing.assert_allclose(float(losses["contrastive"]), float(contrastive), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(losses["total"]), 0.35 + 2 * float(similarity) + 3 * float(contrastive),
                               rtol=1e-5)
    grads = jax.grad(lambda f, c: uniemox.pretraining_losses(0.0, f, c, text, scale)["total"], argnums=(0, 1))(
        fused, clip_image)
    assert np.abs(grads[0]).sum() > 0 and np.abs(grads[1]).sum() == 0  # the teacher's side gets no gradient


@pytest.fixture(scope="module")
def two_views():
    rng = np.random.default_rng(2)
    scene, person = (jnp.asarray(rng.standard_normal((3, 32, 32, 3)), jnp.float32) for _ in range(2))
    model = uniemox.UniEmoX(STUDENT)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(1)}, scene, person)
    return model, nn.unbox(variables["params"]), scene, person


def test_two_views_fusion_and_what_the_person_view_reaches(two_views):
    model, params, scene, person = two_views
    loss, aux = jax.jit(lambda p: model.apply({"params": p}, scene, person, rngs={"masking": jax.random.key(2)}))(
        params)
    assert np.isfinite(float(loss)) and aux["fused"].shape == (3, 16) and aux["mask"].shape == (3, 16)

    def person_feature(p):
        return model.apply({"params": p}, scene, person, rngs={"masking": jax.random.key(2)})[1]["person_feature"].sum()

    grads = jax.jit(jax.grad(person_feature))(params)["student"]
    assert np.abs(np.asarray(grads["decoder_embed"]["kernel"])).sum() > 0
    assert np.abs(np.asarray(grads["encoder"]["patch_embed"]["kernel"])).sum() > 0
    for name in ("decoder", "decoder_norm", "decoder_pred", "mask_token"):  # the person view skips the decoder
        assert all(np.abs(np.asarray(g)).sum() == 0 for g in jax.tree.leaves(grads[name])), name

    alone = uniemox.UniEmoX(STUDENT, fusion="none")
    student_only = {"student": params["student"]}
    _, aux = jax.jit(lambda p: alone.apply({"params": p}, scene, person, rngs={"masking": jax.random.key(2)}))(
        student_only)
    np.testing.assert_array_equal(aux["fused"], aux["scene_feature"])


def test_bad_views_and_fusion_names(two_views):
    model, params, scene, person = two_views
    with pytest.raises(ValueError, match="one shape"):
        model.apply({"params": params}, scene, person[:2], rngs={"masking": jax.random.key(0)})
    with pytest.raises(ValueError, match="fusion='sum'"):
        uniemox.UniEmoX(STUDENT, fusion="sum").init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                                                    scene, person)


# ------------------------------------------------------------------------------ prompts, tokens, text features


def test_prompts_follow_the_reference_template():
    from jaxemo.systems import uniemox as system

    full = {"scene": "beach", "object": "dog ball toy", "brightness": "0.6", "colorfulness": "0.4",
            "facial_expression": "happy", "human_action": "running"}
    assert system.emotion_prompt(full, "amusement") == (
        "The scene type of this photo is beach. The main subjects are dog, ball and toy. The image has a "
        "brightness of 0.6 and color saturation of 0.4. Human facial expression is happy. The action being "
        "performed is running. The overall emotion conveyed is amusement.")
    sparse = {"scene": "-1", "object": "dog ball", "facial_expression": "-1"}
    assert system.emotion_prompt(sparse, "awe") == ("The main subjects are dog and ball. The overall emotion "
                                                    "conveyed is awe.")
    assert system.emotion_prompt({"object": "cat"}, "fear") == ("The main subjects are cat. The overall emotion "
                                                                "conveyed is fear.")


def test_multi_word_object_names_are_whole_by_default_and_split_as_the_reference_with_words():
    """u-emo's EmoSet loader joins an image's object names with spaces and `_generate_prompt` splits that string
    on whitespace: ["Alarm clock", "Car"] reads "Alarm, clock and Car" there. jaxemo keeps names whole;
    `prompt_objects="words"` (config.data) restores the reference's prompts and so its cached text features."""
    from jaxemo.systems import uniemox as system
    from jaxemo.systems.uniemox import pretrain

    element = {"object": b"Alarm clock|Car", "label": 2, "scene": b"-1"}
    classes = ("amusement", "awe", "contentment")
    assert system.example_prompt(element, classes) == (
        "The main subjects are Alarm clock and Car. The overall emotion conveyed is contentment.")
    reference = "The main subjects are Alarm, clock and Car. The overall emotion conveyed is contentment."
    assert system.example_prompt(element, classes, "words") == reference
    assert system.emotion_prompt({"object": ["Baseball bat"]}, "awe", "words").startswith(
        "The main subjects are Baseball and bat.")
    # the host transform finds the reference's prompt in a table built the same way
    table = np.arange(6, dtype=np.float32).reshape(2, 3)
    host = pretrain.PromptFeatures({"other": 0, reference: 1}, table, classes, "words")
    example = {**element, "image": np.zeros((2, 2, 3), np.uint8), "person_box": np.zeros(4), "has_person": True}
    np.testing.assert_array_equal(host(example)["text_feature"], table[1])
    with pytest.raises(ValueError, match="prompt objects: 'split'"):
        system.emotion_prompt({"object": ["a b"]}, "awe", "split")


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A tiny byte-pair tokenizer with CLIP's special tokens, trained here (nothing is downloaded)."""
    corpus = ["The scene type of this photo is beach.", "The main subjects are dog, ball and toy.",
              "The overall emotion conveyed is amusement.", "Human facial expression is happy."] * 5
    return text_lib.train_bpe_tokenizer(corpus, str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"), 120)


def test_clip_tokenizer_rows(tokenizer_file, tmp_path):
    from jaxemo.data import text

    tokenizer = text.ClipTokenizer(tokenizer_file, context_length=24)
    ids = tokenizer(["The scene type of this photo is beach.", "Amusement"])
    assert ids.shape == (2, 24) and ids.dtype == np.int32
    assert (ids[:, 0] == tokenizer.start_id).all()
    for row in ids:
        end = int(np.argmax(row == tokenizer.end_id))
        assert end > 1 and (row[end + 1:] == 0).all()
    with pytest.raises(ValueError, match="text 0 has .* more than the context length 24"):
        tokenizer(["the scene " * 20])
    with pytest.raises(FileNotFoundError, match="nope.json: no such tokenizer file"):
        text.ClipTokenizer(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match=r"no \['<\|sot\|>'\] token"):
        text.ClipTokenizer(tokenizer_file, start="<|sot|>")


def test_text_features_are_cached_per_teacher(tokenizer_file, tmp_path):
    from jaxemo.data import text
    from jaxemo.models import clip
    from jaxemo.systems import uniemox as system

    tokenizer = text.ClipTokenizer(tokenizer_file, context_length=24)
    model = clip.CLIP(image_size=16, patch_size=8, vision_width=16, vision_depth=1, vision_heads=2,
                      vision_mlp_dim=32, embed_dim=8, vocab_size=tokenizer.tokenizer.get_vocab_size(),
                      context_length=24, text_width=16, text_depth=1, text_heads=2, text_mlp_dim=32,
                      eot_token_id=tokenizer.end_id)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), tokenizer(["x"]))["params"]
    prompts = [system.emotion_prompt({"scene": "beach"}, e) for e in ("awe", "fear", "anger")]
    features = system.text_features(model, params, tokenizer, prompts, str(tmp_path), teacher_id="a", batch_size=2)
    assert features.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, rtol=1e-5)
    encode_text = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=clip.CLIP.encode_text))
    direct = clip.normalize(encode_text(params, tokenizer(prompts)))
    np.testing.assert_allclose(features, direct, atol=1e-6)
    assert len(list(tmp_path.glob("text_features-*.npy"))) == 1
    again = system.text_features(model, None, tokenizer, prompts, str(tmp_path), teacher_id="a")  # from the cache
    np.testing.assert_array_equal(again, features)
    system.text_features(model, params, tokenizer, prompts, str(tmp_path), teacher_id="b")
    assert len(list(tmp_path.glob("text_features-*.npy"))) == 2  # another teacher: its own file
