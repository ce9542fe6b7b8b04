"""The train step and loop: learning, the NaN guard, accumulation, the trainable split, precision, schedules."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import config_dict

from jaxemo.systems import vit_classifier
from jaxemo.data import pipeline, synthetic
from jaxemo.train import loop, optim, sharding, state as state_lib, step as step_lib, tasks

def _one_device_mesh():
    return sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])


def _state_and_step(config, task=None, accum=1, mesh=None):
    mesh = mesh or _one_device_mesh()
    task = task or tasks.ClassificationTask(vit_classifier.build_model(config), config.data.num_classes)
    optimizer = optim.make_optimizer(config.optimizer, 100, 10)
    example = {"image": np.zeros((1, 32, 32, 3), np.uint8), "label": np.zeros((1,), np.int32)}
    state, shardings = state_lib.create_train_state(task, optimizer.tx, example, jax.random.key(0), mesh)
    train_step = step_lib.jit_train_step(step_lib.make_train_step(task, optimizer, accum), shardings, mesh)
    return state, train_step, mesh


def _batch(config, size=16, seed=0, as_float=False):
    source = synthetic.SyntheticImages(size, image_size=32, seed=seed)
    batch = next(pipeline.eval_batches(source, size, 0, 1))
    batch.pop("mask")
    if as_float:
        batch["image"] = batch["image"].astype(np.float32) / 255.0
    return batch


def _host_copy(tree):
    """A real copy: on CPU `device_get` may alias buffers that a donated step then overwrites."""
    return jax.tree.map(np.array, jax.device_get(tree))


def test_default_recipe_learns_the_synthetic_images(tiny_config, tmp_path):
    config = tiny_config(total_steps=300, batch_size=32, log_every_steps=50, **{
        "model.width": 64, "model.depth": 2, "model.num_heads": 4, "model.mlp_dim": 128,
        "data.train_size": 4096, "data.eval_size": 256, "optimizer.warmup_steps": 30,
        "checkpoint.every_steps": 1000})
    task = vit_classifier.build_task(config)
    train_source, eval_source = vit_classifier.build_data(config)
    mesh = sharding.make_mesh({"data": 2}, devices=jax.devices()[:2])
    result = loop.train_and_evaluate(config, str(tmp_path / "run"), task, train_source, eval_source, mesh)
    records = _jsonl(tmp_path / "run" / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    mfu = [r["train/mfu"] for r in records if "train/mfu" in r]  # every log step after the first
    assert len(mfu) == len(losses) - 1 and all(0 < m < 1 for m in mfu)
    assert result.eval_metrics["accuracy"] > 0.6  # chance is 0.1
    assert result.eval_metrics["uar"] > 0.6
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def _jsonl(path):
    import json

    return [json.loads(line) for line in open(path)]


def test_nonfinite_batch_skips_the_update_and_is_counted(tiny_config):
    config = tiny_config(**{"optimizer.schedule": "constant"})
    state, train_step, mesh = _state_and_step(config)
    before = _host_copy(state.params)
    bad = _batch(config, as_float=True)
    bad["image"][3, 5, 5, 0] = np.nan
    state, metrics = train_step(state, sharding.shard_batch(bad, mesh))
    assert float(metrics["update_skipped"]) == 1.0
    assert int(state.nonfinite_steps) == 1 and int(state.nonfinite_streak) == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)

    good = _batch(config, as_float=True)
    state, metrics = train_step(state, sharding.shard_batch(good, mesh))
    assert float(metrics["update_skipped"]) == 0.0
    assert int(state.nonfinite_steps) == 1 and int(state.nonfinite_streak) == 0
    assert int(state.step) == 2
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(state.params), before)
    assert any(jax.tree.leaves(changed))


@dataclasses.dataclass(frozen=True)
class _NaNImages:
    """A corrupt dataset: every image is NaN."""

    n: int = 64

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full((32, 32, 3), np.nan, np.float32), "label": np.int32(i % 10)}


def test_persistent_nonfinite_loss_stops_with_a_clear_error(tiny_config, tmp_path):
    config = tiny_config(log_every_steps=1, max_consecutive_nonfinite=3)
    task = tasks.ClassificationTask(vit_classifier.build_model(config), 10)
    with pytest.raises(loop.NonFiniteLossError, match="last 3 steps up to step 3 .*non-finite"):
        loop.train_and_evaluate(config, str(tmp_path / "nan"), task, _NaNImages(), mesh=_one_device_mesh())


class _ZeroImages(_NaNImages):
    def __getitem__(self, i):
        return {"image": np.zeros((32, 32, 3), np.float32), "label": np.int32(i % 10)}


def test_a_finished_run_without_evaluation_reruns_as_a_report(tiny_config, tmp_path):
    """No eval source: the rerun of a finished run trains nothing and evaluates nothing (the step is the NaN
    test's program: the same model, images and mesh)."""
    config = tiny_config(total_steps=2, log_every_steps=1)
    task = tasks.ClassificationTask(vit_classifier.build_model(config), 10)
    first = loop.train_and_evaluate(config, str(tmp_path / "run"), task, _ZeroImages(), mesh=_one_device_mesh())
    again = loop.train_and_evaluate(config, str(tmp_path / "run"), task, _ZeroImages(), mesh=_one_device_mesh())
    assert first.steps_run == 2 and again.steps_run == 0 and again.eval_metrics == {}
    assert int(again.state.step) == 2


def test_gradient_accumulation_matches_one_big_batch(tiny_config):
    config = tiny_config()
    batch = _batch(config)
    results = []
    for accum in (1, 4):
        state, train_step, mesh = _state_and_step(config, accum=accum)
        state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
        results.append((float(metrics["loss"]), _host_copy(state.params)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[0][1], results[1][1])


def test_only_trainable_params_get_optimizer_state_and_frozen_can_be_bf16(tiny_config):
    config = tiny_config()
    task = tasks.ClassificationTask(vit_classifier.build_model(config), 10, trainable_patterns=[r"^head/"])
    mesh = _one_device_mesh()
    optimizer = optim.make_optimizer(config.optimizer, 100, 10)
    example = {"image": np.zeros((1, 32, 32, 3), np.uint8), "label": np.zeros((1,), np.int32)}
    state, shardings = state_lib.create_train_state(task, optimizer.tx, example, jax.random.key(0), mesh,
                                                    frozen_dtype=jnp.bfloat16)
    assert set(state.trainable) == {"head"}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]  # Adam's mu and nu; not the counts
    assert sum(x.size for x in moments) == 2 * optim.count_params(state.trainable)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.frozen))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trainable))
    train_step = step_lib.jit_train_step(step_lib.make_train_step(task, optimizer), shardings, mesh)
    frozen_before = _host_copy(state.frozen)
    batch = _batch(config)
    for _ in range(2):
        state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.frozen), frozen_before)
    assert np.isfinite(float(metrics["loss"]))


def test_bf16_compute_keeps_fp32_master_params(tiny_config):
    config = tiny_config(**{"model.dtype": "bfloat16"})
    state, train_step, mesh = _state_and_step(config)
    batch = _batch(config)
    state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trainable))


def test_epoch_cosine_matches_torch_cosine_annealing_stepped_per_epoch():
    schedule = optim.epoch_cosine_schedule(1e-4, steps_per_epoch=10, num_epochs=25)
    for epoch in (0, 1, 12, 24):
        expected = 1e-4 * 0.5 * (1 + np.cos(np.pi * epoch / 25))
        for step in (epoch * 10, epoch * 10 + 9):
            np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-4)  # float32 cosine


def test_warmup_cosine_schedule_rises_then_decays():
    config = config_dict.ConfigDict(dict(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=10))
    schedule = optim.make_schedule(config, total_steps=100, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
    assert float(schedule(99)) < 0.01


def test_unknown_optimizer_and_schedule_are_named():
    with pytest.raises(ValueError, match="optimizer.name='lion'"):
        optim.make_optimizer(config_dict.ConfigDict(dict(name="lion", learning_rate=1.0, schedule="constant")),
                             10, 1)
    with pytest.raises(ValueError, match="schedule='step'"):
        optim.make_schedule(config_dict.ConfigDict(dict(learning_rate=1.0, schedule="step")), 10, 1)


def test_split_and_merge_are_inverse():
    params = {"a": {"b": jnp.ones(2), "c": jnp.zeros(3)}, "d": jnp.ones(1)}
    trainable, frozen = optim.split_params(params, optim.path_matcher([r"a/c", r"^d$"]))
    assert set(frozen) == {"a"} and set(frozen["a"]) == {"b"}
    jax.tree.map(np.testing.assert_array_equal, optim.merge_params(trainable, frozen), params)
    assert optax.tree.norm(trainable) > 0


def test_evaluation_counts_each_real_example_once(tiny_config):
    """The last eval batch is padded with copies of the last row; the padding mask survives the task's host
    transform, so the copies are not counted."""
    config = tiny_config(eval_batch_size=16)
    task = tasks.ClassificationTask(vit_classifier.build_model(config), 10)
    source = synthetic.SyntheticImages(20, image_size=32, seed=3)
    mesh = _one_device_mesh()
    params = nn.unbox(task.init(jax.random.key(0), next(pipeline.eval_batches(source, 1)))["params"])
    metrics, stats = loop.evaluate_params(config, task, params, source, mesh)
    assert int(np.asarray(stats["confusion"]).sum()) == 20
    # a system's eval transform that returns only the model's inputs (MMA-DFER's clip transform does): the
    # mask is the pipeline's, not the transform's
    inputs_only = dataclasses.replace(task, eval_transform=lambda e, rng: {"image": e["image"], "label": e["label"]})
    _, stats = loop.evaluate_params(config, inputs_only, params, source, mesh)
    assert int(np.asarray(stats["confusion"]).sum()) == 20
