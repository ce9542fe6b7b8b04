"""What every dataset builder shares (jaxemo/data/builders/base.py): the ShardBasedBuilder base, size-capped
shards written in row order, and prepare()'s manual_dir check. Builds use the cheap sentiment / MER2024
fixtures of test_builders_sentiment.py; nothing imports TensorFlow."""

import inspect
import os
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_builders_sentiment import LABELLED, POOL, SIZES, mer_dir, mmsa_pickle, write_pickle

from jaxemo.data import builders
from jaxemo.data.builders import DataError, base
from jaxemo.data.builders import sentiment as sentiment_builders
from jaxemo.data.builders.mer2024 import Mer2024


@pytest.mark.parametrize("name", sorted(builders.REGISTRY))
def test_every_builder_is_a_manual_shard_builder(name):
    cls = builders.builder_class(name)
    assert issubclass(cls, base.ManualShardBuilder) and issubclass(cls, tfds.core.ShardBasedBuilder)
    assert not issubclass(cls, tfds.core.GeneratorBasedBuilder)  # its Shuffler needs TF past 1 GB
    # the one code_path fix (TFDS's own resolution needs the uninstalled importlib_resources)
    assert os.fspath(cls.code_path) == inspect.getfile(cls) and os.path.isfile(cls.code_path)
    assert cls.SHARD_BYTES > 0


def test_shard_rows_groups_consecutive_rows_up_to_a_byte_budget():
    assert base.shard_rows([4, 4, 4, 9, 1, 1], 8) == [range(2), range(2, 3), range(3, 4), range(4, 6)]
    assert base.shard_rows([3], 1) == [range(1)] and base.shard_rows([], 8) == []
    assert base.shard_rows(3, 7, num_rows=5) == [range(2), range(2, 4), range(4, 5)]  # one size for all rows
    assert base.shard_rows(100, 7, num_rows=2) == [range(1), range(1, 2)]  # a row over the cap: its own shard
    assert base.shard_rows(3, 7, num_rows=0) == []
    with pytest.raises(ValueError, match="num_rows"):
        base.shard_rows(3, 7)


def test_ordered_map_keeps_the_input_order_on_threads():
    def slow_square(x):
        time.sleep(0.002 * (x % 3))
        return x * x

    for threads, window in ((1, None), (4, None), (3, 5)):
        assert list(base.ordered_map(slow_square, range(20), threads, window)) == [x * x for x in range(20)]


def _no_shuffler(monkeypatch):
    """TFDS's Shuffler (GeneratorBasedBuilder) would spill to disk through TensorFlow on the first example."""
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", -1)


def test_tiny_shard_bytes_write_several_shards_read_back_in_pickle_order(tmp_path, monkeypatch):
    _no_shuffler(monkeypatch)
    data = mmsa_pickle(seed=3)  # text [4, 768], audio [7, 5], vision [6, 20] per row
    row_bytes = 4 * (4 * 768 + 7 * 5 + 6 * 20)
    monkeypatch.setattr(sentiment_builders.CmuMosi, "SHARD_BYTES", 2 * row_bytes)  # two rows per shard
    manual_dir = write_pickle(tmp_path / "mosi", "unaligned_50.pkl", data).rsplit(os.sep, 1)[0]
    data_dir = str(tmp_path / "tfds")
    builder = builders.prepare("cmu_mosi", manual_dir, "unaligned_50", data_dir)
    assert builder.info.disable_shuffling  # passed to DatasetInfo, recorded in dataset_info.json
    for split, n in SIZES.items():
        assert builder.info.splits[split].shard_lengths == [2] * (n // 2) + [1] * (n % 2)
        source = builders.data_source("cmu_mosi", split, config="unaligned_50", data_dir=data_dir)
        assert [source[i]["id"].decode() for i in range(len(source))] == list(data[split]["id"])
        for i in range(n):
            np.testing.assert_array_equal(source[i]["vision"], data[split]["vision"][i])
    assert builder.info.metadata["order"] == "pickle row order (row i of a split is element i)"
    assert "tensorflow" not in sys.modules


def test_one_row_per_shard_mer2024(tmp_path, monkeypatch):
    _no_shuffler(monkeypatch)
    monkeypatch.setattr(Mer2024, "SHARD_BYTES", 1)
    mer_dir(tmp_path / "mer")
    data_dir = str(tmp_path / "tfds")
    builder = builders.prepare("mer2024", str(tmp_path / "mer"), "utt", data_dir)
    assert builder.info.splits["train"].shard_lengths == [1] * len(LABELLED)
    assert builder.info.splits["unlabeled"].shard_lengths == [1] * len(POOL)
    pool = builders.data_source("mer2024", "unlabeled", config="utt", data_dir=data_dir)
    assert [pool[i]["id"].decode() for i in range(len(pool))] == POOL


@pytest.mark.parametrize("name", sorted(builders.REGISTRY))
def test_prepare_without_a_usable_manual_dir_names_manual_dir(tmp_path, name):
    data_dir = str(tmp_path / "tfds")
    missing, empty = str(tmp_path / "missing"), tmp_path / "empty"
    empty.mkdir()
    for manual_dir in (missing, str(empty)):
        with pytest.raises(DataError) as error:
            builders.prepare(name, manual_dir, data_dir=data_dir)
        assert error.value.path == manual_dir and error.value.field == "manual_dir", str(error.value)
        assert "missing or empty" in error.value.problem
    with pytest.raises(DataError) as error:
        builders.prepare(name, None, data_dir=data_dir)
    assert error.value.field == "manual_dir" and "no manual_dir was given" in error.value.problem
    assert not os.path.exists(os.path.join(data_dir, builders.builder_class(name).name))  # nothing written
