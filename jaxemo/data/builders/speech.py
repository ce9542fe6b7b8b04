"""Emotional speech corpora for few-shot SER with pre-finetuning (Chen & Yu, Interspeech 2023).

Five corpora in the layouts the reference code (`load_datasets.py`) reads, plus a generic manifest:

    esd                        Esd                      Angry Happy Neutral Sad Surprise; the corpus's
                                                         train/evaluation/test folders
    iemocap                    Iemocap                  every raw EmoEvaluation label; `random` 80/10/10
                                                         (seed 123, default) or `loso` session folds
    msp_improv                 MspImprov                Angry Happy Neutral Sad (folder suffix); 80/10/10
    mandarin_affective_speech  MandarinAffectiveSpeech  the emotion folder names (phrases only); 80/10/10
    msp_podcast                MspPodcast               every EmoClass code (`all`) or A/H/N/S; Split_Set
    speech_manifest            SpeechManifest           a csv's labels and splits, for any other corpus

Every element is a dict:

    waveform     float32 [num_samples]  mono (channel 0), resampled to 16 kHz (`audio.resample`), in [-1, 1)
    num_samples  int32
    label        ClassLabel: a fixed set where the paper fixes one, else the sorted set of the corpus's raw
                 labels found at build time (sklearn's LabelEncoder order, as the reference)
    label_name   Text, the label as the corpus spells it
    speaker, id  Text
    + per corpus: ESD `language` ('zh' for 0001-0010, 'en' for 0011-0020) and `emotion`; IEMOCAP `session`,
      `vad`; MSP-Improv `session`, `recording_type`; MSP-Podcast `split_set`, `vad`.

Storage: waveforms are stored as little-endian int16, `round(x * 32768)` clipped to [-32768, 32767], and
decoded to float32 `x / 32768` (`Int16Waveform`); this halves the files and is exact for 16-bit corpora
recorded at 16 kHz (ESD, IEMOCAP, MSP-Podcast). Builders are `ShardBasedBuilder`s: examples are written
in a fixed order (sorted by id; ESD ids start with the speaker), so indices are stable, and no split passes
through TFDS's Shuffler (which needs TensorFlow past 1 GB). `info.metadata` holds the sample rate, the
label names, the speakers and, per stored split, every example's label and speaker index:
`builder.index(split)` returns them without reading audio, e.g. to draw ESD's per-speaker few-shot sets
(`synthetic_speech` sources give the same arrays as their `row_index`, the `DataSource` capability).

Virtual splits (`builders.data_source(name, split)` returns a `Subset`): `evaluation` <-> `validation`
aliases everywhere; ESD `<speaker>_<split>` (e.g. `0011_train`); IEMOCAP `loso` `fold<k>_train` /
`fold<k>_test`; MSP-Podcast `test1`, `test2`, ... (one official test set each).

Random splits (IEMOCAP `random`, MSP-Improv, Mandarin Affective Speech) follow the reference: shuffle with
`np.random.RandomState(123)` and cut at ceil(0.8 n) and ceil(0.9 n). The reference shuffles in `os.scandir`
order, which depends on the file system, so its membership cannot be reproduced; here the utterances are
sorted by id first, which makes the split the same on every machine. Split names are `train`, `validation`,
`test` (ESD keeps its folders' `evaluation`); the reference calls its validation split `evaluation`.

Errors name the file and the field (`DataError(path, field, problem)`), with `file:line` for label lines
and csv rows: a missing or unreadable wav (`wav`, with where it was listed), a malformed label line or csv
row, an unknown emotion folder (`emotion`), a corpus with no utterances.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterable
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from jaxemo.data import audio
from jaxemo.data.builders.base import (
    DataError,
    FallbackCounter,
    ManualShardBuilder,
    ordered_map,
    require_dir,
    require_file,
)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
INT16_SCALE = 32768.0
SPLIT_SEED = 123  # the reference's np.random.seed(123)
SPLIT_CUTS = (0.8, 0.9)  # train = [:ceil(0.8 n)], validation = [ceil(0.8 n):ceil(0.9 n)], test = the rest
SPLIT_ALIASES = {"evaluation": "validation", "validation": "evaluation"}
STORED_SPLIT = "utterances"  # where a corpus stored once for virtual folds lives ('all' is TFDS's union of splits)

ESD_EMOTIONS = ("Angry", "Happy", "Neutral", "Sad", "Surprise")
ESD_SPLITS = ("train", "evaluation", "test")
MSP_IMPROV_EMOTIONS = {"A": "Angry", "H": "Happy", "N": "Neutral", "S": "Sad"}
MSP_PODCAST_SPLITS = {"Train": "train", "Development": "validation"}  # and Test1, Test2, ... -> test


class Int16Waveform(tfds.features.Tensor):
    """A float32 `[samples]` waveform in [-1, 1) stored as int16 bytes: `round(x * 32768)`, clipped.

    Reads back as float32 `int16 / 32768` without TensorFlow (`decode_example_np`)."""

    def __init__(self, doc=None):
        super().__init__(shape=(None,), dtype=np.float32, encoding="bytes", doc=doc)

    def encode_example(self, waveform):
        waveform = np.asarray(waveform, np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"Int16Waveform expects a mono waveform [samples], got shape {waveform.shape}")
        return np.clip(np.round(waveform * INT16_SCALE), -32768, 32767).astype("<i2").tobytes()

    def decode_example_np(self, example_data):
        return np.frombuffer(example_data, "<i2").astype(np.float32) / np.float32(INT16_SCALE)

    def decode_example(self, tfexample_data):  # the tf.data path, for completeness (needs TensorFlow)
        from tensorflow_datasets.core.utils.lazy_imports_utils import tensorflow as tf

        return tf.cast(tf.io.decode_raw(tfexample_data, tf.int16), tf.float32) / INT16_SCALE

    @classmethod
    def from_json_content(cls, value):
        return cls()


@dataclasses.dataclass
class Utterance:
    """One audio file as listed by a corpus: where it is, what it is, and where it was listed (for errors)."""

    path: str
    id: str
    speaker: str
    label: str
    extras: dict = dataclasses.field(default_factory=dict)
    listed_in: str = ""


@dataclasses.dataclass(eq=False)
class SpeechConfig(tfds.core.BuilderConfig):
    """protocol: how examples are split (`random`, `loso`, `corpus`); classes: keep only these labels."""

    protocol: str = "corpus"
    split_seed: int = SPLIT_SEED
    classes: Optional[tuple] = None
    manifest: str = "manifest.csv"


# ------------------------------------------------------------------------------------------------ helpers


def _visible(entries: Iterable[os.DirEntry]) -> list[os.DirEntry]:
    """Directory entries without hidden files (`.DS_Store`, AppleDouble `._x.wav`), sorted by name."""
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _subdirs(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        return [e for e in _visible(entries) if e.is_dir()]


def _wav_files(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        return [e for e in _visible(entries) if e.is_file() and e.name.lower().endswith(".wav")]


def _find_root(manual_dir: str, looks_like_root, what: str, expected: str) -> str:
    """`manual_dir` itself, or the one folder below it (an archive's top folder) that `looks_like_root`."""
    require_dir(manual_dir, "manual_dir")
    if looks_like_root(manual_dir):
        return manual_dir
    for entry in _subdirs(manual_dir):
        if looks_like_root(entry.path):
            return entry.path
    raise DataError(manual_dir, what, f"not found; expected {expected}")


def load_waveform(path: str, listed_in: str = "") -> np.ndarray:
    """Channel 0 of a wav file as float32 at 16 kHz; `DataError(path, 'wav', ...)` if it cannot be used."""
    where = f" (listed in {listed_in})" if listed_in else ""
    try:
        waveform, rate = audio.read_wav(path)
    except FileNotFoundError:
        raise DataError(path, "wav", f"file not found{where}") from None
    except ValueError as error:
        raise DataError(path, "wav", f"unreadable: {error}{where}") from None
    if waveform.size == 0:
        raise DataError(path, "wav", f"no samples{where}")
    return audio.resample(waveform, rate, SAMPLE_RATE)


def _load_in_order(utterances: list[Utterance], workers: int, window: int = 64):
    """(utterance, waveform) in order, reading and resampling up to `window` files ahead on threads."""
    return zip(utterances, ordered_map(lambda utt: load_waveform(utt.path, utt.listed_in), utterances,
                                       workers, window))


def _wav_bytes(utt: Utterance) -> int:
    """A shard-size estimate: the wav file's size (0 if missing: reading it raises the DataError)."""
    return os.path.getsize(utt.path) if os.path.isfile(utt.path) else 0


def random_split(utterances: list[Utterance], seed: int = SPLIT_SEED, where: str = "") -> dict[str, list]:
    """The reference's 80/10/10: sort by id, permute with `RandomState(seed)`, cut at ceil(.8n), ceil(.9n)."""
    ordered = sorted(utterances, key=lambda u: u.id)
    n = len(ordered)
    order = np.random.RandomState(seed).permutation(n)
    first, second = math.ceil(SPLIT_CUTS[0] * n), math.ceil(SPLIT_CUTS[1] * n)
    parts = {"train": order[:first], "validation": order[first:second], "test": order[second:]}
    for name, part in parts.items():
        if not len(part):
            raise DataError(where, "split", f"{n} utterances leave the 80/10/10 split {name!r} empty")
    return {name: sorted((ordered[i] for i in part), key=lambda u: u.id) for name, part in parts.items()}


# ------------------------------------------------------------------------------------------- the base class


class _SpeechBuilder(ManualShardBuilder, skip_registration=True):
    """Shared by every speech corpus: features, metadata, ordered writing, per-split index, split aliases.

    Shards are written in row order (`base.ManualShardBuilder`; ESD's train split is ~3 GB at int16), so row
    i of a split is the i-th utterance listed (sorted by id); a shard holds the utterances of at most
    `SHARD_BYTES` of wav files.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "16 kHz int16-stored waveforms, label/speaker index in metadata."}
    LABEL_NAMES: Optional[tuple] = None  # fixed label set; None: the sorted raw labels found at build time
    HOMEPAGE = ""
    READ_WORKERS = min(8, os.cpu_count() or 1)  # wav reading and resampling threads
    SHARD_BYTES = 256 << 20

    # Per corpus ---------------------------------------------------------------------------------------
    def _extra_features(self) -> dict:
        return {}

    def _scan(self, manual_dir: str) -> dict[str, list[Utterance]]:
        """Lists the corpus: {stored split: utterances in writing order}. Reads no audio."""
        raise NotImplementedError

    def _extra_metadata(self, splits: dict[str, list[Utterance]]) -> dict:
        return {}

    # TFDS -----------------------------------------------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        label = tfds.features.ClassLabel(names=list(self.LABEL_NAMES)) if self.LABEL_NAMES else \
            tfds.features.ClassLabel()
        features = {
            "waveform": Int16Waveform(doc=f"mono, {SAMPLE_RATE} Hz, float32 in [-1, 1), stored as int16 x 32768"),
            "num_samples": tfds.features.Scalar(np.int32),
            "label": label,
            "label_name": tfds.features.Text(),
            "speaker": tfds.features.Text(),
            "id": tfds.features.Text(),
            **self._extra_features(),
        }
        return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or "").strip(),
                                     features=tfds.features.FeaturesDict(features), homepage=self.HOMEPAGE,
                                     metadata=tfds.core.MetadataDict(), disable_shuffling=True)

    def _shard_iterators_per_split(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        splits = self._scan(manual_dir)
        classes = self.builder_config.classes if self.builder_config is not None else None  # ESD etc.: no configs
        if classes:
            splits = {s: [u for u in utts if u.label in classes] for s, utts in splits.items()}
        empty = [s for s, utts in splits.items() if not utts]
        splits = {s: utts for s, utts in splits.items() if utts}
        if not splits:
            raise DataError(manual_dir, "wav", f"no utterances found for {self.name}; expected "
                            f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
        if empty:
            logger.warning("%s: splits %s have no utterances and are not written", self.name, empty)
        labels = sorted({u.label for utts in splits.values() for u in utts})
        if self.LABEL_NAMES:
            label_names = list(self.LABEL_NAMES)
            unknown = sorted(set(labels) - set(label_names))
            if unknown:  # the scanners reject these with the file's name; this is a last guard
                raise DataError(manual_dir, "label", f"labels {unknown} not in {label_names}")
        else:
            label_names = labels
            self.info.features["label"].names = label_names
        speakers = sorted({u.speaker for utts in splits.values() for u in utts})
        label_ids = {name: i for i, name in enumerate(label_names)}
        speaker_ids = {name: i for i, name in enumerate(speakers)}
        self.info.metadata.update({
            "sample_rate": SAMPLE_RATE,
            "waveform_storage": "int16 little-endian, round(x * 32768) clipped; decoded as int16 / 32768",
            "label_names": label_names,
            "speakers": speakers,
            "protocol": self._protocol(),
            "index": {s: {"label": [label_ids[u.label] for u in utts],
                          "speaker": [speaker_ids[u.speaker] for u in utts]} for s, utts in splits.items()},
            **self._extra_metadata(splits),
        })
        return {split: self.shard_generators(utts, [_wav_bytes(u) for u in utts], self._generate_examples)
                for split, utts in splits.items()}

    def _generate_examples(self, utterances: list[Utterance]):
        for utt, waveform in _load_in_order(utterances, self.READ_WORKERS):
            yield utt.id, {"waveform": waveform, "num_samples": np.int32(waveform.shape[0]), "label": utt.label,
                           "label_name": utt.label, "speaker": utt.speaker, "id": utt.id, **utt.extras}

    def _protocol(self) -> str:
        return "the corpus's own splits"

    # Reading ----------------------------------------------------------------------------------------------
    def virtual_splits(self) -> dict[str, tuple[str, list[int]]]:
        """`evaluation` <-> `validation` aliases; subclasses add folds or per-speaker splits."""
        stored = self.info.splits
        return {alias: (name, list(range(stored[name].num_examples))) for alias, name in SPLIT_ALIASES.items()
                if name in stored and alias not in stored}

    def index(self, split: str) -> dict[str, np.ndarray]:
        """{'label': int32 [n], 'speaker': str [n]} of a stored or virtual split, from metadata (no audio)."""
        metadata = self.info.metadata
        virtual = self.virtual_splits()
        stored, rows = virtual.get(split, (split, None))
        if stored not in metadata.get("index", {}):
            raise DataError(self.data_dir, "split", f"{split!r} not in {self.name}; it has "
                            f"{sorted(set(metadata.get('index', {})) | set(virtual))}")
        entry = metadata["index"][stored]
        labels = np.asarray(entry["label"], np.int32)
        speakers = np.asarray(metadata["speakers"], dtype=object)[np.asarray(entry["speaker"], np.int64)]
        if rows is not None:
            labels, speakers = labels[rows], speakers[rows]
        return {"label": labels, "speaker": speakers.astype(str)}


# ------------------------------------------------------------------------------------------------ the corpora


class Esd(_SpeechBuilder):
    """Emotional Speech Dataset (Zhou et al., ICASSP 2021): 10 Mandarin (0001-0010) and 10 English (0011-0020)
    speakers x 5 emotions x 350 parallel utterances, split per speaker and emotion by the corpus into
    train (300) / evaluation (20) / test (30). The few-shot protocol (per-speaker one-vs-rest) draws from
    a speaker's `train` and evaluates on its whole `evaluation` and `test` folders: virtual splits
    `<speaker>_<split>` (e.g. `0011_test`) select one speaker."""

    LABEL_NAMES = ESD_EMOTIONS
    HOMEPAGE = "https://github.com/HLTSingapore/Emotional-Speech-Data"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """the ESD folder (the 'Emotion Speech Dataset' folder of the release, or
    its parent): <speaker>/<Emotion>/<train|evaluation|test>/<speaker>_<utterance>.wav, speakers 0001-0020,
    emotions Angry, Happy, Neutral, Sad, Surprise. Releases without the split folders
    (<speaker>/<Emotion>/<speaker>_<utterance>.wav) are split as the foldered release: in each emotion's
    block of 350 utterances the first 20 are evaluation, the next 30 test, the last 300 train."""
    FILE_NAME = re.compile(r"^(\d{4})_(\d{6})\.wav$")

    def _extra_features(self):
        return {"language": tfds.features.Text(), "emotion": tfds.features.Text()}

    def _scan(self, manual_dir):
        root = _find_root(manual_dir, _has_esd_speakers, "speaker folders",
                          "ESD speaker folders 0001..0020 in it or in one folder below it")
        skipped = FallbackCounter(self.name)
        splits = {name: [] for name in ESD_SPLITS}
        for speaker_dir in _subdirs(root):
            if not re.fullmatch(r"\d{4}", speaker_dir.name):
                continue
            speaker = speaker_dir.name
            if not 1 <= int(speaker) <= 20:
                raise DataError(speaker_dir.path, "speaker", "ESD speakers are 0001-0020")
            language = "zh" if int(speaker) <= 10 else "en"
            for emotion_dir in _subdirs(speaker_dir.path):
                emotion = _canonical(emotion_dir.name, ESD_EMOTIONS)
                if emotion is None:
                    raise DataError(emotion_dir.path, "emotion", f"unknown emotion folder {emotion_dir.name!r}; "
                                    f"ESD has {list(ESD_EMOTIONS)}")
                folders = _subdirs(emotion_dir.path)
                for folder in folders:
                    if folder.name not in ESD_SPLITS:
                        raise DataError(folder.path, "split", f"unknown split folder {folder.name!r}; ESD has "
                                        f"{list(ESD_SPLITS)}")
                listing = [(f.name, w) for f in folders for w in _wav_files(f.path)] if folders else \
                    [(None, w) for w in _wav_files(emotion_dir.path)]
                for split, wav in listing:
                    match = self.FILE_NAME.match(wav.name)
                    if not match:  # the reference skips names with a second '_' (e.g. AppleDouble copies)
                        skipped.add("skipped: not named <speaker>_<utterance>.wav", wav.path)
                        continue
                    if match.group(1) != speaker:
                        raise DataError(wav.path, "speaker", f"file of {match.group(1)} in folder {speaker}")
                    split = split or _esd_split_of(int(match.group(2)))
                    splits[split].append(Utterance(
                        wav.path, wav.name[:-4], speaker, emotion,
                        extras={"language": language, "emotion": emotion}))
        skipped.report(self.name)
        return {name: sorted(utts, key=lambda u: u.id) for name, utts in splits.items()}

    def virtual_splits(self):
        virtual = super().virtual_splits()
        metadata = self.info.metadata
        for split, entry in metadata.get("index", {}).items():
            speakers = np.asarray(entry["speaker"])
            for k, speaker in enumerate(metadata["speakers"]):
                rows = np.flatnonzero(speakers == k).tolist()
                virtual[f"{speaker}_{split}"] = (split, rows)
                if split in SPLIT_ALIASES:
                    virtual[f"{speaker}_{SPLIT_ALIASES[split]}"] = (split, rows)
        return virtual


def _has_esd_speakers(path: str) -> bool:
    return any(re.fullmatch(r"\d{4}", d.name) for d in _subdirs(path))


def _esd_split_of(utterance: int) -> str:
    """Split of an utterance number in the foldered release: per 350-utterance emotion block, 1-20
    evaluation, 21-50 test, 51-350 train (e.g. 0011_000351 evaluation, 0011_000371 test)."""
    offset = (utterance - 1) % 350
    return "evaluation" if offset < 20 else "test" if offset < 50 else "train"


def _canonical(name: str, names: Iterable[str]) -> Optional[str]:
    return {n.lower(): n for n in names}.get(name.lower())


class Iemocap(_SpeechBuilder):
    """IEMOCAP (Busso et al., 2008): 5 sessions x 2 speakers, dyadic improvised and scripted dialogues cut
    into utterances. Labels are the raw categorical labels of `dialog/EmoEvaluation/*.txt` (third field:
    ang, dis, exc, fea, fru, hap, neu, oth, sad, sur, xxx), all kept as the reference does; `vad` is the
    [valence, activation, dominance] triple of the same line.

    Configs: `random` (default, the reference's): utterance-level 80/10/10 with seed 123, not speaker
    independent. `loso`: speaker-independent leave-one-session-out; everything is stored once as split
    `utterances`, and virtual splits `fold<k>_train` (the other sessions) / `fold<k>_test` (session k) are
    the folds."""

    BUILDER_CONFIGS = [
        SpeechConfig(name="random", protocol="random",
                     description="all raw labels; random utterance-level 80/10/10, seed 123 (the reference)"),
        SpeechConfig(name="loso", protocol="loso",
                     description="all raw labels; leave-one-session-out folds fold<k>_train/test"),
    ]
    DEFAULT_CONFIG_NAME = "random"
    HOMEPAGE = "https://sail.usc.edu/iemocap/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """the IEMOCAP_full_release folder (or its parent):
    Session<1-5>/dialog/EmoEvaluation/<dialog>.txt with lines '[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]'
    and Session<1-5>/sentences/wav/<dialog>/<utterance>.wav."""
    UTTERANCE = re.compile(r"^Ses(\d\d)[FM]_.+_([FM])\d+$")

    def _extra_features(self):
        return {"session": tfds.features.Scalar(np.int32),
                "vad": tfds.features.Tensor(shape=(3,), dtype=np.float32)}

    def _scan(self, manual_dir):
        root = _find_root(manual_dir, lambda p: bool(_sessions(p, "Session")), "Session folders",
                          "Session1..Session5 in it or in one folder below it (IEMOCAP_full_release)")
        utterances, seen = [], {}
        for number, session_dir in _sessions(root, "Session"):
            labels_dir = require_dir(os.path.join(session_dir, "dialog", "EmoEvaluation"), "EmoEvaluation")
            with os.scandir(labels_dir) as entries:
                transcripts = [e for e in _visible(entries) if e.is_file() and e.name.endswith(".txt")]
            for transcript in transcripts:
                dialog = transcript.name[:-4]
                for lineno, fields in _label_lines(transcript.path):
                    where = f"{transcript.path}:{lineno}"
                    utt, label, vad = self._parse(fields, where)
                    if utt in seen:
                        raise DataError(where, "utterance", f"{utt} is also listed in {seen[utt]}")
                    seen[utt] = where
                    match = self.UTTERANCE.match(utt)
                    wav = os.path.join(session_dir, "sentences", "wav", dialog, utt + ".wav")
                    if not os.path.isfile(wav):
                        raise DataError(wav, "wav", f"file not found (listed in {where})")
                    utterances.append(Utterance(
                        wav, utt, f"Ses{match.group(1)}{match.group(2)}", label, listed_in=where,
                        extras={"session": np.int32(number), "vad": vad}))
        if self.builder_config.protocol == "loso":
            return {STORED_SPLIT: sorted(utterances, key=lambda u: u.id)}
        return random_split(utterances, self.builder_config.split_seed, root)

    def _parse(self, fields: list[str], where: str):
        if len(fields) < 4 or not fields[0].startswith("["):
            raise DataError(where, "label line", "expected '[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]', "
                            f"got {chr(9).join(fields)!r}")
        utt, label = fields[1].strip(), fields[2].strip()
        if not self.UTTERANCE.match(utt):
            raise DataError(where, "utterance", f"{utt!r} is not an IEMOCAP utterance id (Ses01F_impro01_F000)")
        if not label:
            raise DataError(where, "label", "empty categorical label")
        try:
            vad = np.asarray([float(v) for v in fields[-1].strip().strip("[]").split(",")], np.float32)
        except ValueError:
            vad = np.zeros(0)
        if vad.shape != (3,):
            raise DataError(where, "vad", f"expected '[valence, activation, dominance]', got {fields[-1]!r}")
        return utt, label, vad

    def _protocol(self):
        if self.builder_config.protocol == "loso":
            return "leave-one-session-out: fold<k>_test = session k, fold<k>_train = the other sessions"
        return (f"random utterance-level 80/10/10: ids sorted, RandomState({self.builder_config.split_seed})"
                ".permutation, cut at ceil(0.8n), ceil(0.9n)")

    def _extra_metadata(self, splits):
        return {"session": {s: [int(u.extras["session"]) for u in utts] for s, utts in splits.items()}}

    def virtual_splits(self):
        virtual = super().virtual_splits()
        if self.builder_config.protocol == "loso" and STORED_SPLIT in self.info.metadata.get("session", {}):
            sessions = np.asarray(self.info.metadata["session"][STORED_SPLIT])
            for k in sorted(set(sessions.tolist())):
                virtual[f"fold{k}_train"] = (STORED_SPLIT, np.flatnonzero(sessions != k).tolist())
                virtual[f"fold{k}_test"] = (STORED_SPLIT, np.flatnonzero(sessions == k).tolist())
        return virtual


def _sessions(path: str, prefix: str) -> list[tuple[int, str]]:
    """(number, folder) of `<prefix><digit>` folders (case-insensitive), sorted by number."""
    found = [(int(d.name[len(prefix):]), d.path) for d in _subdirs(path)
             if d.name.lower().startswith(prefix.lower()) and d.name[len(prefix):].isdigit()]
    return sorted(found)


def _label_lines(path: str):
    """(line number, tab-separated fields) of the lines starting with '[' in an EmoEvaluation file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("["):
                    yield lineno, line.rstrip("\r\n").split("\t")
    except OSError as error:
        raise DataError(path, "EmoEvaluation", f"unreadable: {error}") from None


class MspImprov(_SpeechBuilder):
    """MSP-IMPROV (Busso et al., 2017): 6 sessions x 2 actors, improvised scenarios around target sentences.
    The label is the scenario's target emotion, the last letter of the folder name (A/H/S/N -> Angry, Happy,
    Sad, Neutral), as the reference reads it; the speaker is the file name's F01/M01 token. Random 80/10/10,
    seed 123."""

    LABEL_NAMES = tuple(sorted(MSP_IMPROV_EMOTIONS.values()))
    HOMEPAGE = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Improv.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """the MSP-IMPROV audio folder (or its parent, or a folder holding Audio/):
    session<1-6>/<folder like S01A, last letter A|H|S|N>/<recording type R|S|T|P>/MSP-IMPROV-S01A-F01-R-FM01.wav"""

    def _extra_features(self):
        return {"session": tfds.features.Scalar(np.int32), "recording_type": tfds.features.Text()}

    def _scan(self, manual_dir):
        def looks_like_root(path):
            audio_dir = os.path.join(path, "Audio")
            return bool(_sessions(path, "session") or os.path.isdir(audio_dir) and _sessions(audio_dir, "session"))

        root = _find_root(manual_dir, looks_like_root, "session folders",
                          "session1..session6 in it, in Audio/ or in one folder below it")
        if not _sessions(root, "session"):
            root = os.path.join(root, "Audio")
        fallbacks = FallbackCounter(self.name)
        utterances = []
        for number, session_dir in _sessions(root, "session"):
            for folder in _subdirs(session_dir):
                code = folder.name[-1:].upper()
                if code not in MSP_IMPROV_EMOTIONS:
                    raise DataError(folder.path, "emotion", f"folder name must end in one of "
                                    f"{sorted(MSP_IMPROV_EMOTIONS)} (the target emotion), got {folder.name!r}")
                for kind in _subdirs(folder.path):
                    for wav in _wav_files(kind.path):
                        stem = wav.name[:-4]
                        speakers = [t for t in stem.split("-") if re.fullmatch(r"[FM]\d\d", t)]
                        speaker = speakers[0] if speakers else f"session{number}"
                        if not speakers:
                            fallbacks.add("speaker = session (no F01/M01 token in the file name)", wav.path)
                        utterances.append(Utterance(
                            wav.path, stem, speaker, MSP_IMPROV_EMOTIONS[code],
                            extras={"session": np.int32(number), "recording_type": kind.name}))
        fallbacks.report(self.name)
        _require_unique(utterances, root)
        return random_split(utterances, SPLIT_SEED, root) if utterances else {}

    def _protocol(self):
        return f"random utterance-level 80/10/10, seed {SPLIT_SEED} (ids sorted, cut at ceil(0.8n), ceil(0.9n))"


def _require_unique(utterances: list[Utterance], where: str) -> None:
    ids = collections.Counter(u.id for u in utterances)
    repeated = [i for i, count in ids.items() if count > 1]
    if repeated:
        first = next(u.path for u in utterances if u.id == repeated[0])
        raise DataError(first, "id", f"{len(repeated)} utterance ids occur more than once under {where}, "
                        f"e.g. {repeated[0]!r}")


class MandarinAffectiveSpeech(_SpeechBuilder):
    """Mandarin Affective Speech (MASC, LDC2007S09): 68 speakers, neutral / anger / elation / panic /
    sadness. Only the phrase recordings (`data/<speaker>/<emotion>/phrase/*.wav`) are used and the label
    is the emotion folder's name, as the reference; random 80/10/10, seed 123."""

    HOMEPAGE = "https://catalog.ldc.upenn.edu/LDC2007S09"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """the man_aff_spch folder of LDC2007S09 (or its parent):
    data/<speaker>/<emotion>/phrase/<utterance>.wav"""

    def _scan(self, manual_dir):
        def looks_like_root(path):
            return os.path.isdir(os.path.join(path, "data"))

        root = _find_root(manual_dir, looks_like_root, "data", "a data/ folder in it or in one folder below it "
                          "(man_aff_spch/data/<speaker>/<emotion>/phrase/*.wav)")
        data = os.path.join(root, "data")
        utterances = []
        for speaker in _subdirs(data):
            for emotion in _subdirs(speaker.path):
                phrase = require_dir(os.path.join(emotion.path, "phrase"), "phrase")
                wavs = _wav_files(phrase)
                if not wavs:
                    with os.scandir(phrase) as entries:
                        others = [e.name for e in _visible(entries)][:3]
                    raise DataError(phrase, "wav", f"no .wav files (found {others})")
                for wav in wavs:
                    utterances.append(Utterance(wav.path, f"{speaker.name}/{emotion.name}/{wav.name[:-4]}",
                                                speaker.name, emotion.name))
        return random_split(utterances, SPLIT_SEED, data) if utterances else {}

    def _protocol(self):
        return f"random utterance-level 80/10/10, seed {SPLIT_SEED} (ids sorted, cut at ceil(0.8n), ceil(0.9n))"


class MspPodcast(_SpeechBuilder):
    """MSP-Podcast (Lotfian & Busso): podcast segments with consensus labels. Labels are the EmoClass codes
    of `Labels/labels_consensus.csv` (A angry, C contempt, D disgust, F fear, H happy, N neutral, O other,
    S sad, U surprise, X no agreement). Splits follow Split_Set: Train -> train, Development -> validation,
    Test1/Test2/... -> test (virtual splits `test1`, `test2`, ... keep them apart). `vad` is [EmoVal,
    EmoAct, EmoDom] (NaN where the columns are absent).

    Configs: `all` (default, the reference: every code, X and O included); `four_class`: A, H, N, S only."""

    BUILDER_CONFIGS = [
        SpeechConfig(name="all", description="every EmoClass code (the reference)"),
        SpeechConfig(name="four_class", classes=("A", "H", "N", "S"), description="A, H, N, S only"),
    ]
    DEFAULT_CONFIG_NAME = "all"
    HOMEPAGE = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """the MSP-Podcast folder: Labels/labels_consensus.csv (columns FileName,
    EmoClass, Split_Set, SpkrID; EmoAct, EmoVal, EmoDom optional) and Audios/<FileName> (or Audio/)."""
    REQUIRED = ("FileName", "EmoClass", "Split_Set")

    def _extra_features(self):
        return {"split_set": tfds.features.Text(), "vad": tfds.features.Tensor(shape=(3,), dtype=np.float32)}

    def _scan(self, manual_dir):
        labels = require_file(os.path.join(manual_dir, "Labels", "labels_consensus.csv"), "labels_consensus.csv")
        audio_dir = next((os.path.join(manual_dir, d) for d in ("Audios", "Audio")
                          if os.path.isdir(os.path.join(manual_dir, d))), None)
        if audio_dir is None:
            raise DataError(os.path.join(manual_dir, "Audios"), "Audios", "directory not found (nor Audio/)")
        splits = {"train": [], "validation": [], "test": []}
        for where, row in _csv_rows(labels, self.REQUIRED):
            name, label, split_set = row["FileName"].strip(), row["EmoClass"].strip(), row["Split_Set"].strip()
            for column, value in (("FileName", name), ("EmoClass", label), ("Split_Set", split_set)):
                if not value:
                    raise DataError(where, column, "empty")
            split = MSP_PODCAST_SPLITS.get(split_set, "test" if split_set.startswith("Test") else None)
            if split is None:
                raise DataError(where, "Split_Set", f"{split_set!r} is not Train, Development or Test<k>")
            vad = np.asarray([_float(row.get(c), where, c) for c in ("EmoVal", "EmoAct", "EmoDom")], np.float32)
            path = os.path.join(audio_dir, name)
            if not os.path.isfile(path):
                raise DataError(path, "wav", f"file not found (listed in {where})")
            speaker = (row.get("SpkrID") or "").strip() or "Unknown"
            utt = os.path.splitext(name)[0]
            splits[split].append(Utterance(path, utt, speaker, label, listed_in=where,
                                           extras={"split_set": split_set, "vad": vad}))
        _require_unique([u for utts in splits.values() for u in utts], labels)
        return {s: sorted(utts, key=lambda u: u.id) for s, utts in splits.items()}

    def _protocol(self):
        return "Split_Set: Train -> train, Development -> validation, Test* -> test"

    def _extra_metadata(self, splits):
        test_sets = collections.defaultdict(list)
        for i, utt in enumerate(splits.get("test", [])):
            test_sets[utt.extras["split_set"]].append(i)
        return {"test_sets": dict(test_sets)}

    def virtual_splits(self):
        virtual = super().virtual_splits()
        for split_set, rows in self.info.metadata.get("test_sets", {}).items():
            virtual[split_set.lower()] = ("test", rows)
        return virtual


def _float(value, where: str, column: str) -> float:
    if value is None or not str(value).strip():
        return float("nan")
    try:
        return float(value)
    except ValueError:
        raise DataError(where, column, f"not a number: {value!r}") from None


def _csv_rows(path: str, required: tuple[str, ...]):
    """('file:line', row dict) of a csv with a header naming at least `required`."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(path, missing[0], f"column missing; the header has {header}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(row.get(c) is None for c in required):
                    raise DataError(where, "row", f"expected {len(header)} columns {header}, got "
                                    f"{len([v for v in row.values() if v is not None])}")
                yield where, row
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(path, "csv", f"unreadable: {error}") from None


class SpeechManifest(_SpeechBuilder):
    """Any other labelled speech corpus, listed in `manifest.csv` in manual_dir: columns `path` (relative to
    manual_dir, or absolute), `label`, `split` (any names: train, validation, test, ...) and optionally
    `speaker`. Labels are the sorted set of the csv's labels.

    Any config name is accepted and names the corpus, so that each manifest gets its own data directory:
    `prepare("speech_manifest", "/data/crema_d", config="crema_d")`."""

    BUILDER_CONFIGS = [SpeechConfig(name="default", description="manifest.csv in manual_dir")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """a folder with manifest.csv (columns path,label,split[,speaker]; paths
    relative to that folder or absolute) and the wav files it lists."""
    REQUIRED = ("path", "label", "split")

    @classmethod
    def get_builder_config(cls, name, version=None):
        config = super().get_builder_config(name, version)
        if config is None and re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
            config = SpeechConfig(name=name, description=f"manifest.csv of {name}")
        return config

    def _scan(self, manual_dir):
        manifest = require_file(os.path.join(manual_dir, self.builder_config.manifest), "manifest")
        splits = collections.defaultdict(list)
        for where, row in _csv_rows(manifest, self.REQUIRED):
            path, label, split = row["path"].strip(), row["label"].strip(), row["split"].strip()
            for column, value in (("path", path), ("label", label), ("split", split)):
                if not value:
                    raise DataError(where, column, "empty")
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", split) or split == "all":
                raise DataError(where, "split", f"{split!r} is not a split name (letters, digits, '_'; not 'all')")
            full = path if os.path.isabs(path) else os.path.join(manual_dir, path)
            if not os.path.isfile(full):
                raise DataError(full, "wav", f"file not found (listed in {where})")
            speaker = (row.get("speaker") or "").strip()
            splits[split].append(Utterance(full, os.path.splitext(path)[0], speaker, label, listed_in=where))
        _require_unique([u for utts in splits.values() for u in utts], manifest)
        return {s: sorted(utts, key=lambda u: u.id) for s, utts in sorted(splits.items())}

    def _protocol(self):
        return f"the split column of {self.builder_config.manifest}"
