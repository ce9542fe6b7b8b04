"""Benchmark artefacts (plots) and the PyTorch twins (`twins/`) that tests and benchmarks compare jaxemo against.

Not part of the installed package: import it from a checkout of the repository (its root on `sys.path`, as
`python -m pytest` and `python -m experiments.<name>` run from there have).
"""
