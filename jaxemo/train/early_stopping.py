"""Tracking the best evaluation and stopping early, for one run or for many at once.

`BestTracker` holds, for each of `num_runs` runs, the best value of `metric` seen at an evaluation, its step,
how many evaluations in a row brought no improvement, and the step at which the run stopped. The trainer uses
it with one run, population training with one per trial: the rule is the same code.

The rule is transformers' `Trainer` with its `EarlyStoppingCallback`: an evaluation is the new best when it is
strictly better than the best so far in the direction of `mode` (the first evaluation always is); it resets
the patience count only when it is better by more than `min_delta`. A run stops once `patience` evaluations in
a row have not beaten the best by more than `min_delta` (`patience=0`: never). So `min_delta` decides only when
to stop: a small improvement still becomes the best (the checkpoint `load_best_model_at_end` restores), as in
the released Speech-PreFinetuning run. A NaN metric never improves.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import numpy as np

MODES = ("max", "min")


@dataclasses.dataclass(frozen=True)
class BestConfig:
    metric: str = ""  # "" = no tracking: no best params, no early stopping
    mode: str = "max"
    min_delta: float = 0.0
    patience: int = 0

    @classmethod
    def from_config(cls, config) -> "BestConfig":
        """From `config.best` (a ConfigDict or mapping with the fields above; missing ones default)."""
        best = config.get("best") or {}
        made = cls(**{f.name: best[f.name] for f in dataclasses.fields(cls) if best.get(f.name) is not None})
        if made.mode not in MODES:
            raise ValueError(f"best.mode={made.mode!r}: expected 'max' or 'min'")
        if made.patience and not made.metric:
            raise ValueError(f"best.patience={made.patience} needs best.metric, the evaluation metric to watch")
        return made

    @property
    def enabled(self) -> bool:
        return bool(self.metric)


class BestTracker:
    """The best-so-far and early-stopping state of `num_runs` runs (numpy arrays of that length)."""

    def __init__(self, config: BestConfig, num_runs: int = 1):
        self.config = config
        self.best_value = np.full(num_runs, np.nan)
        self.best_step = np.full(num_runs, -1, np.int64)
        self.bad_evals = np.zeros(num_runs, np.int64)
        self.stopped_step = np.full(num_runs, -1, np.int64)

    @property
    def stopped(self) -> np.ndarray:
        return self.stopped_step >= 0

    def values(self, metrics: Mapping[str, float] | list) -> np.ndarray:
        """The watched metric of each run from its metrics dict (one dict, or a list of one per run)."""
        rows = [metrics] if isinstance(metrics, Mapping) else list(metrics)
        name = self.config.metric
        missing = [i for i, m in enumerate(rows) if name not in m]
        if missing:
            raise KeyError(f"best.metric={name!r} is not among the eval metrics {sorted(rows[missing[0]])}")
        return np.asarray([float(m[name]) for m in rows])

    def update(self, step: int, values, evaluated: Optional[np.ndarray] = None) -> np.ndarray:
        """Records an evaluation at `step` of the runs where `evaluated` (default all, never stopped ones);
        returns which of them have a new best (strictly better: `min_delta` plays no part). The patience count
        of a run resets only on an improvement larger than `min_delta`; runs reaching `patience` get
        `stopped_step = step`."""
        values = np.broadcast_to(np.asarray(values, np.float64), self.best_value.shape)
        evaluated = np.ones(self.best_value.shape, bool) if evaluated is None else np.asarray(evaluated, bool)
        evaluated = evaluated & ~self.stopped
        sign = 1.0 if self.config.mode == "max" else -1.0
        first = np.isnan(self.best_value)
        with np.errstate(invalid="ignore"):
            better = sign * (values - self.best_value) > 0
            far_enough = np.abs(values - self.best_value) > self.config.min_delta
        valid = evaluated & ~np.isnan(values)
        improved = valid & (first | better)
        patient = valid & (first | (better & far_enough))  # measured against the best before this evaluation
        self.best_value = np.where(improved, values, self.best_value)
        self.best_step = np.where(improved, step, self.best_step)
        self.bad_evals = np.where(patient, 0, np.where(evaluated, self.bad_evals + 1, self.bad_evals))
        if self.config.patience:
            newly = evaluated & (self.bad_evals >= self.config.patience)
            self.stopped_step = np.where(newly, step, self.stopped_step)
        return improved

    def state_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("best_value", "best_step", "bad_evals", "stopped_step")}

    def load_state_dict(self, state: Mapping) -> None:
        for key, dtype in (("best_value", np.float64), ("best_step", np.int64), ("bad_evals", np.int64),
                           ("stopped_step", np.int64)):
            value = np.asarray(state[key], dtype)
            if value.shape != self.best_value.shape:
                raise ValueError(f"early-stopping state {key} has shape {value.shape}, expected "
                                 f"{self.best_value.shape}")
            setattr(self, key, value)

    def record(self, run: int = 0) -> Optional[dict]:
        """{"step", "metric", "value"} of a run's best evaluation, or None before the first one."""
        if self.best_step[run] < 0:
            return None
        return {"step": int(self.best_step[run]), "metric": self.config.metric, "value": float(self.best_value[run])}
