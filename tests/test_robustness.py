"""The modality-failure transform (`jaxemo.train.robustness`): each kind does what it says, per example and
reproducibly, the draws do not depend on the batch or the severity, and bad requests are named. The sweep on
trained models: test_mma_dfer_experiment.py and test_casp_experiment.py."""

import jax
import numpy as np
import pytest

from jaxemo import systems
from jaxemo.train import robustness as rb

VIDEO = rb.Modality("video", "video")  # [B, T, H, W, C] uint8
AUDIO = rb.Modality("audio", "audio", length_key="audio_length")  # [B, T, D] with lengths
VECTOR = rb.Modality("text", "text", time_axis=None)  # [B, D]
MODALITIES = (VIDEO, AUDIO, VECTOR)


@pytest.fixture(scope="module")
def fail():
    return jax.jit(lambda batch: rb.apply_failures(batch, MODALITIES, seed=7))


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"video": rng.integers(0, 256, (n, 6, 2, 2, 3), dtype=np.uint8),
            "audio": 2.0 * rng.standard_normal((n, 40, 8)).astype(np.float32),
            "audio_length": rng.integers(10, 41, n).astype(np.int32),
            "text": rng.standard_normal((n, 12)).astype(np.float32)}


def _apply(fail, batch, point, rows=None):
    rows = np.arange(len(batch["text"])) if rows is None else rows
    return jax.device_get(fail({**batch, **rb.failure_fields(point, MODALITIES, rows)}))


def test_each_kind_fails_only_its_modality(fail):
    batch = _batch()
    clean = _apply(fail, batch, rb.FailurePoint("", "clean", 0.0))
    for key in batch:
        np.testing.assert_array_equal(clean[key], batch[key])
    absent = _apply(fail, batch, rb.FailurePoint("audio", "absent", 1.0))
    assert not absent["audio"].any()
    np.testing.assert_array_equal(absent["audio_length"], batch["audio_length"])  # lengths are kept
    for key in ("video", "text"):
        np.testing.assert_array_equal(absent[key], batch[key])
    assert "failure/kind" not in absent


def test_noise_has_the_asked_snr_on_the_real_frames_only(fail):
    batch = _batch(64)
    out = _apply(fail, batch, rb.FailurePoint("audio", "noise", 5.0))
    noise = out["audio"] - batch["audio"]
    real = np.arange(40)[None, :] < batch["audio_length"][:, None]
    assert not noise[~real].any()  # padding frames stay as they were
    snr = 10 * np.log10((batch["audio"][real] ** 2).mean() / (noise[real] ** 2).mean())
    assert snr == pytest.approx(5.0, abs=0.3)
    video = _apply(fail, batch, rb.FailurePoint("video", "noise", -10.0))["video"]
    assert video.dtype == np.uint8 and (video != batch["video"]).mean() > 0.9  # rounded and clipped to uint8
    text = _apply(fail, batch, rb.FailurePoint("text", "noise", 0.0))["text"]
    assert 10 * np.log10((batch["text"] ** 2).mean() / ((text - batch["text"]) ** 2).mean()) == pytest.approx(
        0.0, abs=0.5)


def test_temporal_dropout_drops_growing_nested_sets_of_frames(fail):
    batch = _batch(64)
    dropped = {}
    for fraction in (0.25, 0.5, 1.0):
        out = _apply(fail, batch, rb.FailurePoint("video", "temporal_dropout", fraction))["video"]
        frames = ~out.reshape(64, 6, -1).any(-1) & batch["video"].reshape(64, 6, -1).any(-1)
        kept = out.reshape(64, 6, -1)[~frames]
        np.testing.assert_array_equal(kept, batch["video"].reshape(64, 6, -1)[~frames])  # the rest untouched
        dropped[fraction] = frames
    assert dropped[0.25].mean() == pytest.approx(0.25, abs=0.07)
    assert dropped[0.5].mean() == pytest.approx(0.5, abs=0.07) and dropped[1.0].all()
    assert not (dropped[0.25] & ~dropped[0.5]).any()  # the same draws: a superset at a higher fraction


def test_draws_depend_on_the_row_and_the_seed_not_on_the_batch(fail):
    batch = _batch()
    point = rb.FailurePoint("audio", "noise", 0.0)
    whole = _apply(fail, batch, point)["audio"]
    order = np.arange(16)[::-1]
    reversed_rows = _apply(fail, {k: v[order] for k, v in batch.items()}, point, rows=order)["audio"]
    np.testing.assert_allclose(reversed_rows, whole[order], rtol=1e-6, atol=1e-6)
    half = _apply(fail, {k: v[:8] for k, v in batch.items()}, point, rows=np.arange(8))["audio"]
    np.testing.assert_allclose(half, whole[:8], rtol=1e-6, atol=1e-6)
    other_seed = jax.jit(lambda b: rb.apply_failures(b, MODALITIES, seed=8))(
        {**batch, **rb.failure_fields(point, MODALITIES, np.arange(16))})
    assert not np.allclose(np.asarray(other_seed["audio"]), whole)


def test_the_grid_and_bad_requests():
    points = rb.failure_grid(MODALITIES, snr_db=(10.0, 0.0), dropout=(0.5,))
    assert points[0].kind == "clean" and len(points) == 1 + 3 * (1 + 2) + 2  # no temporal dropout for text
    assert not any(p.modality == "text" and p.kind == "temporal_dropout" for p in points)
    with pytest.raises(ValueError, match="unknown failure kinds"):
        rb.failure_grid(MODALITIES, kinds=("absent", "blur"))
    with pytest.raises(ValueError, match="outside"):
        rb.failure_grid(MODALITIES, dropout=(1.5,))
    with pytest.raises(ValueError, match="'depth'"):
        rb.failure_fields(rb.FailurePoint("depth", "absent", 1.0), MODALITIES, np.arange(2))
    with pytest.raises(KeyError, match="failure/row"):
        rb.apply_failures({"text": np.zeros((2, 3))}, (VECTOR,), 0)


def test_the_multimodal_systems_declare_their_modalities():
    declared = {s.name: [m.name for m in s.robustness.modalities] for s in systems.all_systems()
                if s.robustness is not None}
    assert declared["mma_dfer"] == ["video", "audio"] and declared["casp"] == ["text", "audio", "vision"]
