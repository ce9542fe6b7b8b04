"""Visual emotion builders (EmoSet and the six fine-tuning sets) on tiny fixtures in their real layouts, and
the synthetic scenes generator. Everything builds and reads without TensorFlow."""

from __future__ import annotations

import json
import os
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxemo.data import builders, sources
from jaxemo.data.builders import DataError
from jaxemo.data.builders import visual_emotion as ve
from jaxemo.data.synthetic_scenes import SyntheticScenes

SIZE = 256  # the default config


def colour(i: int) -> tuple[int, int, int]:
    return ((37 * i + 20) % 256, (91 * i + 50) % 256, (53 * i + 100) % 256)


def write_image(path, rgb, size=(48, 36)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, rgb).save(path, quality=95)


def read(name, split, data_dir, manual_dir=None, config=None):
    source = builders.data_source(name, split, manual_dir=manual_dir, config=config, data_dir=str(data_dir))
    return [source[i] for i in range(len(source))]


def by_class(elements, names):
    counts = {n: 0 for n in names}
    for e in elements:
        counts[names[int(e["label"])]] += 1
    return counts


def assert_solid(elements, names, colours, tolerance=0):
    """Every stored image is its class folder's solid colour (exact for PNG, close for JPEG)."""
    for e in elements:
        assert e["image"].shape == (SIZE, SIZE, 3) and e["image"].dtype == np.uint8
        cls = names[int(e["label"])]
        assert cls.lower() in e["id"].decode().lower().split("/")  # the label is the image's class folder
        diff = np.abs(e["image"].astype(int) - np.array(colours[cls]))
        assert diff.max() <= tolerance, (e["id"], diff.max())


def class_folders(root, counts: dict, ext=".png", sub=None):
    """root/<class>/[sub/]NN.ext in each class's colour; returns {class: colour}."""
    colours = {}
    for i, (cls, n) in enumerate(counts.items()):
        colours[cls] = colour(i)
        for k in range(n):
            write_image(os.path.join(root, cls, *([sub] if sub else []), f"{k:02d}{ext}"), colours[cls])
    return colours


def test_stored_crop_is_the_reference_eval_input(tmp_path):
    """Stored image (short side to 256 + centre crop 256), centre-cropped to 224, equals torchvision's
    Resize(256, bicubic) + CenterCrop(224) of the original, computed here from torchvision's formulas."""
    rng = np.random.default_rng(0)
    for width, height in [(301, 200), (200, 333), (257, 256), (640, 480)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = tmp_path / f"{width}x{height}.png"
        Image.fromarray(pixels).save(path)
        stored, geometry = ve.load_image(str(path), 256)
        assert stored.shape == (256, 256, 3) and stored.dtype == np.uint8
        short, long = sorted((width, height))
        new_w, new_h = (256, int(256 * long / short)) if width <= height else (int(256 * long / short), 256)
        resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.BICUBIC))
        top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
        np.testing.assert_array_equal(stored[16:240, 16:240], resized[top:top + 224, left:left + 224])
        # A box over the whole original maps to the whole stored image; one over the centre stays centred.
        np.testing.assert_allclose(geometry.boxes_to_stored([[0, 0, width, height]]), [[0, 0, 1, 1]])
    squashed, geometry = ve.load_image(str(tmp_path / "640x480.png"), 64, "squash")
    assert squashed.shape == (64, 64, 3) and geometry.left == geometry.top == 0
    np.testing.assert_allclose(geometry.boxes_to_stored([[160, 120, 480, 360], [-9, 0, 0.5, 100]]),
                               [[0.25, 0.25, 0.75, 0.75], [0, 0, 0.5 / 640, 100 / 480]], atol=1e-6)


# ------------------------------------------------------------------------------------------------ Emotion6


def test_emotion6_split_is_sklearn_train_test_split_and_pixels_survive(tmp_path):
    manual = tmp_path / "Emotion6"
    names = ve.Emotion6.CLASSES
    colours = class_folders(manual / "images", {c: 10 for c in names})
    (manual / "images" / "joy" / "readme.txt").write_text("not an image")
    data_dir = tmp_path / "tfds"
    builder = builders.prepare("emotion6", str(manual), data_dir=str(data_dir))
    splits = {s: read("emotion6", s, data_dir) for s in ve.SPLITS}
    # floor(0.7 * 10) = 7 train; the other 3: floor(3 * 0.1 / 0.3) = 1 val, 2 test; per class.
    for split, n in [("train", 7), ("val", 1), ("test", 2)]:
        assert by_class(splits[split], names) == {c: n for c in names}
        assert_solid(splits[split], names, colours)
    # sklearn train_test_split(sorted files, train_size=0.7, random_state=42) = [0, 7, 2, 9, 4, 3, 6], and of the
    # rest [8, 1, 5]: train_size=0.1/0.3 -> val [5], test [8, 1] (known answer from scikit-learn 1.9.1).
    anger = {s: sorted(e["id"].decode() for e in splits[s] if names[e["label"]] == "anger") for s in ve.SPLITS}
    assert anger == {"train": sorted(f"images/anger/{k:02d}.png" for k in [0, 7, 2, 9, 4, 3, 6]),
                     "val": ["images/anger/05.png"], "test": ["images/anger/01.png", "images/anger/08.png"]}
    assert builder.info.metadata["fallbacks"] == {"non-image file skipped": 1}
    assert builder.info.metadata["split_source"].startswith("reference procedure")
    assert "tensorflow" not in sys.modules


def test_sklearn_like_split_equals_sklearn():
    model_selection = pytest.importorskip("sklearn.model_selection")
    for n in range(7, 120):
        files = [f"f{i}" for i in range(n)]
        train, rest = model_selection.train_test_split(files, train_size=0.7, random_state=42)
        ours_train, ours_rest = ve.sklearn_like_split(n, 0.7, 42)
        assert [files[i] for i in ours_train] == train and [files[i] for i in ours_rest] == rest


def test_corrupt_image_names_the_file(tmp_path):
    manual = tmp_path / "Emotion6"
    class_folders(manual, {c: 2 for c in ve.Emotion6.CLASSES})
    bad = manual / "fear" / "01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError) as error:
        builders.prepare("emotion6", str(manual), data_dir=str(tmp_path / "tfds"))
    assert (error.value.path, error.value.field) == (str(bad), "image")


def test_truncated_jpeg_names_the_file(tmp_path):
    manual = tmp_path / "FI"
    class_folders(manual, {c: 2 for c in ve.Fi.CLASSES}, ext=".jpg")
    bad = manual / "awe" / "00.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:400])
    with pytest.raises(DataError) as error:
        builders.prepare("fi", str(manual), data_dir=str(tmp_path / "tfds"))
    assert (error.value.path, error.value.field) == (str(bad), "image")


def test_unknown_class_folder_names_the_folder(tmp_path):
    manual = tmp_path / "FI"
    class_folders(manual, {**{c: 1 for c in ve.Fi.CLASSES}, "happiness": 1})
    with pytest.raises(DataError) as error:
        builders.prepare("fi", str(manual), data_dir=str(tmp_path / "tfds"))
    assert (error.value.path, error.value.field) == (str(manual / "happiness"), "class folder")


# ---------------------------------------------------------------------------- FI, HECO, UBE, CAER-S, Emo8


def test_fi_split_per_class_and_deterministic(tmp_path):
    manual = tmp_path / "FI"
    names = ve.Fi.CLASSES
    counts = {c: 2 for c in names} | {"amusement": 20}
    colours = class_folders(manual, counts, ext=".jpg")
    first = {s: read("fi", s, tmp_path / "a", manual_dir=str(manual)) for s in ve.SPLITS}
    # int(0.8 n) train, int(0.05 n) val, the rest test: 20 -> 16/1/3, 2 -> 1/0/1.
    assert by_class(first["train"], names) == {c: 16 if c == "amusement" else 1 for c in names}
    assert by_class(first["val"], names) == {c: 1 if c == "amusement" else 0 for c in names}
    assert by_class(first["test"], names) == {c: 3 if c == "amusement" else 1 for c in names}
    for split in ve.SPLITS:
        assert_solid(first[split], names, colours, tolerance=3)
    second = {s: read("fi", s, tmp_path / "b", manual_dir=str(manual)) for s in ve.SPLITS}
    ids = {s: sorted(e["id"] for e in first[s]) for s in ve.SPLITS}
    assert ids == {s: sorted(e["id"] for e in second[s]) for s in ve.SPLITS}
    everything = [i for split_ids in ids.values() for i in split_ids]
    assert len(everything) == len(set(everything)) == sum(counts.values())


def test_provided_split_folders_are_read_as_given(tmp_path):
    manual = tmp_path / "FI"
    for split, n in [("train", 3), ("val", 1), ("test", 2)]:
        class_folders(manual / split, {c: n for c in ve.Fi.CLASSES})
    class_folders(manual, {c: 5 for c in ve.Fi.CLASSES})  # the raw folders the reference script split
    builder = builders.prepare("fi", str(manual), data_dir=str(tmp_path / "tfds"))
    assert builder.info.metadata["split_source"] == "provided train/ val/ test/ folders"
    for split, n in [("train", 3), ("val", 1), ("test", 2)]:
        elements = read("fi", split, tmp_path / "tfds")
        assert by_class(elements, ve.Fi.CLASSES) == {c: n for c in ve.Fi.CLASSES}
        assert all(e["id"].decode().startswith(f"{split}/") for e in elements)


def test_heco_split_and_imagefolder_label_order(tmp_path):
    manual = tmp_path / "HECO"
    names = ve.Heco.CLASSES
    assert list(names) == sorted(names)  # ImageFolder indexes the sorted folder names
    colours = class_folders(manual, {c: 3 for c in names} | {"Anger": 10})
    splits = {s: read("heco", s, tmp_path / "tfds", manual_dir=str(manual)) for s in ve.SPLITS}
    # 10 -> 7/1/2; 3 -> int(2.1)=2 / int(0.3)=0 / 1.
    assert by_class(splits["train"], names) == {c: 7 if c == "Anger" else 2 for c in names}
    assert by_class(splits["val"], names) == {c: 1 if c == "Anger" else 0 for c in names}
    assert by_class(splits["test"], names) == {c: 2 if c == "Anger" else 1 for c in names}
    assert_solid(splits["train"], names, colours)


def test_unbiased_emo_splits_each_sub_folder(tmp_path):
    manual = tmp_path / "UBE"
    names = ve.UnbiasedEmo.CLASSES
    colours = class_folders(manual, {c: 2 for c in names}, sub="people")
    class_folders(manual, {"anger": 10}, sub="animals")
    class_folders(manual, {"anger": 5}, sub="zz_scenes")
    splits = {s: read("unbiased_emo", s, tmp_path / "tfds", manual_dir=str(manual)) for s in ve.SPLITS}
    per_sub = {}
    for split, elements in splits.items():
        for e in elements:
            _, sub, _ = e["id"].decode().split("/")[-3:]
            if names[e["label"]] == "anger":
                per_sub.setdefault(sub, {s: 0 for s in ve.SPLITS})[split] += 1
    # Per sub-folder: 10 -> 7/1/2, 5 -> 3/0/2, 2 -> 1/0/1.
    assert per_sub == {"animals": {"train": 7, "val": 1, "test": 2},
                       "zz_scenes": {"train": 3, "val": 0, "test": 2},
                       "people": {"train": 1, "val": 0, "test": 1}}
    assert by_class(splits["train"], names) == {c: 11 if c == "anger" else 1 for c in names}
    assert_solid(splits["test"], names, colours | {"anger": colour(0)})


def test_caer_s_original_test_folder_is_split_66_34(tmp_path):
    manual = tmp_path / "CAER-S"
    names = ve.CaerS.CLASSES
    colours = class_folders(manual / "train", {c: 2 for c in names})
    class_folders(manual / "test", {c: 3 for c in names} | {"Anger": 10})
    splits = {s: read("caer_s", s, tmp_path / "tfds", manual_dir=str(manual)) for s in ve.SPLITS}
    assert by_class(splits["train"], names) == {c: 2 for c in names}
    # int(0.66 n) of the original test folder -> test, the rest -> val: 10 -> 6/4, 3 -> 1/2.
    assert by_class(splits["test"], names) == {c: 6 if c == "Anger" else 1 for c in names}
    assert by_class(splits["val"], names) == {c: 4 if c == "Anger" else 2 for c in names}
    assert all(e["id"].decode().startswith("test/") for e in splits["val"] + splits["test"])
    for split in ve.SPLITS:
        assert_solid(splits[split], names, colours)


def test_caer_s_reference_output_layout_uses_tst(tmp_path):
    manual = tmp_path / "caerss"
    for split, n in [("train", 2), ("test", 5), ("tst", 3), ("val", 2)]:
        class_folders(manual / split, {c: n for c in ve.CaerS.CLASSES})
    builder = builders.prepare("caer_s", str(manual), config="224", data_dir=str(tmp_path / "tfds"))
    assert builder.info.metadata["split_source"] == "provided train/ val/ tst/"
    assert {s: builder.info.splits[s].num_examples for s in ve.SPLITS} == {"train": 14, "val": 14, "test": 21}
    element = read("caer_s", "val", tmp_path / "tfds", config="224")[0]
    assert element["image"].shape == (224, 224, 3) and element["id"].decode().startswith("val/")


def test_emo8_provided_split_with_case_insensitive_folders(tmp_path):
    manual = tmp_path / "Emo8"
    names = ve.Emo8.CLASSES
    for split, n in [("train", 2), ("val", 1), ("test", 1)]:
        colours = class_folders(manual / split, {c.capitalize(): n for c in names}, ext=".jpg")
    splits = {s: read("emo8", s, tmp_path / "tfds", manual_dir=str(manual)) for s in ve.SPLITS}
    assert by_class(splits["train"], names) == {c: 2 for c in names}
    assert by_class(splits["val"], names) == {c: 1 for c in names}
    assert_solid(splits["test"], names, {c: colours[c.capitalize()] for c in names}, tolerance=3)


def test_emo8_without_val_folder_is_an_error(tmp_path):
    manual = tmp_path / "Emo8"
    for split in ("train", "test"):
        class_folders(manual / split, {c: 1 for c in ve.Emo8.CLASSES})
    with pytest.raises(DataError) as error:
        builders.prepare("emo8", str(manual), data_dir=str(tmp_path / "tfds"))
    assert (error.value.path, error.value.field) == (str(manual / "val"), "val folder")


# -------------------------------------------------------------------------------------------------- EmoSet

EMOSET_INFO = {
    "emotion": {"label2idx": {c: i for i, c in enumerate(ve.EmoSet.CLASSES)}},
    "brightness": {"label2idx": {f"{k / 10:.1f}": k for k in range(11)}},
    "scene": {"label2idx": {"beach": 0, "stage": 1}},
    "object": {"label2idx": {"Person": 0, "Alarm clock": 1, "Dog": 2}},
}
FULL_ANNOTATION = {"brightness": 0.3, "colorfulness": 0.7, "scene": "beach", "object": ["Person", "Alarm clock"],
                   "facial_expression": "happy", "human_action": "dancing"}


def emoset_fixture(root, official=True, annotations=None):
    """Two train images per emotion, one val image for amusement and anger, one test image for fear; 60x40
    images (stored: x -> (6.4 x - 64) / 256, y -> 6.4 y / 256). `annotations` overrides some ids."""
    annotations = annotations or {}
    splits = {"train": [(c, k) for c in ve.EmoSet.CLASSES for k in range(2)],
              "val": [("amusement", 2), ("anger", 2)], "test": [("fear", 2)]}
    info = dict(EMOSET_INFO) if official else {"label2idx": EMOSET_INFO["emotion"]["label2idx"]}
    (root).mkdir(parents=True, exist_ok=True)
    (root / "info.json").write_text(json.dumps(info))
    for split, items in splits.items():
        entries = []
        for emotion, k in items:
            image_id = f"{emotion}_{k:02d}"
            image, annotation = f"image/{emotion}/{image_id}.jpg", f"annotation/{emotion}/{image_id}.json"
            write_image(str(root / image), colour(ve.EmoSet.CLASSES.index(emotion)), size=(60, 40))
            (root / annotation).parent.mkdir(parents=True, exist_ok=True)
            (root / annotation).write_text(json.dumps(annotations.get(image_id, FULL_ANNOTATION)))
            entries.append([emotion, image_id, image, annotation] if official else [emotion, image, annotation])
        (root / f"{split}.json").write_text(json.dumps(entries))


def test_emoset_attributes_boxes_and_splits(tmp_path):
    manual = tmp_path / "EmoSet"
    emoset_fixture(manual, annotations={
        "amusement_00": {"brightness": 0.5, "scene": "stage", "person_boxes": [[15, 10, 45, 40]]},
        "awe_00": FULL_ANNOTATION | {"person_boxes": [[0, 0, 8, 10]]},  # outside the centre crop: dropped
    })
    (manual / "person_boxes.json").write_text(json.dumps({"anger_00": [[30, 0, 60, 20], [0, 0, 5, 5]]}))
    data_dir = tmp_path / "tfds"
    builder = builders.prepare("emoset", str(manual), data_dir=str(data_dir))
    splits = {s: {e["id"].decode(): e for e in read("emoset", s, data_dir)} for s in ve.SPLITS}
    assert {s: len(v) for s, v in splits.items()} == {"train": 16, "val": 2, "test": 1}
    assert sorted(splits["val"]) == ["amusement_02", "anger_02"]
    names = ve.EmoSet.CLASSES
    for elements in splits.values():
        for image_id, e in elements.items():
            assert names[e["label"]] == image_id.rsplit("_", 1)[0]
            assert np.abs(e["image"].astype(int) - colour(int(e["label"]))).max() <= 3
            assert e["person_boxes"].dtype == np.float32 and e["person_boxes"].shape[1:] == (4,)
    full = splits["train"]["sadness_01"]
    assert {k: full[k].decode() for k in ve.EmoSet.ATTRIBUTES} == {
        "brightness": "0.3", "colorfulness": "0.7", "scene": "beach", "object": "Person|Alarm clock",
        "facial_expression": "happy", "human_action": "dancing"}
    assert not full["has_person"] and full["person_boxes"].shape == (0, 4)
    np.testing.assert_array_equal(full["person_box"], [0, 0, 1, 1])
    partial = splits["train"]["amusement_00"]
    assert {k: partial[k].decode() for k in ve.EmoSet.ATTRIBUTES} == {
        "brightness": "0.5", "colorfulness": "", "scene": "stage", "object": "", "facial_expression": "",
        "human_action": ""}
    assert partial["has_person"]
    np.testing.assert_allclose(partial["person_boxes"], [[0.125, 0.25, 0.875, 1.0]], atol=1e-6)
    np.testing.assert_allclose(partial["person_box"], [0.125, 0.25, 0.875, 1.0], atol=1e-6)
    outside = splits["train"]["awe_00"]
    assert not outside["has_person"] and outside["person_boxes"].shape == (0, 4)
    side = splits["train"]["anger_00"]
    np.testing.assert_allclose(side["person_boxes"], [[0.5, 0.0, 1.0, 0.5]], atol=1e-6)
    fallbacks = builder.info.metadata["fallbacks"]["train"]
    assert fallbacks["missing object"] == 1 and fallbacks["person box outside the stored crop dropped"] == 2
    assert builder.info.metadata["class_counts"]["train"] == {c: 2 for c in names}


def test_emoset_uniemox_three_element_metadata(tmp_path):
    manual = tmp_path / "EmoSet"
    emoset_fixture(manual, official=False)
    elements = read("emoset", "train", tmp_path / "tfds", manual_dir=str(manual))
    assert sorted(e["id"].decode() for e in elements) == sorted(f"{c}_{k:02d}" for c in ve.EmoSet.CLASSES
                                                               for k in range(2))
    assert all(ve.EmoSet.CLASSES[e["label"]] == e["id"].decode().rsplit("_", 1)[0] for e in elements)


def _rewrite(path, change):
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


@pytest.mark.parametrize("case", ["short entry", "unknown emotion", "label out of range", "bad annotation json",
                                  "unknown scene", "bad box", "missing image", "corrupt image", "bad info"])
def test_emoset_malformed_input_names_file_and_field(tmp_path, case):
    manual = tmp_path / "EmoSet"
    emoset_fixture(manual)
    train = manual / "train.json"
    annotation = manual / "annotation" / "amusement" / "amusement_00.json"
    image = manual / "image" / "amusement" / "amusement_00.jpg"
    expected = {
        "short entry": (train, "entry 0"),
        "unknown emotion": (train, "entry 0: emotion"),
        "label out of range": (train, "entry 0: emotion"),
        "bad annotation json": (annotation, "annotation"),
        "unknown scene": (annotation, "scene"),
        "bad box": (annotation, "person_boxes[1]"),
        "missing image": (image, "image (train.json entry 0)"),
        "corrupt image": (image, "image"),
        "bad info": (manual / "info.json", "emotion.label2idx"),
    }[case]
    if case == "short entry":
        _rewrite(train, lambda entries: [entries[0][:2]] + entries[1:])
    elif case == "unknown emotion":
        _rewrite(train, lambda entries: [["joy"] + entries[0][1:]] + entries[1:])
    elif case == "label out of range":
        _rewrite(train, lambda entries: [[8] + entries[0][1:]] + entries[1:])
    elif case == "bad annotation json":
        annotation.write_text("{not json")
    elif case == "unknown scene":
        _rewrite(annotation, lambda a: a | {"scene": "moon"})
    elif case == "bad box":
        _rewrite(annotation, lambda a: a | {"person_boxes": [[0, 0, 10, 10], [5, 5, 2, 9]]})
    elif case == "missing image":
        image.unlink()
    elif case == "corrupt image":
        image.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    elif case == "bad info":
        _rewrite(manual / "info.json", lambda info: info | {"emotion": {"label2idx": {"joy": 0}}})
    with pytest.raises(DataError) as error:
        builders.prepare("emoset", str(manual), data_dir=str(tmp_path / "tfds"))
    assert (error.value.path, error.value.field) == tuple(map(str, expected)), error.value


# ------------------------------------------------------------------------------------------ synthetic scenes


def test_synthetic_scenes_are_deterministic_and_shaped_like_emoset():
    a, b = SyntheticScenes(64, image_size=32, seed=3), SyntheticScenes(64, image_size=32, seed=3)
    for i in (0, 17, 63):
        for key, value in a[i].items():
            np.testing.assert_array_equal(value, b[i][key])
    assert not np.array_equal(a[5]["image"], SyntheticScenes(64, image_size=32, seed=4)[5]["image"])
    elements = [a[i] for i in range(64)]
    assert {k for k in elements[0]} == {"image", "label", "id", "person_boxes", "person_box", "has_person",
                                        *ve.EmoSet.ATTRIBUTES}
    assert elements[0]["image"].shape == (32, 32, 3) and elements[0]["image"].dtype == np.uint8
    with_person = [e for e in elements if e["has_person"]]
    assert 0 < len(with_person) < 64
    for e in elements:
        boxes = e["person_boxes"]
        assert boxes.dtype == np.float32 and boxes.shape == ((1, 4) if e["has_person"] else (0, 4))
        assert (boxes[:, :2] < boxes[:, 2:]).all() and (boxes >= 0).all() and (boxes <= 1).all()
        assert e["object"] == (b"Person" if e["has_person"] else b"")
        assert float(e["brightness"]) in np.round(np.arange(11) / 10, 1)
    data_config = ml_collections.ConfigDict({"name": "synthetic_scenes", "train_size": 10, "eval_size": 4,
                                             "image_size": 16})
    train, test = sources.make_sources(data_config, seed=0)
    assert isinstance(train, SyntheticScenes) and train[0]["image"].shape == (16, 16, 3)
    assert len(train) == 10 and len(test) == 4 and train.seed != test.seed


def _histogram(image, bins=4):
    q = image.reshape(-1, 3).astype(np.int64) * bins // 256
    counts = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins ** 3)
    return counts / counts.sum()


def _full_features(image):
    s = image.shape[0]
    return np.concatenate([_histogram(image), image.reshape(4, s // 4, 4, s // 4, 3).mean((1, 3)).ravel() / 255])


def _crop(element, n=8):
    """The person view: the box resampled to n x n (nearest), as UniEmoX crops the person region."""
    image, (x0, y0, x1, y1) = element["image"], element["person_box"]
    s = image.shape[0]
    ys = np.clip(((y0 + (np.arange(n) + 0.5) / n * (y1 - y0)) * s).astype(int), 0, s - 1)
    xs = np.clip(((x0 + (np.arange(n) + 0.5) / n * (x1 - x0)) * s).astype(int), 0, s - 1)
    crop = image[ys][:, xs]
    return np.concatenate([_histogram(crop), crop.ravel() / 255])


def _without_person(element):
    image = element["image"].copy()
    if element["has_person"]:
        box = element["person_box"] * image.shape[0]
        (x0, y0), (x1, y1) = np.floor(box[:2]).astype(int), np.ceil(box[2:]).astype(int)
        image[y0:y1, x0:x1] = 128
    return image


def _softmax_regression_accuracy(x_train, y_train, x_test, y_test, steps=150, lr=0.5):
    classes = int(max(y_train.max(), y_test.max())) + 1
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w, b, targets = np.zeros((x_train.shape[1], classes)), np.zeros(classes), np.eye(classes)[y_train]
    for _ in range(steps):
        z = x_train @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        grad = (p / p.sum(1, keepdims=True) - targets) / len(x_train)
        w -= lr * (x_train.T @ grad + 1e-3 * w)
        b -= lr * grad.sum(0)
    return float(((x_test @ w + b).argmax(1) == y_test).mean())


def test_synthetic_scenes_are_learnable_from_the_image_and_from_the_person_crop():
    """8 classes = 4 scene styles x 2 poses. A linear classifier on colour statistics of the full image learns
    the class far above chance (1/8; the bound is 0.8 + 0.2 / 2 = 0.9 since 20% have no person); the person
    crop alone gives the pose; the image with the person blanked out gives the scene but not the pose."""
    train = [e for e in map(SyntheticScenes(600, image_size=32, seed=0).__getitem__, range(600))]
    test = [e for e in map(SyntheticScenes(300, image_size=32, seed=1).__getitem__, range(300))]
    y_train, y_test = (np.array([int(e["label"]) for e in s]) for s in (train, test))
    p_train, p_test = (np.array([bool(e["has_person"]) for e in s]) for s in (train, test))

    def features(fn):
        return np.stack([fn(e) for e in train]), np.stack([fn(e) for e in test])

    full = features(lambda e: _full_features(e["image"]))
    assert _softmax_regression_accuracy(full[0], y_train, full[1], y_test) > 0.7
    crop = features(_crop)
    pose_from_crop = _softmax_regression_accuracy(crop[0][p_train], y_train[p_train] % 2, crop[1][p_test],
                                                  y_test[p_test] % 2)
    assert pose_from_crop > 0.9
    assert _softmax_regression_accuracy(crop[0], y_train, crop[1], y_test) > 0.4
    scene_only = features(lambda e: _full_features(_without_person(e)))
    assert _softmax_regression_accuracy(scene_only[0], y_train // 2, scene_only[1], y_test // 2) > 0.8
    pose_without_person = _softmax_regression_accuracy(scene_only[0][p_train], y_train[p_train] % 2,
                                                       scene_only[1][p_test], y_test[p_test] % 2)
    assert pose_without_person < 0.7
