"""One entry point for experiments: `make_sources(config.data, seed)` -> (train source, eval source).

`config.data.name` is either a synthetic generator (no files needed; every experiment's default) or a TFDS
builder from `jaxemo.data.builders.REGISTRY`, read from `config.data.manual_dir`.

Every source made here is a `DataSource` (`jaxemo.data.datasource`): random access (`len`, `[i]` -> dict of
numpy arrays) with the capabilities `orders_itself`, `reads_batches` / `read_batch` and `row_index` always
declared. jaxemo's sources inherit `SourceBase` (the defaults); builders' TFDS sources come wrapped
(`builders.data_source`). `ConcatSource` and `EpochShuffled` are views over other sources.
"""

from __future__ import annotations

import importlib

import numpy as np

from jaxemo.data import builders
from jaxemo.data.datasource import DataSource, SourceBase, as_data_source

# name -> "module:function"; each function is `make(data_config, split, seed) -> random-access source`.
SYNTHETIC = {
    "synthetic_images": "jaxemo.data.synthetic:make_images",
    "synthetic_av_clips": "jaxemo.data.synthetic_av:make",
    "synthetic_sentiment": "jaxemo.data.synthetic_sentiment:make_sentiment",
    "synthetic_mer": "jaxemo.data.synthetic_sentiment:make_mer",
    "synthetic_speech": "jaxemo.data.synthetic_speech:make",
    "synthetic_scenes": "jaxemo.data.synthetic_scenes:make",
}


class ConcatSource(SourceBase):
    """Random access over several sources in order (`len`, `[i]`), e.g. EmoSet's train and val splits."""

    def __init__(self, parts):
        self.parts = [as_data_source(p, "ConcatSource part") for p in parts]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]


class EpochShuffled(SourceBase):
    """`epochs` passes over a small source, each in its own random order (NumPy, from (seed, epoch)), read in
    this order by the pipeline (`orders_itself`). For the many tiny training sets of a population: grain's
    index shuffle costs milliseconds per element, more than a few-shot trial's step. Reads whole batches as
    cheaply as the wrapped source does (`reads_batches`)."""

    orders_itself = True

    def __init__(self, source, seed: int, epochs: int):
        self.source = as_data_source(source, "EpochShuffled's source")
        self.seed, self.epochs, self.size = int(seed), max(int(epochs), 1), len(self.source)
        if not self.size:
            raise ValueError("EpochShuffled: the source is empty")
        self.reads_batches = self.source.reads_batches
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.epochs * self.size

    def _index(self, index: int) -> int:
        epoch, position = divmod(int(index), self.size)
        order = self._orders.get(epoch)
        if order is None:
            order = self._orders[epoch] = np.random.default_rng((self.seed, epoch)).permutation(self.size)
        return int(order[position])

    def __getitem__(self, index: int):
        return self.source[self._index(index)]

    def read_batch(self, positions) -> dict:
        return self.source.read_batch(np.asarray([self._index(p) for p in positions]))


def make_source(data_config, split: str, seed: int) -> DataSource:
    """One split's source: synthetic splits are generated; builder splits are read (and built once).
    `"train+val"` is the concatenation of both splits."""
    if "+" in split:
        return ConcatSource(make_source(data_config, part, seed) for part in split.split("+"))
    name = data_config.name
    if name in SYNTHETIC:
        module, function = SYNTHETIC[name].split(":")
        return getattr(importlib.import_module(module), function)(data_config, split, seed)
    if name in builders.REGISTRY:
        return builders.data_source(name, split, manual_dir=data_config.get("manual_dir") or None,
                                    config=data_config.get("builder_config") or None,
                                    data_dir=data_config.get("data_dir") or None)
    raise ValueError(f"data.name={name!r} is unknown; expected a synthetic generator {sorted(SYNTHETIC)} or a "
                     f"dataset builder {sorted(builders.REGISTRY)}")


def make_sources(data_config, seed: int):
    train = make_source(data_config, data_config.get("train_split", "train"), seed)
    eval_split = data_config.get("eval_split", "test")
    return train, (make_source(data_config, eval_split, seed) if eval_split else None)
