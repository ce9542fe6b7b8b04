"""grain pipelines: deterministic shuffling, per-process rows, batching, exact iterator state.

Every process reads only its own rows of each global batch, chosen so that the rows of global batch k are
the same, in the same order, whatever the number of processes: a run on 2 hosts sees exactly the batches
of a run on 1.
"""

from __future__ import annotations

import math
from typing import Iterator

import grain
import jax
import numpy as np


class _ProcessRows(grain.MapDataset):
    """Row i of this process = row `(i // local) * global + process * local + i % local` of the parent."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._local = global_batch // process_count
        self._global = global_batch
        self._offset = process_index * self._local
        self._length = len(parent) // global_batch * self._local

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, index: int) -> int:
        batch, row = divmod(index, self._local)
        return batch * self._global + self._offset + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def __str__(self) -> str:
        return f"ProcessRows(offset={self._offset}, local={self._local}, global={self._global})"


def train_dataset(source, global_batch_size: int, seed: int, process_index: int | None = None,
                  process_count: int | None = None, worker_count: int = 0) -> grain.IterDataset:
    """Endless, reshuffled-every-epoch batches of this process's rows (dicts of numpy arrays)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    examples = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    rows = _ProcessRows(examples, global_batch_size, process_index, process_count)
    batches = rows.batch(global_batch_size // process_count, drop_remainder=True).to_iter_dataset()
    if worker_count:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return batches


def eval_batches(source, global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
    """One pass over `source` in order; the last batch is padded and every batch carries a `mask`."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = global_batch_size // process_count
    num_batches = math.ceil(len(source) / global_batch_size)
    for batch in range(num_batches):
        start = batch * global_batch_size + process_index * local
        indices = np.arange(start, start + local)
        rows = [source[int(min(i, len(source) - 1))] for i in indices]
        stacked = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        stacked["mask"] = indices < len(source)
        yield stacked
