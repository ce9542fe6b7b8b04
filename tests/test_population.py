"""Population training: vmapped trials equal one trainer run each, trials are independent of their group,
groups share one compiled step, the trials axis is sharded over devices, and a rerun resumes by group."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxemo.data import synthetic
from jaxemo.systems import vit_classifier
from jaxemo.train import checkpoint, loop, population, sharding, tasks


def _config(tiny_config, **overrides):
    defaults = dict(total_steps=12, eval_every_steps=2, batch_size=8, eval_batch_size=16, log_every_steps=2)
    config = tiny_config(**{**defaults, "data.train_size": 64, "checkpoint.every_steps": 100, **overrides})
    config.best.update(metric="loss", mode="min", patience=2, min_delta=0.0)
    return config


def _trial(name, seed, learning_rate, eval_size=24):
    return population.Trial(name, seed=seed, train=synthetic.SyntheticImages(64, image_size=32, seed=seed),
                            eval=synthetic.SyntheticImages(eval_size, image_size=32, seed=100 + seed),
                            test=synthetic.SyntheticImages(20, image_size=32, seed=200 + seed),
                            hyperparams={"learning_rate": learning_rate}, tags={"fold": seed})


def _task(config):
    return tasks.ClassificationTask(vit_classifier.build_model(config), config.data.num_classes)


def _trial_params(tree, i):
    return jax.tree.map(lambda x: np.asarray(x)[i], jax.device_get(tree))


def _assert_trees_close(a, b, atol=1e-5, err=""):
    def close(path, x, y):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol, err_msg=f"{err} {jax.tree_util.keystr(path)}")

    jax.tree_util.tree_map_with_path(close, a, b)


def test_vmapped_trials_equal_one_trainer_run_each(tiny_config, tmp_path):
    config = _config(tiny_config, **{"population.group_size": 3})
    task = _task(config)
    # Trials "a" and "b" plateau and stop early, "c" keeps improving to the end.
    trials = [_trial("a", 0, 2e-3, 24), _trial("b", 1, 1e-2, 40), _trial("c", 2, 5e-3, 30)]
    results = []
    rows = population.Population(config, task, trials).run(str(tmp_path / "population"), on_group=results.append)
    (group,) = results
    assert {r["status"] for r in rows} >= {"early_stopped", "completed"}

    one_device = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    for i, (trial, row) in enumerate(zip(trials, rows)):
        run_config = config.copy_and_resolve_references()
        run_config.seed = trial.seed
        run_config.optimizer.learning_rate = trial.hyperparams["learning_rate"]
        workdir = str(tmp_path / trial.name)
        result = loop.train_and_evaluate(run_config, workdir, task, trial.train, trial.eval, mesh=one_device)
        assert row["stopped_step"] == result.stopped_step
        assert row["steps_run"] == int(result.state.step)
        assert row["best_step"] == result.best["step"]
        np.testing.assert_allclose(row["best_value"], result.best["value"], rtol=1e-5)
        _assert_trees_close(_trial_params(group.trainable, i), jax.device_get(result.state.trainable))
        best_params = checkpoint.load_params(os.path.join(workdir, "checkpoints_best"))
        _assert_trees_close(_trial_params(group.selected, i), best_params, err=trial.name)
        best_metrics, _ = loop.evaluate_params(run_config, task, best_params, trial.eval, mesh=one_device)
        test_metrics, _ = loop.evaluate_params(run_config, task, best_params, trial.test, mesh=one_device)
        for name, value in best_metrics.items():
            np.testing.assert_allclose(row[f"eval/{name}"], value, rtol=1e-5, atol=1e-6)
        for name, value in test_metrics.items():
            np.testing.assert_allclose(row[f"test/{name}"], value, rtol=1e-5, atol=1e-6)
        if result.stopped_step is not None:  # a rerun of a stopped run trains no further
            again = loop.train_and_evaluate(run_config, workdir, task, trial.train, trial.eval, mesh=one_device)
            assert again.steps_run == 0 and again.stopped_step == result.stopped_step

    table = json.load(open(tmp_path / "population" / "trials.json"))
    assert [r["trial"] for r in table] == ["a", "b", "c"] and table[1]["fold"] == 1
    header = open(tmp_path / "population" / "trials.csv").readline().strip().split(",")
    assert {"trial", "seed", "fold", "learning_rate", "best_step", "stopped_step", "test/accuracy"} <= set(header)


def test_a_trial_ignores_its_group_and_groups_share_one_program(tiny_config, tmp_path, monkeypatch):
    config = _config(tiny_config, **{"population.group_size": 2})
    task = _task(config)
    # Trial "x" runs beside "y" in group 0 and, renamed "x2", beside a different "z" in group 1.
    x = _trial("x", 3, 2e-3)
    trials = [x, _trial("y", 4, 1e-2), population.Trial("x2", x.seed, x.train, x.eval, x.test, x.hyperparams),
              _trial("z", 5, 1e-1)]
    results = []
    two_devices = sharding.make_mesh({"data": 2}, devices=jax.devices()[:2])
    pop = population.Population(config, task, trials, mesh=two_devices)
    rows = pop.run(str(tmp_path), on_group=results.append)
    assert pop.group_size == 2 and len(results) == 2
    assert pop._step._cache_size() == 1  # both groups ran the one compiled step
    first, second = rows[0], rows[2]
    for key in first:
        if key in ("trial", "fold"):
            continue
        if isinstance(first[key], float):
            np.testing.assert_allclose(first[key], second[key], rtol=1e-6)
        else:
            assert first[key] == second[key], key
    _assert_trees_close(_trial_params(results[0].trainable, 0), _trial_params(results[1].trainable, 0), atol=1e-6)

    # A rerun reads finished groups back; with the second group lost it reruns that one alone.
    os.remove(tmp_path / "groups" / "group_00001.json")
    ran = []
    monkeypatch.setattr(population.Population, "run_group",
                        lambda self, index, group: ran.append(index) or population.GroupResult(
                            index, group, [dict(rows[2 + j]) for j in range(len(group))]))
    again = population.Population(config, task, trials, mesh=two_devices).run(str(tmp_path))
    assert ran == [1] and again == rows


def test_trials_axis_is_sharded_over_eight_devices(tiny_config):
    config = _config(tiny_config, total_steps=2, **{"population.group_size": 8})
    config.best.update(metric="", patience=0)
    trials = [_trial(f"t{i}", i, 1e-3) for i in range(8)]
    pop = population.Population(config, _task(config), trials, mesh=sharding.make_mesh({"data": 8}))
    assert pop.trial_devices == 8
    result = pop.run_group(0, trials)
    kernel = result.trainable["head"]["kernel"]
    assert kernel.shape[0] == 8 and kernel.sharding.spec == P(("data", "fsdp", "tensor"))
    assert {shard.data.shape[0] for shard in kernel.addressable_shards} == {1}  # one trial per device
    assert len({shard.device for shard in kernel.addressable_shards}) == 8
    frozen_or_shared = jax.tree.leaves(result.frozen)
    assert all(leaf.sharding.is_fully_replicated for leaf in frozen_or_shared)


def test_group_size_comes_from_the_memory_estimate(tiny_config):
    config = _config(tiny_config, **{"population.group_size": 0, "population.memory_fraction": 1e-12})
    trials = [_trial(f"t{i}", i, 1e-3) for i in range(20)]
    pop = population.Population(config, _task(config), trials, mesh=sharding.make_mesh({"data": 8}))
    assert pop.group_size == 8  # nothing fits: one trial per device
    pop.config.population.memory_fraction = 0.5
    assert pop._group_size() % 8 == 0 and pop._group_size() == 24  # 20 trials fit: one group, padded to 24


def test_trials_must_share_one_schedule(tiny_config):
    config = _config(tiny_config, total_steps=0, num_epochs=2)
    short = population.Trial("short", 0, synthetic.SyntheticImages(32, image_size=32, seed=0),
                             synthetic.SyntheticImages(8, image_size=32, seed=1))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        population.Population(config, _task(config), [_trial("long", 1, 1e-3), short])
    with pytest.raises(ValueError, match=r"hyperparameters \['momentum'\] are not injected"):
        population.Population(config, _task(config), [population.Trial("m", 0, short.train, short.eval,
                                                                         hyperparams={"momentum": 0.5})])
