"""One-off measurements behind the explanations in BENCHMARKS.md (run from the repository root)."""
