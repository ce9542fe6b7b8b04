"""grain pipelines: deterministic shuffling, per-process rows, per-example transforms, padding, batching,
exact iterator state.

Every process reads only its own rows of each global batch, chosen so that the rows of global batch k are
the same, in the same order, whatever the number of processes: a run on 2 hosts sees exactly the batches
of a run on 1.

Per-example transforms (`transform(example, rng) -> example`, e.g. `jaxemo.data.video.sample_clip`) run in
the map stage with a numpy Generator that depends only on (seed, position of the example in the endless
shuffled stream) - grain's `random_map`, a Philox generator keyed by the seed with the position in its
counter. So random crops and frame choices are the same for any process count and worker count, and a run
resumed from a saved iterator state sees exactly the batches it would have seen.

Iterators (`BatchIterator`) save `{"next_index": k}`, the index of the next batch; everything up to batching
is random access, so `set_state` restarts grain at batch k and a run may resume with another worker count
or process count and still see the same batches.

Variable-length fields are padded or cropped to a fixed length on axis 0 (`pad_spec={"waveform": 48000}`)
in the map stage, which adds `waveform_mask` (bool [L], True on real entries) and `waveform_length`
(int32, the number of real entries); batching then stacks static shapes.

Sources are `DataSource`s (`jaxemo.data.datasource`): `len` and `[i]` returning a dict of numpy arrays, and
the capabilities the pipeline asks about (`orders_itself`: read in index order instead of reshuffled;
`reads_batches` / `read_batch`: whole batches at once, `array_batches`). Each pipeline converts the source it
is given once (`as_data_source`): jaxemo's sources pass as they are, a third-party random-access object (a TFDS
array_record source, a list of examples) gets the default capabilities.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np
from absl import flags

from jaxemo.data.datasource import DataSource, SourceBase, as_data_source, stack_examples

Transform = Callable[[dict, np.random.Generator], dict]

# grain's default (16 threads, 500 elements ahead) would hold 500 *batches* of video in memory per process
# and per worker; these bound the look-ahead and still overlap reading with the train step.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=16, prefetch_buffer_size=32)


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


# ------------------------------------------------------------------------------------------------ padding


def pad_field(value: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(value padded with zeros or cropped to `length` on axis 0, bool mask [length], number of real rows).

    Cropping keeps the first `length` rows (as AudioMAE's fbank crop does).
    """
    value = np.asarray(value)
    if value.ndim == 0:
        raise ValueError("a padded field needs at least one axis")
    real = min(value.shape[0], length)
    out = np.zeros((length,) + value.shape[1:], value.dtype)
    out[:real] = value[:real]
    mask = np.zeros((length,), bool)
    mask[:real] = True
    return out, mask, real


class PadFields:
    """Pads/crops each field named in `pad_spec` to its length and adds `<field>_mask`, `<field>_length`."""

    def __init__(self, pad_spec: Mapping[str, int]):
        self.pad_spec = {str(k): int(v) for k, v in pad_spec.items()}
        for key, length in self.pad_spec.items():
            if length <= 0:
                raise ValueError(f"pad_spec[{key!r}]={length}: lengths must be positive")

    def __call__(self, example: dict) -> dict:
        out = dict(example)
        for key, length in self.pad_spec.items():
            if key not in example:
                raise KeyError(f"pad_spec names {key!r}, which the example does not have (fields: "
                               f"{sorted(example)})")
            out[key], out[f"{key}_mask"], real = pad_field(example[key], length)
            out[f"{key}_length"] = np.int32(real)
        return out

    def __repr__(self) -> str:
        return f"PadFields({self.pad_spec})"


# ------------------------------------------------------------------------------------------------ transforms


class _ApplyTransform:
    """Picklable wrapper (workers receive the pipeline by cloudpickle) that checks the transform's output."""

    def __init__(self, transform: Transform):
        self.transform = transform

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        out = self.transform(example, rng)
        if not isinstance(out, Mapping):
            raise TypeError(f"transform {self.transform!r} returned {type(out).__name__}, not a dict")
        return out

    def __repr__(self) -> str:
        named = isinstance(self.transform, (types.FunctionType, types.BuiltinFunctionType, types.MethodType))
        return f"Transform({(self.transform.__name__ if named else self.transform)!r})"


def _per_example(examples: grain.MapDataset, transform: Transform | None, pad_spec, seed: int):
    if transform is not None:
        examples = examples.random_map(_ApplyTransform(transform), seed=seed)
    if pad_spec:
        examples = examples.map(PadFields(pad_spec))
    return examples


def _processes(process_index, process_count, global_batch_size: int) -> tuple[int, int, int]:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split over {process_count} processes")
    return process_index, process_count, global_batch_size // process_count


def _iterable(batches: grain.MapDataset, worker_count: int, worker_buffer_size: int,
              read_options: grain.ReadOptions | None) -> grain.IterDataset:
    batches = batches.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS)
    if worker_count:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; scripts without absl.app have none
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
    return batches


class BatchIterator:
    """Iterator over a batched MapDataset, read by grain (threads, optional worker processes).

    Its state is the index of the next batch, `{"next_index": k}` (the format of grain's in-process iterator),
    and `set_state` restarts grain at batch k: so a state saved with any `worker_count` resumes exactly
    with any other (grain's multiprocess state is tied to its worker count), and, since global batch k is
    the same for any process count, with any number of processes.
    """

    def __init__(self, batches: grain.MapDataset, worker_count: int = 0, worker_buffer_size: int = 1,
                 read_options: grain.ReadOptions | None = None):
        self._batches, self._next, self._iterator = batches, 0, None
        self._options = (worker_count, worker_buffer_size, read_options)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = iter(_iterable(self._batches[self._next:], *self._options))
        batch = next(self._iterator)
        self._next += 1
        return batch

    def get_state(self) -> dict:
        return {"next_index": self._next}

    def set_state(self, state: Mapping) -> None:
        if "next_index" in state:
            index = int(state["next_index"])
        elif "iterators_in_use_states" in state:  # grain's own multiprocess state (older checkpoints)
            index = sum(int(s["next_index"]) for s in state["iterators_in_use_states"])
        else:
            raise ValueError(f"not a data iterator state: {dict(state)}")
        self.close()
        self._next = index

    def close(self) -> None:
        """Stops grain's threads and worker processes (a later `next` restarts them at the same batch)."""
        if self._iterator is not None:
            self._iterator.close()
        self._iterator = None


class Batches:
    """Iterable of batches; every `iter()` starts a `BatchIterator` at batch 0."""

    def __init__(self, batches: grain.MapDataset, worker_count: int = 0, worker_buffer_size: int = 1,
                 read_options: grain.ReadOptions | None = None):
        self.batches = batches
        self._options = (worker_count, worker_buffer_size, read_options)

    def __iter__(self) -> BatchIterator:
        return BatchIterator(self.batches, *self._options)

    def __len__(self) -> int:
        return len(self.batches)


# ------------------------------------------------------------------------------------------------ pipelines


def train_dataset(source, global_batch_size: int, seed: int, process_index: int | None = None,
                  process_count: int | None = None, worker_count: int = 0, transform: Transform | None = None,
                  pad_spec: Mapping[str, int] | None = None, worker_buffer_size: int = 1,
                  read_options: grain.ReadOptions | None = None) -> Batches:
    """Endless, reshuffled-every-epoch batches of this process's rows (dicts of numpy arrays).

    A source that `orders_itself` is read in its own order (it shuffles itself, e.g. whole batches of one
    corpus); every other source is reshuffled every epoch. `transform(example, rng)` runs per example with a
    generator seeded from (seed, position in the shuffled stream); `pad_spec` pads/crops variable-length
    fields and adds their masks and lengths (see module docstring). `worker_count` > 0 reads, transforms and
    batches in that many grain worker processes (the transform and the source must pickle). Iterators'
    `get_state`/`set_state` resume exactly, also with another worker or process count (`BatchIterator`).
    `read_options` sets the threads and look-ahead (in batches) of each reading process.
    """
    source = as_data_source(source, "train_dataset's source")
    process_index, process_count, local = _processes(process_index, process_count, global_batch_size)
    examples = grain.MapDataset.source(source)
    if not source.orders_itself:  # e.g. a multi-corpus source that shuffles whole batches
        examples = examples.shuffle(seed=seed)
    examples = examples.repeat()
    examples = _per_example(examples, transform, pad_spec, seed)
    rows = _ProcessRows(examples, global_batch_size, process_index, process_count)
    batches = rows.batch(local, drop_remainder=True, batch_fn=stack_examples)
    return Batches(batches, worker_count, worker_buffer_size, read_options)


def array_batches(source, global_batch_size: int, keys: Sequence[str]):
    """Endless batches of a source that orders itself (`orders_itself`), each one `read_batch(positions)`,
    with the fields `keys`: the batches `train_dataset` gives for it with a transform that only keeps `keys`,
    without grain's per-example work (one process). A population reads hundreds of small sources that also
    read whole batches cheaply (`reads_batches`) this way every step (`population.Population`)."""
    source = as_data_source(source, "array_batches' source")
    if not source.orders_itself:
        raise ValueError(f"{source!r} does not order itself (orders_itself is False): its batches "
                         f"are reshuffled by train_dataset, not read in index order")
    size, position = len(source), 0
    while True:
        batch = source.read_batch(np.arange(position, position + global_batch_size) % size)
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"examples lack the fields {missing} the task reads (they have {sorted(batch)})")
        yield {k: batch[k] for k in keys}
        position += global_batch_size


class _PaddedRows(SourceBase):
    """`source` extended to `length` rows by repeating its last row; every row gets `mask` (real or not)."""

    def __init__(self, source: DataSource, length: int):
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        real = len(self.source)
        row = dict(self.source[min(int(index), real - 1)])
        row["mask"] = np.bool_(index < real)
        return row


def eval_dataset(source, global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None, transform: Transform | None = None,
                 pad_spec: Mapping[str, int] | None = None, seed: int = 0, worker_count: int = 0,
                 worker_buffer_size: int = 1, read_options: grain.ReadOptions | None = None
                 ) -> Batches:
    """One pass over `source` in order, as batches of this process's rows; the last global batch is padded
    (with copies of the last row) and every batch carries a bool `mask` of real rows.

    Eval transforms should be deterministic (e.g. `sample_clip(..., train=False)`); the generator they get
    depends only on (seed, row), so even a random one gives the same batches on every call.
    """
    source = as_data_source(source, "eval_dataset's source")
    if len(source) == 0:
        raise ValueError("eval source is empty")
    process_index, process_count, local = _processes(process_index, process_count, global_batch_size)
    num_batches = -(-len(source) // global_batch_size)
    examples = grain.MapDataset.source(_PaddedRows(source, num_batches * global_batch_size))
    examples = _per_example(examples, transform, pad_spec, seed)
    rows = _ProcessRows(examples, global_batch_size, process_index, process_count)
    batches = rows.batch(local, drop_remainder=True, batch_fn=stack_examples)
    return Batches(batches, worker_count, worker_buffer_size, read_options)


def eval_batches(source, global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None, transform: Transform | None = None,
                 pad_spec: Mapping[str, int] | None = None, seed: int = 0, worker_count: int = 0,
                 read_options: grain.ReadOptions | None = None) -> Iterator[dict]:
    """Iterator over `eval_dataset(...)`: one pass, last batch padded, a `mask` of real rows per batch."""
    return iter(eval_dataset(source, global_batch_size, process_index, process_count, transform, pad_spec,
                             seed, worker_count, read_options=read_options))
