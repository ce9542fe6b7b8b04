"""AGT under modality failures: each model's round-0 member scored with one feature failed, out of fold and on
the pool.

AGT's trials live in populations whose params are not kept (each group keeps its logits), so the sweep trains
each model's best round-0 draw on its folds again (`cv.train_variants` with `only_draws`: the same trial
names and seeds, so the same params; the clean point's out-of-fold logits are checked against the member's)
and, as a group finishes, scores its trials under every failure point (`jaxemo.train.robustness`: absent,
Gaussian noise at an SNR, frames dropped for frame-level features; per sample, reproducible from the seed)
with one compiled program: the failure travels in the batch as per-row fields, applied on the device inside
the vmapped logits of every trial of the group.

Per point: the ensemble's out-of-fold weighted F1 on the labelled set (each sample scored by the fold model
that held it out; every model's member, calibrated as round 0, softly voted) and, where the pool's labels are
known (synthetic data), the plain vote's weighted F1 and accuracy on the pool. Written to
`<output>/robustness.{csv,json,png}` as `python -m experiments.robustness` writes a checkpoint's sweep.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from typing import Sequence

import jax
import numpy as np

from jaxemo.systems.agt import cv, semi
from jaxemo.train import optim, robustness


def modalities(labelled) -> tuple:
    """One `robustness.Modality` per feature: utterance vectors [N, D] have no time axis; frame-level
    features [N, T, D] have time on axis 1 and their lengths in `lengths/<name>`."""
    return tuple(robustness.Modality(name, f"features/{name}", 1 if value.ndim == 3 else None,
                                     f"lengths/{name}" if value.ndim == 3 else None)
                 for name, value in labelled.features.items())


def _failing_logits_fn(task, failing: tuple, seed: int):
    def logits(trainable, frozen, batch):
        return task.logits(optim.merge_params(trainable, frozen), robustness.apply_failures(batch, failing, seed))

    return jax.jit(jax.vmap(logits, in_axes=(0, None, None)))


def run(config, workdir: str, output: str, snr_db: Sequence[float] = robustness.DEFAULT_SNR_DB,
        dropout: Sequence[float] = robustness.DEFAULT_DROPOUT, kinds: Sequence[str] = robustness.KINDS,
        seed: int = 0, mesh=None) -> dict:
    """The sweep (see the module docstring): {"rows": one per failure point, "paths", "metric", "seconds"}.
    Round 0 is read back from (or trained into) `workdir` as `semi.run` does; the retraining goes to
    `<output>/retrain/` (started afresh by every call)."""
    data = semi.setup(config)
    first = semi.train_round(config, workdir, data, 0, None, [], mesh)
    failing = modalities(data.labelled)
    points = robustness.failure_grid(failing, [float(s) for s in snr_db], [float(f) for f in dropout], kinds)
    retrain = os.path.join(output, "retrain")
    shutil.rmtree(retrain, ignore_errors=True)
    batch_size = int(config.eval_batch_size)
    sets = {"labelled": data.labelled, **({"pool": data.pool} if data.pool is not None else {})}
    # logits[model][set][point]: [N, C], fold models' out-of-fold rows (labelled) or their mean (pool)
    logits = {n: {s: [None] * len(points) for s in sets} for n in data.names}
    seconds = np.zeros(len(points))
    compiled = {}
    start = time.perf_counter()
    for i, n in enumerate(data.names):
        member = first[i]

        def on_group(task, result, n=n):
            if id(task) not in compiled:  # one program per model shape (the task is kept, so its id stays its)
                compiled[id(task)] = (task, _failing_logits_fn(task, failing, seed))
            fn = compiled[id(task)][1]
            folds = [t.tags["fold"] for t in result.trials]
            for p, point in enumerate(points):
                tick = time.perf_counter()
                for set_name, values in sets.items():
                    out, = cv.trial_logits(fn, result, [values], batch_size,
                                           functools.partial(robustness.failure_fields, point, failing))
                    if set_name == "labelled":
                        oof = logits[n]["labelled"][p]
                        oof = np.zeros(out.shape[1:], np.float32) if oof is None else oof
                        for trial, f in enumerate(folds):
                            oof[data.fold_indices[f]] = out[trial][data.fold_indices[f]]
                        logits[n]["labelled"][p] = oof
                    else:
                        total = logits[n]["pool"][p]
                        logits[n]["pool"][p] = out.sum(0) + (0 if total is None else total)
                seconds[p] += time.perf_counter() - tick

        cv.train_variants(config, n, config.models[n], {"": None}, data.labelled, data.pool, data.fold_indices,
                          data.searches[n], 0, retrain, mesh, only_draws=[member.draw], on_group=on_group)
        clean = logits[n]["labelled"][0]
        if not np.allclose(clean, member.oof_logits, atol=1e-4):
            raise RuntimeError(f"{n}: retraining the best draw did not reproduce round 0's out-of-fold logits "
                               f"(largest difference {np.abs(clean - member.oof_logits).max():.3g}); is {workdir} "
                               f"from another config?")
        if data.pool is not None:
            logits[n]["pool"] = [total / len(data.fold_indices) for total in logits[n]["pool"]]
    rows = []
    known = data.pool.known if data.pool is not None else None
    for p, point in enumerate(points):
        oof = np.mean([m.probs(logits[n]["labelled"][p]) for n, m in zip(data.names, first)], 0)
        row = {"modality": point.modality, "kind": point.kind, "severity": point.severity,
               "oof_weighted_f1": semi.scores(oof.argmax(1), data.labelled.labels)["weighted_f1"]}
        if known is not None:
            pool = np.mean([m.probs(logits[n]["pool"][p]) for n, m in zip(data.names, first)], 0)
            scores = semi.scores(pool.argmax(1), known)
            row.update(pool_weighted_f1=scores["weighted_f1"], pool_accuracy=scores["accuracy"])
        rows.append({**row, "seconds": float(seconds[p])})
    metric = "pool_weighted_f1" if known is not None else "oof_weighted_f1"
    paths = robustness.write_results(rows, output, metric, f"AGT round 0 ({', '.join(data.names)})")
    return {"rows": rows, "paths": paths, "metric": metric, "points": len(points),
            "seconds": time.perf_counter() - start}
