"""Iterative self-training: confident pool samples become pseudo-labelled training samples, round by round.

The paper (abstract only) trains on "high-confidence unlabeled samples as pseudo-labels" iteratively; its
thresholds, round count and per-round budget are unpublished. Here (every choice a config field of
`self_training`):

  * a round's ensemble (the soft vote of every model's best draw, fold-averaged) scores the remaining pool;
    with `adjust_prior` its probabilities are first re-expressed under the pool's EM prior (`prior.em_prior`);
  * a sample is a candidate for class c if c is its arg-max and its probability reaches the class's
    threshold. `threshold_mode="fixed"`: `thresholds` itself (one number for every class, or one per class:
    another MER2024-SEMI team used 0.99 for neutral, angry, happy and sad and 0.85 for worried and surprise).
    `"adaptive"` (FlexMatch's class-wise thresholds, Zhang et al. 2021): T_c = tau_c * b_c / (2 - b_c) with
    b_c = s_c / max_k s_k, s_c the number of samples predicted c with probability >= tau_c: a class the
    model rarely predicts confidently (under a shifted prior: the classes the labelled set has few of) gets a
    lower threshold, so it still receives pseudo-labels;
  * `balance="quota"` keeps the classes balanced: each class adds at most `per_round / C` of its most
    confident candidates (a class with fewer candidates adds fewer: its quota is not passed on), so the
    added set does not amplify the model's bias towards the labelled set's majority classes;
    `balance="none"` adds the `per_round` most confident candidates whatever their class;
  * added samples keep their pseudo-label in later rounds and leave the candidate pool; validation folds stay
    labelled-only, so model selection never scores against pseudo-labels.
"""

from __future__ import annotations

import numpy as np

BALANCES = ("quota", "none")
MODES = ("fixed", "adaptive")


def thresholds_for(value, num_classes: int) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, np.float64))
    if values.size == 1:
        values = np.full(num_classes, float(values[0]))
    if values.shape != (num_classes,) or np.any(values < 0) or np.any(values > 1):
        raise ValueError(f"self_training.thresholds must be one probability or {num_classes}, got {value}")
    return values


def class_thresholds(probs, available, thresholds, mode: str = "fixed") -> np.ndarray:
    """The per-class thresholds [C] of a round (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"self_training.threshold_mode={mode!r}; expected one of {MODES}")
    probs = np.asarray(probs, np.float64)
    num_classes = probs.shape[1]
    tau = thresholds_for(thresholds, num_classes)
    if mode == "fixed":
        return tau
    predicted, confidence = probs.argmax(1), probs.max(1)
    mask = np.asarray(available, bool)
    learned = np.asarray([np.sum(mask & (predicted == c) & (confidence >= tau[c])) for c in range(num_classes)],
                         np.float64)
    beta = learned / max(learned.max(), 1.0)
    return tau * beta / (2.0 - beta)


def select(probs, available, thresholds, per_round: int, balance: str = "quota",
           mode: str = "fixed") -> tuple[np.ndarray, np.ndarray]:
    """(indices into the pool, pseudo-labels) of this round's additions. `probs` [N, C] the pool's class
    probabilities, `available` [N] bool: samples not yet added."""
    if balance not in BALANCES:
        raise ValueError(f"self_training.balance={balance!r}; expected one of {BALANCES}")
    probs = np.asarray(probs, np.float64)
    num_classes = probs.shape[1]
    thresholds = class_thresholds(probs, available, thresholds, mode)
    predicted, confidence = probs.argmax(1), probs.max(1)
    candidate = np.asarray(available, bool) & (confidence >= thresholds[predicted])
    chosen = []
    if balance == "quota":
        quota = int(per_round) // num_classes
        for c in range(num_classes):
            indices = np.flatnonzero(candidate & (predicted == c))
            chosen.append(indices[np.argsort(-confidence[indices], kind="stable")[:quota]])
    else:
        indices = np.flatnonzero(candidate)
        chosen.append(indices[np.argsort(-confidence[indices], kind="stable")[:int(per_round)]])
    indices = np.sort(np.concatenate(chosen)).astype(np.int64)
    return indices, predicted[indices].astype(np.int32)


def round_report(round_index: int, indices, labels, true_labels, num_classes: int, class_names) -> dict:
    """Counts per class of a round's pseudo-labels and, where the true labels are known, their accuracy."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    row = {"round": round_index, "added": int(len(labels)),
           **{f"count/{name}": int(c) for name, c in zip(class_names, counts)}}
    if true_labels is not None and len(labels):
        truth = np.asarray(true_labels)[np.asarray(indices)]
        row["accuracy"] = float((truth == labels).mean())
        for c, name in enumerate(class_names):
            mine = labels == c
            row[f"precision/{name}"] = float((truth[mine] == c).mean()) if mine.any() else None
    return row
