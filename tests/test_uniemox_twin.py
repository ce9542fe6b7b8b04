"""The UniEmoX PyTorch twin (`benchmarks/twins/uniemox_torch.py`): both benchmark steps run and train."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmarks.twins import uniemox_torch as twin  # noqa: E402
from benchmarks.steps import make_case  # noqa: E402
from jaxemo.systems.base import CaseOptions  # noqa: E402


def _case(variant):
    return make_case("uniemox", variant, 4, CaseOptions())


def _copy(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(before, module):
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p.detach())}


def _two_losses(train):
    losses = [train(), train()]
    for loss in losses:
        value = float(loss)
        assert isinstance(value, float) and math.isfinite(value)
    return losses


def test_pretrain_step_trains_the_student_and_fusion_not_the_teacher():
    torch.manual_seed(0)
    steps = twin.benchmark_steps(torch, _case("tiny"))
    train = steps["train"]
    student, teacher, fusion = train.student, train.teacher, train.fusion
    before = {"student": _copy(student), "teacher": _copy(teacher), "fusion": _copy(fusion)}
    _two_losses(train)
    changed = _changed(before["student"], student)
    assert any(twin.BLOCK_NAME.match(name) for name in changed)
    assert any(name.startswith("decoder.decoder_layers.") for name in changed)
    assert "decoder.decoder_embed.weight" in changed  # reached by the reconstruction and by both CLS features
    assert _changed(before["fusion"], fusion) == set(before["fusion"])
    assert not _changed(before["teacher"], teacher)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_finetune_step_trains_the_classifier():
    torch.manual_seed(0)
    case = _case("finetune-tiny")
    train = twin.benchmark_steps(torch, case)["train"]
    model = train.model
    before = _copy(model)
    _two_losses(train)
    changed = _changed(before, model)
    assert {"head.weight", "fc_norm.weight", "vit.embeddings.cls_token"} <= changed
    assert any(twin.BLOCK_NAME.match(name) for name in changed)
    assert model.head.out_features == case.task.num_classes


def test_layer_decay_and_mixing_helpers():
    scale = twin.layer_decay_scale(0.5, 2)
    assert scale("vit.embeddings.cls_token") == 0.125
    assert scale("vit.layers.0.mlp.fc1.weight") == scale("vit.encoder.layer.0.mlp.fc1.weight") == 0.25
    assert scale("vit.layers.1.attention.q_proj.bias") == 0.5
    assert scale("head.weight") == scale("fc_norm.bias") == 1.0
    torch.manual_seed(0)
    x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0), (0.8, 1.0)):
        mixed, targets = twin.mixup_cutmix(torch, x, labels, 5, mixup, cutmix, 0.1)
        assert mixed.shape == x.shape and torch.allclose(targets.sum(-1), torch.ones(4))
    erased = twin.random_erasing(torch, x, 1.0)
    assert erased.shape == x.shape and not torch.equal(erased, x)
    for _ in range(20):
        top, left, h, w = twin.sample_crop(torch.rand(twin.CROP_ATTEMPTS, 4).tolist(), 20, 30, (0.08, 1.0))
        assert 0 <= top and top + h <= 20 and 0 <= left and left + w <= 30 and h > 0 and w > 0
