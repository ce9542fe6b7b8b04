"""MERTools' recipe as population groups: k-fold cross-validation x random hyperparameter draws.

A model is trained `draws` times, each with hyperparameters drawn from its search space (MERTools'
`model-tune.yaml` for "attention": hidden_dim in {64, 128, 256}, dropout in {0.2, 0.3, 0.4, 0.5}, lr in
{1e-3, 1e-4}; the README runs each command 50 times and keeps the best), and each draw is trained on every
fold: `draws x folds` trials. The learning rate (and weight decay) is injected into the optimizer state, so
trials differing only in it share one compiled step; fields that change the model (hidden size, dropout)
split the trials into one `jaxemo.train.population.Population` per distinct model, each run as vmapped
groups. Every trial keeps its epoch of best validation weighted F1 (MERTools' selection); its logits on the
whole labelled set and on the pool are computed from those params on the device, as the group finishes, and
kept in `<workdir>/<model>/logits/` beside the population's finished groups (a rerun skips both).

A draw's score is the mean over folds of its best validation weighted F1; the best draw's member of the
ensemble is its out-of-fold logits on the labelled set and its fold-averaged logits on the pool (MERTools
averages the folds' logits).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from jaxemo.data import sources
from jaxemo.systems.agt import data as data_lib
from jaxemo.systems.agt import task as task_lib
from jaxemo.train import optim, population

logger = logging.getLogger(__name__)

INJECTED = set(optim.INJECTED)


@dataclasses.dataclass
class Member:
    """One trained model of the ensemble: a model's best draw in one round."""

    model: str
    round: int
    draw: int
    hyperparams: dict
    cv_weighted_f1: float  # mean over folds of the best validation weighted F1
    oof_logits: np.ndarray  # [N_labelled, C]: each sample scored by the fold that held it out
    pool_logits: Optional[np.ndarray]  # [N_pool, C]: mean over folds
    train_prior: np.ndarray  # [C] class frequencies of the training set (labelled + pseudo-labelled)
    draws: list  # every draw's {draw, hyperparams, cv_weighted_f1, cv_accuracy}
    # Calibration of the logits (`semi.calibrate`): probabilities are softmax(scale * logits + bias), under
    # `source_prior` (the training prior, or with fitted biases the labelled set's).
    scale: float = 1.0
    bias: Optional[np.ndarray] = None
    source_prior: Optional[np.ndarray] = None
    cv_accuracy: float = math.nan  # mean over folds of the validation accuracy at each fold's best epoch

    def probs(self, logits) -> np.ndarray:
        z = self.scale * np.asarray(logits, np.float64) + (0.0 if self.bias is None else self.bias)
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    @property
    def name(self) -> str:
        return f"{self.model}/round{self.round}"


def draw_hyperparams(search, num_draws: int, seed: int) -> list[dict]:
    """`num_draws` draws, each field uniform over its choices (fields in sorted order, NumPy from `seed`)."""
    search = {k: tuple(v) for k, v in dict(search or {}).items()}
    empty = [k for k, v in search.items() if not v]
    if empty:
        raise ValueError(f"search space fields {empty} have no choices")
    rng = np.random.default_rng(seed)
    return [{k: search[k][int(rng.integers(len(search[k])))] for k in sorted(search)} for _ in range(num_draws)]


def _model_key(hyperparams: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in hyperparams.items() if k not in INJECTED))


def _key_name(key: tuple) -> str:
    return "_".join(f"{k}{v}" for k, v in key) or "default"


def stage_config(config, train_size: int):
    """The population config: the round's schedule (every fold's trials run the same steps: an epoch is
    ceil(smallest fold's training set / batch) steps, as MERTools' loader keeps the last partial batch; the
    trials' epoch-shuffled streams run on across epoch ends), evaluation after every epoch."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        out.steps_per_epoch = max(math.ceil(train_size / out.batch_size), 1)
        out.total_steps = int(out.num_epochs * out.steps_per_epoch)
        out.eval_every_epochs = 1
    return out


def _logits_fn(task):
    def logits(trainable, frozen, batch):
        return task.logits(optim.merge_params(trainable, frozen), batch)

    return jax.jit(jax.vmap(logits, in_axes=(0, None, None)))


def trial_logits(fn, result: population.GroupResult, sets, batch_size: int,
                 fields: Optional[Callable[[np.ndarray], dict]] = None) -> list[np.ndarray]:
    """Logits [trials, N, C] of every trial of a finished group (its selected params) on each of `sets`;
    `fields(rows)` adds batch fields for the batch's rows of the set (e.g. `robustness.failure_fields`)."""
    out = []
    for data in sets:
        chunks = []
        for start in range(0, len(data), batch_size):
            batch = data.batch(start, min(start + batch_size, len(data)), batch_size)
            if fields is not None:
                batch.update(fields(np.arange(start, start + batch_size)))
            chunks.append(np.asarray(jax.device_get(fn(result.selected, result.frozen, batch))))
        out.append(np.concatenate(chunks, axis=1)[:, :len(data)] if chunks else None)
    return [o[:len(result.trials)] for o in out]


def train_model(config, name: str, model_config, train_extra: Optional[data_lib.MerSet],
                labelled: data_lib.MerSet, pool: Optional[data_lib.MerSet], fold_indices: list, draws: list[dict],
                round_index: int, workdir: str, mesh=None) -> Member:
    """Trains `draws` x folds of one model (validation: each held-out fold of `labelled`; training: the other
    folds plus `train_extra`, the pseudo-labelled samples) and returns the best draw's `Member`."""
    return train_variants(config, name, model_config, {"": train_extra}, labelled, pool, fold_indices, draws,
                          round_index, workdir, mesh)[""]


def train_variants(config, name: str, model_config, extras: dict, labelled: data_lib.MerSet,
                   pool: Optional[data_lib.MerSet], fold_indices: list, draws: list[dict], round_index: int,
                   workdir: str, mesh=None, only_draws: Optional[Sequence[int]] = None,
                   on_group: Optional[Callable] = None) -> dict:
    """`train_model` for several training sets at once: {variant: pseudo-labelled samples or None} -> {variant:
    best draw's `Member`}. Every variant x draw x fold is a trial of one population per model shape (one
    compiled step); a variant's trials have the seeds its trials would have alone, so variants differ only in
    their data. The trials share one schedule: an epoch is the steps of the variant whose smallest training
    set is largest (a variant with fewer samples makes more passes; its best epoch is still chosen on its
    validation fold). The variant "" keeps `train_model`'s trial names (a run resumes either way).
    `only_draws`: the indices of `draws` to train (their trials keep their seeds and names); `on_group(task,
    result)` sees each finished group (`population.GroupResult`, its params on the device) after its logits."""
    num_folds = len(fold_indices)
    train_sets, sizes = {}, []
    for variant, extra in extras.items():
        train_sets[variant] = []
        for f in range(num_folds):
            rest = np.setdiff1d(np.arange(len(labelled)), fold_indices[f])
            train = labelled.take(rest)
            train_sets[variant].append(train if extra is None or not len(extra) else data_lib.concat(train, extra))
        sizes.append(min(len(t) for t in train_sets[variant]))
    eval_sets = [labelled.take(indices) for indices in fold_indices]  # one per fold: read once per group
    stage = stage_config(config, max(sizes))
    dims = {k: ((v.shape[1], v.shape[2]) if v.ndim == 3 else (0, v.shape[1]))
            for k, v in labelled.features.items()}
    by_model: dict[tuple, list] = {}
    for variant in extras:
        for d, hyperparams in enumerate(draws):
            if only_draws is not None and d not in only_draws:
                continue
            for f in range(num_folds):
                seed = int(config.seed) * 1_000_003 + round_index * 10_007 + d * 101 + f
                trial = population.Trial(
                    name=_trial_name(name, round_index, variant, d, f), seed=seed,
                    train=sources.EpochShuffled(train_sets[variant][f], seed, stage.num_epochs + 1),
                    eval=eval_sets[f],
                    hyperparams={k: float(v) for k, v in hyperparams.items() if k in INJECTED},
                    tags={"model": name, "round": round_index, **({"variant": variant} if variant else {}),
                          "draw": d, "fold": f, **{k: v for k, v in hyperparams.items() if k not in INJECTED}})
                by_model.setdefault(_model_key(hyperparams), []).append(trial)
    rows, logits = [], {}
    for key, trials in by_model.items():
        model = model_config.copy_and_resolve_references()
        with model.unlocked():
            model.modalities = labelled.feature_names
            for k, v in key:
                model[k] = v
        task = task_lib.build_task(task_lib.trial_config(stage, model, tuple(labelled.lengths), dims))
        folder = os.path.join(workdir, name, _key_name(key))
        pop = population.Population(stage, task, trials, mesh=mesh)
        fn = _logits_fn(task)
        sets = [labelled] + ([pool] if pool is not None else [])

        def save_logits(result, folder=folder, fn=fn, sets=sets, task=task):
            arrays = trial_logits(fn, result, sets, int(config.eval_batch_size))
            _write_logits(folder, result.index, [t.name for t in result.trials], arrays)
            if on_group is not None:
                on_group(task, result)

        logger.info("%s round %d, %s: %d trials in groups of %d, %d steps each", name, round_index,
                    _key_name(key), len(trials), pop.group_size, pop.total_steps)
        rows.extend(pop.run(folder, on_group=save_logits))
        for index in range(len(pop.groups())):
            logits.update(_read_logits(folder, index))
    return {variant: _best_member(name, round_index, variant, draws,
                                  [r for r in rows if r.get("variant", "") == variant], logits, fold_indices,
                                  labelled, pool, train_sets[variant])
            for variant in extras}


def _trial_name(name: str, round_index: int, variant: str, draw: int, fold: int) -> str:
    return f"{name}/round{round_index}/{variant + '/' if variant else ''}draw{draw:03d}/fold{fold}"


def _best_member(name, round_index, variant, draws, rows, logits, fold_indices, labelled, pool,
                 train_sets) -> Member:
    num_folds = len(fold_indices)
    scores, accuracies = {}, {}
    for row in rows:
        value = row.get("best_value")
        scores.setdefault(row["draw"], []).append(-math.inf if value is None else float(value))
        accuracies.setdefault(row["draw"], []).append(float(row.get("eval/accuracy", math.nan)))
    # MERTools reports the folds' mean accuracy beside their mean weighted F1 (each at the fold's best epoch)
    summary = [{"draw": d, "hyperparams": draws[d], "cv_weighted_f1": float(np.mean(scores[d])),
                "cv_accuracy": float(np.mean(accuracies[d]))} for d in sorted(scores)]
    best = max(summary, key=lambda s: (s["cv_weighted_f1"], -s["draw"]))
    d = best["draw"]
    oof = np.zeros((len(labelled), len(task_lib.CLASSES)), np.float32)
    pool_logits = [] if pool is not None else None
    for f in range(num_folds):
        arrays = logits[_trial_name(name, round_index, variant, d, f)]
        oof[fold_indices[f]] = arrays[0][fold_indices[f]]
        if pool is not None:
            pool_logits.append(arrays[1])
    # The training prior of the ensemble member: its folds' training sets pooled (each sample counted once
    # per fold that trains on it).
    train_labels = np.concatenate([t.labels for t in train_sets])
    return Member(name, round_index, d, dict(draws[d]), best["cv_weighted_f1"], oof,
                  None if pool_logits is None else np.mean(pool_logits, axis=0), data_lib.class_prior(train_labels),
                  summary, cv_accuracy=best["cv_accuracy"])


def _write_logits(folder: str, index: int, names: list, arrays: list) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(folder, "logits", f"group_{index:05d}.npz")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"names": np.asarray(json.dumps(names))}
    payload.update({f"set{i}": a for i, a in enumerate(arrays)})
    with open(path + ".tmp", "wb") as f:
        np.savez(f, **payload)
    os.replace(path + ".tmp", path)


def _read_logits(folder: str, index: int) -> dict:
    """{trial name: [logits per set]} of one finished group."""
    path = os.path.join(folder, "logits", f"group_{index:05d}.npz")
    try:
        with np.load(path) as archive:
            names = json.loads(str(archive["names"]))
            arrays = [archive[f"set{i}"] for i in range(len(archive.files) - 1)]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: the logits of a finished group are missing or unreadable ({error}); delete "
                         f"{os.path.join(folder, 'groups', f'group_{index:05d}.json')} to train that group again") from None
    return {n: [a[i] for a in arrays] for i, n in enumerate(names)}
