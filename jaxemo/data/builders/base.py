"""What every dataset builder shares: the TFDS base class, row-order shards, errors, manual_dir checks.

Builders are TFDS `ShardBasedBuilder`s (through `ManualShardBuilder` below) that read a licensed corpus from
the folder the user provides (`manual_dir`), in the layout the reference code reads, and write
`array_record` files. They must build and read without TensorFlow: use `tfds.features.Tensor`,
`ClassLabel`, `Text` and `Scalar`-like tensors, never `tfds.features.Image` / `Audio` (TF is needed to
encode those), and never a `GeneratorBasedBuilder` (see `ManualShardBuilder`: it cannot write a split over
1 GB without TF).

Order: a `ShardBasedBuilder` writes the shards in the order `_shard_iterators_per_split` lists them and each
shard's examples in the order its generator yields them, so the stored order IS the generation order: row i
of a stored split is the i-th example generated, and `as_data_source(split)[i]` returns it. Builders whose
indices matter (folds, CASP's pseudo-label indices) also pass `disable_shuffling=True` to
`tfds.core.DatasetInfo(...)`; that is recorded in `dataset_info.json` and keeps `as_dataset` (tf.data) from
interleaving files. It must be the `DatasetInfo` argument: a `disable_shuffling` class attribute on the
builder is ignored by TFDS.

Virtual splits: a builder whose examples belong to several splits (cross-validation folds) stores each
example once and overrides `virtual_splits(self) -> {name: (stored_split, indices)}` (`ManualShardBuilder`'s
has none), usually from `self.info.metadata` written at build time (indices into the stored split, stable by
the order above). `builders.data_source(name, "fold1_train", ...)` then returns a `Subset` of the stored split.

Features known only after reading the files (sentiment pickles' sequence lengths, MER2024's feature dims):
`_info` declares them from `restored_features(self)` when the dataset is already built, else from the
config; the build reads the files and calls `replace_features(self, features)` before the shards are
written.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from jaxemo.data.datasource import SourceBase, as_data_source

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


class Subset(SourceBase):
    """Random-access view of some rows of a source (e.g. one fold of clips stored once)."""

    def __init__(self, source, indices, name: str = ""):
        self.source = as_data_source(source, "Subset's source")
        self.indices, self.name = [int(i) for i in indices], name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[self.indices[index]]

    def __repr__(self) -> str:
        return f"Subset({self.name or 'rows'}: {len(self)} of {len(self.source)})"


def ordered_map(fn: Callable, items: Iterable, threads: int, window: int | None = None) -> Iterator:
    """`map(fn, items)` on `threads` threads, results in input order, at most `window` (default 2 x threads)
    results in flight. For decoding (PIL, wav reading and resampling release the GIL)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    window = max(1, window or 2 * threads)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---------------------------------------------------------------------------------------------------------
# Shards in row order


def shard_rows(row_bytes: int | Sequence[int], shard_bytes: int, num_rows: int | None = None) -> list[range]:
    """Consecutive row ranges, in order, each holding at most `shard_bytes` of (estimated) example bytes.

    `row_bytes` is each row's size, or one size for every row (then `num_rows` says how many). A row larger
    than `shard_bytes` gets a shard of its own (every shard has at least one row); no rows, no shards.
    """
    if isinstance(row_bytes, int):
        if num_rows is None:
            raise ValueError("shard_rows: give num_rows with a single row size")
        per_shard = max(1, shard_bytes // max(1, row_bytes))
        return [range(start, min(start + per_shard, num_rows)) for start in range(0, num_rows, per_shard)]
    shards, start, total = [], 0, 0
    for row, size in enumerate(row_bytes):
        if row > start and total + size > shard_bytes:
            shards.append(range(start, row))
            start, total = row, 0
        total += size
    if start < len(row_bytes):
        shards.append(range(start, len(row_bytes)))
    return shards


class ManualShardBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
    """Base of every builder here: a `ShardBasedBuilder` with size-capped shards written in row order.

    Why not `GeneratorBasedBuilder`: it passes every split through TFDS's Shuffler, which keeps up to 1 GB in
    memory and then spills to bucket files through `tf.io.gfile`, i.e. TensorFlow; without TF it cannot write
    a split over 1 GB (DFEW and MAFW are ~135 GB at 224 px, ESD's train split ~3 GB, EmoSet ~23 GB, CMU-MOSEI
    `unaligned_50` ~8 GB of float32 features). A ShardBasedBuilder streams each shard, in the order given,
    straight to its array_record file. TFDS's shard writer keeps a shard's examples in memory until the shard
    is written (`itertools.tee` to count them), so shards hold at most `SHARD_BYTES` of estimated example
    bytes: build them with `self.shard_generators(...)`.

    Subclasses implement `_info` and `_shard_iterators_per_split(dl_manager) -> {split: shard generators}`.
    A split with no examples cannot be written (TFDS cannot read a split with no shard): leave it out with
    `self.non_empty(...)`, which logs it.
    """

    SHARD_BYTES: int = 512 << 20

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """The builder's source file, as TFDS's own fallback (`inspect.getfile`) finds it.

        TFDS 4.9.10 resolves the code path of a builder defined in a package through
        `etils.epath.resource_path` and then tests `isinstance(path, importlib_resources.abc.Traversable)`,
        which imports the optional `importlib_resources` package (not installed here), so
        `download_and_prepare` fails. Defined once here for every builder."""
        return epath.Path(inspect.getfile(cls))

    def shard_generators(self, rows: Sequence, row_bytes: int | Sequence[int],
                         generate: Callable[[Sequence], Iterator]) -> list[Callable[[], Iterator]]:
        """`[generate(rows[a:b]), ...]` (as zero-argument callables) for consecutive runs of `rows` of at most
        `SHARD_BYTES` each; `row_bytes` per row, or one estimate for every row. `rows` may be a list of
        items or a `range` of row numbers (a slice of a range is a range)."""
        ranges = shard_rows(row_bytes, self.SHARD_BYTES, len(rows))
        return [functools.partial(generate, rows[r.start:r.stop]) for r in ranges]

    def virtual_splits(self) -> dict[str, tuple[str, list[int]]]:
        """{split name: (stored split, indices into it)} of the splits read as `Subset`s of a stored one
        (see the module docstring); none unless a builder stores examples shared by several splits."""
        return {}

    def non_empty(self, shards: dict[str, list]) -> dict[str, list]:
        """The splits that have shards; an empty split is left out and logged (TFDS cannot read it)."""
        for split, generators in shards.items():
            if not generators:
                logger.warning("%s: split %s is empty and is not written", self.name, split)
        return {split: generators for split, generators in shards.items() if generators}


# ---------------------------------------------------------------------------------------------------------
# Features whose shapes are only known from the files: declared from the config until the build has read
# the files, then replaced before any example is written; a built dataset restores them from features.json.


def restored_features(builder) -> tfds.features.FeaturesDict | None:
    """The features a previous build wrote next to the data (static shapes, names), or None."""
    path = os.path.join(os.fspath(builder.data_path), "features.json")
    if os.path.isfile(path):
        return tfds.features.FeatureConnector.from_config(os.fspath(builder.data_path))
    return None


def replace_features(builder, features: tfds.features.FeaturesDict) -> None:
    """Sets the features that the shard writer and `features.json` use. TFDS 4.9 keeps them in
    `info._features` (no public setter); `ShardBasedBuilder._download_and_prepare` hands `info.features` to
    its split writer before calling `_shard_iterators_per_split`, so call this in an overridden
    `_download_and_prepare` before `super()._download_and_prepare(...)`."""
    builder.info._features = features  # covered by the build-and-read tests
