"""Every test sees 8 simulated CPU devices; this must run before JAX initialises its backends."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
