"""The benchmark harness: analytic FLOPs vs XLA (and vs torch's flop counter for MMA-DFER), BENCHMARKS.md
sections, and --tiny end-to-end runs.

Nothing here asserts a speed: timings on a shared CI machine mean nothing.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu_suite, report, steps
from jaxemo import perf, vit
from jaxemo.models import mma_dfer
from jaxemo.systems import mma_dfer as mma_dfer_system
from jaxemo.systems.base import CaseOptions
from jaxemo.train import optim



def xla_forward_flops(model, batch: int = 2) -> float:
    images = jnp.zeros((batch, *model.image_size, model.in_channels))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images)["params"])
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    return forward.lower(params, images).compile().cost_analysis()["flops"] / batch


def test_analytic_forward_flops_match_xla_cost_analysis():
    # Unscanned layers: XLA's cost analysis counts a while-loop body once, not once per layer. Width 192
    # keeps the elementwise work (counted by XLA, not by the formula) at a few percent.
    model = vit.create("Ti/8", image_size=(32, 32), depth=2, num_classes=10, scan_layers=False)
    analytic = perf.vit_forward_flops(model)
    assert analytic == pytest.approx(xla_forward_flops(model), rel=0.1)


def test_vit_forward_flops_formula():
    model = vit.create("B/16", num_classes=1000)
    n, t, d, m = 196, 197, 768, 3072
    expected = 2 * n * 16 * 16 * 3 * d + 12 * (8 * t * d * d + 4 * t * t * d + 4 * t * d * m) + 2 * d * 1000
    assert perf.vit_forward_flops(model) == expected
    assert 35.0e9 < expected < 35.3e9  # ViT-B/16's usual "17.6 G" multiply-adds, each counted as 2 FLOPs
    assert perf.train_flops(expected) == 3 * expected


def test_replace_section_keeps_other_sections():
    text = "# Benchmarks\n\nintro\n"
    text = report.replace_section(text, "a:cpu-float32", "old a")
    text = report.replace_section(text, "b:gpu-bfloat16", "b rows")
    text = report.replace_section(text, "a:cpu-float32", "new a")
    assert text.startswith("# Benchmarks\n\nintro\n")
    assert "new a" in text and "old a" not in text and "b rows" in text
    assert text.count("<!-- a:cpu-float32 begin -->") == 1
    assert text.index("new a") < text.index("b rows")  # replaced in place, not moved to the end


def test_measurement_derived_numbers():
    m = report.Measurement("ViT-S/16", batch=8, dtype="float32", framework="JAX",
                          run_seconds=[4.0, 1.0, 2.0], steps_per_run=2, flops_per_sample=10**9, peak_flops=1e10)
    assert m.samples_per_s == 8.0  # 16 samples in the median 2 s
    assert m.mfu == pytest.approx(0.8)
    row = report.table_row(m)
    assert len(row) == len(report.TABLE_COLUMNS) and row[-1] == "n/a"


def _case(system, variant="tiny", batch_size=2):
    return steps.make_case(system, variant, batch_size, CaseOptions())


def test_torch_vit_twin_matches_jaxemo_sizes_and_trains():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from benchmarks.twins import vit_classifier_torch

    case = _case("vit_classifier")
    model = case.task.model
    hf_model = vit_classifier_torch.hf_vit(transformers, model)
    images = jnp.zeros((1, *model.image_size, model.in_channels))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images)["params"])
    assert sum(p.numel() for p in hf_model.parameters()) == sum(x.size for x in jax.tree.leaves(params))
    assert torch.isfinite(vit_classifier_torch.benchmark_steps(torch, case)["train"]())


# ------------------------------------------------------------------------------------------------ MMA-DFER


def small_mma_dfer(**overrides):
    """Depth 1: the layers run under `nn.scan`, whose body XLA's cost analysis counts once, not per layer.
    Width 192 keeps the elementwise work (counted by XLA, not by the formula) under about 10%."""
    config = {"num_frames": 2, "image_size": 32, "audio_shape": (64, 32), "patch_size": 8, "width": 192,
              "depth": 1, "num_heads": 3, "mlp_dim": 768, "prompt_groups": 1, "latent_dim": 32,
              "temporal_width": 64, "temporal_heads": 2, "temporal_mlp_dim": 128}
    return mma_dfer.MMADFER(**{**config, **overrides})


def mma_dfer_inputs(model, batch=2):
    video = jnp.zeros((batch, model.num_frames, model.image_size, model.image_size, 3))
    return video, jnp.zeros((batch, *model.audio_shape))


def test_mma_dfer_flops_reproduce_the_dossier_at_paper_size():
    flops = mma_dfer_system.model_flops(mma_dfer.MMADFER())  # 16 x 224 px, 512 x 128 fbank, ViT-B/16 encoders
    # /work/shared/research/mma_dfer.md §1.8, torch.utils.flop_counter on the reference: 643.7 GFLOPs
    # forward (image ViT 289.9 GMAC, audio 23.7, adapters 8.3, temporal + projection 0.04) and 1,340.6
    # GFLOPs per training sample.
    assert flops.forward / 1e9 == pytest.approx(643.7, abs=0.05)
    parts = {k: v / 2e9 for k, v in flops.parts.items()}
    assert parts["video_encoder"] == pytest.approx(289.9, abs=0.05)
    assert parts["audio_encoder"] == pytest.approx(23.7, abs=0.05)
    assert parts["adapters"] == pytest.approx(8.3, abs=0.05)
    assert parts["joint_proj"] + parts["temporal"] + parts["head"] == pytest.approx(0.04, abs=0.005)
    # The counter's SDPA backward recomputes the attention scores; without that, 1% less.
    assert flops.train(recompute_attention_scores=True) / 1e9 == pytest.approx(1340.6, abs=0.05)
    assert flops.train() / 1e9 == pytest.approx(1340.6, rel=0.02)
    assert flops.train() < 2.1 * flops.forward < perf.train_flops(flops.forward)  # frozen: no weight grads


def test_mma_dfer_flops_formula():
    model = small_mma_dfer(depth=3, prompt_groups=1, temporal_depth=2, num_classes=5)
    t, d, m, k, dt, mt = 2, 192, 768, 32, 64, 128
    tv, ta = 1 + 16 + 6, 1 + 32 + 6
    layer = lambda n, d, m: 8 * n * d * d + 4 * n * d * m + 4 * n * n * d
    flops = mma_dfer_system.model_flops(model)
    assert flops.parts == {
        "video_encoder": t * (2 * 16 * 64 * 3 * d + 3 * layer(tv, d, m)),
        "audio_encoder": 2 * 32 * 64 * d + 3 * layer(ta, d, m),
        "adapters": 3 * 2 * (2 * t * tv + 2 * ta) * d * k,
        "joint_proj": 2 * t * d * dt, "temporal": 2 * layer(t + 1, dt, mt), "head": 2 * dt * 5}
    attention = 3 * 4 * d * (t * tv**2 + ta**2) + 2 * 4 * dt * (t + 1) ** 2
    patch_embed = flops.patch_embed["video_encoder"] + flops.patch_embed["audio_encoder"]
    trainable = flops.parts["adapters"] + flops.parts["joint_proj"] + flops.parts["head"] + \
        2 * layer(t + 1, dt, mt) - 2 * 4 * dt * (t + 1) ** 2
    assert flops.backward() == (flops.forward - patch_embed + attention, trainable)
    assert flops.train() == flops.forward + sum(flops.backward())
    tokens = mma_dfer_system.model_flops(small_mma_dfer(depth=3, fusion="tokens", num_fusion_tokens=4, num_classes=5))
    assert tokens.parts["adapters"] == 0  # MBT fusion tokens: every layer sees 4 more tokens
    assert tokens.parts["audio_encoder"] == 2 * 32 * 64 * d + 3 * layer(ta + 4, d, m)


def test_mma_dfer_forward_flops_match_xla_cost_analysis():
    model = small_mma_dfer()
    video, audio = mma_dfer_inputs(model)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), video, audio)["params"])
    forward = jax.jit(lambda p, v, a: model.apply({"params": p}, v, a)[0])
    xla = forward.lower(params, video, audio).compile().cost_analysis()["flops"] / len(video)
    assert mma_dfer_system.model_flops(model).forward == pytest.approx(xla, rel=0.1)


def test_mma_dfer_train_flops_match_xla_gradient_of_the_trainable_params():
    """XLA's count of the gradient the train step takes (trainable params only) agrees with the analytic
    split, and is far from the 3x-forward convention, which would give the frozen encoders weight grads."""
    model = small_mma_dfer()
    video, audio = mma_dfer_inputs(model)
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), video, audio)["params"]))
    trainable, frozen = optim.split_params(params, optim.path_matcher(mma_dfer.TRAINABLE_PATTERNS))

    def loss(trainable, frozen, video, audio):
        return model.apply({"params": optim.merge_params(trainable, frozen)}, video, audio)[0].sum()

    grad = jax.jit(jax.value_and_grad(loss))
    xla = grad.lower(trainable, frozen, video, audio).compile().cost_analysis()["flops"] / len(video)
    flops = mma_dfer_system.model_flops(model)
    assert flops.train() == pytest.approx(xla, rel=0.1)
    assert perf.train_flops(flops.forward) > 1.3 * xla


def test_mma_dfer_flops_match_torch_flop_counter_on_the_reference():
    """The PyTorch reference (eager attention: plain matmuls) with the reference's frozen split: torch's own
    count of its forward and backward equals the analytic one exactly."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.twins import mma_dfer_torch

    model = small_mma_dfer(width=32, num_heads=2, mlp_dim=64, depth=2, prompt_groups=2, latent_dim=8,
                           temporal_width=16, temporal_mlp_dim=32)
    torch.manual_seed(0)
    net = mma_dfer_torch.build(mma_dfer_torch.Sizes.of(model), attn_implementation="eager")
    mma_dfer_torch.freeze_like_reference(net)
    batch = 3
    video = torch.rand(batch, model.num_frames, 3, model.image_size, model.image_size)
    audio = torch.randn(batch, 1, *model.audio_shape)
    with FlopCounterMode(display=False) as forward:
        logits = net(video, audio)[0]
    with FlopCounterMode(display=False) as backward:
        logits.sum().backward()
    flops = mma_dfer_system.model_flops(model)
    assert forward.get_total_flops() == batch * flops.forward
    assert backward.get_total_flops() == batch * sum(flops.backward())


def test_torch_reference_trains_what_the_reference_trains():
    """At paper size (on the meta device: no memory): the reference's 7,632,415 trainable and 171,679,732
    frozen parameters (dossier §1.5), every parameter under a reference state-dict name."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks.twins import mma_dfer_torch

    with torch.device("meta"):
        net = mma_dfer_torch.build(mma_dfer_torch.Sizes())
    trainable = mma_dfer_torch.freeze_like_reference(net)
    named = {id(p) for params in mma_dfer_torch.reference_parameters(net).values() for p in params}
    assert named == {id(p) for p in net.parameters()}
    assert sum(p.numel() for p in trainable) == 7_632_415
    assert sum(p.numel() for p in net.parameters() if not p.requires_grad) == 171_679_732


def test_torch_mma_dfer_steps_train_only_the_trainable_params():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks.twins import mma_dfer_torch

    case = _case("mma_dfer")
    torch.manual_seed(0)
    net = mma_dfer_torch.build(mma_dfer_torch.Sizes.of(case.task.model), attn_implementation="sdpa")
    steps = mma_dfer_torch.benchmark_steps(torch, case, net)
    before = {k: v.copy() for k, v in mma_dfer_torch.to_state_dict(net).items()}
    assert torch.isfinite(steps["train"]())
    assert steps["inference"]().shape == (2, case.task.model.num_classes)
    after = mma_dfer_torch.to_state_dict(net)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed <= {k for k in before if mma_dfer_torch.reference_trainable(k)}  # frozen: untouched
    assert {"our_classifier.weight", "audio_model.all_gate.0", "image_encoder.pos_embed",
            "audio_model.learnable_prompts_init", "image_encoder.audio_proj_pre.0.0.weight"} <= changed


def test_casp_benchmark_with_its_torch_twin(tmp_path):
    """The harness is generic: CASP's cases, with the PyTorch twin's train and inference steps beside JAX's.
    The GPU suite's dry-run command for `casp` with the twin added (test_gpu_suite does not start it again)."""
    pytest.importorskip("torch")
    path = tmp_path / "BENCHMARKS.md"
    command = gpu_suite.command("casp", gpu_suite.parse_args(["--dry_run", f"--benchmarks_file={path}"]))
    assert command[1:3] == ["-m", "benchmarks.steps"] and "--tiny" in command and "--notorch" in command
    results = steps.main([arg for arg in command[3:] if arg != "--notorch"])
    assert [(r.step, r.framework) for r in results] == [
        ("train", "JAX (jaxemo)"), ("inference", "JAX (jaxemo)"), ("train", "PyTorch (eager)"),
        ("inference", "PyTorch (eager)")]
    assert all(r.samples_per_s > 0 for r in results)
    assert results[0].flops_per_sample == 3 * results[1].flops_per_sample
    assert f"casp-source-steps-tiny:{jax.default_backend()}-float32" in path.read_text()

def test_torch_compile_rows_are_asked_for_by_batch_and_only_where_the_twin_compiles():
    from benchmarks.twins import mma_dfer_torch, vit_classifier_torch

    assert steps.wants_compile("all", 8) and steps.wants_compile("1, 2", 2)
    assert not steps.wants_compile("1,2", 8) and not steps.wants_compile("", 1)
    assert steps.twin_compiles((None, mma_dfer_torch))
    assert not steps.twin_compiles((None, vit_classifier_torch))


def test_accumulation_rows_split_the_batch_into_micro_batches_of_the_same_step():
    case = steps.with_accumulation(_case("mma_dfer"), 2)
    assert case.config.optimizer.grad_accum_steps == 2 and case.config.batch_size == case.batch_size == 2
    assert case.label.endswith(", 2 micro-batches)")
    assert steps.with_accumulation(case, 1) is case
    args = steps.parse_args(["--system=mma_dfer", "--tiny", "--grad_accum_steps=2", "--section_suffix=accum"])
    assert args.accum_steps == [2] and steps.section_key(args).startswith("mma-dfer-steps-tiny-accum:")
