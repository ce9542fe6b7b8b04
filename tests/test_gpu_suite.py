"""The one GPU command, dry-run on the CPU with tiny shapes: every run it holds starts, finishes and writes its
section, so the command a session with a device runs is known to work before the device is lent."""

import pytest

from experiments import gpu_suite


@pytest.mark.slow
def test_gpu_suite_dry_run_writes_every_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    results = gpu_suite.main(["--dry_run", f"--benchmarks_file={path}"])
    assert [r["name"] for r in results] == list(gpu_suite.RUNS)
    assert all(r["ok"] for r in results), [r["tail"] for r in results if not r["ok"]]
    text = path.read_text()
    for key in ("vit-train-step-tiny:", "mma-dfer-steps-tiny:", "casp-source-steps-tiny:", "tta-latency-tiny:",
                "population-trials-tiny"):
        assert f"<!-- {key}" in text, key
    # what each section holds: the rows of the tiny runs and the command that wrote them
    assert "| ViT-tiny (w64 d4 p8, 32 px) | train | 8 | float32 | JAX (jaxemo) |" in text
    label = "MMA-DFER tiny (w64 d4 p8; 16 x 32px, fbank 64x128)"
    assert f"| {label} | train | 8 | float32 | JAX (jaxemo) |" in text
    assert f"| {label} | inference | 8 | float32 | JAX (jaxemo) |" in text
    assert "python -m experiments.benchmark --system=mma_dfer --tiny --notorch --write" in text
    assert "| one at a time | 2 |" in text and "| population (vmapped groups) | 4 |" in text


def test_unknown_run_is_named():
    with pytest.raises(ValueError, match=r"unknown runs \['bert'\]"):
        gpu_suite.parse_args(["--only=vit,bert"])
