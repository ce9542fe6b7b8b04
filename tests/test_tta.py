"""Test-time adaptation: losses against their definitions, the update step, and the three modes.

The key properties of episodic adaptation: vmapped equals the sample-by-sample loop, a sample's result does
not depend on the other samples of its batch, and one shape compiles once.
"""

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxemo.models import msa
from jaxemo.train import metrics, optim
from jaxemo.tta import core, methods, modes

STEPS, DIMS = (5, 6, 4), (8, 3, 6)


def make_samples(n, seed=0):
    rng = np.random.default_rng(seed)
    out = {m: rng.standard_normal((n, t, d)).astype(np.float32) for m, t, d in zip(msa.MODALITIES, STEPS, DIMS)}
    out["audio_length"] = np.full((n,), STEPS[1], np.int32)
    out["vision_length"] = np.full((n,), STEPS[2], np.int32)
    return out


@pytest.fixture(scope="module")
def setup():
    model = msa.SentimentRegressor(depth=1)
    samples = make_samples(1)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), *(samples[k] for k in core.INPUT_KEYS))["params"])
    frozen, adapted = core.split(params)
    return model, frozen, adapted


def reference_nt_xent(a, b, temperature):
    """CASP's ContrastiveLoss as its loop computes it (numpy)."""
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T
    n = len(a)
    total = 0.0
    for k in range(2 * n):
        positive = (k + n) % (2 * n)
        others = [j for j in range(2 * n) if j != k]
        total += -np.log(np.exp(sim[k, positive] / temperature) / np.exp(sim[k, others] / temperature).sum())
    return total / (2 * n)


def test_nt_xent_matches_the_reference_loop():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 10)), rng.standard_normal((6, 10))
    np.testing.assert_allclose(methods.nt_xent(jnp.asarray(a), jnp.asarray(b), 0.5), reference_nt_xent(a, b, 0.5),
                               rtol=1e-5)


def test_nt_xent_ignores_padded_rows():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 10)), rng.standard_normal((6, 10))
    weights = jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)
    padded = methods.nt_xent(jnp.asarray(a), jnp.asarray(b), 0.5, weights)
    np.testing.assert_allclose(padded, reference_nt_xent(a[:4], b[:4], 0.5), rtol=1e-5)


def test_drop_modality_per_batch_and_per_sample():
    batch = {k: jnp.asarray(v) for k, v in make_samples(64).items()}
    dropped = core.drop_modality(batch, jax.random.key(0))
    zeroed = [m for m in msa.MODALITIES if not dropped[m].any()]
    assert len(zeroed) == 1  # one modality for the whole batch, as the reference's random_drop
    per_sample = core.drop_modality(batch, jax.random.key(0), per_sample=True)
    rows_zeroed = np.stack([~np.asarray(per_sample[m]).reshape(64, -1).any(1) for m in msa.MODALITIES])
    assert (rows_zeroed.sum(0) == 1).all() and (rows_zeroed.sum(1) > 5).all()  # each row one, all kinds used


def test_stable_selection_and_the_reference_direction():
    rng = np.random.default_rng(0)
    snapshots = rng.standard_normal((6, 200)).cumsum(0) * np.linspace(0.01, 1.0, 200)  # later samples vary more
    pseudo, stable, instability = methods.stable_pseudo_labels(snapshots, 0.95, "stable")
    _, reference, _ = methods.stable_pseudo_labels(snapshots, 0.95, "reference")
    np.testing.assert_allclose(pseudo, snapshots.mean(0), rtol=1e-6)
    np.testing.assert_allclose(instability, np.abs(np.diff(snapshots, axis=0)).mean(0), rtol=1e-6)
    assert stable.sum() == 190 and reference.sum() == 10 and not (stable & reference).any()
    assert instability[stable].max() < instability[reference].min()
    with pytest.raises(ValueError, match="selection='least'"):
        methods.stable_pseudo_labels(snapshots, 0.95, "least")


def test_split_adapts_only_the_per_layer_layernorms(setup):
    _, frozen, adapted = setup
    assert set(adapted["encoder_text"]) == {"layers_0"}
    assert set(adapted["encoder_text"]["layers_0"]) == {"layer_norms_0", "layer_norms_1"}
    assert "layer_norm" in frozen["encoder_text"]  # the final LayerNorm stays frozen, as in CASP
    with pytest.raises(ValueError, match="no parameter matches"):
        core.split({**frozen}, ("nothing_like_this",))


def test_adapt_step_updates_and_skips_non_finite_losses(setup):
    model, frozen, adapted = setup
    tx = core.OptimizerConfig().make()
    batch = {k: jnp.asarray(v) for k, v in make_samples(8).items()}
    adapt_step = jax.jit(core.adapt_step, static_argnums=(0, 1, 2))  # jitted, as the modes run it: one compile
    new, _, out = adapt_step(methods.Contrastive(), model, tx, frozen, adapted, tx.init(adapted), batch,
                             jax.random.key(0))
    assert int(out["update_skipped"]) == 0 and np.isfinite(float(out["loss"]))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(adapted)))
    bad = dict(batch, text=batch["text"].at[0, 0, 0].set(jnp.nan))
    same, _, out = adapt_step(methods.Contrastive(), model, tx, frozen, adapted, tx.init(adapted), bad,
                              jax.random.key(0))
    assert int(out["update_skipped"]) == 1
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(adapted)):
        np.testing.assert_array_equal(a, b)


def test_episodic_vmap_equals_the_per_sample_loop(setup):
    model, frozen, adapted = setup
    # the episodic program of the tests below (2 steps, 2 views, 4 samples): compiled once for all of them
    samples = make_samples(4, seed=3)
    config = modes.EpisodicConfig(steps=2, views=2)
    method = modes.episodic_method(methods.Contrastive())
    keys = modes.sample_keys(jax.random.key(0), np.arange(4))
    batched = modes.episodic_batch(method, model, config, frozen, adapted, samples, keys)
    looped = [modes.episodic_single(method, model, config, frozen, adapted, {k: v[i] for k, v in samples.items()},
                                    keys[i]) for i in range(4)]
    np.testing.assert_allclose(batched, np.stack(looped), atol=1e-5)
    source = modes.unbatch(modes.predict_batches(model, frozen, adapted, modes.batched(samples, 4)), 4)
    assert not np.allclose(batched, source, atol=1e-4)  # the adaptation did something


def test_episodic_results_do_not_depend_on_the_batch(setup):
    model, frozen, adapted = setup
    method = methods.Contrastive()
    samples = make_samples(8, seed=4)
    config = modes.EpisodicConfig(steps=2, views=2)
    rng = jax.random.key(7)
    whole = modes.episodic_predict(method, model, frozen, adapted, samples, rng, config, batch_size=4)
    # the same samples, reordered: each in another position, with other batch mates
    order = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    mates = {k: v[order] for k, v in samples.items()}
    outs = []
    for b in range(0, 8, 4):
        part = {k: v[b:b + 4] for k, v in mates.items()}
        keys = modes.sample_keys(rng, order[b:b + 4])
        outs.append(modes.episodic_batch(modes.episodic_method(method), model, config, frozen, adapted, part, keys))
    reordered = np.concatenate(outs)
    np.testing.assert_allclose(reordered, whole[order], atol=1e-5)


def test_episodic_compiles_once_per_shape(setup):
    model, frozen, adapted = setup
    config = modes.EpisodicConfig(steps=2, views=2)
    method = modes.episodic_method(methods.Contrastive())
    modes.episodic_batch.clear_cache()
    for seed in range(3):
        samples = make_samples(4, seed=seed)
        modes.episodic_batch(method, model, config, frozen, adapted, samples,
                             modes.sample_keys(jax.random.key(seed), np.arange(4)))
    assert modes.episodic_batch._cache_size() == 1


def test_online_adapts_then_predicts_each_batch(setup):
    model, frozen, adapted = setup
    stream = make_samples(10, seed=5)
    predictions, final = modes.adapt_online(methods.Contrastive(), model, frozen, adapted, stream, 4,
                                            jax.random.key(0))
    assert predictions.shape == (10,)
    source = modes.unbatch(modes.predict_batches(model, frozen, adapted, modes.batched(stream, 4)), 10)
    np.testing.assert_allclose(predictions[:4] == source[:4], False)  # even the first batch is adapted first
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(adapted)))


def test_casp_offline_takes_the_papers_snapshots(setup, caplog):
    model, frozen, adapted = setup
    # placed on a device as params restored from a checkpoint are (jax.Arrays committed to it)
    frozen, adapted = jax.device_put((frozen, adapted), jax.devices()[0])
    data = make_samples(30, seed=6)
    config = modes.OfflineConfig(epochs=4, snapshot_every=2, pseudo_epochs=2, batch_size=8)
    modes.adapt_epoch.clear_cache()
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.DEBUG, logger="jax"):
            result = modes.casp_offline(model, frozen, adapted, data, config, jax.random.key(0))
    finally:
        jax.config.update("jax_log_compiles", False)
    assert result.snapshots.shape == (3, 30)  # before adaptation and after epochs 2 and 4
    assert result.selected.sum() == np.sum(result.selected) and 25 <= result.selected.sum() <= 29
    assert len(result.losses) == 4 + 2
    # one program per stage (contrastive, pseudo-label), each reused by the stage's later epochs
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(adapt_epoch)")]
    assert len(compiled) == 2, [m[:200] for m in compiled]


def test_feature_alignment_pulls_statistics_towards_the_source(setup):
    model, frozen, adapted = setup
    source = modes.batched(make_samples(32, seed=8), 16)
    stats = methods.feature_statistics(model, optim.merge_params(adapted, frozen),
                                       [{k: v[i] for k, v in source.items()} for i in range(2)])
    target = {k: v * 1.5 + 0.5 if k in msa.MODALITIES else v for k, v in make_samples(32, seed=9).items()}
    method = methods.FeatureAlignment(stats)
    batch = {k: jnp.asarray(v) for k, v in target.items()}
    loss = jax.jit(lambda adapted: method.loss(model, frozen, adapted, batch, jax.random.key(0))[0])
    before = float(loss(adapted))
    config = modes.OfflineConfig(epochs=20, batch_size=32, optimizer=core.OptimizerConfig(learning_rate=1e-2))
    result = modes.adapt_offline(method, model, frozen, adapted, target, config, jax.random.key(0))
    after = float(loss(result.adapted))
    assert after < 0.9 * before  # LayerNorms move the branches, not the residual stream: part of the gap


def test_sentiment_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    labels = np.round(rng.uniform(-3, 3, 200) * 2) / 2  # includes exact zeros, as MOSI's labels do
    preds = labels + rng.normal(0, 0.8, 200)
    m = metrics.sentiment_metrics(preds, labels)
    assert m["mae"] == pytest.approx(np.abs(preds - labels).mean(), rel=1e-5)
    assert m["corr"] == pytest.approx(np.corrcoef(preds, labels)[0, 1], rel=1e-4)
    clip_round = lambda x, r: np.round(np.clip(x, -r, r))
    assert m["acc7"] == pytest.approx((clip_round(preds, 3) == clip_round(labels, 3)).mean())
    assert m["acc5"] == pytest.approx((clip_round(preds, 2) == clip_round(labels, 2)).mean())
    assert m["acc2_has0"] == pytest.approx(((preds >= 0) == (labels >= 0)).mean())
    nz = labels != 0
    assert m["acc2_non0"] == pytest.approx(((preds[nz] > 0) == (labels[nz] > 0)).mean())
    assert m["acc2_reference"] == pytest.approx(((preds > 0) == (labels > 0)).mean())
    # weighted F1 of the non-0 variant, by hand
    truth, guess = labels[nz] > 0, preds[nz] > 0
    f1s, supports = [], []
    for c in (False, True):
        tp = np.sum((guess == c) & (truth == c))
        f1s.append(2 * tp / (2 * tp + np.sum((guess == c) & (truth != c)) + np.sum((guess != c) & (truth == c))))
        supports.append(np.sum(truth == c))
    assert m["f1_non0"] == pytest.approx(np.dot(f1s, supports) / np.sum(supports))
    # summed over batches (as the trainer's evaluation does) = computed at once
    stats = [metrics.sentiment_stats(jnp.asarray(preds[i:i + 64]), jnp.asarray(labels[i:i + 64]))
             for i in range(0, 200, 64)]
    summed = jax.tree.map(lambda *x: sum(x), *stats)
    assert metrics.sentiment_metrics_from_stats(summed) == pytest.approx(m, rel=1e-5)


def test_monitor_signals_thresholds_and_the_unmonitored_equivalence(setup, tmp_path):
    """`tta.monitor`: with no threshold crossed the monitored stream is plain online adaptation, bit for bit;
    a new calibration reuses the compiled scan (thresholds are traced); a silent modality is far from the
    source's statistics; a tight drift limit resets; the audit log has a line per batch."""
    import json

    from jaxemo.tta import monitor

    model, frozen, adapted = setup
    method = methods.Contrastive()
    # the stream, batch size and optimizer of test_online_adapts_then_predicts_each_batch: its program is reused
    stream = make_samples(10, seed=5)
    source = make_samples(12, seed=4)  # three batches of 4, as the stream: one monitored program for both
    optimizer = core.OptimizerConfig()
    rng = jax.random.key(0)
    stats = jax.device_get(jax.jit(monitor.input_statistics)(dict(source, mask=np.ones(12, bool))))
    plain, _ = modes.adapt_online(method, model, frozen, adapted, stream, 4, rng)
    open_limits = monitor.Thresholds(np.inf, np.inf, 0.0, np.inf, np.inf)
    watched, _, audit = monitor.adapt_online_monitored(method, model, frozen, adapted, stream, 4, rng, open_limits,
                                                       stats, 1, optimizer)
    np.testing.assert_array_equal(watched, plain)
    assert audit.counts() == {"adapt": 3, "skip": 0, "reset": 0} and (np.diff(audit.drift) > 0).all()

    thresholds, _ = monitor.calibrate(method, model, frozen, adapted, source, 4, rng, 1, optimizer)
    assert thresholds.spread_min < thresholds.spread_max and thresholds.drift_max > 0
    silent = dict(stream, audio=np.zeros_like(stream["audio"]))
    silent_shift = monitor.shift(monitor.input_statistics(dict(silent, mask=np.ones(10, bool))), stats)
    assert silent_shift > 5 * thresholds.shift_max / monitor.MonitorConfig().shift_factor
    tight = dataclasses.replace(thresholds, drift_max=1e-9, shift_max=np.inf, loss_max=np.inf)
    # every update rejected: the snapshot stays the source's params
    _, final, audit = monitor.adapt_online_monitored(method, model, frozen, adapted, stream, 4, rng, tight, stats,
                                                     1, optimizer)
    assert audit.counts()["reset"] == 3 and all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(adapted)))
    assert monitor._monitored_scan._cache_size() == 1  # three sets of thresholds, one program
    monitor.write_audit(audit, str(tmp_path / "audit.jsonl"))
    lines = [json.loads(line) for line in open(tmp_path / "audit.jsonl")]
    assert len(lines) == 3 and lines[0]["decision"] == "reset" and set(lines[0]["signals"]) == {
        "shift", "loss", "spread", "drift"}
    with pytest.raises(ValueError, match="reset_to"):
        monitor.MonitorConfig(reset_to="yesterday")


def test_episodic_monitor_rejects_per_sample(setup, tmp_path):
    """The episodic mode's per-sample rule (`monitor.episodic_predict_monitored`): with no limit it is plain
    episodic adaptation; calibrated on source samples, silent samples are skipped (the source's prediction)
    and clean ones adapted, in one batch; a tight drift limit rejects every update; one program for every set
    of thresholds."""
    import json

    from jaxemo.tta import monitor

    model, frozen, adapted = setup
    method = methods.Contrastive()
    config = modes.EpisodicConfig(steps=2, views=2)
    rng = jax.random.key(7)
    source = make_samples(8, seed=4)
    stream = make_samples(8, seed=6)
    for m in ("audio", "vision"):
        stream[m][4:] = 0  # the second half of the stream: two sensors silent
    monitor.episodic_monitored_batch.clear_cache()
    thresholds, stats = monitor.calibrate_episodic(method, model, frozen, adapted, source, rng, config, batch_size=4)
    assert all(np.isfinite(v) for v in dataclasses.asdict(thresholds).values())
    assert min(thresholds.shift_max, thresholds.drift_max, thresholds.change_max) > 0
    plain = modes.episodic_predict(method, model, frozen, adapted, stream, rng, config, batch_size=4)
    open_limits = monitor.SampleThresholds(np.inf, np.inf, np.inf, np.inf)
    unwatched, audit = monitor.episodic_predict_monitored(method, model, frozen, adapted, stream, rng, open_limits,
                                                          stats, config, batch_size=4)
    np.testing.assert_allclose(unwatched, plain, atol=1e-6)
    assert audit.counts() == {"adapt": 8, "skip": 0, "reset": 0}
    source_predictions = modes.unbatch(modes.predict_batches(model, frozen, adapted, modes.batched(stream, 4)), 8)
    watched, audit = monitor.episodic_predict_monitored(method, model, frozen, adapted, stream, rng, thresholds,
                                                        stats, config, batch_size=4)
    np.testing.assert_array_equal(audit.decision, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_allclose(watched[:4], plain[:4], atol=1e-6)
    np.testing.assert_allclose(watched[4:], source_predictions[4:], atol=1e-6)
    tight = dataclasses.replace(thresholds, drift_max=1e-9, shift_max=np.inf)
    rejected, audit = monitor.episodic_predict_monitored(method, model, frozen, adapted, stream, rng, tight, stats,
                                                         config, batch_size=4)
    assert audit.counts()["reset"] == 8
    np.testing.assert_allclose(rejected, source_predictions, atol=1e-6)
    assert monitor.episodic_monitored_batch._cache_size() == 1
    monitor.write_audit(audit, str(tmp_path / "samples.jsonl"))
    line = json.loads(open(tmp_path / "samples.jsonl").readline())
    assert line["sample"] == 0 and set(line["signals"]) == {"shift", "loss", "drift", "change"}
