"""CMU-MOSI, CMU-MOSEI and CH-SIMS from the MMSA feature pickles, and from CASP-style pickles.

Manual dir (one folder per dataset; the file name is the builder config's name plus `.pkl`):

    <manual_dir>/aligned_50.pkl     cmu_mosi, cmu_mosei   config `aligned_50`   (MMSA: <DS>/Processed/...)
    <manual_dir>/unaligned_50.pkl   cmu_mosi, cmu_mosei   config `unaligned_50`
    <manual_dir>/unaligned_39.pkl   ch_sims               configs `unaligned_39`, `unaligned_39_scaled`
    <manual_dir>/casp.pkl           all three             config `casp` (and `casp_scaled` for ch_sims)

MMSA pickle (thuiar/MMSA `data_loader.py`): `data[split]` for split in train/valid/test is a dict with
`text` [N, T_t, D_t] (BERT embeddings), `text_bert` [N, 3, T_t] (not stored), `audio` [N, T_a, D_a],
`vision` [N, T_v, D_v], `regression_labels` [N], `id` [N], `raw_text` [N], and for the unaligned files
`audio_lengths`/`vision_lengths` [N]; CH-SIMS adds the unimodal labels `regression_labels_{T,A,V}`.
CASP pickle (zrguo/CASP `utils/dataloader.py`): the same `data[split]` with only `text`, `audio`, `vision`
and `regression_labels` (lengths, `id`, `raw_text` and unimodal labels are used when present).

Elements (one per pickle row, in pickle order: row i of a split is source[i], as CASP's unshuffled loaders
and its pseudo-label indices assume; the builders are `base.ManualShardBuilder`s, which write size-capped
shards in row order, so a multi-GB pickle such as CMU-MOSEI `unaligned_50` builds without TensorFlow):

    text [T_t, D_t], audio [T_a, D_a], vision [T_v, D_v]   float32, T and D fixed per config (static shapes)
    audio_length, vision_length   int32: the pickle's lengths (unaligned MMSA files; clipped to T), else T
    label                         float32 regression label (see label scaling below)
    id                            Text (MMSA `id`; CASP pickles without ids get "<split>_<row>")
    raw_text                      Text, when the pickle has `raw_text` (all MMSA files)
    label_T, label_A, label_V     float32 unimodal labels, when the pickle has them (CH-SIMS)

Shapes are read from the pickle at build time, checked to agree across the three splits, declared as the
features' static shapes and recorded in `info.metadata["shapes"]`. For the MMSA configs the feature dims D
must equal MMSA's documented `feature_dims` (MOSI 768/5/20, MOSEI 768/74/35, SIMS 768/33/709), which
catches a pickle of the wrong dataset; the sequence lengths T are taken from the pickle (MMSA itself reads
them from the data). As in MMSA, `-inf` in audio becomes 0 (the count is in `info.metadata`); any other
NaN or inf is a DataError naming the pickle, the split, the field and the row.

Label scaling is a property of the config, recorded in `info.metadata["label_range"]`: MOSI/MOSEI labels are
in [-3, 3]; CH-SIMS labels are in [-1, 1] (`unaligned_39`, `casp`) and multiplied by 3 into [-3, 3] only in
`unaligned_39_scaled` / `casp_scaled` (CASP multiplies SIMS labels by 3 when run with `--dataset sims`).

Cross-dataset transfer (CASP): a source model is reused on the target, so the per-modality input dims must
match across datasets. The MMSA pickles do not (audio 5 / 74 / 33, vision 20 / 35 / 709). These builders
store each dataset's native dims and do not project them: for CASP's transfer settings use pickles made
with one MMSA-FET extraction for all datasets (CASP's own features, config `casp`), or give the model a
per-dataset input projection and say so, since that changes the method.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pickle
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxemo.data.builders.base import (
    DataError,
    FallbackCounter,
    ManualShardBuilder,
    replace_features,
    require_file,
    restored_features,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MODALITIES = ("text", "audio", "vision")
UNIMODAL = ("T", "A", "V")
_LABEL_TOLERANCE = 1e-4

_INSTRUCTIONS = """\
Put the feature pickle in manual_dir under the config's name: `aligned_50.pkl` / `unaligned_50.pkl`
(MMSA release for CMU-MOSI / CMU-MOSEI, `<DS>/Processed/`), `unaligned_39.pkl` (MMSA release for CH-SIMS),
or `casp.pkl` (a CASP-style pickle: data[split][text|audio|vision|regression_labels] for train/valid/test).
"""


@dataclasses.dataclass(eq=False)
class MsaConfig(tfds.core.BuilderConfig):
    """One pickle and how to read it."""

    file: str = ""  # pickle name inside manual_dir
    layout: str = "mmsa"  # "mmsa": MMSA release (id, raw_text, lengths required); "casp": CASP-style pickle
    aligned: bool = True  # False: audio_lengths / vision_lengths come from the pickle (required for mmsa,
    #                       used when present for casp); True: lengths are the full T
    dims: tuple | None = None  # documented (D_text, D_audio, D_vision) the pickle must have; None: any
    native_range: float = 3.0  # labels in the pickle lie in [-native_range, native_range]
    label_scale: float = 1.0  # stored label = pickle label * label_scale


def _mmsa_configs(dims, native_range=3.0):
    return [
        MsaConfig(name="aligned_50", file="aligned_50.pkl", dims=dims, native_range=native_range,
                  description="MMSA word-aligned features (50 steps for every modality)"),
        MsaConfig(name="unaligned_50", file="unaligned_50.pkl", aligned=False, dims=dims,
                  native_range=native_range, description="MMSA unaligned features with audio/vision lengths"),
        MsaConfig(name="casp", file="casp.pkl", layout="casp", aligned=False, native_range=native_range,
                  description="CASP-style pickle; shapes read from the file"),
    ]


@dataclasses.dataclass
class _MsaData:
    splits: dict  # split -> {field: array}
    shapes: dict  # modality -> (T, D)
    has_raw_text: bool
    has_unimodal: bool
    metadata: dict


def _as_array(value, path, field, dtype=None):
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise DataError(path, field, f"cannot be read as an array ({error})") from None


def _check_finite(array, path, field, ids):
    """DataError at the first row with a NaN or inf; done in blocks to bound the temporary memory."""
    for start in range(0, len(array), 1024):
        block = array[start:start + 1024].reshape(min(1024, len(array) - start), -1)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            kind = "NaN" if np.isnan(block[row - start]).any() else "inf"
            raise DataError(path, field, f"{kind} at row {row} (id {ids[row]!r})")


def _check_labels(labels, path, field, n, native_range, ids):
    labels = _as_array(labels, path, field, np.float32)
    if labels.shape not in ((n,), (n, 1)):
        raise DataError(path, field, f"expected shape [{n}] (one label per row of text/audio/vision), got "
                        f"{list(labels.shape)}")
    labels = labels.reshape(n)
    _check_finite(labels[:, None], path, field, ids)
    outside = np.abs(labels) > native_range + _LABEL_TOLERANCE
    if outside.any():
        row = int(np.argmax(outside))
        raise DataError(path, field, f"label {labels[row]:g} at row {row} (id {ids[row]!r}) is outside "
                        f"[-{native_range:g}, {native_range:g}], the range this config expects")
    return labels


def load_msa_pickle(path: str, config: MsaConfig, dataset: str) -> _MsaData:
    """Reads and validates every split of one MMSA / CASP pickle (DataErrors name file, split and field)."""
    require_file(path, f"{config.name} pickle")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as error:  # noqa: BLE001 (a truncated or foreign file can raise anything; say which)
        raise DataError(path, "pickle", f"cannot be unpickled ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise DataError(path, "pickle", f"expected a dict of splits, got {type(data).__name__}")
    fallback_counts = {}
    splits, shapes, has_raw_text, has_unimodal = {}, {}, None, None
    neg_inf = {}
    for split in SPLITS:
        if split not in data:
            raise DataError(path, split, f"missing split; the pickle has {sorted(map(str, data))}")
        part = data[split]
        if not isinstance(part, dict):
            raise DataError(path, split, f"expected a dict of fields, got {type(part).__name__}")
        required = list(MODALITIES) + ["regression_labels"]
        if config.layout == "mmsa":
            required += ["id", "raw_text"] + ([] if config.aligned else ["audio_lengths", "vision_lengths"])
        for key in required:
            if key not in part:
                raise DataError(path, f"{split}/{key}", f"missing key; {split} has {sorted(map(str, part))}")
        fallbacks = FallbackCounter(f"{dataset}/{config.name}")
        out = {}
        n = None
        for m in MODALITIES:
            x = _as_array(part[m], path, f"{split}/{m}", np.float32)
            if x.ndim != 3:
                raise DataError(path, f"{split}/{m}", f"expected rank 3 [N, T, D], got shape {list(x.shape)}")
            if n is None:
                n = x.shape[0]
                if n == 0:
                    raise DataError(path, f"{split}/{m}", "split has no rows")
            elif x.shape[0] != n:
                raise DataError(path, f"{split}/{m}", f"{x.shape[0]} rows but {split}/text has {n}")
            if config.dims is not None:
                expected = config.dims[MODALITIES.index(m)]
                if x.shape[2] != expected:
                    raise DataError(path, f"{split}/{m}", f"feature dim {x.shape[2]} but {dataset} {config.name} "
                                    f"has {expected} (MMSA feature_dims {list(config.dims)}); is this another "
                                    f"dataset's pickle? Use config `casp` for other extractions")
            if m in shapes and tuple(x.shape[1:]) != shapes[m]:
                raise DataError(path, f"{split}/{m}", f"shape [T, D] = {list(x.shape[1:])} differs from "
                                f"train's {list(shapes[m])}; every split must share T and D")
            shapes[m] = tuple(int(s) for s in x.shape[1:])
            if m == "audio":
                mask = x == -np.inf
                neg_inf[split] = int(mask.sum())
                x[mask] = 0.0  # as MMSA
            out[m] = x
        if "id" in part:
            ids = [str(i) for i in _as_array(part["id"], path, f"{split}/id").reshape(-1)]
            if len(ids) != n:
                raise DataError(path, f"{split}/id", f"{len(ids)} ids for {n} rows")
        else:
            ids = [f"{split}_{row:05d}" for row in range(n)]
        for m in MODALITIES:
            _check_finite(out[m], path, f"{split}/{m}", ids)
        out["id"] = ids
        out["label"] = _check_labels(part["regression_labels"], path, f"{split}/regression_labels", n,
                                     config.native_range, ids) * config.label_scale
        split_has_text = "raw_text" in part
        if has_raw_text is not None and split_has_text != has_raw_text:
            raise DataError(path, f"{split}/raw_text", "present in some splits and not others")
        has_raw_text = split_has_text
        if split_has_text:
            raw = [str(t) for t in _as_array(part["raw_text"], path, f"{split}/raw_text").reshape(-1)]
            if len(raw) != n:
                raise DataError(path, f"{split}/raw_text", f"{len(raw)} texts for {n} rows")
            out["raw_text"] = raw
        present = [f"regression_labels_{u}" in part for u in UNIMODAL]
        if any(present) and not all(present):
            missing = [f"regression_labels_{u}" for u, p in zip(UNIMODAL, present) if not p]
            raise DataError(path, f"{split}/{missing[0]}", "missing key (the other unimodal labels are present)")
        if has_unimodal is not None and all(present) != has_unimodal:
            raise DataError(path, f"{split}/regression_labels_T", "unimodal labels in some splits and not others")
        has_unimodal = all(present)
        if has_unimodal:
            for u in UNIMODAL:
                key = f"regression_labels_{u}"
                out[f"label_{u}"] = _check_labels(part[key], path, f"{split}/{key}", n, config.native_range,
                                                  ids) * config.label_scale
        for m in ("audio", "vision"):
            t = shapes[m][0]
            key = f"{m}_lengths"
            if key in part and not config.aligned:
                lengths = _as_array(part[key], path, f"{split}/{key}").reshape(-1)
                if lengths.shape != (n,):
                    raise DataError(path, f"{split}/{key}", f"{lengths.size} lengths for {n} rows")
                if not np.all(np.isfinite(lengths.astype(np.float64))) or np.any(lengths != np.round(lengths)):
                    raise DataError(path, f"{split}/{key}", "lengths must be whole numbers")
                if np.any(lengths < 0):
                    row = int(np.argmax(lengths < 0))
                    raise DataError(path, f"{split}/{key}", f"negative length {lengths[row]} at row {row}")
                for row in np.flatnonzero(lengths > t):
                    fallbacks.add(f"{m}_length_clipped_to_{t}", ids[row])
                out[f"{m}_length"] = np.minimum(lengths, t).astype(np.int32)
            else:
                out[f"{m}_length"] = np.full(n, t, np.int32)
        splits[split] = out
        fallback_counts[split] = fallbacks.report(split)
    low, high = -config.native_range * config.label_scale, config.native_range * config.label_scale
    metadata = {
        "dataset": dataset, "config": config.name, "file": os.path.basename(path), "layout": config.layout,
        "aligned": config.aligned,
        "shapes": {m: list(shapes[m]) for m in MODALITIES},
        "dims": {m: shapes[m][1] for m in MODALITIES},
        "seq_lens": {m: shapes[m][0] for m in MODALITIES},
        "num_examples": {s: len(splits[s]["id"]) for s in SPLITS},
        "label_range": [low, high], "native_label_range": [-config.native_range, config.native_range],
        "label_scale": config.label_scale,
        "audio_neg_inf_set_to_zero": neg_inf,
        "fallbacks": fallback_counts,
        "has_raw_text": bool(has_raw_text), "has_unimodal_labels": bool(has_unimodal),
        "order": "pickle row order (row i of a split is element i)",
    }
    return _MsaData(splits, shapes, bool(has_raw_text), bool(has_unimodal), metadata)


def msa_features(shapes: dict, raw_text: bool, unimodal: bool) -> tfds.features.FeaturesDict:
    features = {m: tfds.features.Tensor(shape=tuple(shapes[m]), dtype=np.float32) for m in MODALITIES}
    features.update(audio_length=tfds.features.Tensor(shape=(), dtype=np.int32),
                    vision_length=tfds.features.Tensor(shape=(), dtype=np.int32),
                    label=tfds.features.Tensor(shape=(), dtype=np.float32),
                    id=tfds.features.Text())
    if raw_text:
        features["raw_text"] = tfds.features.Text()
    if unimodal:
        for u in UNIMODAL:
            features[f"label_{u}"] = tfds.features.Tensor(shape=(), dtype=np.float32)
    return tfds.features.FeaturesDict(features)


class _MsaBuilder(ManualShardBuilder, skip_registration=True):
    """Shared by the three datasets: read one pickle named by the config, write train/valid/test.

    Features' static shapes come from the pickle (`base.replace_features` before the shards are written;
    `base.restored_features` once built). Each split is written in pickle row order in shards of at most
    `SHARD_BYTES` of float32 features."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "MMSA / CASP feature pickles; shapes read from the file."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    DATASET = ""
    UNIMODAL_LABELS = False  # whether the MMSA release has regression_labels_{T,A,V}

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = restored_features(self)
        if features is None:  # declared until the build reads the pickle (T unknown yet; D documented or unknown)
            dims = config.dims or (None, None, None)
            features = msa_features({m: (None, d) for m, d in zip(MODALITIES, dims)},
                                    raw_text=config.layout == "mmsa",
                                    unimodal=self.UNIMODAL_LABELS and config.layout == "mmsa")
        return tfds.core.DatasetInfo(builder=self, description=__doc__.split("\n")[0], features=features,
                                     metadata=tfds.core.MetadataDict(),
                                     disable_shuffling=True)  # element i of a split is row i of the pickle

    def _download_and_prepare(self, dl_manager, download_config, **kwargs):
        path = os.path.join(os.fspath(dl_manager.manual_dir), self.builder_config.file)
        self._data = load_msa_pickle(path, self.builder_config, self.DATASET)
        replace_features(self, msa_features(self._data.shapes, self._data.has_raw_text, self._data.has_unimodal))
        try:
            return super()._download_and_prepare(dl_manager, download_config, **kwargs)
        finally:
            self._data = None  # the arrays can be GBs (MOSEI); keep them only while writing

    def _shard_iterators_per_split(self, dl_manager):
        self.info.metadata.update(self._data.metadata)
        row_bytes = 4 * sum(t * d for t, d in self._data.shapes.values())  # float32 text + audio + vision
        return {split: self.shard_generators(range(len(part["id"])), row_bytes,
                                             functools.partial(self._generate_examples, part))
                for split, part in ((s, self._data.splits[s]) for s in SPLITS)}

    def _generate_examples(self, part, rows: range):
        """(row, example) for the pickle rows of one shard, in row order."""
        keys = [k for k in part if k not in MODALITIES and k != "id"]
        for row in rows:
            example = {m: part[m][row] for m in MODALITIES}
            example["id"] = part["id"][row]
            for key in keys:
                example[key] = part[key][row]
            yield row, example


class CmuMosi(_MsaBuilder):
    """CMU-MOSI (2,199 opinion clips, sentiment in [-3, 3]) from MMSA / CASP pickles."""

    DATASET = "cmu_mosi"
    BUILDER_CONFIGS: ClassVar[list] = _mmsa_configs(dims=(768, 5, 20))


class CmuMosei(_MsaBuilder):
    """CMU-MOSEI (23k clips, sentiment in [-3, 3]) from MMSA / CASP pickles."""

    DATASET = "cmu_mosei"
    BUILDER_CONFIGS: ClassVar[list] = _mmsa_configs(dims=(768, 74, 35))


class ChSims(_MsaBuilder):
    """CH-SIMS (2,281 Mandarin clips; multimodal and unimodal labels in [-1, 1]) from MMSA / CASP pickles.

    `unaligned_39` / `casp` keep the native [-1, 1] labels; `unaligned_39_scaled` / `casp_scaled` multiply
    them (and the unimodal labels) by 3 into [-3, 3], CASP's SIMS convention."""

    DATASET = "ch_sims"
    UNIMODAL_LABELS = True
    BUILDER_CONFIGS: ClassVar[list] = [
        MsaConfig(name="unaligned_39", file="unaligned_39.pkl", aligned=False, dims=(768, 33, 709),
                  native_range=1.0, description="MMSA CH-SIMS features; labels in [-1, 1]"),
        MsaConfig(name="unaligned_39_scaled", file="unaligned_39.pkl", aligned=False, dims=(768, 33, 709),
                  native_range=1.0, label_scale=3.0,
                  description="MMSA CH-SIMS features; labels x3 into [-3, 3] (CASP's convention)"),
        MsaConfig(name="casp", file="casp.pkl", layout="casp", aligned=False, native_range=1.0,
                  description="CASP-style pickle; labels in [-1, 1]"),
        MsaConfig(name="casp_scaled", file="casp.pkl", layout="casp", aligned=False, native_range=1.0,
                  label_scale=3.0,
                  description="CASP-style pickle; labels x3 into [-3, 3]"),
    ]
