"""MER2024 (MER-SEMI track) from per-sample feature files in the MERTools layout.

Manual dir:

    <manual_dir>/label-disdim.csv               the challenge's labels: columns `name`, `discrete` (others ignored)
    <manual_dir>/label-6way.npz                 or MERTools' preprocessed labels (`toolkit/preprocess/mer2024.py`):
                                                `train_corpus` {name: {"emo": label}}, `test1_corpus` (the pool)
    <manual_dir>/features/<feature>-UTT/<name>.npy   utterance-level feature [D]
    <manual_dir>/features/<feature>-FRA/<name>.npy   frame-level feature [T, D]

(`label-disdim.csv` is used when both label files are present.) The six classes, in MERTools' index order
(`toolkit/globals.py` `emos_mer`): neutral, angry, happy, sad, worried, surprise.

Splits:
    train       every labelled sample, sorted by name; a labelled sample without one of the selected
                features is a DataError
    unlabeled   the pool: every other sample that has all the selected features (MER-SEMI's test samples
                are inside it, as in MERTools, which predicts the whole `video-unlabeled-with-test2noise`
                set). With `label-6way.npz`, a `test1_corpus` name missing a feature is a DataError; other
                unlabelled names missing some feature are dropped and counted in `info.metadata`. An empty
                pool is not written (TFDS cannot read a split with no shard): the split is absent, logged.

Elements:
    features/<feature>   float32 [D] (UTT) or [max_frames, D] (FRA, zero-padded), one per selected feature;
                         <feature> is the folder name without `-UTT`/`-FRA`, e.g. `chinese-hubert-large`
    lengths/<feature>    int32 valid frames (FRA configs only)
    label                int32 class index, -1 in `unlabeled`
    id                   Text, the sample name

Configs: `utt` (default) reads every `*-UTT` folder present, in sorted order; `top1` the three features that
top MERTools' MER2024 rankings (HuBERT-large, CLIP-large, Baichuan-13B; the AGT paper's choice); `fra` every
`*-FRA` folder, padded to the longest sample of each feature (`max_frames` in a config caps it; longer
samples are truncated and counted). Dims, frame counts, feature order and label counts are in
`info.metadata`. Errors (DataError naming file and field): a missing npy for a labelled sample, a feature
whose dims differ from its other samples, an unknown label string, a malformed csv row.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxemo.data.builders.base import (
    DataError,
    FallbackCounter,
    ManualShardBuilder,
    replace_features,
    require_dir,
    restored_features,
)

logger = logging.getLogger(__name__)

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
UNLABELED = -1
CSV_FILE, NPZ_FILE = "label-disdim.csv", "label-6way.npz"
TOP1 = ("chinese-hubert-large", "clip-vit-large-patch14", "Baichuan-13B-Base")


@dataclasses.dataclass(eq=False)
class Mer2024Config(tfds.core.BuilderConfig):
    features: tuple | None = None  # feature names (folder without -UTT/-FRA); None: every folder of `level`
    level: str = "UTT"  # "UTT": [D] per sample; "FRA": [T, D] padded to max_frames
    max_frames: int | None = None  # FRA only: frames kept per sample; None: the longest sample of each feature


@dataclasses.dataclass
class _Scan:
    features: list  # names, in element order
    paths: dict  # name -> folder
    dims: dict  # name -> D
    frames: dict  # name -> padded T (FRA)
    train: list  # [(sample, class index)], sorted by sample name
    pool: list  # sample names, sorted
    metadata: dict


def _npy_shape(path: str, field: str) -> tuple:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        shape = tuple(array.shape)
        del array
    except (OSError, ValueError) as error:
        raise DataError(path, field, f"not a readable .npy array ({error})") from None
    return shape


def _parse_label(value, path: str, field: str, where: str) -> int:
    label = str(value).strip().lower()
    if label not in CLASSES:
        raise DataError(path, field, f"{where}: unknown label {value!r}; expected one of {list(CLASSES)}")
    return CLASSES.index(label)


def read_labels_csv(path: str) -> dict:
    """`name,discrete,...` rows -> {name: class index}; malformed rows are DataErrors naming file and field."""
    labels = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [column.strip() for column in next(reader, [])]
        if not header:
            raise DataError(path, "header", "empty file; expected a header with columns name,discrete")
        for column in ("name", "discrete"):
            if column not in header:
                raise DataError(path, column, f"missing column; the header has {header}")
        name_at, label_at = header.index("name"), header.index("discrete")
        for row in reader:
            if not row:
                continue
            where = f"row {reader.line_num}"
            if len(row) != len(header):
                raise DataError(path, "row", f"{where} has {len(row)} fields but the header has {len(header)}")
            name = row[name_at].strip()
            if not name:
                raise DataError(path, "name", f"{where}: empty sample name")
            label = _parse_label(row[label_at], path, "discrete", f"{where} ({name})")
            if labels.get(name, label) != label:
                raise DataError(path, "name", f"{where}: {name!r} is labelled twice with different labels")
            labels[name] = label
    if not labels:
        raise DataError(path, "row", "no labelled rows")
    return labels


def read_labels_npz(path: str) -> tuple[dict, list]:
    """MERTools' `label-6way.npz` -> ({name: class index} of train_corpus, names of test1_corpus)."""
    try:
        archive = np.load(path, allow_pickle=True)  # dicts of dicts, as MERTools saves them
        contents = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise DataError(path, "npz", f"cannot be read ({error})") from None

    def corpus(key):
        value = contents[key]
        value = value.item() if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0 else value
        if not isinstance(value, dict):
            raise DataError(path, key, f"expected a dict {{name: {{'emo': label}}}}, got {type(value).__name__}")
        return value

    if "train_corpus" not in contents:
        raise DataError(path, "train_corpus", f"missing; the archive has {sorted(contents)}")
    labels = {}
    for name, entry in corpus("train_corpus").items():
        if not isinstance(entry, dict) or "emo" not in entry:
            raise DataError(path, f"train_corpus/{name}", f"expected {{'emo': label}}, got {entry!r}")
        labels[str(name)] = _parse_label(entry["emo"], path, f"train_corpus/{name}/emo", str(name))
    if not labels:
        raise DataError(path, "train_corpus", "no labelled samples")
    test_names = [str(n) for n in corpus("test1_corpus")] if "test1_corpus" in contents else []
    return labels, test_names


def scan_manual_dir(manual_dir: str, config: Mer2024Config) -> _Scan:
    """Finds the labels, the selected feature folders, their dims and the two splits' samples."""
    root = require_dir(os.path.join(manual_dir, "features"), "features")
    suffix = f"-{config.level}"
    available = sorted(d[: -len(suffix)] for d in os.listdir(root)
                       if d.endswith(suffix) and os.path.isdir(os.path.join(root, d)))
    if config.features is None:
        features = available
        if not features:
            raise DataError(root, f"*{suffix}", f"no {config.level} feature folders (features/<model>{suffix}/)")
    else:
        features = list(config.features)
        for name in features:
            if name not in available:
                raise DataError(os.path.join(root, name + suffix), "features",
                                f"feature folder not found; {config.level} folders present: {available}")
    paths = {name: os.path.join(root, name + suffix) for name in features}
    present = {name: {f[:-4] for f in os.listdir(paths[name]) if f.endswith(".npy")} for name in features}

    csv_path, npz_path = os.path.join(manual_dir, CSV_FILE), os.path.join(manual_dir, NPZ_FILE)
    if os.path.isfile(csv_path):
        label_path, (labels, test_names) = csv_path, (read_labels_csv(csv_path), [])
    elif os.path.isfile(npz_path):
        label_path, (labels, test_names) = npz_path, read_labels_npz(npz_path)
    else:
        raise DataError(manual_dir, "labels", f"neither {CSV_FILE} nor {NPZ_FILE} found")

    for sample in sorted(labels):
        for name in features:
            if sample not in present[name]:
                raise DataError(os.path.join(paths[name], sample + ".npy"), f"features/{name}",
                                f"missing for labelled sample {sample!r} ({os.path.basename(label_path)})")
    dropped = FallbackCounter("mer2024/unlabeled")
    complete = set.intersection(*present.values())
    for sample in test_names:
        if sample not in labels and sample not in complete:
            name = next(n for n in features if sample not in present[n])
            raise DataError(os.path.join(paths[name], sample + ".npy"), f"features/{name}",
                            f"missing for test1_corpus sample {sample!r} ({NPZ_FILE})")
    pool = []
    for sample in sorted(set.union(*present.values()) - set(labels)):
        if sample in complete:
            pool.append(sample)
        else:
            dropped.add("missing_some_features", sample)
    dropped_counts = dropped.report("unlabeled")

    dims, frames, truncated = {}, {}, {}
    for name in features:
        field = f"features/{name}"
        if config.level == "UTT":
            first = min(present[name])
            shape = _npy_shape(os.path.join(paths[name], first + ".npy"), field)
            if len(shape) == 2 and shape[0] == 1:
                shape = shape[1:]
            if len(shape) != 1:
                raise DataError(os.path.join(paths[name], first + ".npy"), field,
                                f"utterance feature must be [D], got shape {list(shape)}")
            dims[name] = shape[0]
        else:  # frame counts and dims of every sample that will be written (headers only)
            longest, dim, over = 0, None, 0
            for sample in [s for s, _ in sorted(labels.items())] + pool:
                path = os.path.join(paths[name], sample + ".npy")
                shape = _npy_shape(path, field)
                if len(shape) != 2:
                    raise DataError(path, field, f"frame feature must be [T, D], got shape {list(shape)}")
                if dim is None:
                    dim = shape[1]
                elif shape[1] != dim:
                    raise DataError(path, field, f"dim {shape[1]} but other samples of {name} have {dim}")
                longest = max(longest, shape[0])
                over += bool(config.max_frames and shape[0] > config.max_frames)
            dims[name], frames[name], truncated[name] = dim, config.max_frames or longest, over

    train = sorted(labels.items())
    counts = np.bincount([label for _, label in train], minlength=len(CLASSES))
    metadata = {
        "classes": list(CLASSES), "unlabeled_label": UNLABELED, "level": config.level,
        "features": features, "folders": [name + suffix for name in features],
        "dims": dims, "label_file": os.path.basename(label_path),
        "num_examples": {"train": len(train), "unlabeled": len(pool)},
        "train_class_counts": dict(zip(CLASSES, counts.tolist())),
        "test1_corpus_size": len(test_names),
        "unlabeled_dropped": dropped_counts,
        "order": "sorted by sample name",
    }
    if config.level == "FRA":
        metadata.update(max_frames=frames, truncated=truncated)
    return _Scan(features, paths, dims, frames, train, pool, metadata)


def mer_features(features: list, dims: dict, frames: dict | None, level: str) -> tfds.features.FeaturesDict:
    if level == "UTT":
        tensors = {n: tfds.features.Tensor(shape=(dims.get(n),), dtype=np.float32) for n in features}
    else:
        tensors = {n: tfds.features.Tensor(shape=((frames or {}).get(n), dims.get(n)), dtype=np.float32)
                   for n in features}
    spec = {"features": tfds.features.FeaturesDict(tensors),
            "label": tfds.features.Tensor(shape=(), dtype=np.int32),
            "id": tfds.features.Text()}
    if level == "FRA":
        spec["lengths"] = tfds.features.FeaturesDict(
            {n: tfds.features.Tensor(shape=(), dtype=np.int32) for n in features})
    return tfds.features.FeaturesDict(spec)


class Mer2024(ManualShardBuilder):
    """MER2024 MER-SEMI: labelled `train` and the unlabelled pool from MERTools feature folders.

    Written in sample-name order in shards of at most `SHARD_BYTES` of float32 features
    (`base.ManualShardBuilder`); feature shapes come from the folders (`base.replace_features`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "MERTools feature folders; label-disdim.csv or label-6way.npz."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the MER2024 label file (`label-disdim.csv` from the challenge, or MERTools' `label-6way.npz`) in
manual_dir, with the extracted features under `features/<model>-UTT/<name>.npy` ([D]) and/or
`features/<model>-FRA/<name>.npy` ([T, D]), as MERTools' feature_extraction scripts write them.
"""
    BUILDER_CONFIGS: ClassVar[list] = [
        Mer2024Config(name="utt", description="every *-UTT feature folder present, sorted"),
        Mer2024Config(name="top1", features=TOP1,
                      description="HuBERT-large, CLIP-large, Baichuan-13B utterance features"),
        Mer2024Config(name="fra", level="FRA", description="every *-FRA folder, zero-padded + lengths"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = restored_features(self)
        if features is None:  # declared until the build has seen the folders
            features = mer_features(list(config.features or ()), {}, None, config.level)
        return tfds.core.DatasetInfo(builder=self, description=__doc__.split("\n")[0], features=features,
                                     metadata=tfds.core.MetadataDict(),
                                     disable_shuffling=True)  # sorted by name: indices are stable

    def _download_and_prepare(self, dl_manager, download_config, **kwargs):
        config = self.builder_config
        self._scan = scan_manual_dir(os.fspath(dl_manager.manual_dir), config)
        replace_features(self, mer_features(self._scan.features, self._scan.dims, self._scan.frames, config.level))
        return super()._download_and_prepare(dl_manager, download_config, **kwargs)

    def _shard_iterators_per_split(self, dl_manager):
        scan = self._scan
        self.info.metadata.update(scan.metadata)
        if scan.metadata["level"] == "FRA":
            row_bytes = 4 * sum(scan.frames[name] * scan.dims[name] for name in scan.features)
        else:
            row_bytes = 4 * sum(scan.dims[name] for name in scan.features)
        splits = {"train": scan.train, "unlabeled": [(s, UNLABELED) for s in scan.pool]}
        return self.non_empty({split: self.shard_generators(samples, row_bytes, self._generate_examples)
                               for split, samples in splits.items()})

    def _generate_examples(self, samples):
        scan, fra = self._scan, self.builder_config.level == "FRA"
        for sample, label in samples:
            example = {"features": {}, "label": label, "id": sample}
            if fra:
                example["lengths"] = {}
            for name in scan.features:
                path, field = os.path.join(scan.paths[name], sample + ".npy"), f"features/{name}"
                try:
                    value = np.load(path, allow_pickle=False)
                except (OSError, ValueError) as error:
                    raise DataError(path, field, f"not a readable .npy array ({error})") from None
                value = np.asarray(value, np.float32)
                if not fra:
                    if value.ndim == 2 and value.shape[0] == 1:
                        value = value[0]
                    if value.shape != (scan.dims[name],):
                        raise DataError(path, field, f"shape {list(value.shape)} but other samples of {name} are "
                                        f"[{scan.dims[name]}]")
                else:
                    if value.ndim != 2 or value.shape[1] != scan.dims[name]:
                        raise DataError(path, field, f"shape {list(value.shape)} but other samples of {name} are "
                                        f"[T, {scan.dims[name]}]")
                    length = min(len(value), scan.frames[name])
                    padded = np.zeros((scan.frames[name], scan.dims[name]), np.float32)
                    padded[:length] = value[:length]
                    value = padded
                    example["lengths"][name] = np.int32(length)
                if not np.isfinite(value).all():
                    raise DataError(path, field, "NaN or inf in the feature")
                example["features"][name] = value
            yield sample, example
