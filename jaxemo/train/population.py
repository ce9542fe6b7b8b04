"""Population training: many independent runs of one task as one compiled program.

A population is N trials of one task and config that differ in seed, data (each has its own train,
validation and test sources: a fold, a speaker's few-shot set) and injected optimizer hyperparameters
(`optim.INJECTED`: the peak learning rate, AdamW's weight decay). Trials run in groups of equal size; a group
is one `jax.jit` of a `jax.vmap` of the trainer's own train step (`step.make_train_step`) over a leading
`trials` axis of the trainable params, optimizer state, step counters and rng. The frozen params are shared
by every trial (broadcast into the vmap, never copied per trial), and every group reuses the one compiled
step. `trials` is a logical axis of the sharding rules (`sharding.DEFAULT_RULES`: all mesh axes), so the
trials of a group spread over the devices and a trial's params, batches and updates stay on one device.

Each trial does what `loop.train_and_evaluate` does for one run with `config.seed = trial.seed` and the
trial's hyperparameters: the same initialisation, batches (`pipeline.train_dataset(trial.train, batch_size,
trial.seed)`), rng, schedule, evaluation points and best tracking (`early_stopping.BestTracker`, one entry per
trial). A trial that stops early (or whose loss stays non-finite for `max_consecutive_nonfinite` steps) no
longer changes: its update is masked out. Its best params, by its own validation metric, stay on the device.
Validation is one vmapped evaluation of every trial on its own source.

A trial's sources are `DataSource`s (`jaxemo.data.datasource`); the population converts the ones it is given
once (`as_data_source`: a third-party random-access object gets the default capabilities; one that declares
only some capabilities is refused, naming the missing ones). A training source that orders itself and reads
whole batches cheaply (`orders_itself`, `reads_batches`, e.g. an `EpochShuffled` `MerSet`) is read a batch at
a time (`pipeline.array_batches`) when the task keeps fields without a transform: the same batches as grain's.

Trials of a population share the schedule, so their (total steps, steps per epoch) must agree: equal-sized
training sets, or `config.total_steps` and `config.steps_per_epoch` set.

Group size: `config.population.group_size`, or (0) the most trials whose compiled step fits
`config.population.memory_fraction` of the device memory, from XLA's memory estimate of the step compiled for
one trial per device; rounded to a multiple of the devices the trials are spread over. A last group with fewer
trials is filled with inactive copies, so every group has the same shape.

Results: one row per trial (its tags and hyperparameters, best step and value, early-stopping step, status,
steps run, and the metrics of its selected params, the best ones if `best.metric` is set, on its validation
and test sources) in `<workdir>/trials.csv` and `trials.json`. A finished group's rows are kept in
`<workdir>/groups/`, so a rerun of a killed population starts at the first unfinished group.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxemo import layers
from jaxemo.data import pipeline
from jaxemo.data.datasource import DataSource, as_data_source
from jaxemo.train import early_stopping, loop, optim, sharding, state as state_lib, step as step_lib, tasks

logger = logging.getLogger(__name__)

STATUSES = ("completed", "early_stopped", "nonfinite")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of a population: its seed, its data and the injected hyperparameters that differ from the
    config's (e.g. {"learning_rate": 3e-5}); `tags` (fold, speaker, k, ...) are copied into its results row."""

    name: str
    seed: int
    train: DataSource  # or any random-access object (len, [i]): `Population` adapts it
    eval: Optional[DataSource] = None
    test: Optional[DataSource] = None
    hyperparams: Mapping[str, float] = dataclasses.field(default_factory=dict)
    tags: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GroupResult:
    """What one group leaves: its trials (fillers excluded), their results rows, and on the device their final
    trainable params and selected (best, or final) trainable params with a leading trials axis, and the
    shared frozen params. Row i, and index i of the arrays, is `trials[i]`."""

    index: int
    trials: list
    rows: list
    trainable: Any = None
    selected: Any = None
    frozen: Any = None


def _per_trial_axes(template: state_lib.TrainState) -> state_lib.TrainState:
    """vmap axes of a population state: everything has a leading trials axis except the shared frozen params."""
    return template.replace(step=0, trainable=0, frozen=None, opt_state=0, rng=0, nonfinite_steps=0,
                            nonfinite_streak=0)


def _where_trials(mask, new, old):
    """Per trial: `new` where mask[i], else `old` (trees with a leading trials axis)."""
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o), new, old)


def _host(tree):
    """Host numpy copies of (possibly several processes') arrays; each process gets every trial's values."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def _with_data_sources(trials: Sequence[Trial]) -> list[Trial]:
    """The trials with their sources as `DataSource`s (`as_data_source`), converted once each: trials that
    share a source still share it (a group reads each eval source once)."""
    converted: dict[int, DataSource] = {}

    def convert(source, what: str):
        if source is None:
            return None
        if id(source) not in converted:
            converted[id(source)] = as_data_source(source, what)
        return converted[id(source)]

    return [dataclasses.replace(t, train=convert(t.train, f"trial {t.name!r} train"),
                                eval=convert(t.eval, f"trial {t.name!r} eval"),
                                test=convert(t.test, f"trial {t.name!r} test")) for t in trials]


def _stack(rows: Sequence[dict]) -> dict:
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


class Population:
    """Trains `trials` of `task` under `config` (see the module docstring); `run(workdir)` does it all.

    `init_params(params) -> params` (host numpy trees, as the trainer's) replaces the initial params, e.g. with
    a pretrained encoder: it is called once, on the first trial's initial params. Every leaf it returns changed
    is given to every trial; a leaf it returns unchanged keeps each trial's own initialisation (a new head
    drawn from the trial's seed). The frozen params are shared: `init_params`' (or the first trial's).
    """

    def __init__(self, config, task: tasks.Task, trials: Sequence[Trial], mesh=None,
                 init_params: Optional[Callable] = None):
        if not trials:
            raise ValueError("a population needs at least one trial")
        names = [t.name for t in trials]
        if len(set(names)) != len(names):
            raise ValueError(f"trial names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
        self.config, self.task, self.init_params = config, task, init_params
        self.trials = trials = _with_data_sources(trials)
        self.mesh = mesh if mesh is not None else sharding.make_mesh(dict(config.mesh))
        self.rules = sharding.rules_from_config(config)
        self.total_steps, self.steps_per_epoch = self._shared_schedule()
        self.optimizer = optim.make_optimizer(config.optimizer, self.total_steps, self.steps_per_epoch)
        unknown = sorted({k for t in trials for k in t.hyperparams} - set(self.optimizer.tx.init({}).hyperparams))
        if unknown:
            raise ValueError(f"trial hyperparameters {unknown} are not injected into optimizer "
                             f"{config.optimizer.name!r} (it injects {sorted(self.optimizer.tx.init({}).hyperparams)})")
        self.accum = int(config.optimizer.get("grad_accum_steps", 1))
        if config.batch_size % self.accum:
            raise ValueError(f"batch_size={config.batch_size} does not split into grad_accum_steps={self.accum}")
        self.best = early_stopping.BestConfig.from_config(config)
        self.has_eval = all(t.eval is not None for t in trials)
        if self.best.enabled and not self.has_eval:
            missing = [t.name for t in trials if t.eval is None][:5]
            raise ValueError(f"best.metric={self.best.metric!r} needs every trial's eval source; missing for {missing}")
        self.eval_every = loop.eval_every_steps(config, self.steps_per_epoch)
        self.frozen_dtype = layers.dtype_from_name(config.get("frozen_dtype", "float32"))
        self.example = loop.example_batch(task, trials[0].train)
        self.trial_axes = sharding.logical_to_spec(("trials",), (0,), self.mesh, self.rules)[0]
        self.trial_devices = sharding.spec_devices(P(self.trial_axes), self.mesh)
        self._init = state_lib.init_fn(task, self.optimizer.tx, self.example, self.frozen_dtype)
        template = nn.unbox(jax.eval_shape(self._init, jax.random.key(0)))
        self.axes = _per_trial_axes(template)
        self.trial_sharding = NamedSharding(self.mesh, P(self.trial_axes))
        self.replicated = NamedSharding(self.mesh, P())
        trial, shared = self.trial_sharding, self.replicated
        self.state_shardings = template.replace(step=trial, trainable=trial, frozen=shared, opt_state=trial,
                                                rng=trial, nonfinite_steps=trial, nonfinite_streak=trial)
        self._step = jax.jit(self._population_step, donate_argnums=(0,),
                             in_shardings=(self.state_shardings, self.trial_sharding, self.trial_sharding),
                             out_shardings=(self.state_shardings, self.trial_sharding))
        self._eval = jax.jit(self._population_eval, out_shardings=self.trial_sharding)
        self._keep = jax.jit(_where_trials, donate_argnums=(2,))
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # one program, not one per leaf shape
        unboxed = lambda seed: nn.unbox(self._init(jax.random.key(seed)))
        self._init_trials = jax.jit(jax.vmap(lambda seed: unboxed(seed).replace(frozen={})),
                                    out_shardings=self.state_shardings)
        self._init_frozen = jax.jit(lambda seed: unboxed(seed).frozen, out_shardings=self.replicated)
        self._set_hyperparams = jax.jit(lambda opt_state, values: optim.with_hyperparams(opt_state, **values),
                                        out_shardings=self.trial_sharding)
        self.group_size = self._group_size()
        # Each trial reads its own small source every step: by default in the calling thread (grain's
        # prefetch threads, one pool per trial, cost more than they save for hundreds of trials).
        threads = int((config.get("population") or {}).get("read_threads") or 0)
        self.read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)

    # ---------------------------------------------------------------------------------------- set-up

    def _shared_schedule(self) -> tuple[int, int]:
        schedules = {t.name: loop.total_steps(self.config, len(t.train)) for t in self.trials}
        distinct = sorted(set(schedules.values()))
        if len(distinct) > 1:
            examples = {s: next(n for n, v in schedules.items() if v == s) for s in distinct}
            raise ValueError(
                f"the trials' (total steps, steps per epoch) differ: {examples} (one trial each); trials share "
                f"one schedule, so give them equal-sized training sets or set config.total_steps and "
                f"config.steps_per_epoch")
        return distinct[0]

    def _group_size(self) -> int:
        population = self.config.get("population") or {}
        wanted = int(population.get("group_size") or 0)
        n = len(self.trials)
        if not wanted:
            wanted = self._group_size_from_memory(float(population.get("memory_fraction") or 0.7))
        wanted = max(1, min(wanted, n))
        groups = -(-n // wanted)
        size = -(-n // groups)  # as even as possible, then a multiple of the devices the trials spread over
        return -(-size // self.trial_devices) * self.trial_devices

    def _group_size_from_memory(self, fraction: float) -> int:
        """Trials per group from XLA's estimate of the step compiled for one trial per device."""
        probe = self.trial_devices
        compiled = self._step.lower(*self._abstract_step_args(probe)).compile()
        stats = compiled.memory_analysis()
        if stats is None:
            logger.warning("no memory estimate on this backend; one trial per device per group")
            return probe
        step_bytes = (stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
                      - stats.alias_size_in_bytes)
        frozen = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self._abstract_frozen()))
        trainable = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self._abstract_trial().trainable))
        per_trial = max(step_bytes - frozen, 1) + trainable  # + the best params kept beside the state
        budget = fraction * _device_memory_bytes(self.mesh.devices.flat[0], self.mesh.size)
        per_device = int((budget - frozen) // per_trial)
        logger.info("population: about %.1f MB per trial and %.1f MB shared per device; %d trial(s) per device "
                    "fit %.0f%% of %.1f GB", per_trial / 2**20, frozen / 2**20, max(per_device, 1),
                    100 * fraction, budget / fraction / 2**30)
        return max(per_device, 1) * self.trial_devices

    def _abstract_trial(self):
        return nn.unbox(jax.eval_shape(self._init, jax.random.key(0)))

    def _abstract_frozen(self):
        return self._abstract_trial().frozen

    def _abstract_step_args(self, size: int):
        trial = self._abstract_trial()
        batched = lambda x: jax.ShapeDtypeStruct((size, *x.shape), x.dtype, sharding=self.trial_sharding)
        per_trial = jax.tree.map(batched, trial.replace(frozen={}))
        frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), trial.frozen)
        batch = {k: jax.ShapeDtypeStruct((size, self.config.batch_size, *v.shape[1:]), v.dtype,
                                         sharding=self.trial_sharding) for k, v in self.example.items()}
        active = jax.ShapeDtypeStruct((size,), jnp.bool_, sharding=self.trial_sharding)
        return per_trial.replace(frozen=frozen), batch, active

    # ---------------------------------------------------------------------------------------- compiled parts

    def _population_step(self, state, batch, active):
        train_step = step_lib.make_train_step(self.task, self.optimizer, self.accum)
        new, metrics = jax.vmap(train_step, in_axes=(self.axes, 0), out_axes=(self.axes, 0))(state, batch)
        kept = {f: _where_trials(active, getattr(new, f), getattr(state, f))
                for f in ("step", "trainable", "opt_state", "rng", "nonfinite_steps", "nonfinite_streak")}
        return new.replace(**kept), metrics

    def _population_eval(self, trainable, frozen, batch):
        stats = lambda t, b: self.task.eval_stats(optim.merge_params(t, frozen), b)
        return jax.vmap(stats)(trainable, batch)

    # ---------------------------------------------------------------------------------------- one group

    def _local_trials(self, size: int) -> list[int]:
        """The trials of a group whose shards live on this process's devices."""
        indices = self.trial_sharding.addressable_devices_indices_map((size,)).values()
        return sorted({i for index in indices for i in range(size)[index[0]]})

    def _global(self, local: dict, size: int) -> dict:
        return {k: jax.make_array_from_process_local_data(self.trial_sharding, v, (size, *v.shape[1:]))
                for k, v in local.items()}

    def _initial_state(self, trials: list[Trial]):
        size = len(trials)
        seeds = jnp.asarray([t.seed for t in trials], jnp.uint32)
        per_trial, frozen = self._init_trials(seeds), self._init_frozen(seeds[0])
        trainable = per_trial.trainable
        if self.init_params is not None:
            trainable, frozen = self._load_initial_params(trainable, frozen, size)
        defaults = self._config_hyperparams()
        hyperparams = {name: np.asarray([t.hyperparams.get(name, defaults[name]) for t in trials], np.float32)
                       for name in sorted({k for t in trials for k in t.hyperparams})}
        opt_state = self._set_hyperparams(per_trial.opt_state, hyperparams)
        state = per_trial.replace(trainable=trainable, frozen=frozen, opt_state=opt_state)
        return jax.device_put(state, self.state_shardings)  # numpy leaves (from init_params) become global

    def _load_initial_params(self, trainable, frozen, size: int):
        first = jax.tree.map(lambda x: np.array(x[0]), _host(trainable))
        template = optim.merge_params(first, jax.tree.map(np.array, _host(frozen)))
        loaded = traverse_util.flatten_dict(self.init_params(template))
        flat_template = traverse_util.flatten_dict(template)
        missing = sorted("/".join(k) for k in set(flat_template) - set(loaded))
        if missing:
            raise ValueError(f"init_params dropped the parameters {missing[:10]}")
        changed = {k for k, v in loaded.items()
                   if not (v is flat_template[k] or np.array_equal(np.asarray(v), flat_template[k]))}
        flat_trainable = traverse_util.flatten_dict(trainable)
        for key in flat_trainable:
            if key in changed:
                value = np.asarray(loaded[key], flat_trainable[key].dtype)
                flat_trainable[key] = np.broadcast_to(value, (size, *value.shape))
        frozen = {k: np.asarray(loaded[k], self.frozen_dtype) for k in traverse_util.flatten_dict(frozen)}
        return traverse_util.unflatten_dict(flat_trainable), traverse_util.unflatten_dict(frozen)

    def _eval_batches(self, trials: list[Trial], sources: list, local: list[int]) -> list[dict]:
        """Every local trial's eval batches, stacked over trials: [trials, batch, ...] per step; sources are
        read once each (trials may share one) and trials with fewer batches get fully masked ones."""
        cache = {}
        for i in local:
            source = sources[i]
            if id(source) not in cache:
                cache[id(source)] = list(pipeline.eval_batches(
                    source, self.config.eval_batch_size, process_index=0, process_count=1,
                    transform=self.task.host_transform(False), pad_spec=self.task.pad_spec,
                    read_options=self.read_options))
        per_trial = [cache[id(sources[i])] for i in local]
        count = max(len(b) for b in per_trial)
        padded = [b + [{**b[-1], "mask": np.zeros_like(b[-1]["mask"])}] * (count - len(b)) for b in per_trial]
        return [_stack([p[j] for p in padded]) for j in range(count)]

    def _evaluate(self, trainable, frozen, batches: list[dict], size: int) -> list[dict]:
        """Summed eval statistics of every trial of the group (host), one dict per trial."""
        totals = None
        for batch in batches:
            stats = self._eval(trainable, frozen, self._global(batch, size))
            totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
        totals = _host(totals)
        return [jax.tree.map(lambda x: x[i], totals) for i in range(size)]

    def _train_iterator(self, trial: Trial):
        """A trial's training batches: whole batches from a source that reads them at once (its own order, a
        transform that only keeps fields), else grain's per-example pipeline; the same batches either way."""
        transform = self.task.host_transform(True)
        if (trial.train.orders_itself and trial.train.reads_batches
                and isinstance(transform, tasks.HostTransform) and transform.transform is None
                and self.task.pad_spec is None and not self.config.get("data_workers", 0)):
            return pipeline.array_batches(trial.train, self.config.batch_size, transform.keys)
        return iter(pipeline.train_dataset(
            trial.train, self.config.batch_size, trial.seed, process_index=0, process_count=1,
            worker_count=self.config.get("data_workers", 0), transform=transform,
            pad_spec=self.task.pad_spec, read_options=self.read_options))

    def run_group(self, index: int, trials: list[Trial]) -> GroupResult:
        """Trains one group (`trials`, at most `group_size`; filled up with inactive copies of the last)."""
        real = len(trials)
        size = self.group_size
        group = trials + [trials[-1]] * (size - real)
        local = self._local_trials(size)
        state = self._initial_state(group)
        frozen = state.frozen
        iterators = {i: self._train_iterator(group[i]) for i in local}
        eval_batches = self._eval_batches(group, [t.eval for t in group], local) if self.has_eval else None
        tracker = early_stopping.BestTracker(self.best, size)
        active = np.arange(size) < real
        nonfinite = np.zeros(size, bool)
        selected = self._copy(state.trainable) if self.best.enabled else None
        eval_rows: list = [None] * size
        last_batch: dict = {}
        max_streak = int(self.config.get("max_consecutive_nonfinite", 10))
        for step in range(1, self.total_steps + 1):
            if not active.any():
                break
            for i in local:
                if active[i] or i not in last_batch:
                    last_batch[i] = next(iterators[i])
            batch = self._global(_stack([last_batch[i] for i in local]), size)
            state, metrics = self._step(state, batch, jax.device_put(active.copy(), self.trial_sharding))
            if step % self.config.log_every_steps == 0 or step == self.total_steps:
                streak = _host(state.nonfinite_streak)
                diverged = active & (streak >= max_streak)
                if diverged.any():
                    logger.warning("group %d: trials %s stopped at step %d after %d non-finite steps in a row",
                                   index, [group[i].name for i in np.flatnonzero(diverged)], step, max_streak)
                nonfinite = nonfinite | diverged
                active = active & ~diverged
                loss = _host(metrics["loss"])
                logger.info("group %d, step %d/%d: %d trials active, mean loss %.4f", index, step,
                            self.total_steps, int(active.sum()), float(loss[active].mean()) if active.any() else 0)
            if self.has_eval and loop.is_eval_step(step, self.eval_every, self.total_steps):
                rows = [self.task.summarize(s) for s in self._evaluate(state.trainable, frozen, eval_batches, size)]
                evaluated = active.copy()
                if self.best.enabled:
                    improved = tracker.update(step, tracker.values(rows), evaluated)
                    selected = self._keep(jnp.asarray(improved.copy()), state.trainable, selected)
                    active = active & ~tracker.stopped
                    eval_rows = [rows[i] if improved[i] else eval_rows[i] for i in range(size)]
                else:
                    eval_rows = [rows[i] if evaluated[i] else eval_rows[i] for i in range(size)]
        if selected is None:
            selected = state.trainable
        test_rows = [None] * size
        if all(t.test is not None for t in group):
            test_batches = self._eval_batches(group, [t.test for t in group], local)
            test_rows = [self.task.summarize(s) for s in self._evaluate(selected, frozen, test_batches, size)]
        steps_run = _host(state.step)
        rows = [self._row(group[i], tracker, i, int(steps_run[i]), nonfinite[i], eval_rows[i], test_rows[i])
                for i in range(real)]
        return GroupResult(index, trials, rows, state.trainable, selected, frozen)

    def _row(self, trial: Trial, tracker, i: int, steps_run: int, nonfinite: bool, eval_metrics, test_metrics):
        stopped = int(tracker.stopped_step[i])
        status = "nonfinite" if nonfinite else "early_stopped" if stopped >= 0 else "completed"
        hyperparams = {k: float(trial.hyperparams.get(k, v)) for k, v in self._config_hyperparams().items()}
        row = {"trial": trial.name, "seed": int(trial.seed), **dict(trial.tags), **hyperparams, "status": status,
               "steps_run": steps_run, "stopped_step": stopped if stopped >= 0 else None}
        if self.best.enabled:
            record = tracker.record(i)
            row.update(best_step=record["step"] if record else None,
                       best_value=record["value"] if record else None, best_metric=self.best.metric)
        row.update({f"eval/{k}": _scalar(v) for k, v in (eval_metrics or {}).items()})
        row.update({f"test/{k}": _scalar(v) for k, v in (test_metrics or {}).items()})
        return row

    def _config_hyperparams(self) -> dict:
        return {k: float(v) for k, v in self.optimizer.tx.init({}).hyperparams.items()}

    # ---------------------------------------------------------------------------------------- all groups

    def groups(self) -> list[list[Trial]]:
        size = self.group_size
        return [self.trials[i:i + size] for i in range(0, len(self.trials), size)]

    def run(self, workdir: Optional[str] = None, on_group: Optional[Callable[[GroupResult], None]] = None) -> list:
        """Trains every group and returns the rows of all trials (in trial order). With `workdir`, finished
        groups are written to `<workdir>/groups/` and skipped by a rerun, and the table to `trials.csv` /
        `trials.json`. `on_group(result)` sees each group's result (with its params) as it finishes."""
        groups = self.groups()
        logger.info("population: %d trials in %d group(s) of %d (trials over %d device(s)), %d steps each",
                    len(self.trials), len(groups), self.group_size, self.trial_devices, self.total_steps)
        rows = []
        for index, trials in enumerate(groups):
            done = _read_group(workdir, index, trials)
            if done is None:
                result = self.run_group(index, trials)
                if on_group is not None:
                    on_group(result)
                done = result.rows
                _write_group(workdir, index, done)
            else:
                logger.info("group %d: finished in an earlier run (%s)", index, _group_path(workdir, index))
            rows.extend(done)
            if workdir:
                write_table(rows, workdir)
        return rows


def _scalar(value):
    array = np.asarray(value)
    return float(array) if array.ndim == 0 else array.tolist()


def _group_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, "groups", f"group_{index:05d}.json")


def _read_group(workdir: Optional[str], index: int, trials: list[Trial]) -> Optional[list]:
    if not workdir or not os.path.exists(_group_path(workdir, index)):
        return None
    path = _group_path(workdir, index)
    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
    except (OSError, ValueError, KeyError) as error:
        logger.warning("%s is unreadable (%s); running group %d again", path, error, index)
        return None
    if [r["trial"] for r in rows] != [t.name for t in trials]:
        raise ValueError(f"{path} holds the trials {[r['trial'] for r in rows][:5]}..., but group {index} is now "
                         f"{[t.name for t in trials][:5]}...: the population or its group size changed; use a new "
                         f"workdir")
    return rows


def _write_group(workdir: Optional[str], index: int, rows: list) -> None:
    if not workdir or jax.process_index() != 0:
        return
    path = _group_path(workdir, index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)


def write_table(rows: list[dict], workdir: str) -> None:
    """`trials.json` and `trials.csv` (columns: the union of the rows' keys, in first-seen order)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "trials.json"), "w") as f:
        json.dump(rows, f, indent=1)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(os.path.join(workdir, "trials.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})


def _device_memory_bytes(device, num_devices: int) -> float:
    """Memory one device may use: its allocator limit on an accelerator; on the CPU, the host's available
    memory shared by all simulated devices."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"])
    available = _host_available_bytes()
    return available / max(1, len([d for d in jax.local_devices() if d.platform == "cpu"]))


def _host_available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def trials_per_hour(num_trials: int, seconds: float) -> float:
    return 3600.0 * num_trials / seconds if seconds > 0 else math.inf
