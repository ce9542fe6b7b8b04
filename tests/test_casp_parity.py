"""jaxemo's CASP backbones against the reference's forward pass re-expressed in PyTorch (same weights)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxemo.models import msa
from benchmarks.twins import casp_torch

torch = pytest.importorskip("torch")

DIMS = (12, 5, 20)


def inputs(seed=0, batch=3, steps=(7, 9, 6)):
    rng = np.random.default_rng(seed)
    text, audio, vision = (rng.standard_normal((batch, t, d)).astype(np.float32) for t, d in zip(steps, DIMS))
    audio[0, 5:] = 0.0  # MMSA-style zero padding
    text[1, 3] = 0.0  # a whole text step of zeros: with proj bias[0] = 0 its position is the quirk's zero
    return text, audio, vision


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_forward_matches_the_reference(fusion):
    text, audio, vision = inputs()
    model = msa.SentimentRegressor(fusion=fusion, zero_position_quirk=True)
    params = nn.unbox(model.init(jax.random.key(0), text, audio, vision)["params"])
    params = jax.tree.map(np.asarray, params)
    params["proj_text"]["bias"] = params["proj_text"]["bias"].copy()
    params["proj_text"]["bias"][0] = 0.0
    score, rep = model.apply({"params": params}, text, audio, vision)

    net = casp_torch.build(fusion, DIMS)
    casp_torch.load_jaxemo_params(net, params)
    net.eval()
    with torch.no_grad():
        ref_score, ref_rep = net([torch.from_numpy(x) for x in (text, audio, vision)])
    np.testing.assert_allclose(score, ref_score.numpy(), atol=1e-5)
    np.testing.assert_allclose(rep, ref_rep.numpy(), atol=1e-5)
    # without the quirk every step has its position: only samples with an all-zero step change (sample 0's
    # audio padding, since the projections' biases start at 0, and sample 1's zero text step)
    plain = msa.SentimentRegressor(fusion=fusion).apply({"params": params}, text, audio, vision)[0]
    np.testing.assert_allclose(plain[2], score[2], atol=1e-5)
    assert np.all(np.abs(plain[:2] - score[:2]) > 1e-4)


def test_torch_episodic_adaptation_trains_only_the_layernorms():
    net = casp_torch.build("late", DIMS, depth=1)
    casp_torch.freeze_like_casp(net)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    norms = casp_torch.layer_norm_state(net)
    assert sum(v.numel() for v in norms.values()) == 3 * 2 * 80
    text, audio, vision = (torch.from_numpy(x[0]) for x in inputs())
    score = casp_torch.adapt_then_predict(net, norms, (text, audio, vision), steps=2, views=3)
    assert torch.isfinite(score)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("layer_norms" in k for k in changed)


def test_torch_nt_xent_loop_and_vectorised_match_jaxemo():
    from jaxemo.tta import methods

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((5, 8)).astype(np.float32) for _ in range(2))
    expected = float(methods.nt_xent(a, b, 0.5))
    for loop in (True, False):
        got = casp_torch.nt_xent(torch.from_numpy(a), torch.from_numpy(b), 0.5, loop=loop)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_torch_contrastive_epoch_updates_only_the_layernorms():
    rng = np.random.default_rng(1)
    net = casp_torch.build("late", DIMS, depth=1)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    batches = [[torch.from_numpy(x) for x in inputs(seed)] for seed in range(2)]
    loss = casp_torch.contrastive_epoch(net, batches)()
    assert torch.isfinite(loss)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("layer_norms" in k for k in changed)
