"""Every experiment module imports into one process, and its command line still parses its flags."""

import importlib
import pkgutil
import subprocess
import sys

import experiments


def experiment_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if m.name != "configs")


def test_all_experiment_modules_import_together():
    names = experiment_modules()
    assert {"mma_dfer", "vit_classifier", "mma_dfer_eval", "benchmark"} <= set(names)
    for name in names:
        importlib.import_module(f"experiments.{name}")


def test_command_line_flags_are_defined_when_run_as_a_program():
    for name in ("mma_dfer", "vit_classifier"):
        out = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--helpfull"],
                             capture_output=True, text=True, timeout=120)
        # absl's --helpfull exits with status 1 after printing every module's flags.
        assert "--config: config file and variant" in out.stdout, (name, out.stderr[-2000:])
        assert "--workdir: output directory" in out.stdout, name
