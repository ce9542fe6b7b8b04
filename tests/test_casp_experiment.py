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


def shrink(config):
    """The tiny recipe made cheaper to compile and run (the recipe itself: README, "CASP")."""
    # XLA's compiles are most of the cost and grow with the layers: one encoder of one layer (early fusion)
    # instead of three of two. Attention dropout off: its random masks dominated every train step.
    config.model.update(fusion="early", depth=1, proj_dim=16, num_heads=4, attn_dropout=0.0)
    config.target.train_size = 600  # the unlabelled adaptation split
    config.update(batch_size=48, num_epochs=10)
    config.optimizer.learning_rate = 5e-3
    config.tta.update(learning_rate=0.02, epochs=3, snapshot_every=1)
    # Offline CASP's gain over source-only (MAE) at seeds 666 (the recipe's), 0, 1, 2, 3, 4: 0.051, 0.013,
    # 0.118, 0.056, 0.046, 0.035; the unshrunk tiny recipe's at 666 and 0: 0.035 and 0.011. The bound is 0.015.


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("casp"))
    config = casp_config.get_config("tiny")
    shrink(config)
    config.tta.methods = ("source_only", "casp")
    # Episodic adaptation is only checked to run and score here (its properties: test_tta.py): 2 steps on 2
    # views per sample instead of the tiny recipe's 3 on 4. The margin is offline's.
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
    jax.tree.map(np.testing.assert_array_equal, again, params)


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


def test_robustness_sweep_of_the_source_model(run, tmp_path):
    """`python -m experiments.robustness --system=casp` on the source checkpoint: the clean point is the
    experiment's source-only MAE on the target test split, and every modality's failures raise the MAE as they
    grow (the synthetic labels depend on all three), on one compiled program."""
    import os

    from experiments import robustness as robustness_experiment

    _, _, workdir, summary, mesh = run
    result = robustness_experiment.run("casp", os.path.join(workdir, "source", "checkpoints_best"), str(tmp_path),
                                       snr_db=(10, 0, -10), dropout=(0.5,), mesh=mesh)
    rows = result["rows"]
    assert rows[0]["mae"] == pytest.approx(mae(summary, "source_only", "-"), abs=1e-5)
    assert rows[0]["compiles"] == 1 and result["metric"] == "mae"
    for modality in ("text", "audio", "vision"):
        noise = [rows[0]["mae"]] + [r["mae"] for r in rows if r["modality"] == modality and r["kind"] == "noise"]
        assert all(b >= a - 0.005 for a, b in zip(noise, noise[1:])) and noise[-1] > noise[0], (modality, noise)
        absent = next(r["mae"] for r in rows if r["modality"] == modality and r["kind"] == "absent")
        assert absent > rows[0]["mae"], modality



def test_monitored_online_adaptation_skips_or_resets_the_degenerate_segment(run):
    """`python -m experiments.casp_stream`: the target stream with its middle third silent (audio and vision
    zeros) or a frozen feed (one clip repeated). The monitor, calibrated on the source's validation split,
    adapts on every clean batch exactly as plain online adaptation does, skips every silent batch (their input
    statistics are far from the source's) and resets on every frozen one (the predictions' spread collapses),
    staying within a margin of the source model there. On the frozen feed plain adaptation keeps adapting and
    does worse after the segment than the source and the monitored stream."""
    from jaxemo.systems.casp import stream as stream_lib
    from jaxemo.tta import core, monitor

    config, params, _, _, _ = run
    dims = {m: int(params[f"proj_{m}"]["kernel"].shape[0]) for m in core.MODALITIES}
    test = casp.target_arrays(config, config.target.test_split, dims)
    for kind, expected in (("silent", "skip"), ("constant", "reset")):
        result = stream_lib.compare(config, params, test, kind, learning_rate=0.02, steps=3, rng=jax.random.key(0))
        decisions = np.array(monitor.DECISIONS)[result["audit"].decision]
        segment = result["segments"]["degenerate"]
        batch = result["batch_size"]
        inside = np.arange(segment.start // batch, segment.stop // batch)
        assert (decisions[inside] == expected).all(), (kind, decisions)
        assert (np.delete(decisions, inside) == "adapt").all(), (kind, decisions)
        mae = result["mae"]
        assert mae["monitored"]["before"] == mae["plain"]["before"], (kind, mae)  # the same updates
        # on the degenerate segment the monitored stream stays within a margin of the source model
        assert mae["monitored"]["degenerate"] < mae["source"]["degenerate"] + 0.02, (kind, mae)
    # the frozen feed: plain adaptation's damage outlasts it (0.86 after it against the source's 0.75 on one
    # 2-core EPYC, 0.98 against 0.85 on another); the monitored stream ends below the source (0.73, 0.82). The
    # comparisons during the segments depend on the machine's rounding (plain adaptation fits the frozen clip,
    # 0.10 against the monitored 0.19 on the second machine, 0.34 against 0.29 on the first): only the
    # decisions and the margin to the source are asserted there.
    assert mae["monitored"]["after"] < mae["plain"]["after"], mae
    assert mae["plain"]["after"] > mae["source"]["after"] + 0.05, mae
    assert mae["monitored"]["after"] < mae["source"]["after"], mae
