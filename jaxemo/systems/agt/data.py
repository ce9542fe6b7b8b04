"""MER-SEMI data in memory: the labelled set and the unlabelled pool as arrays, folds and pseudo-labelled sets.

Once MERTools' utterance features are extracted the data is small (MER2024: about 5,000 labelled samples and
a pool of about 115,000, 6,912 floats each for the top-1 features), so both splits are read once into host
arrays (`MerSet`) and every trial of every round indexes them: a fold, a fold plus pseudo-labelled pool
samples. `MerSet` is itself a `DataSource` (`len`, `[i]`) of the builder's elements flattened for batching:
`features/<name>` [D] or [T, D], `lengths/<name>` (frame-level features), `label`; it reads whole batches at
once (`reads_batches`), so population trials read their folds without per-example work.

Sources: `config.data.name` = "synthetic_mer" (`jaxemo.data.synthetic_sentiment.make_mer`: a `train` set and
an `unlabeled` pool with a shifted class prior whose hidden labels are kept as `true_labels`) or "mer2024"
(`jaxemo.data.builders.mer2024`, read from `config.data.manual_dir`; the pool's labels are unknown).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from jaxemo.data import sources
from jaxemo.data.builders.base import DataError
from jaxemo.data.builders.mer2024 import CLASSES  # MERTools `emos_mer`, index order
from jaxemo.data.datasource import SourceBase
from jaxemo.systems.agt import frames

logger = logging.getLogger(__name__)



@dataclasses.dataclass
class MerSet(SourceBase):
    """Samples as arrays: `features` {name: [N, D] or [N, T, D]}, `lengths` {name: [N]} (frame-level only),
    `labels` [N] (-1: unknown), `true_labels` [N] or None (the pool's hidden labels, synthetic data only),
    `ids` [N] sample names."""

    reads_batches = True

    features: dict
    labels: np.ndarray
    ids: list
    lengths: dict = dataclasses.field(default_factory=dict)
    true_labels: Optional[np.ndarray] = None

    def __post_init__(self):
        n = len(self.labels)
        for name, value in {**self.features, **{f"lengths/{k}": v for k, v in self.lengths.items()}}.items():
            if len(value) != n:
                raise ValueError(f"MerSet: {name} has {len(value)} rows but labels has {n}")
        if len(self.ids) != n:
            raise ValueError(f"MerSet: {len(self.ids)} ids for {n} samples")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        example = {f"features/{k}": v[index] for k, v in self.features.items()}
        example.update({f"lengths/{k}": v[index] for k, v in self.lengths.items()})
        example["label"] = self.labels[index]
        return example

    def read_batch(self, indices) -> dict:
        """The rows `indices` stacked, as `[i]` gives them one by one (`pipeline.array_batches`)."""
        indices = np.asarray(indices, np.int64)
        batch = {f"features/{k}": v[indices] for k, v in self.features.items()}
        batch.update({f"lengths/{k}": v[indices] for k, v in self.lengths.items()})
        batch["label"] = self.labels[indices]
        return batch

    @property
    def feature_names(self) -> tuple:
        return tuple(self.features)

    @property
    def known(self) -> Optional[np.ndarray]:
        """The labels to score predictions against: `labels` where given, else `true_labels`, else None."""
        if np.all(self.labels >= 0):
            return self.labels
        return self.true_labels

    def take(self, indices, labels=None) -> "MerSet":
        """The samples at `indices` (with `labels` in place of theirs if given: pseudo-labels)."""
        indices = np.asarray(indices, np.int64)
        return MerSet({k: v[indices] for k, v in self.features.items()},
                      np.asarray(self.labels[indices] if labels is None else labels, np.int32),
                      [self.ids[i] for i in indices], {k: v[indices] for k, v in self.lengths.items()},
                      None if self.true_labels is None else self.true_labels[indices])

    def batch(self, start: int, stop: int, size: int) -> dict:
        """Rows [start, stop) as a model batch of exactly `size` rows (zero rows after the end)."""
        def rows(v):
            out = v[start:stop]
            if len(out) < size:
                out = np.concatenate([out, np.zeros((size - len(out), *v.shape[1:]), v.dtype)])
            return out

        batch = {f"features/{k}": rows(v) for k, v in self.features.items()}
        batch.update({f"lengths/{k}": np.maximum(rows(v), 1) for k, v in self.lengths.items()})
        return batch


def concat(a: MerSet, b: MerSet) -> MerSet:
    if a.feature_names != b.feature_names:
        raise ValueError(f"cannot join sets with features {a.feature_names} and {b.feature_names}")
    true = None
    if a.true_labels is not None and b.true_labels is not None:
        true = np.concatenate([a.true_labels, b.true_labels])
    return MerSet({k: np.concatenate([a.features[k], b.features[k]]) for k in a.features},
                  np.concatenate([a.labels, b.labels]).astype(np.int32), list(a.ids) + list(b.ids),
                  {k: np.concatenate([a.lengths[k], b.lengths[k]]) for k in a.lengths}, true)


def class_prior(labels, num_classes: int = len(CLASSES)) -> np.ndarray:
    """Class frequencies of `labels` (every class at least one count: a prior ratio needs no zeros)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    return counts / counts.sum()


def _materialize(source, where: str) -> MerSet:
    """Every element of a random-access source, stacked."""
    n = len(source)
    if n == 0:
        raise DataError(where, "split", "no samples")
    first = source[0]
    names = list(first["features"])
    features = {k: np.empty((n, *np.shape(first["features"][k])), np.float32) for k in names}
    lengths = {k: np.empty(n, np.int32) for k in first.get("lengths", {})}
    labels, true, ids = np.empty(n, np.int32), np.empty(n, np.int32), []
    has_true = "true_label" in first
    for i in range(n):
        example = source[i]
        for k in names:
            value = np.asarray(example["features"][k], np.float32)
            if value.shape != features[k].shape[1:]:
                raise DataError(where, f"features/{k}", f"sample {i} has shape {list(value.shape)}, "
                                f"expected {list(features[k].shape[1:])}")
            if not np.all(np.isfinite(value)):
                raise DataError(where, f"features/{k}", f"sample {i} has NaN or inf")
            features[k][i] = value
        for k in lengths:
            lengths[k][i] = int(example["lengths"][k])
        labels[i] = int(example["label"])
        if has_true:
            true[i] = int(example["true_label"])
        sample_id = example.get("id", f"{where}_{i:06d}")
        ids.append(sample_id.decode() if isinstance(sample_id, bytes) else str(sample_id))
    return MerSet(features, labels, ids, lengths, true if has_true else None)


def load(config, seed: int = 0) -> tuple[MerSet, Optional[MerSet]]:
    """(labelled set, unlabelled pool or None) for `config.data` (see the module docstring), frame-level
    features shrunk and aligned as `config.frames` says (`jaxemo.systems.agt.frames`)."""
    data = config.data
    name = data.name
    labelled = _materialize(sources.make_source(data, "train", seed), f"{name}/train")
    if np.any(labelled.labels < 0) or np.any(labelled.labels >= len(CLASSES)):
        bad = int(np.flatnonzero((labelled.labels < 0) | (labelled.labels >= len(CLASSES)))[0])
        raise DataError(f"{name}/train", "label", f"sample {labelled.ids[bad]!r} has label {labelled.labels[bad]}; "
                        f"expected 0..{len(CLASSES) - 1}")
    try:
        pool = _materialize(sources.make_source(data, "unlabeled", seed), f"{name}/unlabeled")
    except DataError as error:
        if "not in" not in str(error) and "no samples" not in str(error):
            raise
        logger.warning("%s has no unlabelled pool (%s): no self-training, no pool predictions", name, error)
        pool = None
    if pool is not None and pool.feature_names != labelled.feature_names:
        raise DataError(f"{name}/unlabeled", "features", f"features {pool.feature_names} differ from the labelled "
                        f"set's {labelled.feature_names}")
    sets = frames.transform_sets([labelled] + ([pool] if pool is not None else []), config.frames.scale,
                                 config.frames.align)
    return sets[0], sets[1] if pool is not None else None


FOLD_SIZES = ("equal", "reference")


def folds(num_samples: int, num_folds: int, seed: int, sizes: str = "equal") -> list[np.ndarray]:
    """MERTools' 5-fold split: a random permutation cut into `num_folds` validation folds. `sizes="equal"`:
    near-equal folds (1,003 samples: 201, 201, 201, 200, 200); `"reference"`: MERTools' own cut
    (`random_split_indexes`: `int(n / folds)` samples in each fold but the last, which takes the rest: 200 x 4
    and 203)."""
    if not 2 <= num_folds <= num_samples:
        raise ValueError(f"num_folds={num_folds} must be in [2, {num_samples}] (the labelled samples)")
    if sizes not in FOLD_SIZES:
        raise ValueError(f"cv.fold_sizes={sizes!r}: expected one of {FOLD_SIZES}")
    order = np.random.default_rng(seed).permutation(num_samples)
    if sizes == "reference":
        size = num_samples // num_folds
        parts = [order[i * size:(i + 1) * size] for i in range(num_folds - 1)] + [order[(num_folds - 1) * size:]]
    else:
        parts = np.array_split(order, num_folds)
    return [np.sort(part) for part in parts]
