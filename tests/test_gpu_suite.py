"""The one GPU command, dry-run on the CPU with tiny shapes: every run it holds starts, finishes and writes its
section, so the command a session with a device runs is known to work before the device is lent."""

import os

import pytest

from benchmarks import gpu_suite

# Runs whose dry-run command another test runs in-process, taking it from `gpu_suite.command` (with the
# PyTorch twin added for CASP) and checking its rows and section: the harness does not start them again here.
IN_PROCESS = {"casp": "test_bench.py", "tta": "test_tta_latency.py", "agt": "test_agt_system.py"}


@pytest.mark.slow
def test_gpu_suite_dry_run_writes_every_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    only = [name for name in gpu_suite.runs() if name not in IN_PROCESS]
    results = gpu_suite.main(["--dry_run", f"--only={','.join(only)}", f"--benchmarks_file={path}"])
    assert [r["name"] for r in results] == only
    assert all(r["ok"] for r in results), [r["tail"] for r in results if not r["ok"]]
    text = path.read_text()
    for key in ("vit-train-step-tiny:", "mma-dfer-steps-tiny:", "population-trials-tiny"):
        assert f"<!-- {key}" in text, key
    # what each section holds: the rows of the tiny runs and the command that wrote them
    assert "| ViT-tiny (w64 d4 p8, 32 px) | train | 8 | float32 | JAX (jaxemo) |" in text
    label = "MMA-DFER tiny (w64 d4 p8; 16 x 32px, fbank 64x128)"
    assert f"| {label} | train | 8 | float32 | JAX (jaxemo) |" in text
    assert f"| {label} | inference | 8 | float32 | JAX (jaxemo) |" in text
    assert "python -m benchmarks.steps --system=mma_dfer --tiny --notorch --write" in text
    assert "| one at a time | 2 |" in text and "| population (vmapped groups) | 4 |" in text


def test_unknown_run_is_named():
    with pytest.raises(ValueError, match=r"unknown runs \['bert'\]"):
        gpu_suite.parse_args(["--only=vit_classifier,bert"])


def test_the_runs_left_out_of_the_dry_run_are_run_by_their_tests():
    assert set(IN_PROCESS) < set(gpu_suite.runs())
    for name, test_file in IN_PROCESS.items():
        source = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), test_file)).read()
        assert f'gpu_suite.command("{name}", gpu_suite.parse_args(["--dry_run"' in source, (name, test_file)
