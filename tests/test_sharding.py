"""Mesh construction, the logical rules table, and sharded-vs-single-device equivalence of the train step."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxemo.systems import vit_classifier
from jaxemo.data import pipeline
from jaxemo.train import loop, optim, sharding, state as state_lib, step as step_lib, tasks


def test_mesh_fills_the_minus_one_axis():
    assert sharding.resolve_mesh_shape({"data": -1, "fsdp": 2}, 8) == {"data": 4, "fsdp": 2, "tensor": 1}
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("axes,message", [
    ({"data": 3}, "3 slots but there are 8 devices"),
    ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
    ({"data": -1, "fsdp": 3}, "not divisible by 3"),
    ({"model": 2}, "unknown"),
])
def test_bad_mesh_is_reported(axes, message):
    with pytest.raises(ValueError, match=message):
        sharding.resolve_mesh_shape(axes, 8)


def test_logical_names_map_through_the_rules_and_indivisible_dims_replicate():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_spec(("layers", "embed", "mlp"), (2, 8, 16), mesh, rules) == \
        P(None, "fsdp", "tensor")
    assert sharding.logical_to_spec(("embed", "heads", "kv"), (8, 3, 4), mesh, rules) == P("fsdp", None, None)


def test_batch_size_must_divide_over_the_data_axes():
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    with pytest.raises(ValueError, match=r"batch_size=12 .*data x fsdp = 8"):
        sharding.check_batch_size(12, mesh)


def _setup(config, mesh):
    task = tasks.ClassificationTask(vit_classifier.build_model(config), config.data.num_classes)
    optimizer = optim.make_optimizer(config.optimizer, 100, 10)
    source, _ = vit_classifier.build_data(config)
    batches = iter(pipeline.train_dataset(source, config.batch_size, seed=0))
    example = state_lib.example_batch_like(pipeline.eval_batches(source, 8).__next__())
    example.pop("mask")
    state, shardings = state_lib.create_train_state(task, optimizer.tx, example, jax.random.key(0), mesh)
    train_step = step_lib.jit_train_step(step_lib.make_train_step(task, optimizer), shardings, mesh)
    return state, train_step, batches


def _run(config, mesh, steps=3):
    state, train_step, batches = _setup(config, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, sharding.shard_batch(next(batches), mesh))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_sharded_step_equals_single_device(tiny_config):
    config = tiny_config()
    single = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    multi = sharding.make_mesh({"data": 4, "fsdp": 2})
    state_1, losses_1 = _run(config, single)
    state_8, losses_8 = _run(config, multi)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 jax.device_get(state_8.params), jax.device_get(state_1.params))

    fc1 = state_8.trainable["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.spec == P(None, "fsdp", "tensor")  # ("layers", "embed", "mlp")
    assert fc1.addressable_shards[0].data.shape == (2, 16, 64)  # embed 32 split over fsdp=2
    adam_mu = state_8.opt_state.inner_state[1][0].mu["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert adam_mu.sharding.spec == fc1.sharding.spec  # optimizer state laid out like its param
    assert state_8.step.sharding.spec == P()


def test_train_step_does_not_retrace(tiny_config):
    config = tiny_config()
    mesh = sharding.make_mesh({"data": 8})
    state, train_step, batches = _setup(config, mesh)
    for _ in range(4):
        state, _ = train_step(state, sharding.shard_batch(next(batches), mesh))
    assert train_step._cache_size() == 1


def test_config_rules_override_the_defaults_and_large_replicated_params_are_named(tiny_config):
    config = tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2})
    mesh = sharding.make_mesh(dict(config.mesh))
    task = vit_classifier.build_task(config)
    example = {"image": np.zeros((1, 32, 32, 3), np.uint8), "label": np.zeros((1,), np.int32)}
    config.sharding.min_sharded_size = 1024
    setup = loop.setup_train_step(config, task, example, mesh, 10, 10)  # the defaults split "embed" over fsdp
    fc1 = setup.shardings.trainable["encoder"]["layers"]["block"]["mlp"]["fc1"]["kernel"]
    assert fc1.spec == P(None, "fsdp", "tensor")

    config.sharding.rules = (("embed", None),)
    rules = sharding.rules_from_config(config)
    assert sharding.logical_to_spec(("embed", "mlp"), (32, 64), mesh, rules) == P(None, "tensor")
    with pytest.raises(ValueError, match=r"fsdp=2.*\['encoder'\]\['layers'\]\['block'\]\['mlp'\]\['fc1'\]\['kernel'\] "
                                         r"\(2, 32, 64\) \(logical axes \('layers', 'embed', 'mlp'\)\)"):
        loop.setup_train_step(config, task, example, mesh, 10, 10)
    config.sharding.rules = (("embed", "model"),)
    with pytest.raises(ValueError, match="mesh axes \\['model'\\] are unknown"):
        sharding.rules_from_config(config)
