"""jaxemo: fast JAX reimplementations of affective-computing systems.

The core (`layers`, `perf`, `vit`, `data`, `train`, `models`, `tta`, `convert`) never imports a system; each
system is a package of `jaxemo.systems` exporting one `SYSTEM` (`jaxemo.systems.base.System`), listed in the
registry `jaxemo.systems.SYSTEMS`. The library never imports the recipes (`experiments/`) or the benchmark
drivers (`benchmarks/`): configs are loaded by whoever runs and passed in.
"""

__version__ = "0.1.0"
