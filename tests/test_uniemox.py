"""UniEmoX's fusion and losses against the reference's formulas in PyTorch, and the two-view student."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    variables = model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, scene, person)
    return model, nn.unbox(variables["params"]), scene, person


def test_two_views_fusion_and_what_the_person_view_reaches(two_views):
    model, params, scene, person = two_views
    loss, aux = model.apply({"params": params}, scene, person, rngs={"masking": jax.random.key(2)})
    assert np.isfinite(float(loss)) and aux["fused"].shape == (3, 16) and aux["mask"].shape == (3, 16)

    def person_feature(p):
        return model.apply({"params": p}, scene, person, rngs={"masking": jax.random.key(2)})[1]["person_feature"].sum()

    grads = jax.grad(person_feature)(params)["student"]
    assert np.abs(np.asarray(grads["decoder_embed"]["kernel"])).sum() > 0
    assert np.abs(np.asarray(grads["encoder"]["patch_embed"]["kernel"])).sum() > 0
    for name in ("decoder", "decoder_norm", "decoder_pred", "mask_token"):  # the person view skips the decoder
        assert all(np.abs(np.asarray(g)).sum() == 0 for g in jax.tree.leaves(grads[name])), name

    alone = uniemox.UniEmoX(STUDENT, fusion="none")
    student_only = {"student": params["student"]}
    _, aux = alone.apply({"params": student_only}, scene, person, rngs={"masking": jax.random.key(2)})
    np.testing.assert_array_equal(aux["fused"], aux["scene_feature"])


def test_bad_views_and_fusion_names(two_views):
    model, params, scene, person = two_views
    with pytest.raises(ValueError, match="one shape"):
        model.apply({"params": params}, scene, person[:2], rngs={"masking": jax.random.key(0)})
    with pytest.raises(ValueError, match="fusion='sum'"):
        uniemox.UniEmoX(STUDENT, fusion="sum").init({"params": jax.random.key(0), "masking": jax.random.key(1)},
                                                    scene, person)
