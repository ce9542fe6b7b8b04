"""The MER-SEMI pipeline: cross-validated training, self-training rounds and the prior-knowledge vote.

    round 0      every model of `config.model_names`: `cv.draws` hyperparameter draws x `cv.folds` folds
                 on the labelled set (population groups); each model's best draw is a member of the ensemble
    round r > 0  the previous round's ensemble pseudo-labels confident pool samples (`selftrain`); every
                 model's best draw (or, with `self_training.redraw`, every draw again) is retrained on the
                 labelled folds plus all pseudo-labelled samples so far
    vote         the members' pool probabilities (softmax of the fold-averaged logits), each re-expressed
                 from its own training prior to the target prior (`prior.adjust_probs`), then averaged (a
                 soft vote). Each member's probabilities are calibrated first (`vote.calibrate`: temperature and class
                 biases fitted on its out-of-fold logits, which EM needs). The target prior is `vote.prior`: "em" (each member's Saerens et al. EM estimate
                 on the pool; the reported estimate is their mean), "given" (`vote.target_prior`, e.g. a
                 prior probed from a leaderboard as the paper did) or "none" (the plain vote).

The paper found by probing that MER2024's test prior differs from the training prior; an ensemble trained on
the labelled prior under-predicts the classes the pool has more of. Both remedies act on that: pseudo-labels
added class by class (`balance="quota"`) move the training prior towards the pool's, and the vote replaces
the training prior in the posteriors by the pool's.

Reported (`<workdir>/`): `results.json` (each prediction's metrics on the pool where its labels are known,
synthetic data, and every member's out-of-fold metrics on the labelled set; the EM prior against the true
pool prior), `members.csv`, `draws.csv`, `pseudo_labels.csv` (each round's additions per class, and their
accuracy where known), `confusion.png`, `submission.csv` (the whole pool's predictions in the layout of the
challenge's label file: `name,discrete`) and `predictions.npz` (their probabilities).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from typing import Optional

import numpy as np

from jaxemo.systems.agt import cv, data as data_lib, prior, selftrain
from jaxemo.train import metrics as metrics_lib

logger = logging.getLogger(__name__)

CLASSES = data_lib.CLASSES
PRIORS = ("em", "given", "none")


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


CALIBRATIONS = ("bcts", "temperature", "none")


def calibrate(members: list, labels, how: str = "bcts") -> None:
    """Fits each member's calibration on its out-of-fold logits of the labelled set (`prior.fit_calibration`):
    "bcts" (temperature and per-class biases; the probabilities are then calibrated under the labelled set's
    prior), "temperature" (under the member's training prior) or "none"."""
    if how not in CALIBRATIONS:
        raise ValueError(f"vote.calibrate={how!r}; expected one of {CALIBRATIONS}")
    for member in members:
        if how == "none":
            member.scale, member.bias, member.source_prior = 1.0, None, member.train_prior
            continue
        member.scale, bias = prior.fit_calibration(member.oof_logits, labels, bias=how == "bcts")
        member.bias = bias if how == "bcts" else None
        member.source_prior = data_lib.class_prior(labels) if how == "bcts" else member.train_prior


def vote(members: list, how: str = "em", target_prior=None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(soft vote [N_pool, C] of the members' calibrated pool probabilities under the target prior, the target
    prior used or estimated (None for "none"))."""
    if how not in PRIORS:
        raise ValueError(f"vote.prior={how!r}; expected one of {PRIORS}")
    if how == "given" and (target_prior is None or not len(target_prior)):
        raise ValueError("vote.prior='given' needs vote.target_prior (one weight per class)")
    adjusted, priors = [], []
    for member in members:
        probs = member.probs(member.pool_logits)
        source = member.source_prior if member.source_prior is not None else member.train_prior
        if how == "none":
            adjusted.append(probs)
        elif how == "given":
            adjusted.append(prior.adjust_probs(probs, source, target_prior))
        else:
            estimate, probs_em, _ = prior.em_prior(probs, source)
            adjusted.append(probs_em)
            priors.append(estimate)
    target = None if how == "none" else np.mean(priors, 0) if how == "em" else np.asarray(target_prior) / np.sum(target_prior)
    return np.mean(adjusted, 0), target


def scores(predicted, labels) -> dict:
    """Weighted F1 (MER-SEMI's score), accuracy, macro F1, UAR and per-class recall, with the confusion matrix."""
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    confusion = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    out = metrics_lib.classification_metrics(confusion)
    support = confusion.sum(1)
    recall = np.divide(np.diag(confusion), support, out=np.zeros(len(CLASSES)), where=support > 0)
    out.update({f"recall/{name}": float(r) for name, r in zip(CLASSES, recall)})
    out["confusion"] = confusion.tolist()
    return out


def _draws(config, model_index: int, model_config) -> list[dict]:
    return cv.draw_hyperparams(model_config.get("search") or {}, int(config.cv.draws),
                               int(config.seed) * 7919 + model_index)


@dataclasses.dataclass
class Setup:
    """What every round reads: the labelled set, the pool, the folds and each model's hyperparameter draws."""

    labelled: data_lib.MerSet
    pool: Optional[data_lib.MerSet]
    fold_indices: list
    names: tuple
    searches: dict


def setup(config) -> Setup:
    labelled, pool = data_lib.load(config, int(config.seed))
    rounds = int(config.self_training.rounds)
    if pool is None and (rounds or config.vote.prior == "em"):
        raise ValueError(f"{config.data.name} has no unlabelled pool: set self_training.rounds=0 and "
                         f"vote.prior='none' or 'given'")
    logger.info("MER data: %d labelled, %s pool samples; features %s", len(labelled),
                len(pool) if pool is not None else "no", {k: v.shape[1:] for k, v in labelled.features.items()})
    fold_indices = data_lib.folds(len(labelled), int(config.cv.folds), int(config.seed), config.cv.fold_sizes)
    names = tuple(config.model_names)
    missing = [n for n in names if n not in config.models]
    if missing:
        raise ValueError(f"model_names {missing} have no entry in config.models ({sorted(config.models)})")
    searches = {n: _draws(config, i, config.models[n]) for i, n in enumerate(names)}
    return Setup(labelled, pool, fold_indices, names, searches)


def train_round(config, workdir: str, data: Setup, round_index: int, extra, first_round: list, mesh=None) -> list:
    """Every model's member of one round (`extra`: the pseudo-labelled samples so far, or None), calibrated;
    `first_round` is round 0's members (a later round retrains their draws unless `self_training.redraw`)."""
    members = []
    for i, n in enumerate(data.names):
        draws = data.searches[n]
        if round_index > 0 and not config.self_training.get("redraw", False):
            draws = [first_round[i].hyperparams]
        members.append(cv.train_model(config, n, config.models[n], extra, data.labelled, data.pool,
                                      data.fold_indices, draws, round_index,
                                      os.path.join(workdir, f"round{round_index}"), mesh))
        logger.info("round %d, %s: best draw %s, CV weighted F1 %.4f", round_index, n, members[-1].hyperparams,
                    members[-1].cv_weighted_f1)
    calibrate(members, data.labelled.labels, config.vote.get("calibrate", "bcts"))
    return members


def pool_probs(config, members: list) -> np.ndarray:
    """The ensemble's pool probabilities that self-training selects from."""
    return vote(members, "em" if config.self_training.get("adjust_prior", False) else "none")[0]


def run(config, workdir: str, mesh=None) -> dict:
    """The whole pipeline on `config.data` (see the module docstring); returns `results.json`'s content."""
    data = setup(config)
    labelled, pool = data.labelled, data.pool
    st = config.self_training
    rounds = int(st.rounds)
    added = np.zeros(0, np.int64)
    added_labels = np.zeros(0, np.int32)
    rounds_members, pseudo_rows = [], []
    for r in range(rounds + 1):
        extra = pool.take(added, added_labels) if len(added) else None
        members = train_round(config, workdir, data, r, extra, rounds_members[0] if rounds_members else [], mesh)
        rounds_members.append(members)
        if r == rounds:
            break
        available = np.ones(len(pool), bool)
        available[added] = False
        indices, labels = selftrain.select(pool_probs(config, members), available, st.thresholds,
                                           int(st.per_round), st.balance, st.get("threshold_mode", "fixed"))
        pseudo_rows.append(selftrain.round_report(r + 1, indices, labels, pool.true_labels, len(CLASSES), CLASSES))
        logger.info("round %d: %d pseudo-labels added %s", r + 1, len(indices), pseudo_rows[-1])
        added, added_labels = np.concatenate([added, indices]), np.concatenate([added_labels, labels])
    return report(config, workdir, labelled, pool, rounds_members, pseudo_rows)


def report(config, workdir: str, labelled, pool, rounds_members: list, pseudo_rows: list) -> dict:
    os.makedirs(workdir, exist_ok=True)
    members = [m for ms in rounds_members for m in ms]
    results = {"labelled": len(labelled), "pool": None if pool is None else len(pool),
               "members": [], "pool_scores": {}, "pseudo_labels": pseudo_rows}
    for m in members:
        row = {"member": m.name, "model": m.model, "round": m.round, "hyperparams": m.hyperparams,
               "cv_weighted_f1": m.cv_weighted_f1, "cv_accuracy": m.cv_accuracy,
               "oof": {k: v for k, v in scores(m.oof_logits.argmax(1), labelled.labels).items() if k != "confusion"},
               "train_prior": m.train_prior.tolist(), "calibration": {"temperature": 1 / m.scale,
               "bias": None if m.bias is None else m.bias.tolist()}}
        results["members"].append(row)
    known = pool.known if pool is not None else None
    final, final_probs = None, None
    if pool is not None:
        how = config.vote.prior
        target = tuple(config.vote.get("target_prior") or ()) or None
        voters = members if config.vote.get("members", "all") == "all" else rounds_members[-1]
        predictions = {
            "supervised": vote(rounds_members[0], "none")[0],
            "self_trained": vote(rounds_members[-1], "none")[0],
            "vote": vote(voters, "none")[0],
        }
        if how != "none":
            predictions["prior_vote_supervised"], _ = vote(rounds_members[0], how, target)
            predictions["prior_vote"], estimate = vote(voters, how, target)
            results["target_prior"] = {"how": how, "prior": estimate.tolist()}
            if known is not None:
                true = np.bincount(known, minlength=len(CLASSES)) / len(known)
                results["target_prior"].update(true_pool_prior=true.tolist(),
                                               l1_error=float(np.abs(estimate - true).sum()),
                                               max_error=float(np.abs(estimate - true).max()))
        final = "prior_vote" if how != "none" else "vote"
        final_probs = predictions[final]
        results["final"] = final
        if known is not None:
            results["pool_scores"] = {k: scores(v.argmax(1), known) for k, v in predictions.items()}
        write_submission(os.path.join(workdir, "submission.csv"), pool.ids, final_probs.argmax(1))
        np.savez(os.path.join(workdir, "predictions.npz"), ids=np.asarray(pool.ids),
                 **{k: v.astype(np.float32) for k, v in predictions.items()})
    _write_tables(workdir, results, rounds_members, pseudo_rows)
    if final is not None and known is not None:
        confusion, title = results["pool_scores"][final]["confusion"], f"{final} on the pool"
    else:
        last = np.mean([m.probs(m.oof_logits) for m in rounds_members[-1]], 0)
        confusion = scores(last.argmax(1), labelled.labels)["confusion"]
        title = "out-of-fold ensemble on the labelled set"
    plot_confusion(np.asarray(confusion), os.path.join(workdir, "confusion.png"), title)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def _write_tables(workdir: str, results: dict, rounds_members: list, pseudo_rows: list) -> None:
    rows = [{"member": r["member"], "hyperparams": json.dumps(r["hyperparams"]), "cv_weighted_f1": r["cv_weighted_f1"],
             "cv_accuracy": r["cv_accuracy"], **{f"oof_{k}": v for k, v in r["oof"].items()}}
            for r in results["members"]]
    _csv(os.path.join(workdir, "members.csv"), rows)
    draws = [{"model": m.model, "round": m.round, "draw": d["draw"], "hyperparams": json.dumps(d["hyperparams"]),
              "cv_weighted_f1": d["cv_weighted_f1"], "cv_accuracy": d["cv_accuracy"],
              "selected": d["draw"] == m.draw}
             for ms in rounds_members for m in ms for d in m.draws]
    _csv(os.path.join(workdir, "draws.csv"), draws)
    _csv(os.path.join(workdir, "pseudo_labels.csv"), pseudo_rows)


def _csv(path: str, rows: list) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def write_submission(path: str, ids, predicted) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "discrete"])
        for name, c in zip(ids, predicted):
            writer.writerow([name, CLASSES[int(c)]])


def plot_confusion(confusion: np.ndarray, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    support = np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    image = ax.imshow(confusion / support, cmap="Blues", vmin=0, vmax=1)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if confusion[i, j] / support[i, 0] > 0.5 else "black")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="recall")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(results: dict) -> str:
    """The pool scores as a Markdown table (weighted F1, accuracy, macro F1)."""
    lines = ["| prediction | weighted F1 | accuracy | macro F1 |", "|---|---|---|---|"]
    for name, s in results.get("pool_scores", {}).items():
        lines.append(f"| {name} | {s['weighted_f1']:.4f} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} |")
    return "\n".join(lines)
