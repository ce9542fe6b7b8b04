"""The CASP experiment end to end on its synthetic shift: source training, then every mode; CASP must beat
source-only by a margin (fixed seeds), and feature dims that do not match are refused with both named."""

import json

import jax
import numpy as np
import pytest

from experiments import casp as experiment
from experiments.configs import casp as casp_config
from jaxemo.systems import casp
from jaxemo.train import sharding


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("casp"))
    config = casp_config.get_config("tiny")
    config.tta.methods = ("source_only", "casp")
    # Episodic adaptation is only checked to run and score here (its properties: test_tta.py): 2 steps on 2
    # views per sample instead of the tiny recipe's 3 on 4, a third of its cost. The margin is offline's.
    config.tta.update(episodic_steps=2, episodic_views=2)
    # One device, as `python -m experiments.casp` has on a CPU machine: on the suite's 8 simulated devices the
    # tiny model's source training takes about three times as long (sharded training: test_sharding.py).
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    summary = experiment.run(config, workdir, mesh)
    params = experiment.train_source(config, workdir, mesh)  # finished: evaluated and reused, not trained again
    return config, params, workdir, summary, mesh


def mae(summary, method, mode):
    return next(r["mae"] for r in summary["results"] if r["method"] == method and r["mode"] == mode)


@pytest.mark.slow
def test_casp_lowers_mae_below_source_only(run):
    _, _, _, summary, _ = run
    source_only = mae(summary, "source_only", "-")
    assert source_only > 0.6  # the shift hurts (source valid MAE is about 0.45)
    assert mae(summary, "casp", "offline") < source_only - 0.015


@pytest.mark.slow
def test_every_mode_runs_and_results_are_written(run):
    _, _, workdir, summary, _ = run
    with open(f"{workdir}/results.json") as f:
        stored = json.load(f)
    assert stored == json.loads(json.dumps(summary))
    assert {(r["method"], r["mode"]) for r in stored["results"]} == {
        ("source_only", "-"), ("casp", "offline"), ("casp", "online"), ("casp", "episodic")}
    for row in stored["results"]:
        assert np.isfinite(row["mae"]) and -1 <= row["corr"] <= 1 and 0 <= row["acc2_has0"] <= 1
    assert "| casp | episodic |" in experiment.results_table(summary)


@pytest.mark.slow
def test_source_training_is_reused_on_rerun(run):
    config, params, workdir, _, mesh = run
    again = experiment.train_source(config, workdir, mesh)  # finished: evaluates, does not train again
    for key in ("proj_text", "out_layer_proj0"):
        np.testing.assert_array_equal(again[key]["kernel"], params[key]["kernel"])


@pytest.mark.slow
def test_mismatched_feature_dims_are_named(run):
    config, params, _, _, _ = run
    config = casp_config.get_config("tiny")
    config.target.audio_dim = 5
    dims = {m: int(params[f"proj_{m}"]["kernel"].shape[0]) for m in ("text", "audio", "vision")}
    with pytest.raises(ValueError, match="audio features have 5 dims.*takes 8"):
        casp.target_arrays(config, "target_test", dims)
    config.target.align_features = "pad"
    padded = casp.target_arrays(config, "target_test", dims)
    assert padded["audio"].shape[-1] == 8 and not padded["audio"][..., 5:].any()


def test_pair_variants_use_one_extraction_and_scale_sims():
    config = casp_config.get_config("mosei2sims_early")
    assert (config.data.name, config.data.builder_config) == ("cmu_mosei", "casp")
    assert (config.target.name, config.target.builder_config) == ("ch_sims", "casp_scaled")
    assert config.model.fusion == "early" and len(casp_config.PAIRS) == 12
