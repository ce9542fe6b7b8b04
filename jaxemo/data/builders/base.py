"""What every dataset builder shares: errors that name the file and the field, and manual_dir checks.

Builders are TFDS `GeneratorBasedBuilder`s that read a licensed corpus from the folder the user provides
(`manual_dir`), in the layout the reference code reads, and write `array_record` files. They must build and
read without TensorFlow: use `tfds.features.Tensor`, `ClassLabel`, `Text` and `Scalar`-like tensors, never
`tfds.features.Image` / `Audio` (TF is needed to encode those).

Virtual splits: a builder whose examples belong to several splits (cross-validation folds) stores each
example once and defines `virtual_splits(self) -> {name: (stored_split, indices)}`, usually from
`self.info.metadata` written at build time with `disable_shuffling = True` so that indices are stable.
`builders.data_source(name, "fold1_train")` then returns a `Subset` of the stored split.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A problem with one file of a dataset: `DataError(path, field, problem)`."""

    def __init__(self, path: Any, field: str, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{path}: {field}: {problem}")


def require_dir(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DataError(path, what, "directory not found")
    return path


def require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, what, "file not found")
    return path


class FallbackCounter:
    """Counts documented fallbacks (e.g. MAFW clips without audio) and reports them once a split is built."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, kind: str, example_id: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(example_id)

    def report(self, split: str) -> dict:
        for kind, count in self.counts.items():
            logger.warning("%s/%s: %d examples used the fallback '%s' (e.g. %s)", self.dataset, split, count,
                           kind, ", ".join(self.examples[kind]))
        return dict(self.counts)


class Subset:
    """Random-access view of some rows of a source (e.g. one fold of clips stored once)."""

    def __init__(self, source, indices, name: str = ""):
        self.source, self.indices, self.name = source, [int(i) for i in indices], name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[self.indices[index]]

    def __repr__(self) -> str:
        return f"Subset({self.name or 'rows'}: {len(self)} of {len(self.source)})"
