"""The data-source contract (`jaxemo.data.datasource`): every jaxemo source is a `DataSource` with the right
capabilities, third-party random-access objects are adapted with the defaults at the documented entries,
incomplete sources are refused naming what they lack, and whole-batch reads equal row-by-row reads."""

from __future__ import annotations

import types

import numpy as np
import pytest
from ml_collections import config_dict

from jaxemo.data import builders, pipeline, sources, synthetic_speech
from jaxemo.data.builders import base
from jaxemo.data.datasource import DataSource, RandomAccessSource, SourceBase, as_data_source
from jaxemo.systems.agt import data as agt_data
from jaxemo.systems.speech_ser import corpora
from jaxemo.train import population, tasks


class Rows:
    """A third-party-like source (as grain's and TFDS's): only `len` and `[i]`, plus TFDS's `Sequence.index`."""

    def __init__(self, n: int, offset: int = 0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"x": np.int32(self.offset + i), "y": np.full(3, self.offset + i, np.float32)}

    def index(self, value):  # collections.abc.Sequence's method, which TFDS's data sources have
        raise ValueError(value)


def _merset(n: int = 10) -> agt_data.MerSet:
    rng = np.random.default_rng(0)
    return agt_data.MerSet({"a": rng.standard_normal((n, 3)).astype(np.float32)}, np.arange(n) % 6,
                           [str(i) for i in range(n)], {"a": np.arange(n)})


def _capabilities(source) -> tuple:
    return source.orders_itself, source.reads_batches, source.row_index is not None


def _config(**fields):
    return config_dict.ConfigDict(fields)


def test_every_jaxemo_source_is_a_data_source_with_its_capabilities():
    speech = synthetic_speech.SyntheticSpeech(1, num_speakers=2, min_seconds=0.1, max_seconds=0.1)
    images = sources.make_source(_config(name="synthetic_images", train_size=8, eval_size=4, num_classes=3,
                                         image_size=8), "train", 0)
    expected = {  # (orders_itself, reads_batches, has a row_index)
        "images": (images, (False, False, False)),
        "av": (sources.make_source(_config(name="synthetic_av_clips", train_size=4, eval_size=2, image_size=8,
                                           min_frames=2, max_frames=3, fbank_frames=4), "train", 0),
               (False, False, False)),
        "scenes": (sources.make_source(_config(name="synthetic_scenes", train_size=4, eval_size=2, image_size=16),
                                       "train", 0), (False, False, False)),
        "sentiment": (sources.make_source(_config(name="synthetic_sentiment", train_size=4, eval_size=2), "train",
                                          0), (False, False, False)),
        "mer": (sources.make_source(_config(name="synthetic_mer", train_size=4, eval_size=2), "unlabeled", 0),
                (False, False, False)),
        "speech": (speech, (False, False, True)),
        "concat": (sources.make_source(_config(name="synthetic_images", train_size=8, eval_size=4,
                                               num_classes=3, image_size=8), "train+val", 0),
                   (False, False, False)),
        "epochs of rows": (sources.EpochShuffled(images, 0, 2), (True, False, False)),
        "epochs of arrays": (sources.EpochShuffled(_merset(), 0, 2), (True, True, False)),
        "subset": (base.Subset(images, [1, 3]), (False, False, False)),
        "adapted": (RandomAccessSource(Rows(4)), (False, False, False)),
        "padded": (pipeline._PaddedRows(images, 12), (False, False, False)),
        "merset": (_merset(), (False, True, False)),
        "relabelled": (corpora.Relabelled(speech, [3, 1]), (False, False, True)),
        "tagged": (corpora.Tagged(images, 2), (False, False, False)),
        "binary": (corpora.BinaryTarget(speech, [0, 1], 1), (False, False, False)),
        "cached": (corpora.Cached(speech), (False, False, True)),
        "multi-corpus": (corpora.MultiCorpusSource([Rows(6), Rows(4, 100)], block=2, seed=0, epochs=1),
                         (True, False, False)),
    }
    for name, (source, capabilities) in expected.items():
        assert isinstance(source, DataSource) and isinstance(source, SourceBase), name
        assert _capabilities(source) == capabilities, name
        assert as_data_source(source) is source, name
    assert tasks.DataSource is DataSource  # documented beside Task
    np.testing.assert_array_equal(speech.row_index["label"], [int(speech[i]["label"]) for i in range(len(speech))])
    relabelled = expected["relabelled"][0]
    assert list(relabelled.row_index["label"]) == [int(relabelled[i]["label"]) for i in range(len(relabelled))]
    assert set(relabelled.row_index["label"]) == {0, 1} and len(relabelled) == 4  # 2 speakers x 2 emotions


def test_the_default_read_batch_stacks_the_rows():
    source = sources.make_source(_config(name="synthetic_sentiment", train_size=6, eval_size=2), "train", 0)
    batch = source.read_batch(np.array([4, 0, 4]))
    for key, value in batch.items():
        np.testing.assert_array_equal(value, np.stack([np.asarray(source[i][key]) for i in (4, 0, 4)]))


def test_every_registered_builder_has_virtual_splits():
    for name in builders.REGISTRY:
        assert issubclass(builders.builder_class(name), base.ManualShardBuilder), name


class _FakeBuilder:
    """What `builders.data_source` reads of a prepared builder, over `Rows` as TFDS's data source."""

    data_dir = "/nowhere"
    info = types.SimpleNamespace(splits={"clips": None})

    def virtual_splits(self):
        return {"fold1_test": ("clips", [4, 1])}

    def as_data_source(self, split):
        assert split == "clips"
        return Rows(6)


def test_builders_wrap_third_party_sources_with_the_defaults(monkeypatch):
    monkeypatch.setattr(builders, "prepare", lambda *args: _FakeBuilder())
    clips = builders.data_source("dfew", "clips")
    assert type(clips) is RandomAccessSource and _capabilities(clips) == (False, False, False)
    assert [int(clips[i]["x"]) for i in range(len(clips))] == list(range(6))
    np.testing.assert_array_equal(clips.read_batch([5, 2])["y"], [[5] * 3, [2] * 3])
    fold = builders.data_source("dfew", "fold1_test")
    assert type(fold) is base.Subset and [int(fold[i]["x"]) for i in range(2)] == [4, 1]


def test_a_third_party_source_through_the_pipeline_gets_the_defaults():
    """Not ordering itself: each epoch is a reshuffle of every row; ordering itself is EpochShuffled's."""
    rows = Rows(8)
    assert type(as_data_source(rows)) is RandomAccessSource  # TFDS-like `index` method: not a row index
    batches = pipeline.train_dataset(rows, 4, seed=1, process_index=0, process_count=1)
    seen = [int(x) for batch in list(zip(range(4), batches)) for x in batch[1]["x"]]
    assert sorted(seen[:8]) == sorted(seen[8:]) == list(range(8)) and seen[:8] != list(range(8))
    with pytest.raises(ValueError, match=r"RandomAccessSource\(Rows, 8 rows\) does not order itself"):
        next(pipeline.array_batches(as_data_source(rows), 4, ("x",)))


def test_a_source_missing_a_member_is_refused_naming_it():
    class OrdersItselfOnly:
        orders_itself = True

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": np.int32(i)}

    with pytest.raises(TypeError, match=r"train_dataset's source \(OrdersItselfOnly\) declares orders_itself "
                                        r"but has no reads_batches, read_batch, row_index"):
        pipeline.train_dataset(OrdersItselfOnly(), 2, seed=0, process_index=0, process_count=1)

    class LengthOnly:
        def __len__(self):
            return 4

    # the population checks its trials' sources first, before it reads the config or the task
    with pytest.raises(TypeError, match=r"trial 't0' eval \(LengthOnly\) is not a data source: it has no "
                                        r"__getitem__"):
        population.Population(None, None, [population.Trial("t0", 0, Rows(4), eval=LengthOnly())])

    class NoGetitem(SourceBase):
        def __len__(self):
            return 4

    with pytest.raises(TypeError, match="abstract method __getitem__"):
        NoGetitem()


def test_the_population_adapts_shared_sources_once():
    shared, own = Rows(4), Rows(4)
    trials = population._with_data_sources([population.Trial("a", 0, own, eval=shared),
                                            population.Trial("b", 1, Rows(4), eval=shared)])
    assert trials[0].eval is trials[1].eval and trials[0].eval.rows is shared and trials[0].train.rows is own
    assert trials[0].test is None


@pytest.mark.parametrize("inner", ["arrays", "rows"])
def test_epoch_shuffled_whole_batches_equal_row_by_row_reads(inner):
    """Across the epoch boundary and past the end: `read_batch` (the wrapped source's, or the default stacking)
    equals stacking `[i]`, and `array_batches` equals grain's pipeline over the same source."""
    merset = _merset()
    source = sources.EpochShuffled(merset if inner == "arrays" else Rows(10), seed=5, epochs=3)
    assert source.reads_batches == (inner == "arrays")
    positions = np.array([8, 9, 10, 11, 29, 0])
    whole = source.read_batch(positions)
    for key, value in whole.items():
        np.testing.assert_array_equal(value, np.stack([np.asarray(source[int(p)][key]) for p in positions]))
    keys = ("features/a", "lengths/a", "label") if inner == "arrays" else ("x", "y")
    fast = pipeline.array_batches(source, 4, keys)
    slow = iter(pipeline.train_dataset(source, 4, seed=5, process_index=0, process_count=1,
                                       transform=tasks.HostTransform(None, keys)))
    for _ in range(9):
        a, b = next(fast), next(slow)
        assert set(a) == set(b) == set(keys)
        for key in keys:
            np.testing.assert_array_equal(a[key], b[key])


def test_split_index_reads_the_row_index_without_a_builder():
    speech = synthetic_speech.SyntheticSpeech(1, num_speakers=2, min_seconds=0.1, max_seconds=0.1)
    index = corpora.split_index(_config(name="synthetic_speech"), "train", corpora.Cached(speech))
    np.testing.assert_array_equal(index["speaker"], speech.index["speaker"])
    with pytest.raises(ValueError, match="Relabelled: RandomAccessSource has no row_index"):
        corpora.Relabelled(Rows(4), [0])
