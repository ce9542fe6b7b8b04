"""Sentiment (MMSA / CASP pickles) and MER2024 (MERTools feature folders) builders, and their synthetic twins.

Fixtures are tiny files in the real layouts, written to tmp_path; builds and reads never import TensorFlow.
"""

import csv
import os
import pickle
import sys

import ml_collections
import numpy as np
import pytest

from jaxemo.data import builders, sources
from jaxemo.data.builders import DataError
from jaxemo.data.builders.mer2024 import Mer2024Config
from jaxemo.data.synthetic_sentiment import MER_CLASSES, make_mer, make_sentiment

MOSI_DIMS = (768, 5, 20)
SIMS_DIMS = (768, 33, 709)
SIZES = {"train": 5, "valid": 2, "test": 3}


# ----------------------------------------------------------------------------------------------------------
# MMSA / CASP pickles


def mmsa_split(rng, n, seq_lens=(4, 7, 6), dims=MOSI_DIMS, label_range=3.0, unaligned=True, unimodal=False,
               prefix="clip"):
    """One split in MMSA's layout (thuiar/MMSA data_loader.py keys), float64 audio as in the release."""
    t_t, t_a, t_v = seq_lens
    part = {
        "raw_text": np.array([f"words of {prefix} {i}" for i in range(n)], dtype=object),
        "id": np.array([f"{prefix}{i}$_${i + 1}" for i in range(n)], dtype=object),
        "text": rng.standard_normal((n, t_t, dims[0])).astype(np.float32),
        "text_bert": np.ones((n, 3, t_t), np.float32),
        "audio": rng.standard_normal((n, t_a, dims[1])),
        "vision": rng.standard_normal((n, t_v, dims[2])).astype(np.float32),
        "regression_labels": rng.uniform(-label_range, label_range, n).astype(np.float32),
        "classification_labels": np.zeros(n, np.float32),
    }
    if unaligned:
        part["audio_lengths"] = list(rng.integers(1, t_a + 1, n))
        part["vision_lengths"] = rng.integers(1, t_v + 1, n)
    if unimodal:
        for m in "TAV":
            part[f"regression_labels_{m}"] = rng.uniform(-label_range, label_range, n).astype(np.float32)
    return part


def write_pickle(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        pickle.dump(data, f)
    return os.path.join(folder, name)


def mmsa_pickle(seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return {split: mmsa_split(rng, n, prefix=split, **kwargs) for split, n in SIZES.items()}


def read_all(name, config, manual_dir, data_dir, splits=tuple(SIZES)):
    return {s: builders.data_source(name, s, manual_dir=str(manual_dir), config=config, data_dir=str(data_dir))
            for s in splits}


def test_mosi_unaligned_pickle_builds_and_reads_back_in_order(tmp_path):
    data = mmsa_pickle()
    data["train"]["audio"][1, 2, 3] = -np.inf  # MMSA sets audio -inf to 0
    data["train"]["vision_lengths"][0] = 99  # longer than T: clipped to T and counted
    write_pickle(tmp_path / "mosi", "unaligned_50.pkl", data)
    sources = read_all("cmu_mosi", "unaligned_50", tmp_path / "mosi", tmp_path / "tfds")
    for split, source in sources.items():
        part = data[split]
        assert len(source) == SIZES[split]
        for i in range(len(source)):
            e = source[i]
            assert e["id"].decode() == part["id"][i]  # pickle row order is element order
            assert e["raw_text"].decode() == part["raw_text"][i]
            np.testing.assert_array_equal(e["text"], part["text"][i])
            audio = part["audio"][i].astype(np.float32)
            audio[audio == -np.inf] = 0
            np.testing.assert_array_equal(e["audio"], audio)
            np.testing.assert_array_equal(e["vision"], part["vision"][i])
            assert e["audio"].dtype == np.float32 and e["text"].shape == (4, 768)
            assert e["audio_length"] == part["audio_lengths"][i]
            assert e["vision_length"] == min(part["vision_lengths"][i], 6)
            assert np.float32(e["label"]) == part["regression_labels"][i]
            assert "label_T" not in e
    assert sources["train"][1]["audio"][2, 3] == 0
    info = builders.make_builder("cmu_mosi", "unaligned_50", str(tmp_path / "tfds")).info
    assert info.features["audio"].shape == (7, 5) and info.features["vision"].shape == (6, 20)
    meta = info.metadata
    assert meta["dims"] == {"text": 768, "audio": 5, "vision": 20}
    assert meta["seq_lens"] == {"text": 4, "audio": 7, "vision": 6}
    assert meta["label_range"] == [-3.0, 3.0] and meta["file"] == "unaligned_50.pkl"
    assert meta["audio_neg_inf_set_to_zero"]["train"] == 1
    assert meta["fallbacks"]["train"] == {"vision_length_clipped_to_6": 1}
    # once built, no manual_dir is needed: shapes and names come back from the written features.json
    again = builders.data_source("cmu_mosi", "test", config="unaligned_50", data_dir=str(tmp_path / "tfds"))
    np.testing.assert_array_equal(again[2]["vision"], data["test"]["vision"][2])
    assert "tensorflow" not in sys.modules


def test_mosei_aligned_lengths_are_full_sequences(tmp_path):
    data = mmsa_pickle(seq_lens=(5, 5, 5), dims=(768, 74, 35), unaligned=False)
    write_pickle(tmp_path / "mosei", "aligned_50.pkl", data)
    test = read_all("cmu_mosei", "aligned_50", tmp_path / "mosei", tmp_path / "tfds", ("test",))["test"]
    e = test[2]
    assert e["audio"].shape == (5, 74) and e["vision"].shape == (5, 35)
    assert e["audio_length"] == 5 and e["vision_length"] == 5
    np.testing.assert_allclose(e["audio"], data["test"]["audio"][2].astype(np.float32))


@pytest.mark.parametrize("config, scale", [("unaligned_39", 1.0), ("unaligned_39_scaled", 3.0)])
def test_sims_label_scale_is_a_config_property(tmp_path, config, scale):
    data = mmsa_pickle(seq_lens=(3, 4, 2), dims=SIMS_DIMS, label_range=1.0, unimodal=True)
    write_pickle(tmp_path / "sims", "unaligned_39.pkl", data)
    valid = read_all("ch_sims", config, tmp_path / "sims", tmp_path / "tfds", ("valid",))["valid"]
    for i in range(len(valid)):
        e = valid[i]
        np.testing.assert_allclose(e["label"], data["valid"]["regression_labels"][i] * scale, rtol=1e-6)
        for m in "TAV":
            np.testing.assert_allclose(e[f"label_{m}"], data["valid"][f"regression_labels_{m}"][i] * scale,
                                       rtol=1e-6)
    meta = builders.make_builder("ch_sims", config, str(tmp_path / "tfds")).info.metadata
    assert meta["label_range"] == [-scale, scale] and meta["label_scale"] == scale
    assert meta["native_label_range"] == [-1.0, 1.0] and meta["has_unimodal_labels"]


def casp_pickle(seed=0, dims=(12, 7, 9), seq_lens=(3, 5, 4), label_range=3.0):
    rng = np.random.default_rng(seed)
    return {split: {"text": rng.standard_normal((n, seq_lens[0], dims[0])).astype(np.float32),
                    "audio": rng.standard_normal((n, seq_lens[1], dims[1])).astype(np.float32),
                    "vision": rng.standard_normal((n, seq_lens[2], dims[2])).astype(np.float32),
                    "regression_labels": rng.uniform(-label_range, label_range, n).astype(np.float32)}
            for split, n in SIZES.items()}


def test_casp_pickle_any_dims(tmp_path):
    data = casp_pickle()
    write_pickle(tmp_path / "mosei", "casp.pkl", data)
    train = read_all("cmu_mosei", "casp", tmp_path / "mosei", tmp_path / "tfds", ("train",))["train"]
    e = train[3]
    assert set(e) == {"text", "audio", "vision", "audio_length", "vision_length", "label", "id"}
    assert e["id"] == b"train_00003" and e["audio_length"] == 5 and e["vision_length"] == 4
    np.testing.assert_array_equal(e["vision"], data["train"]["vision"][3])
    meta = builders.make_builder("cmu_mosei", "casp", str(tmp_path / "tfds")).info.metadata
    assert meta["dims"] == {"text": 12, "audio": 7, "vision": 9} and meta["layout"] == "casp"


def test_sims_casp_scaled(tmp_path):
    data = casp_pickle(label_range=1.0)
    write_pickle(tmp_path / "sims", "casp.pkl", data)
    test = read_all("ch_sims", "casp_scaled", tmp_path / "sims", tmp_path / "tfds", ("test",))["test"]
    np.testing.assert_allclose([test[i]["label"] for i in range(3)], data["test"]["regression_labels"] * 3,
                               rtol=1e-6)


def _drop(key, split):
    def edit(data):
        del data[split][key]
    return edit


def _set(split, key, value):
    def edit(data):
        data[split][key] = value(data[split][key])
    return edit


def _nan_vision(data):
    data["valid"]["vision"][1, 0, 3] = np.nan


@pytest.mark.parametrize("edit, field, words", [
    (_drop("audio", "valid"), "valid/audio", "missing key"),
    (_drop("vision_lengths", "train"), "train/vision_lengths", "missing key"),
    (lambda d: d.pop("test"), "test", "missing split"),
    (_set("train", "regression_labels", lambda x: np.r_[x, 0.0]), "train/regression_labels", "expected shape [5]"),
    (_set("test", "vision", lambda x: x[:, 0]), "test/vision", "rank 3"),
    (_set("train", "audio", lambda x: x[:4]), "train/audio", "4 rows"),
    (_set("train", "regression_labels", lambda x: np.r_[x[:2], 3.5, x[3:]]), "train/regression_labels",
     "row 2"),
    (_nan_vision, "valid/vision", "NaN at row 1"),
    (_set("valid", "audio", lambda x: np.zeros((2, 7, 74))), "valid/audio", "feature dim 74"),
    (_set("valid", "text", lambda x: np.zeros((2, 9, 768))), "valid/text", "differs from train"),
    (_set("train", "id", lambda x: x[:3]), "train/id", "3 ids for 5 rows"),
])
def test_malformed_mmsa_pickle_names_file_split_and_field(tmp_path, edit, field, words):
    data = mmsa_pickle()
    edit(data)
    path = write_pickle(tmp_path / "mosi", "unaligned_50.pkl", data)
    with pytest.raises(DataError) as error:
        builders.prepare("cmu_mosi", str(tmp_path / "mosi"), "unaligned_50", str(tmp_path / "tfds"))
    assert error.value.path == path and error.value.field == field, str(error.value)
    assert words in error.value.problem, str(error.value)
    assert not builders.make_builder("cmu_mosi", "unaligned_50", str(tmp_path / "tfds")).is_prepared()


def test_sims_native_config_rejects_labels_already_scaled(tmp_path):
    data = mmsa_pickle(seq_lens=(3, 4, 2), dims=SIMS_DIMS, label_range=1.0, unimodal=True)
    data["test"]["regression_labels_A"] = data["test"]["regression_labels_A"] * 3 + 0.5
    path = write_pickle(tmp_path / "sims", "unaligned_39.pkl", data)
    with pytest.raises(DataError, match="outside \\[-1, 1\\]") as error:
        builders.prepare("ch_sims", str(tmp_path / "sims"), "unaligned_39", str(tmp_path / "tfds"))
    assert error.value.path == path and error.value.field == "test/regression_labels_A"


def test_missing_pickle_names_the_file(tmp_path):
    (tmp_path / "mosi").mkdir()
    (tmp_path / "mosi" / "aligned_50.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="unaligned_50.pkl: unaligned_50 pickle: file not found"):
        builders.prepare("cmu_mosi", str(tmp_path / "mosi"), "unaligned_50", str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="aligned_50.pkl: pickle: cannot be unpickled"):
        builders.prepare("cmu_mosi", str(tmp_path / "mosi"), "aligned_50", str(tmp_path / "tfds"))


# ----------------------------------------------------------------------------------------------------------
# MER2024 feature folders


MER_FEATURES = {"chinese-hubert-large": 6, "clip-vit-large-patch14": 4, "Baichuan-13B-Base": 5}
LABELLED = {"sample_00000001": "happy", "sample_00000002": "worried", "sample_00000003": "neutral"}
POOL = ["sample_00000010", "sample_00000011", "sample_00000012"]


def mer_dir(root, labels="csv", frames=False, seed=0):
    rng = np.random.default_rng(seed)
    values = {}
    for feature, dim in MER_FEATURES.items():
        for level in ("UTT", "FRA") if frames else ("UTT",):
            folder = root / "features" / f"{feature}-{level}"
            folder.mkdir(parents=True)
            for k, name in enumerate(list(LABELLED) + POOL):
                value = rng.standard_normal(dim if level == "UTT" else (k + 2, dim)).astype(np.float32)
                np.save(folder / f"{name}.npy", value)
                values[feature, level, name] = value
    # a pool sample with only one feature (dropped and counted), unrelated folders and files are ignored
    np.save(root / "features" / "chinese-hubert-large-UTT" / "sample_00000099.npy", np.zeros(6, np.float32))
    (root / "features" / "notes.txt").write_text("x")
    if labels == "csv":
        with open(root / "label-disdim.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "discrete", "valence"])
            for name, label in LABELLED.items():
                writer.writerow([name, label, "0.5"])
    else:
        np.savez_compressed(root / "label-6way.npz",
                            train_corpus={name: {"emo": label} for name, label in LABELLED.items()},
                            test1_corpus={name: {"emo": "neutral"} for name in POOL})
    return values


@pytest.mark.parametrize("labels", ["csv", "npz"])
def test_mer2024_utt_builds_train_and_pool(tmp_path, labels):
    values = mer_dir(tmp_path / "mer", labels)
    train, pool = read_all("mer2024", "utt", tmp_path / "mer", tmp_path / "tfds", ("train", "unlabeled")).values()
    assert [train[i]["id"].decode() for i in range(len(train))] == sorted(LABELLED)
    assert [pool[i]["id"].decode() for i in range(len(pool))] == POOL
    for i, name in enumerate(sorted(LABELLED)):
        e = train[i]
        assert int(e["label"]) == MER_CLASSES.index(LABELLED[name])
        assert set(e["features"]) == set(MER_FEATURES)
        for feature in MER_FEATURES:
            np.testing.assert_array_equal(e["features"][feature], values[feature, "UTT", name])
    assert all(int(pool[i]["label"]) == -1 for i in range(len(pool)))
    np.testing.assert_array_equal(pool[1]["features"]["Baichuan-13B-Base"],
                                  values["Baichuan-13B-Base", "UTT", POOL[1]])
    info = builders.make_builder("mer2024", "utt", str(tmp_path / "tfds")).info
    assert info.features["features"]["clip-vit-large-patch14"].shape == (4,)
    meta = info.metadata
    assert meta["features"] == sorted(MER_FEATURES, key=str)  # sorted folder order
    assert meta["dims"] == MER_FEATURES and meta["classes"] == list(MER_CLASSES)
    assert meta["num_examples"] == {"train": 3, "unlabeled": 3}
    assert meta["unlabeled_dropped"] == {"missing_some_features": 1}
    assert meta["label_file"] == ("label-disdim.csv" if labels == "csv" else "label-6way.npz")
    assert "tensorflow" not in sys.modules


def test_mer2024_top1_and_frame_features(tmp_path):
    values = mer_dir(tmp_path / "mer", frames=True)
    (tmp_path / "mer" / "features" / "extra-model-UTT").mkdir()  # not in top1: never read
    train = read_all("mer2024", "top1", tmp_path / "mer", tmp_path / "tfds", ("train",))["train"]
    assert set(train[0]["features"]) == set(MER_FEATURES)
    pool = read_all("mer2024", "fra", tmp_path / "mer", tmp_path / "tfds", ("unlabeled",))["unlabeled"]
    e = pool[2]  # POOL[2] is the 6th sample written: 7 frames; every feature is padded to the longest (7)
    hubert = values["chinese-hubert-large", "FRA", POOL[2]]
    assert e["features"]["chinese-hubert-large"].shape == (7, 6) and e["lengths"]["chinese-hubert-large"] == 7
    np.testing.assert_array_equal(e["features"]["chinese-hubert-large"], hubert)
    first = pool[0]
    assert first["lengths"]["clip-vit-large-patch14"] == 5
    np.testing.assert_array_equal(first["features"]["clip-vit-large-patch14"][5:], 0)
    meta = builders.make_builder("mer2024", "fra", str(tmp_path / "tfds")).info.metadata
    assert meta["max_frames"] == {name: 7 for name in MER_FEATURES} and meta["level"] == "FRA"
    # a config object caps the frames: longer samples are truncated and counted
    capped = Mer2024Config(name="fra_capped", level="FRA", max_frames=3, features=("clip-vit-large-patch14",))
    builder = builders.prepare("mer2024", str(tmp_path / "mer"), capped, str(tmp_path / "tfds"))
    e = builder.as_data_source("train")[2]
    assert list(e["features"]) == ["clip-vit-large-patch14"] and e["lengths"]["clip-vit-large-patch14"] == 3
    np.testing.assert_array_equal(e["features"]["clip-vit-large-patch14"],
                                  values["clip-vit-large-patch14", "FRA", "sample_00000003"][:3])
    assert builder.info.metadata["truncated"] == {"clip-vit-large-patch14": 4}  # 4..7 frames > 3


def test_mer2024_without_a_pool_writes_train_only(tmp_path):
    mer_dir(tmp_path / "mer")
    for folder in (tmp_path / "mer" / "features").iterdir():
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.stem not in LABELLED:
                path.unlink()
    builder = builders.prepare("mer2024", str(tmp_path / "mer"), "utt", str(tmp_path / "tfds"))
    assert list(builder.info.splits) == ["train"] and builder.info.metadata["num_examples"]["unlabeled"] == 0
    assert len(builder.as_data_source("train")) == len(LABELLED)
    with pytest.raises(DataError, match="'unlabeled' not in mer2024"):
        builders.data_source("mer2024", "unlabeled", config="utt", data_dir=str(tmp_path / "tfds"))


def test_mer2024_npz_without_labelled_samples(tmp_path):
    mer_dir(tmp_path / "mer", "npz")
    np.savez_compressed(tmp_path / "mer" / "label-6way.npz", train_corpus={})
    with pytest.raises(DataError) as error:
        builders.prepare("mer2024", str(tmp_path / "mer"), "utt", str(tmp_path / "tfds"))
    assert error.value.field == "train_corpus" and "no labelled samples" in error.value.problem


def _csv_rows(root, rows):
    with open(root / "label-disdim.csv", "w", newline="") as f:
        f.write("\n".join(rows) + "\n")


@pytest.mark.parametrize("case, field, words", [
    ("missing_npy", "features/clip-vit-large-patch14", "missing for labelled sample 'sample_00000002'"),
    ("wrong_dim", "features/Baichuan-13B-Base", "other samples of Baichuan-13B-Base are [5]"),
    ("unknown_label", "discrete", "unknown label 'excited'"),
    ("extra_field", "row", "row 3 has 4 fields but the header has 3"),
    ("missing_column", "discrete", "missing column"),
    ("npz_unknown_label", "train_corpus/sample_00000001/emo", "unknown label 'joy'"),
    ("no_labels", "labels", "neither label-disdim.csv nor label-6way.npz"),
])
def test_mer2024_malformed_inputs_name_file_and_field(tmp_path, case, field, words):
    root = tmp_path / "mer"
    mer_dir(root, "npz" if case.startswith("npz") else "csv")
    expected_path = str(root / "label-disdim.csv")
    if case == "missing_npy":
        expected_path = str(root / "features" / "clip-vit-large-patch14-UTT" / "sample_00000002.npy")
        os.remove(expected_path)
    elif case == "wrong_dim":
        expected_path = str(root / "features" / "Baichuan-13B-Base-UTT" / "sample_00000003.npy")
        np.save(expected_path, np.zeros(8, np.float32))
    elif case == "unknown_label":
        _csv_rows(root, ["name,discrete,valence", "sample_00000001,happy,1", "sample_00000002,excited,1"])
    elif case == "extra_field":
        _csv_rows(root, ["name,discrete,valence", "sample_00000001,happy,1", "sample_00000002,sad,1,oops"])
    elif case == "missing_column":
        _csv_rows(root, ["name,emotion", "sample_00000001,happy"])
    elif case == "npz_unknown_label":
        expected_path = str(root / "label-6way.npz")
        np.savez_compressed(expected_path, train_corpus={"sample_00000001": {"emo": "joy"}})
    elif case == "no_labels":
        os.remove(root / "label-disdim.csv")
        expected_path = str(root)
    with pytest.raises(DataError) as error:
        builders.prepare("mer2024", str(root), "utt", str(tmp_path / "tfds"))
    assert error.value.path == expected_path and error.value.field == field, str(error.value)
    assert words in error.value.problem, str(error.value)


# ----------------------------------------------------------------------------------------------------------
# Synthetic twins


def sentiment_config(**kwargs):
    return ml_collections.ConfigDict({"train_size": 600, "eval_size": 300, "shift": 1.0, **kwargs})


def pooled(source):
    """Mean over valid frames of each modality, concatenated: the features of a ridge regressor."""
    rows, labels = [], []
    for i in range(len(source)):
        e = source[i]
        rows.append(np.concatenate([e["text"].mean(0), e["audio"][: e["audio_length"]].mean(0),
                                    e["vision"][: e["vision_length"]].mean(0)]))
        labels.append(e["label"])
    return np.asarray(rows), np.asarray(labels)


def test_synthetic_sentiment_structure_and_determinism():
    config = sentiment_config(text_len=5, audio_len=9, vision_len=7, text_dim=6, audio_dim=3, vision_dim=4)
    source = make_sentiment(config, "train", seed=3)
    e = source[4]
    assert set(e) == {"text", "audio", "vision", "audio_length", "vision_length", "label", "id"}
    assert e["text"].shape == (5, 6) and e["audio"].shape == (9, 3) and e["vision"].shape == (7, 4)
    assert e["audio"].dtype == np.float32 and e["label"].dtype == np.float32 and -3 <= e["label"] <= 3
    np.testing.assert_array_equal(e["audio"][e["audio_length"]:], 0)  # MMSA-style zero padding
    again = make_sentiment(config, "train", seed=3)[4]
    for key in e:
        np.testing.assert_array_equal(e[key], again[key])
    assert not np.array_equal(source[5]["text"], e["text"])
    assert not np.array_equal(make_sentiment(config, "test", 3)[4]["text"], e["text"])
    assert len(make_sentiment(config, "target_test", 3)) == 300
    with pytest.raises(ValueError, match="expected train/valid/test"):
        make_sentiment(config, "target_pool", 3)
    # experiments reach it by name through the data entry point
    config.name = "synthetic_sentiment"
    via_sources = sources.make_source(config, "train", 3)[4]
    np.testing.assert_array_equal(via_sources["vision"], e["vision"])


def fit_ridge(x, y):
    """Ridge regression on standardised features; returns `predict(x)`."""
    mean, std = x.mean(0), x.std(0)

    def design(z):
        return np.c_[(z - mean) / std, np.ones(len(z))]

    a = design(x)
    weights = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ y)
    return lambda z: np.clip(design(z) @ weights, -3, 3)


def test_synthetic_sentiment_is_learnable_and_the_shift_hurts_and_restandardising_repairs_part():
    config = sentiment_config()
    x_train, y_train = pooled(make_sentiment(config, "source_train", 0))
    x_source, y_source = pooled(make_sentiment(config, "source_test", 0))
    x_target, y_target = pooled(make_sentiment(config, "target_test", 0))
    predict = fit_ridge(x_train, y_train)

    def mae(x, y):
        return float(np.abs(predict(x) - y).mean())

    baseline = float(np.abs(y_source - np.median(y_train)).mean())
    source, target = mae(x_source, y_source), mae(x_target, y_target)
    # per-feature affine re-standardisation of the target onto the source statistics (no labels used)
    mean, std = x_train.mean(0), x_train.std(0)
    restandardised = mae((x_target - x_target.mean(0)) / x_target.std(0) * std + mean, y_target)
    assert source < 0.5 * baseline, (source, baseline)
    assert target > 1.4 * source, (target, source)
    assert restandardised < target - 0.3 * (target - source), (restandardised, target, source)
    assert restandardised > source  # the rotation and the extra noise remain


def test_synthetic_sentiment_without_shift_the_target_is_the_source_distribution():
    config = sentiment_config(shift=0.0, domain="target", train_size=300, eval_size=300)
    target = make_sentiment(config, "test", 0)  # domain from data_config.domain
    assert target.domain == "target"
    x_train, y_train = pooled(make_sentiment(config, "source_train", 0))
    x_source, y_source = pooled(make_sentiment(config, "source_test", 0))
    x_target, y_target = pooled(target)
    assert not np.array_equal(x_source, x_target)  # other clips
    predict = fit_ridge(x_train, y_train)
    source, same = np.abs(predict(x_source) - y_source).mean(), np.abs(predict(x_target) - y_target).mean()
    assert abs(same - source) < 0.15 * source, (same, source)


def mer_config(**kwargs):
    return ml_collections.ConfigDict({"train_size": 600, "eval_size": 300, **kwargs})


def stacked(source):
    rows = [source[i] for i in range(len(source))]
    x = np.asarray([np.concatenate([r["features"][k] for k in sorted(r["features"])]) for r in rows])
    return x, np.asarray([r["label"] for r in rows]), np.asarray([r["true_label"] for r in rows])


def test_synthetic_mer_structure_pool_prior_and_learnability():
    config = mer_config(feature_dims={"hubert": 12, "clip": 8, "llm": 10})
    train, test, pool = (make_mer(config, s, 0) for s in ("train", "test", "unlabeled"))
    e = pool[0]
    assert set(e) == {"features", "label", "true_label", "id"}
    assert list(e["features"]) == ["clip", "hubert", "llm"] and e["features"]["hubert"].shape == (12,)
    assert e["label"] == -1 and 0 <= e["true_label"] < 6 and len(pool) == 1200
    config.name = "synthetic_mer"
    again = sources.make_source(config, "unlabeled", 0)[0]
    np.testing.assert_array_equal(again["features"]["llm"], e["features"]["llm"])

    x_train, y_train, _ = stacked(train)
    x_test, y_test, _ = stacked(test)
    x_pool, y_pool, t_pool = stacked(pool)
    assert np.all(y_pool == -1)
    train_prior = np.bincount(y_train, minlength=6) / len(y_train)
    pool_prior = np.bincount(t_pool, minlength=6) / len(t_pool)
    assert np.abs(train_prior - pool_prior).sum() > 0.4  # the pool's class prior differs (controllable)
    assert train_prior[0] > train_prior[5] and pool_prior[5] > pool_prior[0]

    mean, std = x_train.mean(0), x_train.std(0)

    def design(x):
        return np.c_[(x - mean) / std, np.ones(len(x))]

    weights, onehot = np.zeros((x_train.shape[1] + 1, 6)), np.eye(6)[y_train]
    for _ in range(200):  # multinomial logistic regression, full-batch gradient descent
        logits = design(x_train) @ weights
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        weights -= 0.5 * (design(x_train).T @ (p - onehot) / len(x_train) + 1e-3 * weights)
    majority = float(np.mean(y_test == np.argmax(np.bincount(y_train))))
    test_acc = float(np.mean((design(x_test) @ weights).argmax(1) == y_test))
    pool_acc = float(np.mean((design(x_pool) @ weights).argmax(1) == t_pool))
    assert test_acc > majority + 0.25 and test_acc > 0.55, (test_acc, majority)
    assert pool_acc > 0.45, pool_acc  # well above chance (1/6); room left for pseudo-labelling
    assert pool_acc < 0.95


def test_synthetic_mer_explicit_pool_prior():
    config = mer_config(train_size=4, eval_size=4, pool_size=400, pool_prior=[0, 0, 0, 0, 0, 1])
    pool = make_mer(config, "unlabeled", 1)
    assert {int(pool[i]["true_label"]) for i in range(len(pool))} == {5}
    with pytest.raises(ValueError, match="expected one of"):
        make_mer(config, "pool", 1)
