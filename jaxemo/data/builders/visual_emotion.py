"""Visual emotion datasets of UniEmoX: EmoSet-118K (pretraining) and the six fine-tuning sets.

Every builder reads the corpus's own layout from `manual_dir` and stores each image decoded, resized once and
centre-cropped to a fixed `S x S x 3` uint8 array (no JPEG decoding in the training loop; grain batches it as
is). Elements:

    image  uint8 [S, S, 3]   label  ClassLabel   id  Text (path of the image under manual_dir, or EmoSet's id)

EmoSet adds its six attributes as Text ("" when the annotation lacks one; numbers as `str(value)`, e.g. "0.3",
as UniEmoX's prompt builder writes them; `object` is the object names joined by "|"), person boxes for the
person view (`person_boxes` float32 [n, 4], normalised xyxy in the *stored* image; `person_box` [4], the first
of them or the whole image [0, 0, 1, 1] when there is none; `has_person` bool). EmoSet ships no boxes: they
come from an annotation's "person_boxes" field or from `manual_dir/person_boxes.json` ({id: [[x1, y1, x2, y2],
...]}), pixel xyxy of the *original* image, most confident first (e.g. an offline person detector's output:
UniEmoX's YOLOv3 keeps the first box with confidence > 0.8). Text fields read back as bytes, and
`person_boxes` is ragged: a batching pipeline keeps `person_box` and drops those (or maps them first).

At 256 px an image takes 196,608 bytes: EmoSet-118K ~23 GB, CAER-S ~14 GB, FI ~4.6 GB, the others < 2 GB.

Configs ("256" is the default):
  "256"         short side resized to 256 (bicubic), centre crop 256x256. With UniEmoX's evaluation transform
                (Resize(256) bicubic -> CenterCrop(224)) a centre 224 crop of the stored image is *exactly* the
                reference's eval input: torchvision's Resize/CenterCrop arithmetic is reproduced here and two
                centre crops compose into one. Training's RandomResizedCrop(224) then samples inside the centre
                square rather than the whole image (a 4:3 image loses 1/8 of its width on each side).
  "224", "384"  the same at another size (384 keeps more detail for the person view's crop-and-resize).
  "256_squash"  both sides resized to 256 (aspect ratio not kept), so the whole field of view survives.

Splits are train / val / test. Where the reference code splits a folder itself (UniEmoX
`datasets/data_partition.py`), the same procedure runs here on the *sorted* file list (the reference used
`os.listdir` order, which depends on the filesystem):
  Emotion6     per class, sklearn `train_test_split(files, train_size=0.7, random_state=42)`, then the rest
               split with train_size = 0.1 / (0.1 + 0.2), random_state=42 (val) / the remainder (test).
               Reimplemented without sklearn with the same sizes (floor) and the same permutation
               (`np.random.RandomState(42).permutation`): identical to sklearn on the same list (checked in the
               tests when sklearn is installed; known-answer values otherwise).
  FI           per class: shuffle, first int(0.8 n) train, next int(0.05 n) val, the rest test.
  UnbiasedEmo  the same per sub-folder of each class folder with 0.7 / 0.1 (the rest test).
  HECO         the same per class with 0.7 / 0.1.
  CAER-S       the original train folder is train; of the original test folder, per class, a random sample of
               int(0.66 n) is test and the rest val.
  The reference's shuffles are unseeded (Python's global `random`); here one `random.Random(SPLIT_SEED=42)` is
  consumed in the reference's class order, so the split is what the reference script gives after
  `random.seed(42)` on a sorted listing.
  Emo8         the provided split: train/, val/, test/ folders of class folders.
A folder that already holds train/, val/ and test/ class folders (the authors' released splits, or the output
of the reference partition script) is read as provided; `info.metadata["split_source"]` says which was used.

Labels follow torchvision ImageFolder, which the reference fine-tunes with: classes indexed in sorted folder-name
order (UniEmoX's `utils/metrics.py` lists some of them in another order; those lists only name confusion-matrix
rows). Class folders match case-insensitively. Files are taken as ImageFolder does: recursively, with its image
extensions; other files are skipped and counted. Images are converted to RGB with PIL (grey, palette, CMYK and
alpha handled as `Image.convert("RGB")` does; EXIF orientation is not applied, as in the reference).

Errors name the file and field: an undecodable image (`image`), an unknown class folder (`class folder`), an
EmoSet entry that is not a 3/4-element list, an emotion not in info.json or an index out of range
(`entry i: emotion`), a bad annotation json, attribute or box.
Documented fallbacks (counted, logged and written to `info.metadata["fallbacks"]`): EmoSet attributes missing
from an annotation become ""; person boxes that fall outside the stored crop are dropped (`has_person` False
when none is left, and `person_box` is the whole image); non-image files in class folders are skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxemo.data.builders.base import (
    DataError,
    FallbackCounter,
    ManualShardBuilder,
    ordered_map,
    require_dir,
    require_file,
)

logger = logging.getLogger(__name__)

# torchvision's ImageFolder IMG_EXTENSIONS (the reference reads every fine-tuning set with ImageFolder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_SEED = 42  # Emotion6's random_state in the reference; also used for its unseeded FI/UBE/HECO/CAER-S splits
SPLITS = ("train", "val", "test")
BUILD_THREADS = min(8, os.cpu_count() or 1)  # PIL decodes and resizes with the GIL released
OBJECT_SEPARATOR = "|"
WHOLE_IMAGE = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


@dataclasses.dataclass(eq=False)
class ImageConfig(tfds.core.BuilderConfig):
    """Stored image size and how the image is brought to it ("crop": short side to S then centre crop S;
    "squash": both sides to S)."""

    image_size: int = 256
    resize: str = "crop"


IMAGE_CONFIGS = [
    ImageConfig(name="256", image_size=256, resize="crop",
                description="short side -> 256 (bicubic), centre crop 256; eval = centre crop 224 of it"),
    ImageConfig(name="224", image_size=224, resize="crop", description="short side -> 224, centre crop 224"),
    ImageConfig(name="384", image_size=384, resize="crop", description="short side -> 384, centre crop 384"),
    ImageConfig(name="256_squash", image_size=256, resize="squash",
                description="both sides -> 256 (aspect ratio not kept, whole field of view)"),
]


# ----------------------------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where the stored image sits in the original: stored x = (x * scale_x - left) / size (likewise y)."""

    width: int
    height: int
    scale_x: float
    scale_y: float
    left: int
    top: int
    size: int

    def boxes_to_stored(self, boxes: np.ndarray) -> np.ndarray:
        """Pixel xyxy boxes of the original image -> normalised xyxy of the stored image, clipped; boxes with
        nothing left inside the stored image are dropped."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        x = (np.clip(boxes[:, 0::2], 0, self.width) * self.scale_x - self.left) / self.size
        y = (np.clip(boxes[:, 1::2], 0, self.height) * self.scale_y - self.top) / self.size
        out = np.clip(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1), 0.0, 1.0)
        keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
        return out[keep].astype(np.float32)


def resize_geometry(width: int, height: int, size: int, resize: str) -> tuple[tuple[int, int], Geometry]:
    """torchvision `Resize(size)` + `CenterCrop(size)` arithmetic ("crop") or a plain resize ("squash")."""
    if resize == "squash":
        new_w, new_h = size, size
    elif resize == "crop":
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
    else:
        raise ValueError(f"resize={resize!r}; expected 'crop' or 'squash'")
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)
    return (new_w, new_h), Geometry(width, height, new_w / width, new_h / height, left, top, size)


def load_image(path: str, size: int, resize: str = "crop") -> tuple[np.ndarray, Geometry]:
    """Decodes `path` to RGB and returns the stored `[size, size, 3]` uint8 image and its geometry."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")  # forces the full decode: truncated or corrupt files fail here
    except FileNotFoundError:
        raise DataError(path, "image", "file not found") from None
    except Exception as error:  # noqa: BLE001  PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        raise DataError(path, "image", f"cannot decode ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise DataError(path, "image", f"empty image ({width}x{height})")
    (new_w, new_h), geometry = resize_geometry(width, height, size, resize)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    image = image.crop((geometry.left, geometry.top, geometry.left + size, geometry.top + size))
    return np.asarray(image, dtype=np.uint8), geometry


def parallel_map(fn: Callable, items: Sequence, threads: int | None = None) -> Iterator:
    """`map(fn, items)` in order, on a thread pool with at most 4 x threads results in flight."""
    threads = threads or BUILD_THREADS
    return ordered_map(fn, items, threads, window=4 * threads)


# --------------------------------------------------------------------------------------- folder listing


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))  # .DS_Store, ._x.jpg, __MACOSX


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not _hidden(e.name))


def _image_files(folder: str, fallbacks: FallbackCounter | None = None) -> list[str]:
    """Sorted paths of the images under `folder`, recursively (as ImageFolder walks a class folder)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if _hidden(name):
                continue
            path = os.path.join(root, name)
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(path)
            elif fallbacks is not None:
                fallbacks.add("non-image file skipped", path)
    return found


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def sklearn_like_split(n: int, train_size: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) that sklearn's `train_test_split(range(n), train_size=..., random_state=...)`
    returns: n_train = floor(train_size * n), n_test = n - n_train, one `RandomState(seed).permutation(n)`,
    test = its first n_test entries, train = the next n_train. (sklearn refuses an empty train or test set;
    this returns it, for tiny classes.)"""
    n_train = math.floor(train_size * n)
    n_test = n - n_train
    permutation = np.random.RandomState(random_state).permutation(n)
    return permutation[n_test:n_test + n_train], permutation[:n_test]


def shuffle_split(files: list, rng: random.Random, train_ratio: float, val_ratio: float) -> dict[str, list]:
    """The reference's FI / HECO / UBE split: shuffle, int(n * train) train, int(n * val) val, rest test."""
    files = list(files)
    rng.shuffle(files)
    num_train, num_val = int(len(files) * train_ratio), int(len(files) * val_ratio)
    return {"train": files[:num_train], "val": files[num_train:num_train + num_val],
            "test": files[num_train + num_val:]}


# ----------------------------------------------------------------------------------------------- builders


class _ImageBuilder(ManualShardBuilder, skip_registration=True):
    """What the image builders share. Shards are written in row order (`base.ManualShardBuilder`; FI, CAER-S
    and EmoSet are 5-23 GB at 256 px): the listing order, class by class, each shard holding at most
    `SHARD_BYTES` of images; grain shuffles at read time. Images are stored as raw bytes (`Encoding.BYTES`),
    about 20x faster to write and read than TFDS's default int64 lists."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = IMAGE_CONFIGS
    DEFAULT_CONFIG_NAME = "256"
    SHARD_BYTES = 512 << 20

    def _image_feature(self) -> tfds.features.Tensor:
        size = self.builder_config.image_size
        return tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)

    def _shards(self, items: list, generate: Callable) -> list[Callable]:
        """`generate(items[a:b])` for consecutive row ranges of at most SHARD_BYTES of images each."""
        return self.shard_generators(items, 3 * self.builder_config.image_size ** 2, generate)


class _ClassFolderDataset(_ImageBuilder, skip_registration=True):
    """Base of the fine-tuning sets: class folders, split by the reference's procedure or as provided."""

    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Decoded uint8 images resized at build time; UniEmoX's splits."}
    CLASSES: tuple[str, ...] = ()  # ClassLabel names = ImageFolder's sorted folder names
    REFERENCE_ORDER: tuple[str, ...] = ()  # the class order of the reference split script (consumes the RNG)
    ALIASES: ClassVar[dict[str, str]] = {}  # other folder spellings (lower case) -> class name
    DESCRIPTION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": self._image_feature(),
                "label": tfds.features.ClassLabel(names=list(self.CLASSES)),
                "id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    # --- class folders

    def _class_of(self, name: str) -> str | None:
        lowered = {c.lower(): c for c in self.CLASSES}
        key = name.lower()
        return lowered.get(key) or self.ALIASES.get(key)

    def _class_folders(self, root: str, require_all: bool) -> dict[str, str]:
        """{class: folder} of the class folders directly under `root`; an unknown folder is an error."""
        folders: dict[str, str] = {}
        for name in _subdirs(require_dir(root, "class folders")):
            path = os.path.join(root, name)
            cls = self._class_of(name)
            if cls is None:
                raise DataError(path, "class folder", f"{name!r} is not a {self.name} class; expected one of "
                                f"{list(self.CLASSES)}")
            if cls in folders:
                raise DataError(path, "class folder", f"{name!r} is a second folder for class {cls!r} "
                                f"(also {folders[cls]})")
            folders[cls] = path
        missing = [c for c in self.CLASSES if c not in folders]
        if missing and require_all:
            raise DataError(root, "class folders", f"missing {missing}; found {sorted(folders)}")
        if missing:
            logger.warning("%s: %s has no folder for %s", self.name, root, missing)
        return folders

    def _raw_root(self, manual_dir: str) -> str:
        """The folder holding the class folders: manual_dir itself, or manual_dir/images (Emotion6's layout)."""
        for candidate in (manual_dir, os.path.join(manual_dir, "images")):
            if os.path.isdir(candidate) and any(self._class_of(n) for n in _subdirs(candidate)):
                return candidate
        raise DataError(manual_dir, "class folders", f"no {self.name} class folder {list(self.CLASSES)} here or "
                        f"in images/, and no train/ val/ test/ split folders: "
                        f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")

    @staticmethod
    def _has_provided_split(manual_dir: str) -> bool:
        return all(os.path.isdir(os.path.join(manual_dir, s)) for s in SPLITS)

    def _provided_split(self, manual_dir: str, folders: dict[str, str] | None = None) -> dict[str, list]:
        """{split: [(path, class)]} from train/, val/, test/ folders of class folders."""
        folders = folders or {s: os.path.join(manual_dir, s) for s in SPLITS}
        splits = {}
        for split, root in folders.items():
            items = []
            for cls, folder in self._class_folders(root, require_all=False).items():
                items += [(path, cls) for path in _image_files(folder, self._fallbacks)]
            splits[split] = items
        return splits

    def _reference_split(self, root: str) -> dict[str, list]:
        raise NotImplementedError

    def _split_lists(self, manual_dir: str) -> dict[str, list]:
        if self._has_provided_split(manual_dir):
            self.info.metadata["split_source"] = "provided train/ val/ test/ folders"
            return self._provided_split(manual_dir)
        self.info.metadata["split_source"] = f"reference procedure, seed {SPLIT_SEED}"
        return self._reference_split(self._raw_root(manual_dir))

    # --- TFDS

    def _shard_iterators_per_split(self, dl_manager):
        manual_dir = require_dir(os.fspath(dl_manager.manual_dir), "manual_dir")
        self._fallbacks = FallbackCounter(self.name)
        splits = self._split_lists(manual_dir)
        metadata = self.info.metadata
        metadata.update(image_size=self.builder_config.image_size, resize=self.builder_config.resize)
        metadata["class_counts"] = {split: dict(collections.Counter(c for _, c in items))
                                    for split, items in splits.items()}
        metadata["fallbacks"] = self._fallbacks.report("listing")
        generate = functools.partial(self._generate_examples, manual_dir=manual_dir)
        return self.non_empty({split: self._shards(items, generate) for split, items in splits.items()})

    def _generate_examples(self, items, manual_dir):
        """(key, example) of one shard's (path, class) items, decoded on threads, in order."""
        config = self.builder_config

        def load(item):
            path, cls = item
            image, _ = load_image(path, config.image_size, config.resize)
            key = _rel(path, manual_dir)
            return key, {"image": image, "label": self.CLASSES.index(cls), "id": key}

        yield from parallel_map(load, items)


def _per_class_files(builder: _ClassFolderDataset, root: str) -> dict[str, list[str]]:
    folders = builder._class_folders(root, require_all=True)
    return {cls: _image_files(folders[cls], builder._fallbacks) for cls in builder.REFERENCE_ORDER}


def _shuffle_split_per_class(builder: _ClassFolderDataset, root: str, train: float, val: float):
    rng = random.Random(SPLIT_SEED)
    splits: dict[str, list] = {s: [] for s in SPLITS}
    for cls, files in _per_class_files(builder, root).items():
        for split, chosen in shuffle_split(files, rng, train, val).items():
            splits[split] += [(path, cls) for path in chosen]
    return splits


_MIKELS = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")


class Emotion6(_ClassFolderDataset):
    """Emotion6 (Peng et al. 2015): 1,980 images, 6 classes; UniEmoX's 70/10/20 per-class split."""

    CLASSES = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
    REFERENCE_ORDER = CLASSES
    TRAIN, VAL, TEST = 0.7, 0.1, 0.2
    DESCRIPTION = "Emotion6, 6 classes, split 70/10/20 per class as sklearn train_test_split(random_state=42)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Emotion6: manual_dir holds images/<class>/*.jpg (or <class>/*.jpg) with the classes anger, disgust, fear,
    joy, sadness, surprise; or train/, val/, test/ folders of those class folders (an existing split).
    """

    def _reference_split(self, root):
        splits: dict[str, list] = {s: [] for s in SPLITS}
        val_fraction = self.VAL / (self.VAL + self.TEST)  # the reference's float expression, same rounding
        for cls, files in _per_class_files(self, root).items():
            train, rest = sklearn_like_split(len(files), self.TRAIN, SPLIT_SEED)
            rest_files = [files[i] for i in rest]
            val, test = sklearn_like_split(len(rest_files), val_fraction, SPLIT_SEED)
            for split, chosen in (("train", [files[i] for i in train]), ("val", [rest_files[i] for i in val]),
                                  ("test", [rest_files[i] for i in test])):
                splits[split] += [(path, cls) for path in chosen]
        return splits


class Fi(_ClassFolderDataset):
    """FI (You et al. 2016, Flickr & Instagram): 8 Mikels classes; UniEmoX's 80/5/15 per-class split."""

    CLASSES = _MIKELS
    REFERENCE_ORDER = _MIKELS
    DESCRIPTION = "FI, 8 Mikels classes, split 80/5/15 per class (seeded; the reference is unseeded)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    FI: manual_dir holds <class>/*.jpg (or images/<class>/) for the 8 Mikels classes amusement, anger, awe,
    contentment, disgust, excitement, fear, sadness; or train/, val/, test/ folders of class folders.
    """

    def _reference_split(self, root):
        return _shuffle_split_per_class(self, root, 0.8, 0.05)


class Heco(_ClassFolderDataset):
    """HECO (Yang et al. 2022): 8 classes; UniEmoX's 70/10/20 per-class split."""

    CLASSES = ("Anger", "Disgust", "Excitement", "Fear", "Happiness", "Peace", "Sadness", "Surprise")
    REFERENCE_ORDER = ("Surprise", "Sadness", "Peace", "Happiness", "Fear", "Excitement", "Disgust", "Anger")
    DESCRIPTION = "HECO, 8 classes, split 70/10/20 per class (seeded; the reference is unseeded)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    HECO: manual_dir holds <class>/*.jpg (or images/<class>/) for Anger, Disgust, Excitement, Fear, Happiness,
    Peace, Sadness, Surprise; or train/, val/, test/ folders of class folders.
    """

    def _reference_split(self, root):
        return _shuffle_split_per_class(self, root, 0.7, 0.1)


class UnbiasedEmo(_ClassFolderDataset):
    """UnbiasedEmo (Panda et al. 2018), "UBE": 6 classes, each with sub-folders (subjects); 70/10/20 per
    sub-folder. Images directly inside a class folder form one more group."""

    CLASSES = ("anger", "fear", "joy", "love", "sadness", "surprise")
    REFERENCE_ORDER = CLASSES
    DESCRIPTION = "UnbiasedEmo, 6 classes, split 70/10/20 per sub-folder (seeded; the reference is unseeded)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    UnbiasedEmo: manual_dir holds <class>/<sub-folder>/*.jpg (or images/<class>/...) for anger, fear, joy, love,
    sadness, surprise; or train/, val/, test/ folders of class folders.
    """

    def _reference_split(self, root):
        rng = random.Random(SPLIT_SEED)
        splits: dict[str, list] = {s: [] for s in SPLITS}
        folders = self._class_folders(root, require_all=True)
        for cls in self.REFERENCE_ORDER:
            groups = [_image_files(os.path.join(folders[cls], sub), self._fallbacks)
                      for sub in _subdirs(folders[cls])]
            loose = [e.path for e in sorted(os.scandir(folders[cls]), key=lambda e: e.name)
                     if e.is_file() and not _hidden(e.name) and e.name.lower().endswith(IMAGE_EXTENSIONS)]
            for files in groups + ([loose] if loose else []):
                for split, chosen in shuffle_split(files, rng, 0.7, 0.1).items():
                    splits[split] += [(path, cls) for path in chosen]
        return splits


class CaerS(_ClassFolderDataset):
    """CAER-S (Lee et al. 2019): 7 classes; original train/ is train, the original test/ is split per class
    66% test / 34% val (UniEmoX). With a val/ folder present the split is read as provided (test from tst/,
    the reference script's output name, when it exists)."""

    CLASSES = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
    REFERENCE_ORDER = CLASSES
    ALIASES: ClassVar[dict[str, str]] = {"angry": "Anger", "happiness": "Happy", "sadness": "Sad"}
    TEST_FRACTION = 0.66
    DESCRIPTION = "CAER-S, 7 classes: original train; original test split 66% test / 34% val per class."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    CAER-S: manual_dir holds train/<class>/*.png and test/<class>/*.png for Anger, Disgust, Fear, Happy,
    Neutral, Sad, Surprise (the original release); or train/, val/, test/ (or tst/) folders of class folders.
    """

    def _split_lists(self, manual_dir):
        train, test = (require_dir(os.path.join(manual_dir, s), f"{s} folder") for s in ("train", "test"))
        if os.path.isdir(os.path.join(manual_dir, "val")):
            tst = os.path.join(manual_dir, "tst")
            test_folder = "tst/" if os.path.isdir(tst) else "test/"
            self.info.metadata["split_source"] = f"provided train/ val/ {test_folder}"
            return self._provided_split(manual_dir, {"train": train, "val": os.path.join(manual_dir, "val"),
                                                     "test": tst if os.path.isdir(tst) else test})
        self.info.metadata["split_source"] = f"reference procedure, seed {SPLIT_SEED}"
        splits = self._provided_split(manual_dir, {"train": train})
        splits.update(val=[], test=[])
        rng = random.Random(SPLIT_SEED)
        for cls, files in _per_class_files(self, test).items():
            chosen = set(rng.sample(files, int(len(files) * self.TEST_FRACTION)))
            splits["test"] += [(path, cls) for path in files if path in chosen]
            splits["val"] += [(path, cls) for path in files if path not in chosen]
        return splits


class Emo8(_ClassFolderDataset):
    """Emo8 (UniEmoX's dataset): 8 Mikels classes, the provided train/val/test split."""

    CLASSES = _MIKELS
    DESCRIPTION = "Emo8, 8 Mikels classes, the provided train/val/test split."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Emo8: manual_dir holds train/, val/, test/, each with class folders amusement, anger, awe, contentment,
    disgust, excitement, fear, sadness (the split released with UniEmoX).
    """

    def _split_lists(self, manual_dir):
        for split in SPLITS:
            require_dir(os.path.join(manual_dir, split), f"{split} folder")
        self.info.metadata["split_source"] = "provided train/ val/ test/ folders"
        return self._provided_split(manual_dir)


# ----------------------------------------------------------------------------------------------- EmoSet


@dataclasses.dataclass(frozen=True)
class _EmoSetEntry:
    id: str
    label: int
    image: str
    annotation: str
    boxes: np.ndarray | None  # pixel xyxy of the original image, from person_boxes.json; None if absent
    source: str  # where the entry came from, for errors: "train.json entry 12"


def _load_json(path: str, field: str = "json") -> Any:
    require_file(path, field)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(path, field, f"invalid JSON ({error})") from None


def _parse_boxes(value: Any, path: str, field: str) -> np.ndarray:
    """A list of [x1, y1, x2, y2] pixel boxes -> float64 [n, 4]; anything else is a DataError."""
    if not isinstance(value, (list, tuple)):
        raise DataError(path, field, f"expected a list of [x1, y1, x2, y2] boxes, got {type(value).__name__}")
    boxes = []
    for j, box in enumerate(value):
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise DataError(path, f"{field}[{j}]", f"expected [x1, y1, x2, y2] numbers, got {box!r}")
        if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
            raise DataError(path, f"{field}[{j}]", f"not a box with x2 > x1 and y2 > y1: {box!r}")
        boxes.append(box)
    return np.asarray(boxes, np.float64).reshape(-1, 4)


class EmoSet(_ImageBuilder):
    """EmoSet-118K (Yang et al., ICCV 2023): 8 Mikels classes, six attributes, optional person boxes."""

    name = "emoset"  # the REGISTRY name (TFDS would derive "emo_set")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Decoded uint8 images, attributes as text, person boxes."}
    # Official info.json emotion label2idx order (positive emotions first).
    CLASSES = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
    ATTRIBUTES = ("brightness", "colorfulness", "scene", "object", "facial_expression", "human_action")
    PERSON_BOXES_FILE = "person_boxes.json"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    EmoSet-118K: manual_dir holds info.json, train.json (val.json, test.json), image/<emotion>/*.jpg and
    annotation/<emotion>/*.json as released. Entries are [emotion, id, image_path, annotation_path] (official)
    or [emotion, image_path, annotation_path] (UniEmoX's re-formatted metadata; info.json may then hold
    label2idx at the top level). Person boxes (pixel [x1, y1, x2, y2] of the original image) are read from an
    annotation's "person_boxes" field, else from manual_dir/person_boxes.json ({id: [[x1, y1, x2, y2], ...]}),
    e.g. written by an offline person detector.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": self._image_feature(),
            "label": tfds.features.ClassLabel(names=list(self.CLASSES)),
            "id": tfds.features.Text(),
            "person_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "person_box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "has_person": tfds.features.Tensor(shape=(), dtype=np.bool_),
        }
        features.update({name: tfds.features.Text() for name in self.ATTRIBUTES})
        return tfds.core.DatasetInfo(
            builder=self,
            description="EmoSet-118K: 8 emotions, attributes (text, '' when missing), person boxes in the stored "
                        "image (normalised xyxy).",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(),
        )

    # --- metadata files

    def _read_info(self, manual_dir: str) -> tuple[dict[str, int], dict[int, str], dict[str, set]]:
        """(emotion name -> index in the file, the inverse, attribute vocabularies present in info.json)."""
        path = os.path.join(manual_dir, "info.json")
        info = _load_json(path, "info.json")
        if not isinstance(info, dict):
            raise DataError(path, "info.json", "expected a JSON object")
        emotion = info.get("emotion") if isinstance(info.get("emotion"), dict) else info
        label2idx = emotion.get("label2idx")
        field = "emotion.label2idx" if emotion is not info else "label2idx"
        if not isinstance(label2idx, dict) or not label2idx:
            raise DataError(path, field, "missing; expected {emotion: index} for the 8 EmoSet emotions")
        unknown = [name for name in label2idx if name not in self.CLASSES]
        if unknown:
            raise DataError(path, field, f"unknown emotions {unknown} (8-class EmoSet expected: "
                            f"{list(self.CLASSES)})")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in label2idx.values()):
            raise DataError(path, field, "indices must be integers")
        vocabularies = {}
        for name in self.ATTRIBUTES:
            entry = info.get(name)
            if isinstance(entry, dict) and isinstance(entry.get("label2idx"), dict):
                vocabularies[name] = set(entry["label2idx"])
        return label2idx, {v: k for k, v in label2idx.items()}, vocabularies

    def _read_side_boxes(self, manual_dir: str) -> dict[str, np.ndarray]:
        path = os.path.join(manual_dir, self.PERSON_BOXES_FILE)
        if not os.path.exists(path):
            return {}
        data = _load_json(path, self.PERSON_BOXES_FILE)
        if not isinstance(data, dict):
            raise DataError(path, self.PERSON_BOXES_FILE, "expected {image id: [[x1, y1, x2, y2], ...]}")
        return {str(k): _parse_boxes(v, path, f"person_boxes[{k!r}]") for k, v in data.items()}

    def _read_split(self, path: str, manual_dir: str, label2idx, idx2label, side_boxes) -> list[_EmoSetEntry]:
        entries = _load_json(path, os.path.basename(path))
        if not isinstance(entries, list):
            raise DataError(path, "entries", "expected a JSON list of entries")
        parsed = []
        for i, item in enumerate(entries):
            where = f"entry {i}"
            if (not isinstance(item, list) or len(item) not in (3, 4)
                    or not all(isinstance(v, str) for v in item[1:])):
                raise DataError(path, where, "expected [emotion, id, image_path, annotation_path] (official) or "
                                f"[emotion, image_path, annotation_path] (UniEmoX), got {item!r}")
            emotion = item[0]
            if isinstance(emotion, int) and not isinstance(emotion, bool):
                if emotion not in idx2label:
                    raise DataError(path, f"{where}: emotion", f"label {emotion} out of range; info.json has "
                                    f"{sorted(idx2label)}")
                emotion = idx2label[emotion]
            if not isinstance(emotion, str) or emotion not in label2idx:
                raise DataError(path, f"{where}: emotion", f"{emotion!r} is not in info.json label2idx "
                                f"{sorted(label2idx)}")
            if len(item) == 4:
                _, image_id, image, annotation = item
            else:
                _, image, annotation = item
                image_id = os.path.splitext(os.path.basename(image))[0]
            image, annotation = os.path.join(manual_dir, image), os.path.join(manual_dir, annotation)
            if not os.path.isfile(image):
                raise DataError(image, f"image ({os.path.basename(path)} {where})", "file not found")
            if not os.path.isfile(annotation):
                raise DataError(annotation, f"annotation ({os.path.basename(path)} {where})", "file not found")
            parsed.append(_EmoSetEntry(image_id, self.CLASSES.index(emotion), image, annotation,
                                       side_boxes.get(image_id), f"{os.path.basename(path)} {where}"))
        return parsed

    # --- TFDS

    def _shard_iterators_per_split(self, dl_manager):
        manual_dir = require_dir(os.fspath(dl_manager.manual_dir), "manual_dir")
        label2idx, idx2label, self._vocabularies = self._read_info(manual_dir)
        side_boxes = self._read_side_boxes(manual_dir)
        require_file(os.path.join(manual_dir, "train.json"), "train.json")
        splits, seen = {}, {}
        for split in SPLITS:
            path = os.path.join(manual_dir, f"{split}.json")
            if not os.path.exists(path):
                logger.warning("EmoSet: %s not found; no %s split", path, split)
                continue
            splits[split] = self._read_split(path, manual_dir, label2idx, idx2label, side_boxes)
            for entry in splits[split]:
                if entry.id in seen:
                    raise DataError(path, f"{entry.source}: id", f"{entry.id!r} repeats {seen[entry.id]}")
                seen[entry.id] = entry.source
        metadata = self.info.metadata
        metadata.update(image_size=self.builder_config.image_size, resize=self.builder_config.resize,
                        split_source="train.json / val.json / test.json", fallbacks={},
                        person_boxes_file=bool(side_boxes))
        metadata["class_counts"] = {s: dict(collections.Counter(self.CLASSES[e.label] for e in entries))
                                    for s, entries in splits.items()}
        self._fallbacks = {split: FallbackCounter(f"{self.name}/{split}") for split in splits}
        self._last_entry = {split: entries[-1] for split, entries in splits.items() if entries}
        return self.non_empty({split: self._shards(entries, functools.partial(self._generate_examples, split))
                               for split, entries in splits.items()})

    def _attributes(self, entry: _EmoSetEntry, notes: list) -> tuple[dict, np.ndarray | None]:
        """The six attributes as text ("" when missing, noted in `notes`) and the annotation's pixel boxes."""
        path = entry.annotation
        annotation = _load_json(path, "annotation")
        if not isinstance(annotation, dict):
            raise DataError(path, "annotation", f"expected a JSON object, got {type(annotation).__name__}")
        values = {}
        for name in self.ATTRIBUTES:
            value = annotation.get(name)
            if value is None or value == "" or value == [] or value == "-1" or value == -1:
                notes.append(f"missing {name}")
                values[name] = ""
                continue
            if name == "object":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise DataError(path, name, f"expected a list of object names, got {value!r}")
                if any(OBJECT_SEPARATOR in v for v in value):
                    raise DataError(path, name, f"object names must not contain {OBJECT_SEPARATOR!r}: {value!r}")
                names = value
            else:
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    raise DataError(path, name, f"expected a string or a number, got {value!r}")
                names = [str(value)]
            vocabulary = self._vocabularies.get(name)
            unknown = [v for v in names if vocabulary is not None and v not in vocabulary]
            if unknown:
                raise DataError(path, name, f"{unknown} not in info.json {name}.label2idx")
            values[name] = OBJECT_SEPARATOR.join(names)
        boxes = entry.boxes
        if "person_boxes" in annotation:
            boxes = _parse_boxes(annotation["person_boxes"], path, "person_boxes")
        return values, boxes

    def _generate_examples(self, split, entries):
        """(key, example) of one shard's entries, decoded on threads, in order."""
        config = self.builder_config
        fallbacks = self._fallbacks[split]

        def load(entry: _EmoSetEntry):  # runs on a worker thread; fallbacks are counted on this one
            notes: list[str] = []
            attributes, boxes = self._attributes(entry, notes)
            image, geometry = load_image(entry.image, config.image_size, config.resize)
            stored = geometry.boxes_to_stored(boxes) if boxes is not None else np.zeros((0, 4), np.float32)
            if boxes is not None and len(stored) < len(boxes):
                notes.append("person box outside the stored crop dropped")
            example = {"image": image, "label": entry.label, "id": entry.id, "person_boxes": stored,
                       "person_box": stored[0] if len(stored) else WHOLE_IMAGE, "has_person": len(stored) > 0}
            example.update(attributes)
            return entry.id, example, notes

        for key, example, notes in parallel_map(load, entries):
            for note in notes:
                fallbacks.add(note, key)
            yield key, example
        self.info.metadata["fallbacks"][split] = dict(fallbacks.counts)  # cumulative over the split's shards
        if entries[-1] is self._last_entry[split]:
            fallbacks.report(split)
