"""Timing many small trainings: a population's vmapped groups against the same trials one at a time.

Both sides run the trainer's jitted train step (the population vmaps it) and include reading the data and
evaluating; each first runs once untimed (the first group, the first trial), so compilation is excluded from
the timed seconds and `compile_s` is the warm-up's time minus a timed run's. Used by
`benchmarks.population`, `benchmarks.fewshot` and `benchmarks.agt_pipeline`.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax

from jaxemo.data import pipeline
from jaxemo.train import early_stopping, loop, optim, population, sharding, state as state_lib


def time_population(config, task, trials) -> dict:
    """All groups timed, after an untimed warm-up run of the first group (which compiles the step and the
    evaluation); compile s = the warm-up's time minus a timed group's."""
    pop = population.Population(config, task, trials, mesh=sharding.make_mesh({"data": 1},
                                                                              devices=jax.devices()[:1]))
    groups = pop.groups()
    start = time.perf_counter()
    pop.run_group(0, groups[0])
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = [row for index, group in enumerate(groups) for row in pop.run_group(index, group).rows]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "compile_s": max(0.0, warm_s - seconds / len(groups)), "rows": rows,
            "group_size": pop.group_size, "groups": len(groups), "steps": sum(r["steps_run"] for r in rows)}


class _OneAtATime:
    """The trials in a loop: the trainer's jitted step and the evaluator's eval step, each compiled once."""

    def __init__(self, config, task, example_source):
        self.config, self.task = config, task
        self.mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
        self.total, steps_per_epoch = loop.total_steps(config, len(example_source))
        self.example = loop.example_batch(task, example_source)
        self.setup = loop.setup_train_step(config, task, self.example, self.mesh, self.total, steps_per_epoch)
        self.best = early_stopping.BestConfig.from_config(config)
        self.every = loop.eval_every_steps(config, steps_per_epoch)
        self.eval_step = None
        init = state_lib.init_fn(task, self.setup.tx, self.example, self.setup.frozen_dtype)
        self.init = jax.jit(lambda key: nn.unbox(init(key)), out_shardings=self.setup.shardings)

    def __call__(self, trial) -> dict:
        config, task, setup = self.config, self.task, self.setup
        state = self.init(jax.random.key(trial.seed))
        state = state.replace(opt_state=optim.with_hyperparams(state.opt_state, **trial.hyperparams))
        evaluator = loop.Evaluator(config, task, trial.eval, self.mesh, setup.shardings.params)
        if self.eval_step is None:
            self.eval_step = evaluator.eval_step
        evaluator.eval_step = self.eval_step  # one compiled eval step for every trial
        iterator = iter(pipeline.train_dataset(trial.train, config.batch_size, trial.seed,
                                               transform=task.host_transform(True), pad_spec=task.pad_spec))
        tracker = early_stopping.BestTracker(self.best)
        for step in range(1, self.total + 1):
            state, _ = setup.train_step(state, sharding.shard_batch(next(iterator), self.mesh))
            if loop.is_eval_step(step, self.every, self.total):
                tracker.update(step, tracker.values(task.summarize(evaluator.stats(state.params))))
                if tracker.stopped[0]:
                    break
        jax.block_until_ready(state)
        return {"trial": trial.name, "steps_run": int(state.step), "best_value": float(tracker.best_value[0])}


def time_one_at_a_time(config, task, trials) -> dict:
    """The trials timed one after another, after an untimed warm-up run of the first (which compiles)."""
    run = _OneAtATime(config, task, trials[0].train)
    start = time.perf_counter()
    run(trials[0])
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = [run(trial) for trial in trials]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "compile_s": max(0.0, warm_s - seconds / len(trials)), "rows": rows,
            "steps": sum(r["steps_run"] for r in rows)}
