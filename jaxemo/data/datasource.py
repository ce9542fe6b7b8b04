"""The data-source contract: what the input pipeline, the trainer and population training read from a source.

A source is random access over examples, `len(source)` and `source[i] -> {field: numpy array}`, plus three
capabilities that every `DataSource` declares (it never lacks one, so no caller probes for it):

    orders_itself   whether the pipeline reads it in index order (True: it shuffles itself, e.g. whole batches
                    of one corpus, or a new order every epoch) or reshuffles it every epoch (False)
    reads_batches   whether `read_batch(positions)` is much cheaper than reading the rows one by one (arrays
                    in memory); `read_batch` itself always works
    row_index       per-row fields known without reading the examples ({"label": [n], "speaker": [n]} of a
                    speech corpus, to draw per-speaker few-shot sets without decoding audio), or None

`SourceBase` gives every capability its default (False, False, None; `read_batch` stacks `[i]`); every source
jaxemo makes inherits it and sets only what it changes. Third-party random-access objects (TFDS / grain
array_record data sources, a list of examples) become sources through `as_data_source`, which wraps them in
`RandomAccessSource` with the defaults. The pipeline (`jaxemo.data.pipeline`), the trainer
(`jaxemo.train.loop`) and population training (`jaxemo.train.population`) call it once on every source they
are given; `jaxemo.train.tasks` re-exports `DataSource` beside `Task`.

This module imports nothing of jaxemo: the builders, the pipeline and the training code all build on it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Optional, Protocol, runtime_checkable

import numpy as np

CAPABILITIES = ("orders_itself", "reads_batches", "read_batch", "row_index")
RANDOM_ACCESS = ("__len__", "__getitem__")


@runtime_checkable
class DataSource(Protocol):
    """What the pipeline, the trainer and population training read from a source:

    len(source) -> int                       the number of examples
    source[i] -> {field: numpy array}        example i, 0 <= i < len(source)
    orders_itself: bool                      True: `pipeline.train_dataset` reads rows 0, 1, 2, ... (the source
                                             orders itself); False: it reshuffles the rows every epoch
    reads_batches: bool                      True: `read_batch` is much cheaper than len(positions) reads of
                                             `[i]`, so population training reads whole batches of a source that
                                             also orders itself (`pipeline.array_batches`)
    read_batch(positions) -> {field: [n, ...]}
                                             the rows at `positions` stacked, exactly as stacking `source[p]`
    row_index: {field: [len]} or None        per-row fields known without reading examples (speech corpora:
                                             `label`, `speaker`; `jaxemo.systems.speech_ser.corpora`), or None

    `SourceBase` gives the defaults of the last four; `as_data_source` adapts third-party objects.
    """

    orders_itself: bool
    reads_batches: bool
    row_index: Optional[Mapping[str, np.ndarray]]

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> dict: ...

    @abc.abstractmethod
    def read_batch(self, positions: Sequence[int]) -> dict: ...


def stack_examples(rows: Sequence[dict]) -> dict:
    """Stacks a list of examples (dicts of arrays) into a batch; names the field whose shapes differ."""
    keys = list(rows[0])
    out = {}
    for key in keys:
        values = [np.asarray(r[key]) for r in rows]
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            raise ValueError(f"field {key!r} has shapes {sorted(shapes)} within one batch; give it a fixed "
                             f"length with pad_spec={{{key!r}: <length>}} or a transform")
        out[key] = np.stack(values)
    return out


class SourceBase(DataSource):
    """The defaults of `DataSource`'s capabilities: a source in no particular order (reshuffled by the
    pipeline), read row by row, without a row index. Subclasses write `__len__` and `__getitem__` (instantiating
    one without them fails, naming them) and override the capabilities they have."""

    orders_itself: bool = False
    reads_batches: bool = False
    row_index: Optional[Mapping[str, np.ndarray]] = None

    def read_batch(self, positions: Sequence[int]) -> dict:
        return stack_examples([self[int(p)] for p in positions])


class RandomAccessSource(SourceBase):
    """A `DataSource` over a third-party random-access object (`len`, `[i]`): a TFDS or grain array_record
    data source, a list of examples. Reads are forwarded; the capabilities are `SourceBase`'s defaults."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    def __repr__(self) -> str:
        return f"RandomAccessSource({type(self.rows).__name__}, {len(self)} rows)"


def as_data_source(source, what: str = "source") -> DataSource:
    """`source` itself if it is a `DataSource`, else a random-access object wrapped in `RandomAccessSource`.

    An object that declares some of the capabilities but not all is refused rather than wrapped (the wrapper
    would silently replace what it declares, e.g. its own order, by the defaults), as is one without `len` or
    `[i]`; the error names the missing members. `what` names the source in the error (e.g. "trial 't3' train").
    """
    if isinstance(source, SourceBase):  # checked first: the protocol check would evaluate properties
        return source
    if isinstance(source, DataSource):
        return source
    members = set(dir(source))
    missing = [name for name in RANDOM_ACCESS if name not in members]
    if missing:
        raise TypeError(f"{what} ({type(source).__name__}) is not a data source: it has no {', '.join(missing)} "
                        f"(a source is random access: len(source) and source[i] -> dict of arrays)")
    declared = [name for name in CAPABILITIES if name in members]
    if not declared:
        return RandomAccessSource(source)
    missing = [name for name in CAPABILITIES if name not in members]
    problem = (f"has no {', '.join(missing)}" if missing
               else "has every member, but read_batch, __len__ or __getitem__ is not a method")
    raise TypeError(f"{what} ({type(source).__name__}) declares {', '.join(declared)} but {problem}: a DataSource "
                    f"has every capability (inherit jaxemo.data.datasource.SourceBase for the defaults)")
