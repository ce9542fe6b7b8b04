"""Every experiment and benchmark module imports into one process, experiments hold recipes only, and their
command lines still parse their flags."""

import importlib
import pkgutil
import subprocess
import sys

import benchmarks
import experiments

RECIPE_RUNS = {"vit_classifier", "mma_dfer", "mma_dfer_eval", "casp", "uniemox", "prefinetune_ser", "fewshot_ser",
               "agt_mer", "agt_thresholds", "agt_robustness", "robustness", "casp_stream"}


def experiment_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if m.name not in ("configs", "cli"))


def test_all_experiment_modules_import_together():
    names = experiment_modules()
    assert set(names) == RECIPE_RUNS  # recipes only: the benchmark drivers live in benchmarks/
    for name in names:
        importlib.import_module(f"experiments.{name}")


def test_all_benchmark_drivers_import_together():
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.ispkg)
    assert {"steps", "gpu_suite", "pod_compile", "tta_latency", "population", "fewshot", "agt_pipeline",
            "casp_epoch", "data_pipeline", "report", "population_timing"} <= set(names)
    for name in names:
        importlib.import_module(f"benchmarks.{name}")


def test_command_line_flags_are_defined_when_run_as_a_program():
    for name in ("mma_dfer", "vit_classifier"):
        out = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--helpfull"],
                             capture_output=True, text=True, timeout=120)
        # absl's --helpfull exits with status 1 after printing every module's flags.
        assert "--config: config file and variant" in out.stdout, (name, out.stderr[-2000:])
        assert "--workdir: output directory" in out.stdout, name


def test_the_configs_host_devices_split_the_cpu_before_jax_starts():
    """`python -m experiments.<name>` applies `config.host_devices` before JAX starts its backends: a count, or
    0 for one device per core (AGT's recipe)."""
    import os

    program = ("import sys\nfrom experiments import cli\ncli.define_experiment_flags('agt_mer', 'tiny')\n"
               "def main(argv):\n    import jax\n    print('cpu devices', len(jax.devices('cpu')))\n"
               "sys.argv = ['agt_mer'] + sys.argv[1:]\ncli.run(main)\n")
    for argv, expected in ((["--config.host_devices=3"], 3), ([], len(os.sched_getaffinity(0)))):
        out = subprocess.run([sys.executable, "-c", program, *argv], capture_output=True, text=True, timeout=120)
        assert f"cpu devices {expected}\n" in out.stdout, (argv, out.stderr[-2000:])


def _imported_modules(path) -> set[str]:
    import ast

    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_experiments_are_thin_and_import_no_other_experiment():
    import os

    for name in experiment_modules():
        path = os.path.join(experiments.__path__[0], f"{name}.py")
        others = {m for m in _imported_modules(path) if m.startswith("experiments.")
                  and not m.startswith(("experiments.configs", "experiments.cli")) and m != f"experiments.{name}"}
        assert not others, f"experiments/{name}.py imports {sorted(others)}"
