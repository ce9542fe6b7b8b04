"""DFEW / MAFW builders on tiny fixtures in the reference's layout (no TensorFlow), and synthetic AV clips."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from jaxemo.data import audio, builders, sources, synthetic_av
from jaxemo.data.builders import DataError
from jaxemo.data.builders import video_emotion as ve

AUTHORS_DFEW = "/scratch/chumache/dfer_datasets/dfew/clip_224x224"
AUTHORS_MAFW = "/scratch/chumache/dfer_datasets/mfaw/clips_faces"

# ----------------------------------------------------------------------------------------------------------
# Fixtures: the layouts MMA-DFER's loader reads


def colour(clip: int, t: int) -> tuple[int, int, int]:
    """Frame t of clip `clip`: red encodes t, green encodes the clip; blue is a gradient (see frame())."""
    return 20 * t + 5, 30 * clip + 20, 128


def frame(clip: int, t: int, size=(48, 40)) -> np.ndarray:
    width, height = size
    red, green, blue = colour(clip, t)
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0], pixels[..., 1] = red, green
    pixels[..., 2] = np.linspace(blue - 60, blue + 60, width).astype(np.uint8)[None, :]
    return pixels


def write_clip(folder, clip: int, names: list[str]) -> None:
    os.makedirs(folder, exist_ok=True)
    for t, name in enumerate(names):
        Image.fromarray(frame(clip, t)).save(os.path.join(folder, name), quality=95)


def write_wav(path, clip: int, seconds=0.3, rate=44_100, channels=1) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(clip)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * clip) * t) + 0.05 * rng.standard_normal(t.shape)
    if channels > 1:
        wave = np.stack([wave] + [0.5 * rng.standard_normal(t.shape) for _ in range(channels - 1)], axis=1)
    wavfile.write(path, rate, (wave * 20000).astype(np.int16))


def write_folds(root, name_format: str, prefix: str, clips: dict, counts: dict) -> None:
    """Fold k tests on the k-th clip (cycling), trains on the others; lines use the authors' absolute paths."""
    ids = list(clips)
    os.makedirs(os.path.join(root, "annotation"), exist_ok=True)
    for fold in range(1, 6):
        test = [ids[(fold - 1) % len(ids)]]
        parts = {"train": [i for i in ids if i not in test], "test": test}
        for part, members in parts.items():
            with open(os.path.join(root, "annotation", name_format.format(fold=fold, part=part)), "w") as f:
                f.writelines(f"{prefix}/{i} {counts[i]} {clips[i]}\n" for i in members)


DFEW_CLIPS = {"00001": 3, "00002": 0, "00003": 6, "00004": 1, "00005": 5}  # id -> label
DFEW_FRAMES = {"00001": 4, "00002": 12, "00003": 2, "00004": 3, "00005": 5}


def dfew_layout(root) -> str:
    root = str(root)
    for clip, (clip_id, count) in enumerate(DFEW_FRAMES.items()):
        names = [f"{t + 1:05d}.jpg" for t in range(count)]  # zero-padded and 1-based, as DFEW's frames
        write_clip(os.path.join(root, "clip_224x224", clip_id), clip, names)
        write_wav(os.path.join(root, "raw_wav", f"{int(clip_id)}.wav"), clip, channels=2 if clip == 1 else 1)
    write_folds(root, "DFEW_set_{fold}_{part}.txt", AUTHORS_DFEW, DFEW_CLIPS, DFEW_FRAMES)
    return root


MAFW_CLIPS = {"00025": 3, "00028": 10, "00108": 7, "00123": 0}
MAFW_FRAMES = {"00025": 12, "00028": 5, "00108": 3, "00123": 2}
MAFW_NO_AUDIO = "00108"


def mafw_layout(root) -> str:
    root = str(root)
    for clip, (clip_id, count) in enumerate(MAFW_FRAMES.items()):
        write_clip(os.path.join(root, "clips_faces", clip_id), clip, [f"{t}.jpg" for t in range(count)])
        if clip_id != MAFW_NO_AUDIO:
            write_wav(os.path.join(root, "clips_wav", f"{clip_id}.wav"), clip, rate=48_000)
    annotated = {i: n - 1 for i, n in MAFW_FRAMES.items()}  # the shipped lists' off-by-one
    annotated["00123"] = MAFW_FRAMES["00123"]  # one clip annotated right
    write_folds(root, "MAFW_set_{fold}_{part}_faces.txt", AUTHORS_MAFW, MAFW_CLIPS, annotated)
    return root


@pytest.fixture(scope="module")
def dfew(tmp_path_factory):
    root = dfew_layout(tmp_path_factory.mktemp("dfew"))
    data_dir = str(tmp_path_factory.mktemp("dfew_data"))
    builders.prepare("dfew", root, "frames32", data_dir)
    return root, data_dir


@pytest.fixture(scope="module")
def mafw(tmp_path_factory):
    root = mafw_layout(tmp_path_factory.mktemp("mafw"))
    data_dir = str(tmp_path_factory.mktemp("mafw_data"))
    builders.prepare("mafw", root, "frames32", data_dir)
    return root, data_dir


def red_channel(frames: np.ndarray) -> np.ndarray:
    return frames[..., 0].reshape(len(frames), -1).mean(axis=1)


# ----------------------------------------------------------------------------------------------------------
# DFEW


def test_dfew_builds_and_reads_without_tensorflow(dfew):
    root, data_dir = dfew
    clips = builders.data_source("dfew", "clips", config="frames32", data_dir=data_dir)
    assert len(clips) == 5
    for clip, clip_id in enumerate(DFEW_CLIPS):
        example = clips[clip]
        assert example["id"] == clip_id.encode()
        assert example["label"] == DFEW_CLIPS[clip_id]
        count = DFEW_FRAMES[clip_id]
        assert example["num_frames"] == count
        assert example["frames"].shape == (count, 32, 32, 3) and example["frames"].dtype == np.uint8
        # Frame order and colour survive: the red channel of frame t is 20 t + 5 (10 frames and more too).
        np.testing.assert_allclose(red_channel(example["frames"]), [colour(clip, t)[0] for t in range(count)],
                                   atol=3)
        assert abs(example["frames"][..., 1].mean() - colour(clip, 0)[1]) < 3
        # fbank = audio.audiomae_fbank of the wav at its own rate, channel 0 (clip 1's wav is stereo).
        waveform, rate = audio.read_wav(os.path.join(root, "raw_wav", f"{int(clip_id)}.wav"))
        assert rate == 44_100 and waveform.ndim == 1
        np.testing.assert_array_equal(example["fbank"], audio.audiomae_fbank(waveform, rate))
        assert example["fbank"].shape == (512, 128) and example["fbank"].dtype == np.float32
        assert example["has_audio"]
    assert "tensorflow" not in sys.modules


def test_dfew_frames_are_the_reference_bilinear_resize(dfew):
    root, data_dir = dfew
    example = builders.data_source("dfew", "clips", config="frames32", data_dir=data_dir)[1]
    for t, name in enumerate(["00001.jpg", "00010.jpg", "00012.jpg"]):
        index = int(name[:5]) - 1
        with Image.open(os.path.join(root, "clip_224x224", "00002", name)) as image:
            expected = np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR))
        np.testing.assert_array_equal(example["frames"][index], expected)


def test_dfew_folds_are_virtual_splits_that_survive_reloading(dfew):
    _, data_dir = dfew
    ids = list(DFEW_CLIPS)
    for fold in range(1, 6):
        test = builders.data_source("dfew", f"fold{fold}_test", config="frames32", data_dir=data_dir)
        train = builders.data_source("dfew", f"fold{fold}_train", config="frames32", data_dir=data_dir)
        assert [test[i]["id"].decode() for i in range(len(test))] == [ids[fold - 1]]
        assert [train[i]["id"].decode() for i in range(len(train))] == [i for i in ids if i != ids[fold - 1]]
    reloaded = builders.make_builder("dfew", "frames32", data_dir)  # a fresh builder reads metadata.json
    assert reloaded.is_prepared()
    metadata = reloaded.info.metadata
    assert metadata["folds"]["fold3_test"] == [2] and metadata["num_clips"] == 5
    assert metadata["fallbacks"] == {}
    assert reloaded.virtual_splits()["fold3_train"] == ("clips", [0, 1, 3, 4])
    assert list(reloaded.info.splits) == ["clips"]
    with pytest.raises(DataError, match="fold6_test"):
        builders.data_source("dfew", "fold6_test", config="frames32", data_dir=data_dir)


# ----------------------------------------------------------------------------------------------------------
# MAFW


def test_mafw_numeric_order_fallbacks_and_metadata(mafw):
    root, data_dir = mafw
    clips = builders.data_source("mafw", "clips", config="frames32", data_dir=data_dir)
    by_id = {clips[i]["id"].decode(): clips[i] for i in range(len(clips))}
    assert list(by_id) == list(MAFW_CLIPS)
    long_clip = by_id["00025"]  # 0.jpg ... 11.jpg: 10.jpg comes after 9.jpg
    assert long_clip["num_frames"] == 12  # the frames found, not the annotated 11
    np.testing.assert_allclose(red_channel(long_clip["frames"]), [20 * t + 5 for t in range(12)], atol=3)
    silent = by_id[MAFW_NO_AUDIO]
    assert not silent["has_audio"]
    np.testing.assert_array_equal(silent["fbank"], audio.silent_audiomae_fbank())
    assert all(by_id[i]["has_audio"] for i in by_id if i != MAFW_NO_AUDIO)
    waveform, rate = audio.read_wav(os.path.join(root, "clips_wav", "00028.wav"))
    np.testing.assert_array_equal(by_id["00028"]["fbank"], audio.audiomae_fbank(waveform, rate))
    metadata = builders.make_builder("mafw", "frames32", data_dir).info.metadata
    assert metadata["fallbacks"] == {"missing_audio": 1, "num_frames_mismatch": 3}
    assert metadata["fallback_examples"]["missing_audio"] == [MAFW_NO_AUDIO]
    assert metadata["frame_order"] == "numeric"
    test = builders.data_source("mafw", "fold5_test", config="frames32", data_dir=data_dir)
    assert [test[i]["id"] for i in range(len(test))] == [b"00025"]  # fold 5 cycles back to the first clip


def test_mafw_lexsort_config_keeps_the_reference_order(tmp_path):
    root = mafw_layout(tmp_path / "mafw")
    clips = builders.data_source("mafw", "clips", manual_dir=root, config="frames224_lexsort",
                                 data_dir=str(tmp_path / "data"))
    frames = clips[0]["frames"]
    assert frames.shape == (12, 224, 224, 3)
    order = sorted(f"{t}.jpg" for t in range(12))  # 0, 1, 10, 11, 2, ...
    np.testing.assert_allclose(red_channel(frames), [20 * int(n[:-4]) + 5 for n in order], atol=3)


def test_mafw_annotated_configs_keep_the_frames_the_reference_samples_from(tmp_path):
    """MMA-DFER's loader samples MAFW segments from the annotated count (one less than on disk), indexing the
    clip's frames in lexicographic order: it never reads the last of them."""
    root = mafw_layout(tmp_path / "mafw")
    for config, order in (("frames224_annotated", [f"{t}.jpg" for t in range(12)]),
                          ("frames224_lexsort_annotated", sorted(f"{t}.jpg" for t in range(12)))):
        clips = builders.data_source("mafw", "clips", manual_dir=root, config=config,
                                     data_dir=str(tmp_path / config))
        by_id = {clips[i]["id"].decode(): clips[i] for i in range(len(clips))}
        assert {i: int(c["num_frames"]) for i, c in by_id.items()} == {"00025": 11, "00028": 4, "00108": 2,
                                                                       "00123": 2}  # 00123 is annotated right
        read = [20 * int(name[:-4]) + 5 for name in order[:11]]
        np.testing.assert_allclose(red_channel(by_id["00025"]["frames"]), read, atol=3)
        metadata = builders.make_builder("mafw", config, str(tmp_path / config)).info.metadata
        assert metadata["frame_count"] == "annotated" and metadata["fallbacks"]["num_frames_mismatch"] == 3
    assert "9.jpg" not in order[:11]  # lexicographic: 0, 1, 10, 11, 2, ..., 8 are read, 9.jpg never
    first = os.path.join(root, "annotation", "MAFW_set_1_train_faces.txt")  # line 1: clip 00028, 4 annotated
    _replace_line(first, 1, f"{AUTHORS_MAFW}/00028 6 10\n")
    with pytest.raises(DataError, match=r"MAFW_set_2_test_faces.txt:1: num_frames: clip 00028 has 4 frames here "
                                        r"but 6 at .*MAFW_set_1_train_faces.txt:1"):
        builders.prepare("mafw", root, "frames224_annotated", str(tmp_path / "conflict"))
    for name in os.listdir(os.path.join(root, "annotation")):
        path = os.path.join(root, "annotation", name)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("/00028 4 ", "/00028 6 "))
    with pytest.raises(DataError, match=r"MAFW_set_1_train_faces.txt:1: num_frames: clip 00028: 6 frames "
                                        r"annotated, 5 found"):
        builders.prepare("mafw", root, "frames224_annotated", str(tmp_path / "too_many"))


# ----------------------------------------------------------------------------------------------------------
# Errors name the file (and line / clip) and the field


def _replace_line(path, number: int, text: str) -> None:
    with open(path) as f:
        lines = f.readlines()
    lines[number - 1] = text
    with open(path, "w") as f:
        f.writelines(lines)


def _break(kind: str, root: str) -> tuple[str, list[str]]:
    """Applies one defect to a DFEW layout; returns the fragments the DataError message must contain."""
    annotation = os.path.join(root, "annotation", "DFEW_set_1_train.txt")
    frames = os.path.join(root, "clip_224x224")
    if kind == "label_out_of_range":
        _replace_line(annotation, 2, f"{AUTHORS_DFEW}/00003 2 7\n")
        return "DFEW_set_1_train.txt:2", ["label", "0..6"]
    if kind == "negative_label":
        _replace_line(annotation, 1, f"{AUTHORS_DFEW}/00002 12 -1\n")
        return "DFEW_set_1_train.txt:1", ["label"]
    if kind == "too_few_fields":
        _replace_line(annotation, 3, f"{AUTHORS_DFEW}/00004 3\n")
        return "DFEW_set_1_train.txt:3", ["line"]
    if kind == "num_frames_not_a_number":
        _replace_line(annotation, 1, f"{AUTHORS_DFEW}/00002 twelve 0\n")
        return "DFEW_set_1_train.txt:1", ["num_frames"]
    if kind == "label_conflict":
        _replace_line(annotation, 1, f"{AUTHORS_DFEW}/00002 12 4\n")
        return "DFEW_set_1_train.txt:1", ["label", "00002"]
    if kind == "missing_annotation_file":
        os.remove(os.path.join(root, "annotation", "DFEW_set_4_test.txt"))
        return "DFEW_set_4_test.txt", ["annotation", "file not found"]
    if kind == "zero_frames":
        for name in os.listdir(os.path.join(frames, "00004")):
            os.remove(os.path.join(frames, "00004", name))
        return os.path.join(frames, "00004"), ["frames", "no frame images", "DFEW_set_"]
    if kind == "missing_clip_folder":
        os.rename(os.path.join(frames, "00003"), os.path.join(root, "elsewhere"))
        return os.path.join(frames, "00003"), ["frames", "not found"]
    if kind == "missing_frame":
        os.remove(os.path.join(frames, "00002", "00007.jpg"))
        return os.path.join(frames, "00002", "00007.jpg"), ["frames", "missing frame"]
    if kind == "unreadable_frame":
        with open(os.path.join(frames, "00005", "00003.jpg"), "wb") as f:
            f.write(b"this is not a jpeg")
        return os.path.join(frames, "00005", "00003.jpg"), ["frames", "not a readable image", "DFEW_set_"]
    if kind == "missing_wav":
        os.remove(os.path.join(root, "raw_wav", "4.wav"))
        return os.path.join(root, "raw_wav", "4.wav"), ["audio", "file not found", "00004"]
    if kind == "unreadable_wav":
        with open(os.path.join(root, "raw_wav", "3.wav"), "wb") as f:
            f.write(b"RIFF....nonsense")
        return os.path.join(root, "raw_wav", "3.wav"), ["audio", "wav"]
    raise ValueError(kind)


BROKEN = ["label_out_of_range", "negative_label", "too_few_fields", "num_frames_not_a_number", "label_conflict",
          "missing_annotation_file", "zero_frames", "missing_clip_folder", "missing_frame", "unreadable_frame",
          "missing_wav", "unreadable_wav"]


@pytest.mark.parametrize("kind", BROKEN)
def test_dfew_defects_raise_data_error_naming_file_and_field(tmp_path, kind):
    root = dfew_layout(tmp_path / "dfew")
    where, fragments = _break(kind, root)
    with pytest.raises(DataError) as error:
        builders.prepare("dfew", root, "frames32", str(tmp_path / "data"))
    message = str(error.value)
    assert where in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_mafw_zero_frame_clip_and_bad_label_raise(tmp_path):
    root = mafw_layout(tmp_path / "mafw")
    for name in os.listdir(os.path.join(root, "clips_faces", "00123")):
        os.remove(os.path.join(root, "clips_faces", "00123", name))
    with pytest.raises(DataError, match="clips_faces/00123: frames: no frame images"):
        builders.prepare("mafw", root, "frames32", str(tmp_path / "data"))
    root = mafw_layout(tmp_path / "mafw2")
    _replace_line(os.path.join(root, "annotation", "MAFW_set_2_test_faces.txt"), 1, f"{AUTHORS_MAFW}/00028 4 11\n")
    with pytest.raises(DataError, match=r"MAFW_set_2_test_faces.txt:1: label: 11 is out of range"):
        builders.prepare("mafw", root, "frames32", str(tmp_path / "data2"))


# ----------------------------------------------------------------------------------------------------------
# Helpers


def test_natural_frame_order():
    names = ["10.jpg", "9.jpg", "0.jpg", "1.jpg", "2.jpg", "11.jpg"]
    assert sorted(names, key=ve.natural_key) == ["0.jpg", "1.jpg", "2.jpg", "9.jpg", "10.jpg", "11.jpg"]
    assert sorted(["a_10.jpg", "a_9.jpg", "b_1.jpg"], key=ve.natural_key) == ["a_9.jpg", "a_10.jpg", "b_1.jpg"]


# ----------------------------------------------------------------------------------------------------------
# Synthetic audio-visual clips


def test_synthetic_av_elements_match_the_builders():
    from ml_collections import config_dict

    data = config_dict.ConfigDict(dict(name="synthetic_av_clips", num_classes=11, frame_size=16, num_frames=(4, 20),
                                       fbank_frames=64, train_size=40, eval_size=8, noise=0.5, missing_audio=0.25))
    train = sources.make_source(data, "train", seed=3)
    test = sources.make_source(data, "test", seed=3)
    assert len(train) == 40 and len(test) == 8
    lengths, has_audio = [], []
    for i in range(len(train)):
        e = train[i]
        assert set(e) == {"frames", "num_frames", "fbank", "has_audio", "label", "id"}
        assert e["frames"].dtype == np.uint8 and e["frames"].shape[1:] == (16, 16, 3)
        assert e["frames"].shape[0] == e["num_frames"] and 4 <= e["num_frames"] <= 20
        assert e["fbank"].shape == (64, 128) and e["fbank"].dtype == np.float32
        assert 0 <= e["label"] < 11 and isinstance(e["id"], bytes)
        if not e["has_audio"]:
            np.testing.assert_array_equal(e["fbank"], audio.silent_audiomae_fbank(64))
        lengths.append(int(e["num_frames"]))
        has_audio.append(bool(e["has_audio"]))
    assert min(lengths) < 16 < max(lengths) and 0 < sum(has_audio) < 40
    again = sources.make_source(data, "train", seed=3)[7]  # sample i depends only on (seed, i)
    np.testing.assert_array_equal(again["frames"], train[7]["frames"])
    np.testing.assert_array_equal(again["fbank"], train[7]["fbank"])
    assert test[0]["id"] != train[0]["id"]


def _pooled(source):
    video, sound, labels = [], [], []
    for i in range(len(source)):
        e = source[i]
        video.append(e["frames"].reshape(-1, 3).mean(axis=0) / 255.0)  # mean colour of the clip
        sound.append(e["fbank"].mean(axis=0).reshape(16, -1).mean(axis=1))  # 16 band energies
        labels.append(int(e["label"]))
    return np.array(video), np.array(sound), np.array(labels)


def _logistic_regression_accuracy(x, y, x_test, y_test, classes: int, steps=400, lr=0.5) -> float:
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    x = np.c_[(x - mean) / std, np.ones(len(x))]
    x_test = np.c_[(x_test - mean) / std, np.ones(len(x_test))]
    weights, onehot = np.zeros((x.shape[1], classes)), np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ weights
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        weights -= lr * (x.T @ (p - onehot) / len(x) + 1e-3 * weights)
    return float(((x_test @ weights).argmax(axis=1) == y_test).mean())


@pytest.mark.parametrize("classes", [7, 11])
def test_synthetic_av_each_modality_learns_and_fusion_beats_both(classes):
    kwargs = dict(num_classes=classes, frame_size=16, min_frames=4, max_frames=20, fbank_frames=128, noise=0.5)
    v, a, y = _pooled(synthetic_av.SyntheticAVClips(700, seed=0, **kwargs))
    v_test, a_test, y_test = _pooled(synthetic_av.SyntheticAVClips(300, seed=1, **kwargs))
    accuracy = {
        "video": _logistic_regression_accuracy(v, y, v_test, y_test, classes),
        "audio": _logistic_regression_accuracy(a, y, a_test, y_test, classes),
        "both": _logistic_regression_accuracy(np.c_[v, a], y, np.c_[v_test, a_test], y_test, classes),
    }
    chance = 1.0 / classes
    assert accuracy["video"] > 3 * chance and accuracy["audio"] > 3 * chance, accuracy
    assert accuracy["both"] > max(accuracy["video"], accuracy["audio"]) + 0.25, accuracy
    assert accuracy["both"] > 0.85, accuracy


def test_clips_stream_into_ordered_shards_without_the_tfds_shuffler(tmp_path, monkeypatch):
    """Big corpora: clips go straight into shards in row order; TFDS's Shuffler, which needs TensorFlow to
    spill past 1 GB, is never used (it would fail here on the first example)."""
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", -1)
    monkeypatch.setattr(ve.Mafw, "SHARD_BYTES", 1)  # one clip per shard
    root = mafw_layout(tmp_path / "mafw")
    data_dir = str(tmp_path / "data")
    clips = builders.data_source("mafw", "fold1_train", manual_dir=root, config="frames32", data_dir=data_dir)
    assert [clips[i]["id"].decode() for i in range(len(clips))] == list(MAFW_CLIPS)[1:]
    assert builders.make_builder("mafw", "frames32", data_dir).info.splits["clips"].shard_lengths == [1, 1, 1, 1]
