"""CASP's reference behaviours behind options: the weighted F1 it prints (sklearn's arguments swapped) and its
ReduceLROnPlateau in source training, each against the library the reference calls."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from experiments.configs import casp as casp_config
from jaxemo.models import msa
from jaxemo.systems.casp import plateau
from jaxemo.train import loop, metrics, optim, sharding, tasks
from jaxemo.train.state import TrainState


def test_f1_reference_swapped_is_sklearn_called_as_casp_calls_it():
    rng = np.random.default_rng(0)
    labels = np.round(rng.normal(0.8, 1.5, 200), 1)  # mostly positive, some exact zeros
    predictions = rng.normal(0.0, 1.0, 200)  # balanced: the two weightings differ
    labels[:10] = 0.0
    expected = f1_score(predictions > 0, labels > 0, average="weighted")  # utils/util.py eval_senti
    in_order = f1_score(labels > 0, predictions > 0, average="weighted")
    assert abs(expected - in_order) > 0.01
    row = metrics.sentiment_metrics(predictions, labels)
    assert row["f1_reference_swapped"] == pytest.approx(expected, abs=1e-6)
    assert row["f1_reference"] == pytest.approx(in_order, abs=1e-6)
    # the source-training task reports it at every evaluation (from summed statistics, padding masked)
    mask = np.ones(210, np.float32)
    mask[200:] = 0
    stats = metrics.sentiment_stats(jnp.asarray(np.pad(predictions, (0, 10), constant_values=5.0)),
                                    jnp.asarray(np.pad(labels, (0, 10), constant_values=-5.0)), jnp.asarray(mask))
    summary = tasks.SentimentRegressionTask(msa.SentimentRegressor(depth=1)).summarize(jax.device_get(stats))
    assert summary["f1_reference_swapped"] == pytest.approx(expected, abs=1e-6)


def _loss_history(rng, n: int) -> np.ndarray:
    """Random validation losses, so that the best falls ever more rarely (plateaus); about one in five lands
    just below the best, by half torch's relative threshold 1e-4, which is not an improvement."""
    history, best = [], np.inf
    for _ in range(n):
        value = np.float32(rng.uniform(0.5, 1.5))
        if np.isfinite(best) and rng.uniform() < 0.2:
            value = np.float32(best * (1 - 5e-5))
        elif value < best * (1 - 1e-4):
            best = value
        history.append(value)
    return np.asarray(history, np.float32)


@pytest.mark.parametrize("patience, base_lr", [(10, 1e-3), (3, 1e-3), (1, 1e-6)])
def test_plateau_matches_torch_reduce_lr_on_plateau(patience, base_lr):
    history = _loss_history(np.random.default_rng(patience), 120)
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=base_lr)
    # CASP's utils/base_model_train.py: ReduceLROnPlateau(optimizer, mode="min", patience=when, factor=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=patience, factor=0.1)
    rule = plateau.Plateau(base_lr, factor=0.1, patience=patience)
    expected, got = [], []
    for value in history:
        scheduler.step(float(value))
        expected.append(optimizer.param_groups[0]["lr"])
        got.append(rule.step(float(value)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    cuts = int(np.sum(np.diff(expected) < 0))
    assert cuts >= 2 and np.all(np.isin(np.round(np.asarray(expected[1:]) / np.asarray(expected[:-1]), 6),
                                        [1.0, 0.1]))
    if base_lr == 1e-6:  # torch's eps: no cut below 1e-8 from 1e-6
        assert min(expected) == pytest.approx(1e-8) and cuts == 2


def test_a_cut_sets_the_rate_the_optimizer_uses():
    config = casp_config.get_config("tiny")
    optimizer = optim.make_optimizer(config.optimizer, total_steps=10, steps_per_epoch=10)
    params = {"w": jnp.zeros(3)}
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(step=zero, trainable=params, frozen={}, opt_state=optimizer.init(params),
                       rng=jnp.zeros(2, jnp.uint32), nonfinite_steps=zero, nonfinite_streak=zero)
    cut = plateau.with_learning_rate(state, 1e-4)
    assert float(optimizer.current_learning_rate(cut.opt_state)) == pytest.approx(1e-4)
    updates, _ = optimizer.tx.update({"w": jnp.asarray([1.0, -2.0, 0.5])}, cut.opt_state, params)
    np.testing.assert_allclose(updates["w"], [-1e-4, 1e-4, -1e-4], rtol=1e-4)  # Adam's first step: lr * sign


class Stuck(nn.Module):
    """A regressor whose predictions do not depend on its weights: its valid loss never improves after the
    first evaluation."""

    @nn.compact
    def __call__(self, text, audio, vision, audio_length, vision_length, deterministic=True):
        pooled = text.mean(axis=1)
        return 0.0 * nn.Dense(1)(pooled)[:, 0] + 0.5, pooled


def _examples(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [{"text": rng.standard_normal((3, 4)).astype(np.float32), "audio": np.zeros((2, 2), np.float32),
             "vision": np.zeros((2, 2), np.float32), "audio_length": np.int32(2), "vision_length": np.int32(2),
             "label": np.float32(rng.normal())} for _ in range(n)]


def _learning_rates(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/learning_rate"] for r in rows if "train/learning_rate" in r}


def test_source_training_cuts_the_rate_after_patience_bad_evaluations_and_resumes(tmp_path):
    config = casp_config.get_config("tiny")
    config.update(batch_size=4, eval_batch_size=4, num_epochs=4, log_every_steps=1)
    config.optimizer.learning_rate = 1e-2
    config.lr_plateau.update(enabled=True, patience=1)
    task = tasks.SentimentRegressionTask(Stuck())
    train, valid = _examples(8, 0), _examples(4, 1)  # 2 steps per epoch, one evaluation per epoch
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    workdir = str(tmp_path)

    def run(config):  # the trainer with the plateau rule as its eval hook, as experiments.casp trains the source
        return loop.train_and_evaluate(config, workdir, task, train, valid, mesh,
                                       eval_hook=plateau.Plateau.from_config(config))

    result = run(config)
    assert result.steps_run == 8 and result.best["step"] == 2
    # evaluation 1 is the best; 2 is one bad, 3 the second (more than patience=1): cut before epoch 4
    rates = _learning_rates(workdir)
    np.testing.assert_allclose([rates[s] for s in range(1, 9)], [1e-2] * 6 + [1e-3] * 2, rtol=1e-6)
    # resumed with two more epochs: the plateau's count comes back with the checkpoint, so evaluation 5 (the
    # second bad one since the cut) cuts again before epoch 6
    config.num_epochs = 6
    result = run(config)
    assert result.steps_run == 4
    rates = _learning_rates(workdir)
    np.testing.assert_allclose([rates[s] for s in range(9, 13)], [1e-3] * 2 + [1e-4] * 2, rtol=1e-6)
    finished = run(config)  # done: no step
    assert finished.steps_run == 0 and finished.best == result.best
