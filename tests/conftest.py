"""Every test sees 8 simulated CPU devices; this must run before JAX initialises its backends.

One persistent XLA compilation cache serves the whole run: both xdist workers (they inherit the variable
from the controller, which loads this file first) and the experiment subprocesses that tests start. A
program compiled by several tests (the same train step of the same tiny model, a rerun of an experiment)
then compiles once per run; the rest load it (XLA's compiles take most of the suite's time). The directory
is new for every run and removed at its end, so nothing carries over from one run to the next; a
JAX_COMPILATION_CACHE_DIR set in the environment is used as it is.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU compiles take most of the suite's time, and the suite's programs are tiny: they are compiled
# unoptimised (LLVM -O0; XLA's own HLO passes still run), as multiprocess_worker.py has long done. A tiny
# wav2vec2 train step then compiles in 7 s instead of 20 s and runs in 2.4 ms instead of 2.1; the results
# are the same up to float rounding. The experiment subprocesses that tests start inherit the flag. A level
# set in XLA_FLAGS in the environment is kept. (Not --xla_cpu_use_fusion_emitters=false, which would compile
# faster still: its legacy emitters compute some ops differently; test_augment's PIL parity fails.)
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="jaxemo-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


def tiny_classifier_config(**overrides):
    """The vit_classifier `tiny` config shrunk further so that a step compiles and runs in moments."""
    from experiments.configs import vit_classifier

    config = vit_classifier.get_config("tiny")
    config.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
    config.data.update(train_size=512, eval_size=64)
    config.batch_size = 16
    config.eval_batch_size = 32
    config.total_steps = 20
    config.log_every_steps = 5
    config.eval_every_steps = 0
    config.checkpoint.update(every_steps=10, keep=3)
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for name in parents:
            target = target[name]
        target[leaf] = value
    return config


@pytest.fixture
def tiny_config():
    return tiny_classifier_config


# The longest modules, longest first (seconds on one of the two workers, 2026-12-04, in brackets). With
# `--dist loadscope` a module runs whole on one worker, and pytest-xdist's own order (the modules with the
# most tests first, off in pyproject.toml) left these long modules of few tests for the end, where one of
# them ran alone while the other worker idled. Started first, they overlap, and the short modules fill in
# the end. The remaining modules follow, those with the most tests first (xdist's own rule).
LONGEST_FIRST = (
    "test_agt_system.py",  # [128]
    "test_gpu_suite.py",  # [125]
    "test_mma_dfer_experiment.py",  # [119]
    "test_checkpoint.py",  # [107]
    "test_pod_compile.py",  # [100]
    "test_tta.py",  # [82]
    "test_uniemox_experiment.py",  # [80]
    "test_uniemox_system.py",  # [73]
    "test_multiprocess.py",  # [73] (three processes)
    "test_speech_ser.py",  # [65]
    "test_train.py",  # [61]
    "test_wav2vec2.py",  # [53]
    "test_population.py",  # [49]
    "test_bench.py",  # [45]
    "test_casp_experiment.py",  # [39]
    "test_tta_latency.py",  # [33]
    "test_vit.py",  # [28]
    "test_agt.py",  # [24]
    "test_update_step.py",  # [23]
    "test_mma_dfer.py",  # [21]
)


def pytest_collection_modifyitems(items):
    tests_per_module = {}
    for item in items:
        tests_per_module[item.path.name] = tests_per_module.get(item.path.name, 0) + 1
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def order(item):
        name = item.path.name
        return (rank[name], 0) if name in rank else (len(rank), -tests_per_module[name])

    items.sort(key=order)  # stable: a module's tests stay together and in their order
