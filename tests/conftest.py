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
