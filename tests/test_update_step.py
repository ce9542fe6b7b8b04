"""One update step: the trainer, test-time adaptation and population training all reach `step.update` and make
the same update from the same inputs; the early-stopping rule they share; the one optimizer factory."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from ml_collections import config_dict

from jaxemo.models import msa
from jaxemo.train import early_stopping, optim, population, sharding, state as state_lib, step as step_lib, tasks
from jaxemo.tta import core

STEPS, DIMS = (5, 6, 4), (8, 3, 6)


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {m: rng.standard_normal((t, d)).astype(np.float32) for m, t, d in zip(msa.MODALITIES, STEPS, DIMS)}
        row.update(audio_length=np.int32(STEPS[1]), vision_length=np.int32(STEPS[2]),
                   label=np.float32(rng.uniform(-3, 3)))
        rows.append(row)
    return rows


class _TaskLoss:
    """A test-time method whose objective is the task's own training loss."""

    name = "task_loss"

    def __init__(self, task):
        self.task = task

    def loss(self, model, frozen, adapted, batch, rng):
        return self.task.loss(optim.merge_params(adapted, frozen), batch, rng, train=True)


def test_trainer_tta_and_population_make_the_same_update(monkeypatch):
    calls = []
    real_update = step_lib.update
    monkeypatch.setattr(step_lib, "update", lambda *a, **k: calls.append(1) or real_update(*a, **k))

    task = tasks.SentimentRegressionTask(msa.SentimentRegressor(depth=1), trainable_patterns=msa.ADAPTED_BY_CASP)
    adapt = core.OptimizerConfig(learning_rate=1e-2, clip_norm=0.8)
    config = config_dict.ConfigDict(dict(name="adam", learning_rate=1e-2, clip_norm=0.8, schedule="constant"))
    optimizer = optim.make_optimizer(config, 10, 10)
    rows = _examples(8)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    example = state_lib.example_batch_like(batch)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])

    # the trainer's step
    state, shardings = state_lib.create_train_state(task, optimizer.tx, example, jax.random.key(3), mesh)
    start = jax.tree.map(np.array, jax.device_get(state))
    train_step = step_lib.jit_train_step(step_lib.make_train_step(task, optimizer), shardings, mesh)
    trained, _ = train_step(state, sharding.shard_batch(batch, mesh))

    # test-time adaptation's step on the same params, rng and batch
    rng = jax.random.fold_in(jax.random.wrap_key_data(start.rng), start.step)
    tx = adapt.make()
    adapted, _, _ = jax.jit(lambda a, o, b, r: core.adapt_step(_TaskLoss(task), task.model, tx, start.frozen, a, o,
                                                               b, r))(start.trainable, tx.init(start.trainable),
                                                                      batch, rng)

    # population training's vmapped step, one trial holding the same state and batch
    pop_config = config_dict.ConfigDict(dict(
        seed=3, batch_size=8, eval_batch_size=8, total_steps=1, steps_per_epoch=0, log_every_steps=1,
        eval_every_steps=0, optimizer=config, mesh=dict(data=1), best=dict(metric=""), population=dict(group_size=1)))
    pop = population.Population(pop_config, task, [population.Trial("t", 3, rows)], mesh=mesh)
    with_axis = jax.tree.map(lambda x: x[None], start.replace(frozen={})).replace(frozen=start.frozen)
    stepped, _ = pop._step(jax.device_put(with_axis, pop.state_shardings), {k: v[None] for k, v in batch.items()},
                           np.ones(1, bool))

    assert len(calls) == 3  # each driver traced the one update once
    expected = jax.device_get(trained.trainable)
    for other in (adapted, jax.tree.map(lambda x: x[0], stepped.trainable)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), jax.device_get(other),
                     expected)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(start.trainable)))


def test_population_init_params_shares_what_it_loads_and_keeps_each_trials_own_init():
    task = tasks.SentimentRegressionTask(msa.SentimentRegressor(depth=1), trainable_patterns=(r"^head/",))
    config = config_dict.ConfigDict(dict(
        seed=0, batch_size=4, eval_batch_size=4, total_steps=1, steps_per_epoch=0, log_every_steps=1,
        eval_every_steps=0, mesh=dict(data=-1), best=dict(metric=""), population=dict(group_size=8),
        optimizer=dict(name="adam", learning_rate=1e-3, schedule="constant")))
    rows = _examples(4)
    trials = [population.Trial(f"t{i}", i, rows, hyperparams={"learning_rate": 10.0 ** -i}) for i in range(8)]
    pretrained = {}

    def init_params(params):  # "pretrained": the encoders (frozen) and one layer of the head (trainable)
        loaded = jax.tree.map(lambda x: x, params)
        loaded["encoder_text"] = jax.tree.map(lambda x: np.full_like(x, 0.5), params["encoder_text"])
        loaded["head"]["out_layer"] = jax.tree.map(lambda x: np.full_like(x, 0.25), params["head"]["out_layer"])
        pretrained.update(loaded)
        return loaded

    pop = population.Population(config, task, trials, init_params=init_params)
    state = pop._initial_state(trials)
    head = jax.device_get(state.trainable["head"])
    assert np.all(head["out_layer"]["kernel"] == 0.25)  # loaded: the same for every trial
    kernels = head["out_layer_proj1"]["kernel"]
    assert len({k.tobytes() for k in kernels}) == 8  # not loaded: each trial's own seed
    own = nn.unbox(task.init(jax.random.split(jax.random.key(5))[0], {k: v[None] for k, v in rows[0].items()}))
    np.testing.assert_array_equal(kernels[5], own["params"]["head"]["out_layer_proj1"]["kernel"])
    frozen = jax.device_get(state.frozen)
    assert np.all(jax.tree.leaves(frozen["encoder_text"])[0] == 0.5) and frozen["encoder_text"]  # shared
    np.testing.assert_allclose(jax.device_get(state.opt_state.hyperparams["learning_rate"]),
                               [10.0 ** -i for i in range(8)], rtol=1e-6)


def test_early_stopping_follows_transformers_rule():
    tracker = early_stopping.BestTracker(early_stopping.BestConfig("acc", "max", min_delta=0.02, patience=3), 2)
    history = [(0.50, 0.50), (0.51, 0.60), (0.515, 0.59), (0.60, 0.58), (0.61, 0.57), (0.61, 0.70)]
    improved = [tracker.update(step, values).tolist() for step, values in enumerate(history, start=1)]
    # run 0: every strict improvement is the new best (0.51, 0.515, 0.60, 0.61), but only 0.60 is more than
    # min_delta above the best before it: the patience count stands at 2 after the last evaluation;
    # run 1: 0.60 improves, then three evaluations below it stop it at step 5 (its 0.70 comes too late).
    assert [i[0] for i in improved] == [True, True, True, True, True, False]
    assert [i[1] for i in improved] == [True, True, False, False, False, False]
    assert tracker.best_step.tolist() == [5, 2] and tracker.best_value.tolist() == [0.61, 0.60]
    assert tracker.stopped_step.tolist() == [-1, 5] and tracker.bad_evals.tolist() == [2, 3]
    state = tracker.state_dict()
    again = early_stopping.BestTracker(tracker.config, 2)
    again.load_state_dict(state)
    assert again.record(1) == {"step": 2, "metric": "acc", "value": 0.6}
    lower = early_stopping.BestTracker(early_stopping.BestConfig("loss", "min", patience=1))
    assert lower.update(1, 1.0)[0] and not lower.update(2, np.nan)[0] and lower.stopped_step[0] == 2
    with pytest.raises(ValueError, match="needs best.metric"):
        early_stopping.BestConfig.from_config(config_dict.ConfigDict(dict(best=dict(patience=2))))


def _transformers_best_and_stop(values, greater: bool, threshold: float, patience: int):
    """(best step, best value, stopped step) of one run under transformers' own code: per evaluation, the
    `EarlyStoppingCallback` (inside `Trainer._evaluate`), then `Trainer._determine_best_metric`."""
    import types

    import transformers

    args = types.SimpleNamespace(metric_for_best_model="acc", greater_is_better=greater, save_strategy="epoch")
    trainer = types.SimpleNamespace(args=args, state=transformers.TrainerState())
    callback = transformers.EarlyStoppingCallback(patience, threshold)
    control = transformers.TrainerControl()
    best_step, stopped = -1, -1
    for step, value in enumerate(values, start=1):
        callback.on_evaluate(args, trainer.state, control, {"eval_acc": value})
        if transformers.Trainer._determine_best_metric(trainer, {"eval_acc": value}, None):
            best_step = step
        if control.should_training_stop:
            stopped = step
            break
    return best_step, trainer.state.best_metric, stopped


def test_best_and_stopping_match_transformers_trainer_on_random_histories():
    """min_delta decides when to stop, never which evaluation is the best: the released pre-finetuning run
    (Trainer, load_best_model_at_end, EarlyStoppingCallback(3, 0.02)) keeps any strict improvement."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        greater, threshold, patience = bool(trial % 2), [0.0, 0.02, 0.05][trial % 3], 1 + trial % 4
        history = np.round(rng.uniform(0.4, 0.6, size=12), 2)  # rounded: ties happen
        config = early_stopping.BestConfig("acc", "max" if greater else "min", threshold, patience)
        tracker = early_stopping.BestTracker(config)
        for step, value in enumerate(history, start=1):
            tracker.update(step, value)
        expected = _transformers_best_and_stop(history.tolist(), greater, threshold, patience)
        got = (int(tracker.best_step[0]), float(tracker.best_value[0]), int(tracker.stopped_step[0]))
        assert got == expected, (trial, history.tolist(), greater, threshold, patience)


def test_one_optimizer_factory_injects_the_learning_rate():
    config = config_dict.ConfigDict(dict(name="adamw", learning_rate=1.0, weight_decay=0.1, schedule="warmup_linear",
                                         warmup_fraction=0.1))
    optimizer = optim.make_optimizer(config, total_steps=100, steps_per_epoch=10)
    assert float(optimizer.schedule(5)) == pytest.approx(0.5) and float(optimizer.schedule(55)) == pytest.approx(0.5)
    state = optimizer.init({"w": np.zeros(3, np.float32)}, learning_rate=0.1)
    assert float(optimizer.current_learning_rate(state)) == 0.0  # warm-up starts at 0
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    assert float(state.hyperparams["weight_decay"]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"\['momentum'\] are not injected"):
        optim.with_hyperparams(state, momentum=0.5)
    assert isinstance(core.OptimizerConfig().make().init({}), type(state))  # TTA uses the same factory
