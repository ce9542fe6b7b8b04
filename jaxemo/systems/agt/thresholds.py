"""Pseudo-label threshold sensitivity: one self-training round per setting, every setting in one population.

The paper's deployment advice is to set the pseudo-label thresholds from measured precision and coverage;
its values are unpublished. Here a grid of settings (threshold x per-round budget, by default the config's
`per_round` and none; the config's `threshold_mode` and `balance`) each selects its pseudo-labels from round
0's ensemble (`selftrain.select`) and retrains every model's best round-0 draw on the labelled folds plus
its selection (`cv.train_variants`: settings x folds are the trials of one population per model shape, one
compiled step; a setting's trials have the seeds the pipeline's round 1 would have). Per setting it reports

  * what was selected: the number, the coverage (the share of the pool labelled) and per class the share
    of the samples predicted that class that received a label (label-free);
  * how right it is: the precision of the selection on the pool where its labels are known (synthetic
    data), and, on any data, `oof_precision`: the precision of the same rule (thresholds without the budget)
    on the labelled set's out-of-fold probabilities, a measured estimate under the labelled set's prior;
  * what it bought: the retrained members' cross-validated weighted F1 on the labelled folds, and on the
    pool where known the weighted F1 of their plain vote (`self_trained`) and of the recipe's final vote
    (round 0's and the setting's members under `vote.prior`), beside round 0's (`supervised`).

Written to `<output>/thresholds.csv`, `thresholds.json` and `thresholds.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

from jaxemo.systems.agt import cv, selftrain, semi

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclasses.dataclass(frozen=True)
class Setting:
    threshold: float
    per_round: int  # 0: no budget, every candidate is added

    @property
    def name(self) -> str:
        return f"threshold{self.threshold:g}_per_round{self.per_round or 'all'}"

    def budget(self, pool_size: int, num_classes: int) -> int:
        return self.per_round or pool_size * num_classes  # a class quota of the whole pool


def grid(thresholds: Sequence[float], per_rounds: Sequence[int]) -> list[Setting]:
    settings = [Setting(float(t), int(n)) for n in per_rounds for t in thresholds]
    bad = [s for s in settings if not 0 <= s.threshold <= 1 or s.per_round < 0]
    if bad or not settings:
        raise ValueError(f"thresholds must be probabilities and per-round budgets >= 0: got {bad or 'none'}")
    return settings


def _per_class(values: np.ndarray, classes) -> dict:
    return {name: None if np.isnan(v) else float(v) for name, v in zip(classes, values)}


def selection_row(setting: Setting, probs, oof_probs, labelled_labels, true_labels: Optional[np.ndarray],
                  mode: str, balance: str, classes=semi.CLASSES) -> tuple[dict, np.ndarray, np.ndarray]:
    """(the setting's selection report, pool indices, pseudo-labels) from the pool's and the labelled set's
    out-of-fold ensemble probabilities."""
    num_classes = len(classes)
    probs = np.asarray(probs, np.float64)
    indices, labels = selftrain.select(probs, np.ones(len(probs), bool), setting.threshold,
                                       setting.budget(len(probs), num_classes), balance, mode)
    predicted = probs.argmax(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.bincount(labels, minlength=num_classes) / np.bincount(predicted, minlength=num_classes)
    row = {"setting": setting.name, "threshold": setting.threshold, "per_round": setting.per_round,
           "added": int(len(indices)), "coverage": len(indices) / len(probs),
           "coverage_per_class": _per_class(coverage, classes)}
    if true_labels is not None:
        truth = np.asarray(true_labels)[indices]
        row["precision"] = float((truth == labels).mean()) if len(labels) else None
        row["precision_per_class"] = {name: float((truth[labels == c] == c).mean()) if np.any(labels == c)
                                      else None for c, name in enumerate(classes)}
    oof = np.asarray(oof_probs, np.float64)
    tau = selftrain.class_thresholds(oof, np.ones(len(oof), bool), setting.threshold, mode)
    oof_predicted = oof.argmax(1)
    passed = oof.max(1) >= tau[oof_predicted]
    row["oof_passed"] = float(passed.mean())
    row["oof_precision"] = float((oof_predicted[passed] == np.asarray(labelled_labels)[passed]).mean()) \
        if passed.any() else None
    return row, indices, labels


def run(config, workdir: str, output: str, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        per_rounds: Optional[Sequence[int]] = None, mesh=None) -> dict:
    """The sweep (see the module docstring). Round 0 trains under `<workdir>/round0/` exactly as
    `semi.run` does (after `python -m experiments.agt_mer` with the same config and workdir, it is read back);
    the settings' population under `<output>/`, group by group, so a rerun resumes."""
    st = config.self_training
    settings = grid(thresholds, per_rounds if per_rounds is not None else [int(st.per_round), 0])
    mode, balance = st.get("threshold_mode", "fixed"), st.balance
    data = semi.setup(config)
    if data.pool is None:
        raise ValueError(f"{config.data.name} has no unlabelled pool to pseudo-label")
    first = semi.train_round(config, workdir, data, 0, None, [], mesh)
    probs = semi.pool_probs(config, first)
    oof_probs = np.mean([m.probs(m.oof_logits) for m in first], 0)
    rows, extras = [], {}
    for setting in settings:
        row, indices, labels = selection_row(setting, probs, oof_probs, data.labelled.labels,
                                             data.pool.true_labels, mode, balance)
        rows.append(row)
        extras[setting.name] = data.pool.take(indices, labels) if len(indices) else None
    by_setting = {s.name: [] for s in settings}
    for i, n in enumerate(data.names):
        members = cv.train_variants(config, n, config.models[n], extras, data.labelled, data.pool,
                                    data.fold_indices, [first[i].hyperparams], 1, output, mesh)
        for name, member in members.items():
            by_setting[name].append(member)
    known = data.pool.known
    how = config.vote.prior
    target = tuple(config.vote.get("target_prior") or ()) or None
    supervised = {"cv_weighted_f1": float(np.mean([m.cv_weighted_f1 for m in first]))}
    if known is not None:
        supervised["pool_weighted_f1"] = semi.scores(semi.vote(first, "none")[0].argmax(1), known)["weighted_f1"]
        supervised["pool_final_weighted_f1"] = semi.scores(semi.vote(first, how, target)[0].argmax(1),
                                                           known)["weighted_f1"]
    for row, setting in zip(rows, settings):
        members = by_setting[setting.name]
        semi.calibrate(members, data.labelled.labels, config.vote.get("calibrate", "bcts"))
        row["cv_weighted_f1"] = float(np.mean([m.cv_weighted_f1 for m in members]))
        if known is not None:
            voters = first + members if config.vote.get("members", "all") == "all" else members
            row["pool_weighted_f1"] = semi.scores(semi.vote(members, "none")[0].argmax(1), known)["weighted_f1"]
            row["pool_final_weighted_f1"] = semi.scores(semi.vote(voters, how, target)[0].argmax(1),
                                                        known)["weighted_f1"]
    results = {"threshold_mode": mode, "balance": balance, "vote_prior": how, "pool": len(data.pool),
               "labelled": len(data.labelled), "supervised": supervised, "settings": rows,
               "members": [m.model for m in first]}
    write_results(results, output)
    return results


def write_results(results: dict, output: str) -> dict:
    os.makedirs(output, exist_ok=True)
    paths = {k: os.path.join(output, f"thresholds.{k}") for k in ("csv", "json", "png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1)
    flat = []
    for row in results["settings"]:
        out = {k: v for k, v in row.items() if not isinstance(v, dict)}
        for key in ("coverage_per_class", "precision_per_class"):
            out.update({f"{key.split('_')[0]}/{c}": v for c, v in (row.get(key) or {}).items()})
        flat.append(out)
    columns = list(dict.fromkeys(k for row in flat for k in row))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(flat)
    plot(results, paths["png"])
    return paths


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["settings"]
    budgets = sorted({r["per_round"] for r in rows})
    shown = 0 if 0 in budgets else budgets[-1]  # coverage per class where the threshold alone decides
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for budget in budgets:
        mine = sorted((r for r in rows if r["per_round"] == budget), key=lambda r: r["threshold"])
        x = [r["threshold"] for r in mine]
        suffix = f" (budget {budget or 'none'})" if len(budgets) > 1 else ""
        if "precision" in mine[0]:
            axes[0].plot(x, [r["precision"] for r in mine], "o-", label="pool" + suffix)
        if budget == shown:  # the rule without its budget: the same for every budget
            axes[0].plot(x, [r["oof_precision"] for r in mine], "s--", color="black",
                         label="labelled set, out of fold")
            for c in mine[0]["coverage_per_class"]:
                axes[1].plot(x, [r["coverage_per_class"][c] for r in mine], "o-", label=c)
        if "pool_weighted_f1" in mine[0]:
            axes[2].plot(x, [r["pool_final_weighted_f1"] for r in mine], "o-", label="final vote" + suffix)
            axes[2].plot(x, [r["pool_weighted_f1"] for r in mine], "s--", label="self-trained" + suffix)
        else:
            axes[2].plot(x, [r["cv_weighted_f1"] for r in mine], "o-", label="CV on the labelled set" + suffix)
    supervised = results["supervised"]
    if "pool_weighted_f1" in supervised:
        axes[2].axhline(supervised["pool_final_weighted_f1"], color="grey", linestyle=":",
                        label="round 0, final vote")
        axes[2].axhline(supervised["pool_weighted_f1"], color="grey", linestyle="-.", label="round 0, plain vote")
    else:
        axes[2].axhline(supervised["cv_weighted_f1"], color="grey", linestyle=":", label="round 0")
    titles = ("pseudo-label precision", f"coverage per predicted class (budget {shown or 'none'})",
              "weighted F1")
    for ax, title in zip(axes, titles):
        ax.set_xlabel(f"threshold ({results['threshold_mode']})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
