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


def test_unknown_run_is_named():
    with pytest.raises(ValueError, match=r"unknown runs \['bert'\]"):
        gpu_suite.parse_args(["--only=vit,bert"])
