"""Bad input fails before anything compiles, with a message naming the value and what was expected."""

import logging
import os

import jax
import numpy as np
import pytest

from experiments import vit_classifier as experiment
from jaxemo.systems import vit_classifier
from jaxemo.data import synthetic
from jaxemo.train import loop, tasks


@pytest.fixture
def no_compiles(caplog):
    """Yields, then asserts that nothing of the trainer's was compiled (JAX logs each compilation)."""
    jax.config.update("jax_log_compiles", True)
    with caplog.at_level(logging.DEBUG, logger="jax"):
        yield
    jax.config.update("jax_log_compiles", False)
    compiled = [r.getMessage() for r in caplog.get_records("call") if "Compiling" in r.getMessage()]
    assert not [m for m in compiled if any(f in m for f in ("train_step", "eval_step", "init_sharded"))], compiled


def test_unknown_variant(tiny_config, tmp_path, no_compiles):
    config = tiny_config(**{"model.variant": "Q/16"})
    with pytest.raises(ValueError, match=r"unknown ViT variant 'Q/16': expected .*'B/16'"):
        experiment.train(config, str(tmp_path / "run"))


def test_batch_size_not_divisible_by_the_data_axis(tiny_config, tmp_path, no_compiles):
    config = tiny_config(batch_size=12)  # 8 simulated devices on the data axis
    with pytest.raises(ValueError, match=r"batch_size=12 must be divisible .*data x fsdp = 8"):
        experiment.train(config, str(tmp_path / "run"))


def test_missing_workdir_parent(tiny_config, tmp_path, no_compiles):
    workdir = tmp_path / "no" / "such" / "run"
    with pytest.raises(FileNotFoundError, match=f"parent directory {tmp_path / 'no' / 'such'} does not exist"):
        experiment.train(tiny_config(), str(workdir))
    assert not os.path.exists(tmp_path / "no")


def test_image_of_the_wrong_shape(tiny_config, tmp_path, no_compiles):
    config = tiny_config()
    task = tasks.ClassificationTask(vit_classifier.build_model(config), 10)
    wrong = synthetic.SyntheticImages(64, image_size=40)
    with pytest.raises(ValueError, match=r"\[batch\.\.\., 32, 32, 3\].*got \(1, 40, 40, 3\)"):
        loop.train_and_evaluate(config, str(tmp_path / "run"), task, wrong)


def test_unknown_dataset_name(tiny_config):
    with pytest.raises(ValueError, match=r"data.name='dfwe' is unknown; expected .*'dfew'"):
        vit_classifier.build_data(tiny_config(**{"data.name": "dfwe"}))


def test_unknown_config_variant():
    from experiments.configs import vit_classifier as config_file

    with pytest.raises(ValueError, match="config variant 'huge' is unknown; expected one of"):
        config_file.get_config("huge")


def test_synthetic_index_out_of_range():
    with pytest.raises(IndexError, match="index 5 out of range for 5"):
        synthetic.SyntheticImages(5)[5]
    assert np.asarray(synthetic.SyntheticImages(5)[4]["image"]).dtype == np.uint8
