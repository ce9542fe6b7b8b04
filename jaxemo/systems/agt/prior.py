"""Class priors under label shift: EM estimation on an unlabelled set and posterior reweighting.

Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to new a priori
probabilities": if a classifier's posteriors p_t(y|x) are calibrated under the training prior pi_t and only
the prior changes (p(x|y) fixed), the posteriors under a prior pi are

    p(y|x) = (pi(y) / pi_t(y)) p_t(y|x) / sum_k (pi(k) / pi_t(k)) p_t(k|x)            (`adjust_probs`)

and the prior of an unlabelled set is the fixed point of pi <- mean_x p(y|x), reached by EM from pi = pi_t
(`em_prior`; each step does not decrease the likelihood of the unlabelled set). NumPy, float64.
"""

from __future__ import annotations

import numpy as np


def _prior(value, name: str, num_classes: int | None = None, positive: bool = True) -> np.ndarray:
    prior = np.asarray(value, np.float64)
    if prior.ndim != 1 or (num_classes is not None and prior.shape[0] != num_classes):
        expected = f"[{num_classes}]" if num_classes is not None else "[C]"
        raise ValueError(f"{name} must have shape {expected}, got {prior.shape}")
    if not np.all(np.isfinite(prior)) or np.any(prior < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {prior}")
    if positive and np.any(prior == 0):
        raise ValueError(f"{name} has a zero entry (class {int(np.argmin(prior))}): the ratio to it is undefined")
    if prior.sum() <= 0:
        raise ValueError(f"{name} sums to zero")
    return prior / prior.sum()


def _probs(value, name: str = "probs", ndim: int | None = None) -> np.ndarray:
    probs = np.asarray(value, np.float64)
    if probs.ndim < 1 or (ndim is not None and probs.ndim != ndim):
        raise ValueError(f"{name} must be {'[N, C]' if ndim == 2 else '[..., C]'}, got shape {probs.shape}")
    if probs.size == 0:
        raise ValueError(f"{name} is empty (shape {probs.shape})")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError(f"{name} must be finite and non-negative (probabilities, not logits)")
    return probs


def _reweight(probs: np.ndarray, ratio: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    weighted = probs * ratio
    total = weighted.sum(-1, keepdims=True)
    # A row whose whole mass sits on classes the target prior excludes carries no evidence: the prior itself.
    return np.where(total > 0, weighted / np.where(total > 0, total, 1.0), fallback)


def adjust_probs(probs, train_prior, target_prior) -> np.ndarray:
    """Posteriors `probs` [..., C] calibrated under `train_prior` [C], re-expressed under `target_prior` [C]:
    reweighted by target / train per class, renormalised per row. `target_prior` may have zeros (a class
    ruled out); `train_prior` may not. Both are normalised to sum 1 first."""
    probs = _probs(probs)
    train = _prior(train_prior, "train_prior", probs.shape[-1])
    target = _prior(target_prior, "target_prior", probs.shape[-1], positive=False)
    return _reweight(probs, target / train, target)


def em_prior(probs, train_prior, max_iter: int = 100, tol: float = 1e-6):
    """EM estimate of the class prior of the unlabelled set whose posteriors (under `train_prior`) are `probs`.

    probs        [N, C] posteriors of a classifier calibrated under `train_prior` (rows are renormalised)
    train_prior  [C] the training set's class prior, every entry > 0
    max_iter     at most this many EM steps (>= 1)
    tol          stop when the prior moves by less than this in L1 (>= 0)

    Returns (prior [C], adjusted_probs [N, C] under that prior, iterations run).
    """
    probs = _probs(probs, ndim=2)
    train = _prior(train_prior, "train_prior", probs.shape[1])
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    rows = probs.sum(1, keepdims=True)
    if np.any(rows <= 0):
        raise ValueError(f"probs has {int(np.sum(rows <= 0))} all-zero rows")
    probs = probs / rows
    prior, adjusted = train, probs
    iterations = 0
    for iterations in range(1, int(max_iter) + 1):
        adjusted = _reweight(probs, prior / train, prior)  # E step: posteriors under the current prior
        new = adjusted.mean(0)  # M step: the prior that maximises the likelihood given them
        moved = np.abs(new - prior).sum()
        prior = new
        if moved < tol:
            break
    adjusted = _reweight(probs, prior / train, prior)
    return prior, adjusted, iterations
