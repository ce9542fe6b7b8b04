"""The AGT MER-SEMI pipeline (`jaxemo.systems.agt`, `experiments/agt_mer.py`): self-training and the
prior-adjusted vote each beat the supervised ensemble on a pool with a shifted class prior; the EM prior; the
MER2024 feature-folder layout end to end; the parts (pseudo-label selection, draws, folds, scores)."""

import csv
import json
import os

import jax
import numpy as np
import pytest
from ml_collections import config_dict
from sklearn.metrics import f1_score, recall_score

from experiments import agt_mer
from experiments.configs import agt_mer as agt_config
from jaxemo.data.synthetic_sentiment import make_mer
from jaxemo.systems.agt import cv, data as data_lib, selftrain, semi
from jaxemo.systems.agt import task as task_lib
from jaxemo.train import sharding

def one_device():
    return sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])


def small_config(**overrides):
    """The tiny recipe with the AGT only, two draws of one shape (one population per round), 12 epochs, one
    self-training round (margins checked over seeds 0-2: each method beats the supervised model by >= 0.031).
    The round searches both draws again (`redraw`): its population has round 0's shapes and reuses its
    compiled programs (on seed 0 its pool scores equal those of retraining the best draw alone, the default,
    which the feature-folder test below runs)."""
    config = agt_config.get_config("tiny")
    with config.unlocked():
        config.model_names = ("agt",)
        config.models.agt.search = config_dict.ConfigDict(dict(width=(32,), dropout=(0.1,),
                                                               learning_rate=(1e-3, 3e-4)))
        config.cv.draws = 2
        config.num_epochs = 12
        config.self_training.rounds = 1
        config.self_training.redraw = True
        for key, value in overrides.items():
            config[key] = value
    return config


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("agt"))
    config = small_config()
    return config, workdir, agt_mer.run(config, workdir, mesh=one_device())


def test_self_training_and_the_prior_vote_each_beat_the_supervised_model(synthetic_run):
    _, _, results = synthetic_run
    pool = results["pool_scores"]
    supervised = pool["supervised"]["weighted_f1"]
    assert pool["self_trained"]["weighted_f1"] > supervised + 0.03, pool
    assert pool["prior_vote_supervised"]["weighted_f1"] > supervised + 0.03, pool
    assert pool["prior_vote"]["weighted_f1"] > supervised + 0.03, pool
    # the pseudo-labels are mostly right, and balanced by the quota
    for row in results["pseudo_labels"]:
        assert row["accuracy"] > 0.7 and row["added"] > 0
        counts = [row[f"count/{c}"] for c in data_lib.CLASSES]
        assert max(counts) <= 450 // 6


def test_em_prior_is_near_the_true_pool_prior(synthetic_run):
    """Stated tolerance: L1 distance <= 0.2 and no class off by more than 0.07 (pool of 1,500)."""
    _, _, results = synthetic_run
    t = results["target_prior"]
    assert t["how"] == "em"
    assert t["l1_error"] <= 0.2 and t["max_error"] <= 0.07, t
    true = np.asarray(t["true_pool_prior"])
    labelled = np.asarray(results["members"][0]["train_prior"])
    # the estimate moved from the labelled prior towards the pool's
    assert np.abs(np.asarray(t["prior"]) - true).sum() < np.abs(labelled - true).sum()


def test_reports_submission_and_resume(synthetic_run):
    config, workdir, results = synthetic_run
    for name in ("results.json", "members.csv", "draws.csv", "pseudo_labels.csv", "confusion.png",
                 "predictions.npz"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "submission.csv")) as f:
        rows = list(csv.reader(f))
    pool = make_mer(config.data, "unlabeled", config.seed)
    assert rows[0] == ["name", "discrete"] and len(rows) == len(pool) + 1
    assert rows[1][0] == pool[0]["id"].decode() and {r[1] for r in rows[1:]} <= set(data_lib.CLASSES)
    with open(os.path.join(workdir, "draws.csv")) as f:
        draws = list(csv.DictReader(f))
    assert len(draws) == 2 + 2  # round 0 and round 1 (`redraw`): both draws
    # MERTools' report: the folds' mean accuracy beside their mean weighted F1, per draw and per member
    for draw in draws:
        assert 0 < float(draw["cv_accuracy"]) <= 1 and 0 < float(draw["cv_weighted_f1"]) <= 1
    selected = [float(d["cv_accuracy"]) for d in draws if d["selected"] == "True"]
    assert sorted(selected) == sorted(m["cv_accuracy"] for m in results["members"])
    # a rerun finds every group finished (with its logits) and reports the same
    again = agt_mer.run(config, workdir, mesh=one_device())
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)


def test_threshold_sensitivity_population(synthetic_run, tmp_path):
    """`experiments.agt_thresholds` after the pipeline: round 0 read back from its workdir (the same supervised
    scores), three fixed thresholds retrained as one population; precision on the pool and out of fold rise
    with the threshold while the selection shrinks; every class's coverage is a share."""
    from experiments import agt_thresholds

    config, workdir, pipeline = synthetic_run
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.self_training.threshold_mode = "fixed"
        config.num_epochs = 3  # the settings' trainings (round 0 is read back: a population resumes by trial)
    output = str(tmp_path / "thresholds")
    results = agt_thresholds.run(config, workdir, output, (0.7, 0.85, 0.95), (0,), mesh=one_device())
    assert results["supervised"]["pool_weighted_f1"] == pipeline["pool_scores"]["supervised"]["weighted_f1"]
    rows = results["settings"]
    assert [r["threshold"] for r in rows] == [0.7, 0.85, 0.95]
    for low, high in zip(rows, rows[1:]):
        assert high["precision"] > low["precision"] and high["oof_precision"] > low["oof_precision"], rows
        assert high["added"] < low["added"]
    for row in rows:
        assert all(v is None or 0 <= v <= 1 for v in row["coverage_per_class"].values())
        assert 0 < row["cv_weighted_f1"] <= 1 and 0 < row["pool_final_weighted_f1"] <= 1
    with open(os.path.join(output, "thresholds.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and f"precision/{data_lib.CLASSES[0]}" in table[0]
    assert os.path.getsize(os.path.join(output, "thresholds.png")) > 0
    # the settings' trials are one population of settings x folds, resumed from its finished groups
    trials = json.load(open(os.path.join(output, "agt", "dropout0.1_width32", "trials.json")))
    assert len(trials) == 3 * 5 and {t["variant"] for t in trials} == {r["setting"] for r in rows}
    assert agt_thresholds.run(config, workdir, output, (0.7, 0.85, 0.95), (0,), mesh=one_device()) == results


def test_modality_failure_sweep_of_the_round0_ensemble(synthetic_run, tmp_path):
    """`experiments.agt_robustness`: the best draw retrained reproduces round 0's out-of-fold logits (checked
    inside) and its clean pool score is the pipeline's supervised one; every feature's failure lowers the
    scores, more as the noise grows."""
    from experiments import agt_robustness

    config, workdir, pipeline = synthetic_run
    result = agt_robustness.run(config, workdir, str(tmp_path / "robustness"), snr_db=(10, 0, -10),
                                kinds=("absent", "noise"), mesh=one_device())
    rows = result["rows"]
    clean = rows[0]
    assert clean["kind"] == "clean" and result["metric"] == "pool_weighted_f1"
    assert clean["pool_weighted_f1"] == pytest.approx(pipeline["pool_scores"]["supervised"]["weighted_f1"],
                                                      abs=1e-9)
    assert len(rows) == 1 + 3 * (1 + 3)  # three utterance-level features: absent and three SNRs each
    for feature in ("chinese-hubert-large", "clip-vit-large-patch14", "Baichuan-13B-Base"):
        mine = [r for r in rows if r["modality"] == feature]
        noise = [clean] + [r for r in mine if r["kind"] == "noise"]
        for metric in ("pool_weighted_f1", "oof_weighted_f1"):
            curve = [r[metric] for r in noise]
            assert all(b <= a + 0.01 for a, b in zip(curve, curve[1:])) and curve[-1] < curve[0], (feature, curve)
            assert next(r[metric] for r in mine if r["kind"] == "absent") < clean[metric], (feature, metric)
    for name in ("csv", "json", "png"):
        assert os.path.getsize(result["paths"][name]) > 0


def test_mer2024_feature_folder_end_to_end(tmp_path):
    """The real on-disk layout (features/<model>-UTT/<name>.npy, label-disdim.csv), built by the TFDS builder
    and run through the whole pipeline: predictions for every pool sample in the submission layout."""
    root = tmp_path / "mer"
    synthetic = config_dict.ConfigDict(dict(train_size=60, eval_size=0, pool_size=30,
                                            feature_dims=dict(agt_config.get_config("tiny").data.feature_dims)))
    names = {}
    for split in ("train", "unlabeled"):
        source = make_mer(synthetic, split, 0)
        names[split] = []
        for i in range(len(source)):
            e = source[i]
            name = f"sample_{split[0]}{i:05d}"
            names[split].append((name, int(e["label"])))
            for feature, value in e["features"].items():
                folder = root / "features" / f"{feature}-UTT"
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{name}.npy", value)
    with open(root / "label-disdim.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "discrete", "valence"])
        for name, label in names["train"]:
            writer.writerow([name, data_lib.CLASSES[label], "0"])
    config = small_config()
    with config.unlocked():
        # The MERTools baseline (the quicker compile) in the shapes of the benchmark's dry run (its feature dims,
        # hidden size, dropout, 2 draws x 2 folds then 2 trials): the two share their compiled programs.
        config.model_names = ("attention",)
        config.models.attention.search = config_dict.ConfigDict(dict(hidden_dim=(16,), dropout=(0.3,),
                                                                     learning_rate=(1e-3, 1e-4)))
        config.data = config_dict.ConfigDict(dict(name="mer2024", manual_dir=str(root),
                                                  data_dir=str(tmp_path / "tfds"), builder_config="top1"))
        config.cv.folds = 2
        config.num_epochs = 2
        config.self_training.rounds = 1
        config.self_training.redraw = False  # round 1 retrains the selected draw alone: 2 trials
        config.self_training.per_round = 12
    workdir = str(tmp_path / "run")
    results = agt_mer.run(config, workdir, mesh=one_device())
    assert results["labelled"] == 60 and results["pool"] == 30
    assert results["pool_scores"] == {}  # the pool's labels are unknown
    assert len(results["target_prior"]["prior"]) == 6 and "l1_error" not in results["target_prior"]
    with open(os.path.join(workdir, "submission.csv")) as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == [n for n, _ in names["unlabeled"]]
    assert os.path.getsize(os.path.join(workdir, "confusion.png")) > 0  # out-of-fold, on the labelled set


def test_select_quota_thresholds_and_availability():
    probs = np.full((8, 6), 0.02)
    winners = [0, 0, 0, 1, 1, 5, 2, 0]
    confidence = [0.95, 0.9, 0.85, 0.99, 0.5, 0.6, 0.97, 0.99]
    for i, (c, p) in enumerate(zip(winners, confidence)):
        probs[i, c] = p
    available = np.ones(8, bool)
    available[7] = False  # added in an earlier round
    idx, labels = selftrain.select(probs, available, 0.8, per_round=12, balance="quota")  # quota 2 per class
    assert idx.tolist() == [0, 1, 3, 6] and labels.tolist() == [0, 0, 1, 2]
    idx, _ = selftrain.select(probs, available, 0.8, per_round=3, balance="none")  # the 3 most confident
    assert idx.tolist() == [0, 3, 6]
    per_class = [0.99, 0.8, 0.8, 0.8, 0.8, 0.5]
    idx, labels = selftrain.select(probs, available, per_class, per_round=12, balance="quota")
    assert idx.tolist() == [3, 5, 6] and labels.tolist() == [1, 5, 2]
    # adaptive: class 5 never reaches 0.8, so its threshold drops to 0 and it gets its quota
    thresholds = selftrain.class_thresholds(probs, available, 0.8, "adaptive")
    assert thresholds[5] == 0 and thresholds[0] == pytest.approx(0.8)  # class 0 is the best learned
    assert thresholds[1] == pytest.approx(0.8 * (1 / 3) / (2 - 1 / 3))  # 1 confident sample against 3
    idx, labels = selftrain.select(probs, available, 0.8, per_round=12, balance="quota", mode="adaptive")
    assert 5 in idx.tolist() and 4 in idx.tolist()
    with pytest.raises(ValueError, match="balance"):
        selftrain.select(probs, available, 0.8, 6, balance="equal")
    with pytest.raises(ValueError, match="thresholds"):
        selftrain.select(probs, available, [0.5, 0.5], 6)


def test_draws_folds_and_sets():
    search = {"hidden_dim": (64, 128, 256), "dropout": (0.2, 0.3), "learning_rate": (1e-3, 1e-4)}
    draws = cv.draw_hyperparams(search, 50, seed=3)
    assert draws == cv.draw_hyperparams(search, 50, seed=3) and len(draws) == 50
    assert {d["hidden_dim"] for d in draws} == {64, 128, 256}
    folds = data_lib.folds(23, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    with pytest.raises(ValueError, match="num_folds"):
        data_lib.folds(3, 5, 0)
    # MERTools' own cut (`random_split_indexes`): int(n / 5) per fold, the last fold takes the rest
    reference = data_lib.folds(1003, 5, seed=0, sizes="reference")
    assert [len(f) for f in reference] == [200, 200, 200, 200, 203]
    assert [len(f) for f in data_lib.folds(1003, 5, seed=0)] == [201, 201, 201, 200, 200]
    assert sorted(np.concatenate(reference).tolist()) == list(range(1003))
    with pytest.raises(ValueError, match="cv.fold_sizes='mertools'"):
        data_lib.folds(23, 5, 0, sizes="mertools")
    labelled = data_lib.MerSet({"a": np.arange(12, dtype=np.float32).reshape(6, 2)}, np.arange(6) % 3,
                               [f"s{i}" for i in range(6)], {"a": np.arange(1, 7)})
    part = labelled.take([4, 1], labels=[2, 2])
    assert part.ids == ["s4", "s1"] and part.labels.tolist() == [2, 2]
    batch = labelled.batch(4, 6, 4)
    assert batch["features/a"].shape == (4, 2) and batch["lengths/a"].tolist() == [5, 6, 1, 1]
    assert set(labelled[0]) == {"features/a", "lengths/a", "label"}
    joined = data_lib.concat(labelled, part)
    assert len(joined) == 8 and joined.ids[-1] == "s1"
    prior = data_lib.class_prior([0, 0, 1], num_classes=3)
    np.testing.assert_allclose(prior, [2 / 4, 1 / 4, 1 / 4])  # an absent class counts once: no zero ratio


def test_mertools_frame_modes_shrink_and_align_frames():
    """MERTools' `func_mapping_feature` (front zeros to a multiple of the target, then the mean of each run; a
    shorter input front-padded, here left as padding), `feature_scale_compress` (ceil(T / scale) frames) and
    `align_to_text`, as `config.frames` applies them; values worked out by hand from the reference's rule."""
    from jaxemo.systems.agt import frames

    x = np.arange(1, 11, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], np.float32)  # 10 frames, D = 2
    mapped, length = frames.map_frames(x, 7)  # 4 zeros in front, runs of 2: the first two frames are zero
    assert length == 7 and mapped.shape == (7, 2)
    np.testing.assert_allclose(mapped[:, 0], [0, 0, 1.5, 3.5, 5.5, 7.5, 9.5])
    np.testing.assert_allclose(frames.map_frames(x, 5)[0][:, 0], [1.5, 3.5, 5.5, 7.5, 9.5])  # exact runs
    short, length = frames.map_frames(x[:3], 5)
    assert length == 5 and np.array_equal(short, x[:3])  # the reference's 2 front zeros are padding here
    thirteen = np.arange(1, 14, dtype=np.float32)[:, None]
    np.testing.assert_allclose(frames.shrink(thirteen, 6)[:, 0], [(1 + 2 + 3) / 5, 30 / 5, 55 / 5])  # 3 frames

    rng = np.random.default_rng(0)

    def merset(n, audio_lengths, text_lengths):
        width = 30
        features = {"audio": rng.standard_normal((n, width, 2)).astype(np.float32),
                    "text": rng.standard_normal((n, width, 3)).astype(np.float32),
                    "clip-vit": rng.standard_normal((n, 4)).astype(np.float32)}
        lengths = {"audio": np.asarray(audio_lengths, np.int32), "text": np.asarray(text_lengths, np.int32)}
        return data_lib.MerSet(features, np.zeros(n, np.int32), [f"s{i}" for i in range(n)], lengths)

    labelled, pool = merset(2, [30, 7], [12, 18]), merset(1, [25], [6])
    unaligned = frames.transform_sets([labelled, pool], scale=12)  # frm_unalign
    assert unaligned[0].lengths["audio"].tolist() == [3, 1] and unaligned[1].lengths["audio"].tolist() == [3]
    assert unaligned[0].features["audio"].shape[1] == unaligned[1].features["audio"].shape[1] == 3  # one width
    np.testing.assert_allclose(unaligned[0].features["audio"][1, 0], labelled.features["audio"][1, :7].mean(0),
                               rtol=1e-6)  # 7 frames to ceil(7 / 12) = 1: a whole run, no zeros
    aligned_l, aligned_p = frames.transform_sets([labelled, pool], scale=6, align="text")  # frm_align
    assert aligned_l.lengths["text"].tolist() == [2, 3] and aligned_p.lengths["text"].tolist() == [1]
    # audio shrunk to 5, 2 and 5 frames, then mapped to the text's 2, 3 and 1: pooled, kept (padding), pooled
    assert aligned_l.lengths["audio"].tolist() == [2, 2] and aligned_p.lengths["audio"].tolist() == [1]
    assert aligned_l.features["audio"].shape[1] == 3  # the reference's mapped length 3 sets the width
    np.testing.assert_array_equal(aligned_l.features["clip-vit"], labelled.features["clip-vit"])  # utterance level
    assert frames.transform_sets([labelled], 1, "") == [labelled]
    with pytest.raises(ValueError, match="frame_scale=0"):
        frames.transform_sets([labelled], 0)
    with pytest.raises(ValueError, match="guide='video'"):
        frames.transform_sets([labelled], 6, "video")  # the video feature is utterance-level
    config = agt_config.get_config("tiny")
    config.frames.scale = 6
    with pytest.raises(ValueError, match="utterance-level"):
        data_lib.load(config)  # the synthetic features are utterance vectors


def test_scores_match_sklearn():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    out = semi.scores(predicted, labels)
    assert out["weighted_f1"] == pytest.approx(f1_score(labels, predicted, average="weighted"))
    assert out["accuracy"] == pytest.approx((labels == predicted).mean())
    recall = recall_score(labels, predicted, average=None, labels=range(6))
    for name, r in zip(data_lib.CLASSES, recall):
        assert out[f"recall/{name}"] == pytest.approx(r)


def test_frame_level_task_masks_padding():
    """A frame-level MerSet (lengths/<name>) trains the LSTM baseline; padding beyond a length changes nothing."""
    model = config_dict.ConfigDict(dict(name="attention", hidden_dim=8, dropout=0.0, modalities=("audio", "text")))
    config = task_lib.trial_config(agt_config.get_config("tiny"), model, frame_features=("audio",),
                                   feature_dims={"audio": (5, 4), "text": (0, 3)})
    task = task_lib.build_task(config)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((3, 5, 4)).astype(np.float32)
    batch = {"features/audio": audio, "features/text": rng.standard_normal((3, 3)).astype(np.float32),
             "lengths/audio": np.array([5, 2, 3]), "label": np.array([0, 1, 2], np.int32)}
    import flax.linen as nn

    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), batch)["params"])  # jitted: one compile, not one per op
    logits = jax.jit(task.logits)(params, batch)
    padded = dict(batch)
    padded["features/audio"] = audio.copy()
    padded["features/audio"][1, 2:] = 7.0  # beyond sample 1's length
    np.testing.assert_allclose(jax.jit(task.logits)(params, padded), logits, atol=1e-6)
    loss, _ = jax.jit(lambda p, b, k: task.loss(p, b, k, train=True))(params, batch, jax.random.key(1))
    assert np.isfinite(float(loss)) and task.flops_per_example > 0


def test_pipeline_benchmark_dry_run_writes_its_section(tmp_path):
    """The GPU suite's `agt` run, dry (test_gpu_suite does not start it again): population, fold by fold and
    MERTools' PyTorch loop over the same trials, and the section it writes."""
    from benchmarks import agt_pipeline, gpu_suite

    path = tmp_path / "BENCHMARKS.md"
    command = gpu_suite.command("agt", gpu_suite.parse_args(["--dry_run", f"--benchmarks_file={path}"]))
    assert command[1:3] == ["-m", "benchmarks.agt_pipeline"] and "--tiny" in command
    result = agt_pipeline.main(command[3:])
    totals = result["totals"]
    assert [totals[k][2] for k in ("population", "fold by fold", "PyTorch")] == [4 + 2] * 3
    assert all(totals[k][0] > 0 for k in totals)
    text = path.read_text()
    assert f"<!-- agt-pipeline-tiny-attention:{jax.default_backend()}" in text
    assert "| population | 6 |" in text and "| PyTorch | 6 |" in text


def test_whole_batch_reads_equal_the_grain_pipeline():
    """A population reads a MerSet fold through `pipeline.array_batches` (no per-example grain work): the
    batches are exactly those of `pipeline.train_dataset` over the same epoch-shuffled source."""
    from jaxemo.data import pipeline, sources
    from jaxemo.train.tasks import HostTransform

    rng = np.random.default_rng(0)
    merset = data_lib.MerSet({"a": rng.standard_normal((10, 3)).astype(np.float32)}, np.arange(10) % 6,
                             [str(i) for i in range(10)], {"a": np.arange(10)})
    source = sources.EpochShuffled(merset, seed=5, epochs=3)
    keys = ("features/a", "lengths/a", "label")
    fast = pipeline.array_batches(source, 4, keys)
    slow = iter(pipeline.train_dataset(source, 4, seed=5, process_index=0, process_count=1,
                                       transform=HostTransform(None, keys)))
    for _ in range(9):  # past the end of the 3 epochs: both wrap around
        a, b = next(fast), next(slow)
        assert set(a) == set(b) == set(keys)
        for k in keys:
            np.testing.assert_array_equal(a[k], b[k])
    assert not sources.EpochShuffled(list(range(4)), 0, 1).reads_batches  # rows read one by one: grain's path


def test_vote_given_and_none_and_calibration():
    """The vote over members: "none" averages the calibrated probabilities, "given" re-expresses each member's
    under the given prior from its own source prior; BCTS calibration lowers the out-of-fold NLL."""
    from jaxemo.systems.agt import prior

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 300)
    members = []
    for m in range(2):
        oof = 3.0 * rng.standard_normal((300, 6)) + 4.0 * np.eye(6)[labels]  # over-confident logits
        members.append(cv.Member("m", m, 0, {}, 0.5, oof.astype(np.float32),
                                 rng.standard_normal((40, 6)).astype(np.float32),
                                 data_lib.class_prior(labels), []))
    semi.calibrate(members, labels, "none")
    plain, target = semi.vote(members, "none")
    assert target is None
    np.testing.assert_allclose(plain, np.mean([semi.softmax(m.pool_logits) for m in members], 0), atol=1e-6)
    given = (0.1, 0.1, 0.1, 0.1, 0.1, 0.5)
    voted, target = semi.vote(members, "given", given)
    expected = np.mean([prior.adjust_probs(semi.softmax(m.pool_logits), m.train_prior, given) for m in members], 0)
    np.testing.assert_allclose(voted, expected, atol=1e-6)
    np.testing.assert_allclose(target, given)
    with pytest.raises(ValueError, match="target_prior"):
        semi.vote(members, "given", ())

    def nll(member):
        p = member.probs(member.oof_logits)
        return -np.mean(np.log(p[np.arange(300), labels]))

    before = nll(members[0])
    semi.calibrate(members, labels, "bcts")
    assert nll(members[0]) < before and members[0].scale < 1  # a temperature above 1 for over-confidence
    np.testing.assert_allclose(members[0].source_prior, data_lib.class_prior(labels))
    with pytest.raises(ValueError, match="calibrate"):
        semi.calibrate(members, labels, "platt")


def test_roles_of_mertools_feature_names():
    """MERTools' folder names: "chinese-hubert-large" holds the text keyword "bert" but is audio."""
    from jaxemo.models import agt

    names = ("Baichuan-13B-Base", "chinese-hubert-large", "clip-vit-large-patch14")
    assert [agt.resolve_guide(g, names) for g in ("audio", "video", "text")] == [names[1], names[2], names[0]]
    assert agt.role_of("chinese-roberta-wwm-ext-large") == "text" and agt.role_of("something-else") is None
