"""The latency benchmark's --tiny run writes its table and plot (no timing is asserted)."""

import pytest

from experiments import tta_latency


@pytest.mark.slow
def test_tiny_latency_benchmark_writes_table_and_plot(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    rows = tta_latency.main(["--tiny", "--batches=1,2", "--steps=1", "--notorch", "--write",
                             f"--benchmarks_file={path}", f"--plot_dir={tmp_path / 'plots'}"])
    assert {(r["kind"], r["batch"]) for r in rows} == {
        (kind, batch) for kind in ("inference", "episodic (vmap)", "per-sample loop") for batch in (1, 2)}
    assert all(r["samples_per_s"] > 0 for r in rows)
    text = path.read_text()
    assert "<!-- tta-latency-tiny:" in text and "| episodic (vmap) | 1 | 2 |" in text
    assert next((tmp_path / "plots").glob("tta_latency_*.png")).stat().st_size > 1000
