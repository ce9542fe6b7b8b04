"""The system contract and its registry: every system builds its task and its FLOP count from a loaded recipe
config, and the three drivers that list systems (the step benchmark, the GPU suite, the TPU pod compiles) take
their lists from the registry, so that a system registered here, and nowhere else, appears in all three."""

import dataclasses
import os

import pytest

from benchmarks import gpu_suite, pod_compile, steps
from experiments import configs
from jaxemo import systems
from jaxemo.systems import agt, vit_classifier
from jaxemo.systems.base import Flops, GpuRun, System
from jaxemo.train import tasks


def recipe_config(name: str):
    """The config each system's `build_task` takes, from its recipe's tiny variant: the recipe itself, or
    (UniEmoX, AGT) a stage of it."""
    system = systems.get(name)
    config = configs.load(system.configs[-1], "tiny")
    if name == "agt":
        model = config.models.agt.copy_and_resolve_references()
        with model.unlocked():
            model.modalities = tuple(config.data.feature_dims)
        dims = {k: (0, int(v)) for k, v in config.data.feature_dims.items()}
        return agt.trial_config(config, model, feature_dims=dims)
    return config


def test_the_registry_lists_every_system_package():
    assert systems.SYSTEMS == ("vit_classifier", "mma_dfer", "casp", "uniemox", "speech_ser", "agt")
    found = sorted(p for p in os.listdir(os.path.dirname(systems.__file__))
                   if os.path.isfile(os.path.join(os.path.dirname(systems.__file__), p, "__init__.py")))
    assert found == sorted(systems.SYSTEMS)


@pytest.mark.parametrize("name", systems.SYSTEMS)
def test_a_system_builds_its_task_and_flop_count_from_its_recipe(name):
    system = systems.get(name)
    assert isinstance(system, System) and system.name == name
    assert all(os.path.exists(configs.config_path(c)) for c in system.configs)
    config = recipe_config(name)
    task = system.build_task(config)
    assert isinstance(task, tasks.Task)
    counts = system.flops(config)
    assert isinstance(counts, Flops) and 0 < counts.forward < counts.train
    assert task.flops_per_example == counts.train


def test_the_drivers_list_the_registry():
    assert steps.step_systems() == tuple(s.name for s in systems.all_systems() if s.benchmark)
    assert set(pod_compile.paper_variants()) <= set(steps.step_systems())
    runs = gpu_suite.runs()
    for system in systems.all_systems():
        assert {w.name for w in system.workloads} <= set(runs)
        step_rows = system.name in runs and runs[system.name].module == "benchmarks.steps"
        assert step_rows == bool(system.benchmark and system.benchmark.gpu_args)


@pytest.fixture
def toy():
    """A system defined outside the package: vit_classifier's task under another name, with pod variants, GPU
    rows and a workload of its own."""
    spec = dataclasses.replace(vit_classifier.SYSTEM.benchmark, section="toy-steps", title="Toy steps",
                               pod_variants=("tiny",), gpu_args=("--variants=tiny", "--batch_size=8"))
    system = systems.register(System(
        name="toy", title="a toy system", configs=("vit_classifier",), build_task=vit_classifier.build_task,
        flops=vit_classifier.flops, benchmark=spec,
        workloads=(GpuRun("toy_population", "benchmarks.population", ("--trials=4",), ("--tiny",), 10, "toy"),)))
    yield system
    systems.unregister("toy")


def test_a_registered_system_appears_in_all_three_drivers(toy, tmp_path):
    assert systems.names()[-1] == "toy" and systems.get("toy") is toy
    # the step benchmark: a --system whose tiny case is built from its recipe (the GPU suite's dry run times
    # such a case end to end: test_gpu_suite)
    path = tmp_path / "BENCHMARKS.md"
    args = steps.parse_args(["--system=toy", "--tiny", "--notorch", f"--benchmarks_file={path}"])
    assert args.spec is toy.benchmark and steps.section_key(args).startswith("toy-steps-tiny:")
    case = steps.make_case("toy", "tiny", 8, steps.case_options(args, "none"))
    assert case.label.startswith("ViT-tiny") and case.batch_size == 8 and case.flops["train"] > 0
    # the GPU suite: its step rows and its workload, with their commands
    args = gpu_suite.parse_args(["--dry_run", f"--benchmarks_file={path}"])
    assert {"toy", "toy_population"} <= set(args.runs)
    assert gpu_suite.command("toy", args)[1:6] == ["-m", "benchmarks.steps", "--system=toy", "--tiny", "--notorch"]
    gpu = gpu_suite.command("toy", gpu_suite.parse_args([f"--benchmarks_file={path}"]))
    assert gpu[3:7] == ["--system=toy", "--variants=tiny", "--batch_size=8", "--notorch"]
    assert gpu_suite.command("toy_population", args)[1:4] == ["-m", "benchmarks.population", "--tiny"]
    # the pod compiles
    assert pod_compile.paper_variants()["toy"] == ("tiny",)
    assert "toy" in pod_compile.parse_args([]).systems


def test_registering_twice_or_a_package_name_is_refused(toy):
    with pytest.raises(ValueError, match="registered already"):
        systems.register(toy)
    with pytest.raises(ValueError, match="registered already"):
        systems.register(dataclasses.replace(toy, name="casp"))
    with pytest.raises(ValueError, match="unknown"):
        systems.get("nope")
