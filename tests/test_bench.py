"""The benchmark harness: analytic FLOPs vs XLA, BENCHMARKS.md sections, and a --tiny end-to-end run.

Nothing here asserts a speed: timings on a shared CI machine mean nothing.
"""

import jax
import jax.numpy as jnp
import pytest

from experiments import benchmark
from jaxemo import bench, vit


def xla_forward_flops(model, batch: int = 2) -> float:
    images = jnp.zeros((batch, *model.image_size, model.in_channels))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images)["params"])
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    return forward.lower(params, images).compile().cost_analysis()["flops"] / batch


def test_analytic_forward_flops_match_xla_cost_analysis():
    # Unscanned layers: XLA's cost analysis counts a while-loop body once, not once per layer. Width 192
    # keeps the elementwise work (counted by XLA, not by the formula) at a few percent.
    model = vit.create_vit("Ti/8", image_size=(32, 32), depth=2, num_classes=10, scan_layers=False)
    analytic = bench.vit_forward_flops(model)
    assert analytic == pytest.approx(xla_forward_flops(model), rel=0.1)


def test_vit_forward_flops_formula():
    model = vit.create_vit("B/16", num_classes=1000)
    n, t, d, m = 196, 197, 768, 3072
    expected = 2 * n * 16 * 16 * 3 * d + 12 * (8 * t * d * d + 4 * t * t * d + 4 * t * d * m) + 2 * d * 1000
    assert bench.vit_forward_flops(model) == expected
    assert 35.0e9 < expected < 35.3e9  # ViT-B/16's usual "17.6 G" multiply-adds, each counted as 2 FLOPs
    assert bench.train_flops(expected) == 3 * expected


def test_replace_section_keeps_other_sections():
    text = "# Benchmarks\n\nintro\n"
    text = bench.replace_section(text, "a:cpu-float32", "old a")
    text = bench.replace_section(text, "b:gpu-bfloat16", "b rows")
    text = bench.replace_section(text, "a:cpu-float32", "new a")
    assert text.startswith("# Benchmarks\n\nintro\n")
    assert "new a" in text and "old a" not in text and "b rows" in text
    assert text.count("<!-- a:cpu-float32 begin -->") == 1
    assert text.index("new a") < text.index("b rows")  # replaced in place, not moved to the end


def test_measurement_derived_numbers():
    m = bench.Measurement("ViT-S/16", batch=8, image_size=224, dtype="float32", framework="JAX",
                          run_seconds=[4.0, 1.0, 2.0], steps_per_run=2, flops_per_sample=10**9, peak_flops=1e10)
    assert m.samples_per_s == 8.0  # 16 samples in the median 2 s
    assert m.mfu == pytest.approx(0.8)
    row = bench.table_row(m)
    assert len(row) == len(bench.TABLE_COLUMNS) and row[-1] == "n/a"


@pytest.mark.slow
def test_tiny_benchmark_writes_its_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    other = "<!-- other:gpu-bfloat16 begin -->\nkeep me\n<!-- other:gpu-bfloat16 end -->"
    path.write_text(f"# Benchmarks\n\n{other}\n")
    argv = ["--tiny", "--notorch", "--write", f"--benchmarks_file={path}"]
    results = benchmark.main(argv)

    assert [r.framework for r in results] == ["JAX (jaxemo)"]
    assert results[0].samples_per_s > 0 and results[0].compile_s > 0
    text = path.read_text()
    assert "keep me" in text
    key = f"vit-train-step-tiny:{jax.default_backend()}-float32"
    section = text.split(f"<!-- {key} begin -->")[1].split(f"<!-- {key} end -->")[0]
    assert "| ViT-tiny (w64 d4 p8) | 8 | 32 | float32 | JAX (jaxemo) |" in section
    assert "python -m experiments.benchmark --tiny --notorch --write" in section


def test_torch_model_matches_jaxemo_sizes_and_trains():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    args = benchmark.parse_args(["--tiny"])
    config = benchmark.model_config(benchmark.TINY, args)
    model = benchmark.vit_classifier.build_model(config)
    hf_model = benchmark.hf_vit(transformers, model)
    images = jnp.zeros((1, *model.image_size, model.in_channels))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images)["params"])
    assert sum(p.numel() for p in hf_model.parameters()) == sum(x.size for x in jax.tree.leaves(params))

    step = benchmark.torch_train_step(torch, hf_model, config.optimizer, benchmark.random_batch(2, model))
    assert torch.isfinite(step())
