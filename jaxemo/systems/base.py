"""The system contract: what every system package exports as `SYSTEM`, and what its benchmark cases are.

A system is a package `jaxemo/systems/<name>/` (its task, transforms, folds, FLOP count and benchmark cases,
beside its model in `jaxemo/models/`) whose `SYSTEM` is a `System`:

    name                  the registry key (`jaxemo.systems.SYSTEMS`)
    configs               its recipe configs, by name: `experiments/configs/<name>.py` (`get_config(variant)`)
    build_task(config)    the task the trainer trains (`jaxemo.train.tasks.Task`), from a loaded recipe or
                          stage config; everything the task needs is in the config
    flops(config)         analytic matmul FLOPs per example of that config's model (`Flops`), or None where
                          the config does not fix the input sizes
    benchmark             its train / inference step cases (`StepBenchmark`): `python -m benchmarks.steps`,
                          the GPU suite's step rows and the TPU pod compiles read them
    workloads             whole-workload benchmark drivers it adds to the GPU suite (`GpuRun`)
    robustness            where it is multimodal, its modalities and evaluation set for the modality-failure
                          sweep (`RobustnessSpec`, `python -m experiments.robustness`)

The library never imports `experiments` or `benchmarks`: whoever runs loads the config (`experiments.configs.
load(name, variant)`) and passes it in; a case gets a loaded config, never a loader.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

TINY = "tiny"  # every step benchmark has a variant of this name that runs in seconds (tests, CI)


@dataclasses.dataclass(frozen=True)
class Flops:
    """Matmul FLOPs of one example (`jaxemo.perf`'s conventions): its forward pass, and a training example
    (forward and backward; 3x forward unless the system counts its frozen parts' missing weight gradients)."""

    forward: int
    train: int


@dataclasses.dataclass(frozen=True)
class CaseOptions:
    """What `python -m benchmarks.steps` lets a user change in any system's case."""

    dtype: str = "float32"
    remat_policy: str = "none"
    frozen_dtype: str = "float32"
    image_size: Optional[int] = None
    trainable: Optional[Sequence[str]] = None  # regexes of trainable params, where the system honours them


@dataclasses.dataclass
class StepCase:
    """One benchmarked configuration: the trainer's train step (and the evaluator's eval step) of `task` under
    `config` on one fixed host batch. `flops[step]` is the analytic count per sample of each timed step.
    `torch_comparable` is False where the PyTorch twin would not do the same work (e.g. with remat)."""

    label: str
    config: Any
    task: Any
    batch: dict
    flops: dict
    torch_comparable: bool = True

    @property
    def batch_size(self) -> int:
        return len(next(iter(self.batch.values())))


@dataclasses.dataclass(frozen=True)
class PaperRun:
    """A paper's whole training run in training examples processed (folds x epochs x examples per epoch), so
    that `benchmarks.tpu_predict` can project its wall time from a predicted step time. Evaluation passes are
    not counted."""

    examples: int
    description: str


@dataclasses.dataclass(frozen=True)
class StepBenchmark:
    """A system's train / inference step cases.

    `config_for(variant)` names the recipe config the variant starts from, as `(config name, config variant)`;
    `case(config, variant, batch_size, options)` builds the case from that config, loaded. `pod_variants` are
    the paper-size variants compiled for TPU pods (`benchmarks.pod_compile`, `benchmarks.tpu_predict`), and
    `paper_runs` the whole run each stands for (`PaperRun`, by variant); `gpu_args` the arguments of its
    rows in the GPU suite (`benchmarks.steps --system=<name> ...`; empty: none), `gpu_limit_s` their time.
    """

    section: str  # its BENCHMARKS.md section key
    title: str
    unit: str  # what one sample is: image, clip, ...
    default_variants: tuple
    default_batch: dict  # variant (or its prefix before "/") -> batch size
    config_for: Callable[[str], tuple[str, str]]
    case: Callable[[Any, str, int, CaseOptions], StepCase]
    steps: tuple = ("train", "inference")
    notes: tuple = ()
    cpu_steps: Optional[dict] = None  # variant -> steps per timed run on a CPU (default 2)
    remat: bool = True  # whether its cases honour `CaseOptions.remat_policy`
    pod_variants: tuple = ()
    paper_runs: dict = dataclasses.field(default_factory=dict)
    gpu_args: tuple = ()
    gpu_limit_s: int = 60

    def batch_for(self, variant: str) -> int:
        for key in (variant, variant.split("/")[0]):
            if key in self.default_batch:
                return int(self.default_batch[key])
        raise ValueError(f"{self.title}: no default batch size for variant {variant!r}; pass --batch_size")


@dataclasses.dataclass(frozen=True)
class GpuRun:
    """A whole-workload benchmark in the GPU suite: `python -m <module> <args>` on the GPU, `<dry_run_args>` on
    any backend at tiny sizes (the suite's dry run, a test), each with `--write --benchmarks_file=...` added."""

    name: str
    module: str
    args: tuple
    dry_run_args: tuple
    limit_s: int
    description: str


@dataclasses.dataclass(frozen=True)
class RobustnessSpec:
    """What `python -m experiments.robustness` needs to score a trained checkpoint of the system under modality
    failures (`jaxemo.train.robustness`): its `modalities` (`Modality`: batch field, time axis, lengths),
    `eval_source(config, fold)`, the evaluation split of a stored recipe config (systems without folds ignore
    `fold`), and the `metric` its plot shows."""

    modalities: tuple
    eval_source: Callable[[Any, int], Any]
    metric: str


@dataclasses.dataclass(frozen=True)
class System:
    """See the module docstring: one per package, `jaxemo/systems/<name>/__init__.py`'s `SYSTEM`."""

    name: str
    title: str  # the paper
    configs: tuple
    build_task: Callable[[Any], Any]
    flops: Callable[[Any], Optional[Flops]]
    benchmark: Optional[StepBenchmark] = None
    workloads: tuple = ()
    robustness: Optional[RobustnessSpec] = None

    def __post_init__(self):
        if not self.configs:
            raise ValueError(f"system {self.name!r} names no recipe config")
        names = [run.name for run in self.workloads]
        if len(set(names)) != len(names):
            raise ValueError(f"system {self.name!r}: workload names {names} repeat")
