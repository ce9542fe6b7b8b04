"""The latency benchmark's --tiny run writes its table and plot (no timing is asserted)."""

import pytest

from benchmarks import gpu_suite, tta_latency


@pytest.mark.slow
def test_tiny_latency_benchmark_writes_table_and_plot(tmp_path):
    """The GPU suite's dry-run command for `tta`, run in-process (test_gpu_suite does not start it again)."""
    path = tmp_path / "BENCHMARKS.md"
    command = gpu_suite.command("tta", gpu_suite.parse_args(["--dry_run", f"--benchmarks_file={path}"]))
    assert command[1:3] == ["-m", "benchmarks.tta_latency"] and "--tiny" in command
    rows = tta_latency.main(command[3:])
    assert {(r["kind"], r["batch"]) for r in rows} == {
        (kind, batch) for kind in ("inference", "episodic (vmap)", "per-sample loop") for batch in (1, 4)}
    assert all(r["samples_per_s"] > 0 for r in rows)
    text = path.read_text()
    assert "<!-- tta-latency-tiny:" in text and "| episodic (vmap) | 1 | 4 |" in text
    assert next((tmp_path / "benchmarks").glob("tta_latency_*.png")).stat().st_size > 1000  # beside the file


@pytest.mark.slow
def test_tiny_casp_epoch_benchmark_times_jax_and_both_pytorch_loops(tmp_path):
    from benchmarks import casp_epoch

    path = tmp_path / "BENCHMARKS.md"
    rows = casp_epoch.main(["--tiny", "--repeats=1", "--write", f"--benchmarks_file={path}"])
    assert [r["framework"] for r in rows] == ["JAX (one lax.scan)", "PyTorch (reference loop)",
                                              "PyTorch (vectorised NT-Xent)"]
    assert all(r["median"] > 0 and r["flops"] > 0 for r in rows)
    text = path.read_text()
    assert "<!-- casp-offline-epoch-tiny:" in text and "| PyTorch (reference loop) |" in text and "| 1.00x |" in text
