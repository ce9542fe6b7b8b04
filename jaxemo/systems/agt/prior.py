"""Class priors under label shift: EM estimation on an unlabelled set and posterior reweighting.

Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to new a priori
probabilities": if a classifier's posteriors p_t(y|x) are calibrated under the training prior pi_t and only
the prior changes (p(x|y) fixed), the posteriors under a prior pi are

    p(y|x) = (pi(y) / pi_t(y)) p_t(y|x) / sum_k (pi(k) / pi_t(k)) p_t(k|x)            (`adjust_probs`)

and the prior of an unlabelled set is the fixed point of pi <- mean_x p(y|x), reached by EM from pi = pi_t
(`em_prior`; each step does not decrease the likelihood of the unlabelled set). EM needs calibrated
posteriors: an over-confident network's drive the estimate to the extremes, so `fit_calibration` fits a
temperature (and per-class biases) on held-out logits first. NumPy, float64.
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


def fit_calibration(logits, labels, bias: bool = True) -> tuple[float, np.ndarray]:
    """(scale a, bias b [C]) minimising the NLL of softmax(a * logits + b) on held-out `labels`: temperature
    scaling (T = 1/a; `bias=False`) or its bias-corrected form (BCTS), which Alexandari, Kundaje & Shrikumar
    (ICML 2020) found the calibration that makes EM label-shift estimation work. The NLL is convex in (a, b):
    L-BFGS from (1, 0) finds its minimum."""
    import scipy.optimize

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or not len(y):
        raise ValueError(f"calibration needs logits [N, C] and labels [N], got {z.shape} and {y.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("calibration logits contain NaN or inf")
    n, c = z.shape
    onehot = np.eye(c)[y]

    def nll(theta):
        a, b = theta[0], theta[1:] if bias else np.zeros(c)
        s = a * z + b
        s = s - s.max(1, keepdims=True)
        p = np.exp(s)
        total = p.sum(1, keepdims=True)
        p /= total
        value = float(np.mean(np.log(total[:, 0]) - (s * onehot).sum(1)))
        grad_a = float(np.mean(((p - onehot) * z).sum(1)))
        grad = [grad_a] + (list((p - onehot).mean(0)) if bias else [])
        return value, np.asarray(grad)

    start = np.concatenate([[1.0], np.zeros(c)]) if bias else np.asarray([1.0])
    result = scipy.optimize.minimize(nll, start, jac=True, method="L-BFGS-B",
                                     bounds=[(1e-3, None)] + [(None, None)] * (c if bias else 0))
    a = float(result.x[0])
    b = np.asarray(result.x[1:], np.float64) if bias else np.zeros(c)
    return a, b - b.mean()
