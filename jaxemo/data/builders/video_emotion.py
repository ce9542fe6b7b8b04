"""DFEW and MAFW: in-the-wild video clips of faces, with their audio, for dynamic facial expression recognition.

Both builders read the layout that MMA-DFER's loader reads (`dataloader/video_dataloader.py`): one folder of
frame images per clip, one wav per clip, and per-fold annotation lists of `<frame_dir> <num_frames> <label>`
(0-based labels). They store every clip ONCE in the split `clips`, in a fixed order (sorted by clip id), as
decoded uint8 frames resized to `S x S` and a precomputed AudioMAE fbank, so that training never decodes a
JPEG or computes a spectrogram:

    frames      uint8   [T, S, S, 3]  the clip's T frames, in numeric file order, bilinear-resized
    num_frames  int32   T (the frames found on disk; the annotated count under the `*_annotated` configs)
    fbank       float32 [512, 128]    audio.audiomae_fbank(read_wav(wav)) at the wav's native rate, channel 0
    has_audio   bool    False where MAFW has no wav (fbank = audio.silent_audiomae_fbank(), as the reference)
    label       ClassLabel            DFEW 7 classes, MAFW 11
    id          Text                  the clip id (the frame folder's name), e.g. "00025"

The five cross-validation folds are virtual splits `fold1_train`, `fold1_test`, ..., `fold5_test`: index lists
into `clips`, read from the annotation files at build time and kept in `info.metadata["folds"]`
(`metadata.json` beside the records; read back by `virtual_splits()`):

    builders.prepare("dfew", manual_dir="/data/DFEW")                              # once, writes array_record
    train = builders.data_source("dfew", "fold1_train", manual_dir="/data/DFEW")   # Subset of `clips`

Configs: `frames224` (default; what the reference's `GroupResize(224)` feeds the model), `frames112`,
`frames32` (CPU smoke runs on real data), and for MAFW, for parity experiments only, `frames224_lexsort`,
which keeps the reference's lexicographic frame order (`glob` + `sort`: 10.jpg before 2.jpg),
`frames224_annotated`, which keeps only the annotated number of frames (`num_frames` of the annotation
lists, one less than on disk), and `frames224_lexsort_annotated`, both: the frames the reference's loader
samples from.

Decisions that differ from the reference loader (each documented where it is made):
- Frames are sorted numerically by default (the reference's lexicographic sort scrambles MAFW's 0.jpg, 1.jpg,
  ... 10.jpg; DFEW's zero-padded names sort the same either way).
- `num_frames` is the number of frames found. MAFW's annotation counts are one less than the frames on disk
  (`data_utils/process_ann_mfaw.py` writes `len(listdir) - 1`), so the reference samples segments from the
  annotated count and never reads a clip's last frame (the last in its lexicographic order); here the
  frames found win. Every difference is counted, logged and recorded in `info.metadata["fallbacks"]` (with
  up to 5 example clips). The `*_annotated` configs (`frame_count="annotated"`) store the first annotated
  `num_frames` frames of each clip instead, in the config's order; a count above the frames found, or
  below one, is an error there (the reference's loader cannot read it either).
- Frames are resized to `S x S` once at build time; the training crop (`GroupRandomSizedCrop`) is then taken
  from the resized frame on device, not from the original-resolution one (identical for DFEW's 224 x 224
  frames; MAFW's face crops of other sizes lose resolution before the crop).
- A missing DFEW wav is an error (the reference would crash); a missing MAFW wav gets the reference's zero
  fbank, is counted and recorded in the metadata.

Size and speed (measured on this project's 2-core CPU VM, one 77-frame 224 px clip of smooth content):
decoded frames take 150 KB each before compression, 11.6 MB per clip; TFDS's array_record writer compresses
records by default (to 7.5 MB here; real faces compress less), and reading such a record back takes about
25 ms (15 ms if stored uncompressed), against 20 ms to decode its 77 JPEGs (4 ms for the 16 frames a training
step samples). DFEW is about 11.7k clips x ~77 frames (135 GB raw at 224 px), MAFW 9.2k x ~100 (138 GB raw);
`frames112` takes a quarter. Arrays read back are read-only views of the record.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from jaxemo.data import audio
from jaxemo.data.builders.base import DataError, FallbackCounter, ManualShardBuilder, ordered_map, require_dir

logger = logging.getLogger(__name__)

NUM_FOLDS = 5
STORED_SPLIT = "clips"
FBANK_FRAMES = 512
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
FRAME_ORDERS = ("numeric", "lexicographic")
FRAME_COUNTS = ("found", "annotated")

DFEW_CLASSES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")
MAFW_CLASSES = ("Happiness", "Sadness", "Neutral", "Anger", "Surprise", "Disgust", "Fear", "Contempt",
                "Anxiety", "Helplessness", "Disappointment")


@dataclasses.dataclass(eq=False)
class VideoEmotionConfig(tfds.core.BuilderConfig):
    """`frame_size`: stored frames are `frame_size x frame_size` (PIL bilinear, as `GroupResize`).
    `frame_order`: "numeric" (10.jpg after 9.jpg) or "lexicographic" (the MAFW reference's scrambled order).
    `frame_count`: "found" (every frame on disk) or "annotated" (the first `num_frames` of the annotation,
    in `frame_order`: what the reference samples from)."""

    frame_size: int = 224
    frame_order: str = "numeric"
    frame_count: str = "found"

    def __post_init__(self):
        if self.frame_order not in FRAME_ORDERS:
            raise ValueError(f"frame_order={self.frame_order!r}; expected one of {FRAME_ORDERS}")
        if self.frame_count not in FRAME_COUNTS:
            raise ValueError(f"frame_count={self.frame_count!r}; expected one of {FRAME_COUNTS}")
        if self.frame_size < 1:
            raise ValueError(f"frame_size={self.frame_size} must be positive")


def _configs(mafw: bool) -> list:
    configs = [
        VideoEmotionConfig(name="frames224", description="224 x 224 frames in numeric order (default)."),
        VideoEmotionConfig(name="frames112", frame_size=112, description="112 x 112 frames, numeric order."),
        VideoEmotionConfig(name="frames32", frame_size=32, description="32 x 32 frames: CPU smoke runs."),
    ]
    if mafw:  # the reference loader's quirks on MAFW, for parity with released MMA-DFER MAFW checkpoints only
        configs += [
            VideoEmotionConfig(
                name="frames224_lexsort", frame_order="lexicographic",
                description="224 x 224 frames in the reference loader's lexicographic order (0, 1, 10, 11, ..., "
                            "2): for parity with released MMA-DFER MAFW checkpoints only."),
            VideoEmotionConfig(
                name="frames224_annotated", frame_count="annotated",
                description="224 x 224 frames, numeric order, only the annotated number of them (one less than "
                            "on disk in the shipped lists): for parity experiments only."),
            VideoEmotionConfig(
                name="frames224_lexsort_annotated", frame_order="lexicographic", frame_count="annotated",
                description="224 x 224 frames as the reference's loader reads them: lexicographic order, the "
                            "annotated number of them: for parity with released MMA-DFER MAFW checkpoints only."),
        ]
    return configs


# ---------------------------------------------------------------------------------------------------------
# Annotation files and frame folders


@dataclasses.dataclass(frozen=True)
class AnnotationLine:
    where: str  # "<annotation file>:<line number>"
    clip_id: str
    num_frames: int
    label: int


def read_annotation(path: str, num_classes: int) -> list[AnnotationLine]:
    """Parses `<frame_dir> <num_frames> <label>` lines (blank lines skipped); DataError names file:line."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            fields = text.split()
            if not fields:
                continue
            where = f"{path}:{number}"
            if len(fields) != 3:
                raise DataError(where, "line", f"expected '<frame_dir> <num_frames> <label>', got {text.strip()!r}")
            frame_dir, count, label = fields
            clip_id = frame_dir.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
            if not clip_id:
                raise DataError(where, "frame_dir", f"no clip folder name in {frame_dir!r}")
            try:
                count = int(count)
            except ValueError:
                raise DataError(where, "num_frames", f"{count!r} is not an integer") from None
            if count < 0:
                raise DataError(where, "num_frames", f"{count} is negative")
            try:
                label = int(label)
            except ValueError:
                raise DataError(where, "label", f"{label!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise DataError(where, "label", f"{label} is out of range: labels are 0-based, 0..{num_classes - 1}")
            lines.append(AnnotationLine(where, clip_id, count, label))
    return lines


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: 9.jpg < 10.jpg, 00001_2.jpg < 00001_10.jpg."""
    parts = re.findall(r"\d+|\D+", name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts) + ((2, 0, name),)


def list_frames(frame_dir: str, order: str, where: str) -> list[str]:
    """Paths of the clip's frame images in `order`. DataError for no frames or a gap in numbered frames."""
    names = [n for n in os.listdir(frame_dir) if n.lower().endswith(FRAME_EXTENSIONS)
             and os.path.isfile(os.path.join(frame_dir, n))]
    if not names:
        raise DataError(frame_dir, "frames", f"no frame images ({'/'.join(FRAME_EXTENSIONS)}) in the clip folder "
                        f"(listed at {where})")
    stems = [os.path.splitext(n)[0] for n in names]
    if all(s.isdigit() for s in stems):  # numbered frames (0.jpg, 1.jpg, ... or 00001.jpg, ...): no holes
        numbered = sorted(zip((int(s) for s in stems), names))
        for (a, name_a), (b, name_b) in itertools.pairwise(numbered):
            if b == a:
                raise DataError(os.path.join(frame_dir, name_b), "frames",
                                f"frame number {a} appears twice ({name_a}, {name_b}) (clip listed at {where})")
            if b != a + 1:
                stem, ext = os.path.splitext(name_a)
                width = len(stem) if stem.startswith("0") and len(stem) > 1 else 1
                missing = os.path.join(frame_dir, str(a + 1).zfill(width) + ext)
                raise DataError(missing, "frames", f"missing frame: the clip has {name_a} and {name_b} but "
                                f"nothing between (clip listed at {where})")
    names.sort(key=natural_key if order == "numeric" else None)
    return [os.path.join(frame_dir, n) for n in names]


def load_frames(paths: list[str], size: int, where: str) -> np.ndarray:
    """Decodes and bilinear-resizes every frame to `[T, size, size, 3]` uint8 (PIL, as the reference)."""
    from PIL import Image

    frames = np.empty((len(paths), size, size, 3), np.uint8)
    for t, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                frames[t] = np.asarray(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(path, "frames", f"not a readable image ({error}) (clip listed at {where})") from error
    return frames


def load_fbank(wav_path: str, where: str) -> np.ndarray:
    """MMA-DFER's audio input `[512, 128]` from a wav at its own rate, channel 0 (no resampling)."""
    try:
        waveform, rate = audio.read_wav(wav_path, channel=0)
        return np.asarray(audio.audiomae_fbank(waveform, rate, FBANK_FRAMES), np.float32)
    except (OSError, ValueError) as error:
        raise DataError(wav_path, "audio", f"{error} (clip listed at {where})") from error


# ---------------------------------------------------------------------------------------------------------
# Builders


@dataclasses.dataclass(frozen=True)
class _Clip:
    clip_id: str
    label: int
    where: str
    frame_paths: tuple
    wav_path: str | None  # None: no audio (MAFW fallback)


class _VideoEmotionBuilder(ManualShardBuilder, skip_registration=True):
    """Shared by Dfew and Mafw: reads `manual_dir/annotation/*`, `manual_dir/<FRAMES_DIR>/<id>/`, wavs.

    Clips are written in row order (sorted by clip id) in shards of at most `SHARD_BYTES` of decoded frames
    (see `base.ManualShardBuilder`): the stored order is the generation order, so the fold index lists in
    the metadata point at the right rows.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Clips stored once (decoded frames, AudioMAE fbank); folds as virtual splits."}
    CLASSES: tuple = ()
    FRAMES_DIR = ""
    WAV_DIR = ""
    ANNOTATION_NAME = ""  # format string with {fold} and {part}
    AUDIO_REQUIRED = True
    HOMEPAGE = ""
    DESCRIPTION = ""
    BUILD_THREADS = min(8, os.cpu_count() or 1)  # frames decode in threads (PIL releases the GIL)
    SHARD_BYTES = 512 << 20

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.frame_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "frames": tfds.features.Tensor(shape=(None, size, size, 3), dtype=np.uint8,
                                               encoding=tfds.features.Encoding.BYTES),
                "num_frames": tfds.features.Tensor(shape=(), dtype=np.int32),
                "fbank": tfds.features.Tensor(shape=(FBANK_FRAMES, 128), dtype=np.float32,
                                              encoding=tfds.features.Encoding.BYTES),
                "has_audio": tfds.features.Tensor(shape=(), dtype=np.bool_),
                "label": tfds.features.ClassLabel(names=list(self.CLASSES)),
                "id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # row i of `clips` stays row i: the fold index lists point into it
        )

    # -- where things are ---------------------------------------------------------------------------------

    def annotation_files(self, manual_dir: str) -> dict[str, str]:
        """{"fold1_train": path, "fold1_test": path, ...} under `manual_dir/annotation/`."""
        folder = os.path.join(manual_dir, "annotation")
        return {f"fold{fold}_{part}": os.path.join(folder, self.ANNOTATION_NAME.format(fold=fold, part=part))
                for fold in range(1, NUM_FOLDS + 1) for part in ("train", "test")}

    def frame_dir(self, manual_dir: str, clip_id: str) -> str:
        """The annotation's frame_dir is resolved by its last component only (the clip id), under manual_dir:
        `/scratch/.../dfew/clip_224x224/00001` -> `<manual_dir>/clip_224x224/00001`."""
        return os.path.join(manual_dir, self.FRAMES_DIR, clip_id)

    def wav_path(self, manual_dir: str, clip_id: str, where: str) -> str:
        return os.path.join(manual_dir, self.WAV_DIR, f"{clip_id}.wav")

    # -- build ----------------------------------------------------------------------------------------------

    def _shard_iterators_per_split(self, dl_manager):
        """Reads and checks every annotation file, clip folder and wav (fast: no decoding), writes the fold
        index lists and fallback counts into `info.metadata`, then returns the shard generators of `clips`."""
        manual_dir = os.fspath(dl_manager.manual_dir)
        config = self.builder_config
        require_dir(os.path.join(manual_dir, "annotation"), "annotation")
        require_dir(os.path.join(manual_dir, self.FRAMES_DIR), "frames")
        if self.AUDIO_REQUIRED:
            require_dir(os.path.join(manual_dir, self.WAV_DIR), "audio")

        fallbacks = FallbackCounter(self.name)
        listings: dict[str, list[AnnotationLine]] = {}
        first_seen: dict[str, AnnotationLine] = {}
        for split, path in self.annotation_files(manual_dir).items():
            if not os.path.isfile(path):
                raise DataError(path, "annotation", f"file not found ({split}); {self.name} expects "
                                f"{self.ANNOTATION_NAME.format(fold='K', part='train|test')} for K = 1..{NUM_FOLDS}")
            listings[split] = read_annotation(path, len(self.CLASSES))
            seen_here = set()
            for line in listings[split]:
                if line.clip_id in seen_here:
                    fallbacks.add("listed_twice_in_one_file", f"{line.clip_id} ({line.where})")
                seen_here.add(line.clip_id)
                other = first_seen.setdefault(line.clip_id, line)
                if other.label != line.label:
                    raise DataError(line.where, "label", f"clip {line.clip_id} has label {line.label} here but "
                                    f"{other.label} at {other.where}")
                if config.frame_count == "annotated" and other.num_frames != line.num_frames:
                    raise DataError(line.where, "num_frames", f"clip {line.clip_id} has {line.num_frames} frames "
                                    f"here but {other.num_frames} at {other.where} (config {config.name} stores "
                                    "the annotated count)")

        clip_ids = sorted(first_seen, key=natural_key)
        row = {clip_id: i for i, clip_id in enumerate(clip_ids)}
        clips = []
        for clip_id in clip_ids:
            line = first_seen[clip_id]
            frame_dir = self.frame_dir(manual_dir, clip_id)
            if not os.path.isdir(frame_dir):
                raise DataError(frame_dir, "frames", f"clip folder not found (clip {clip_id} listed at {line.where})")
            frame_paths = list_frames(frame_dir, config.frame_order, line.where)
            if len(frame_paths) != line.num_frames:
                fallbacks.add("num_frames_mismatch", f"{clip_id} ({line.num_frames} annotated, "
                              f"{len(frame_paths)} found)")
            if config.frame_count == "annotated":
                if not 1 <= line.num_frames <= len(frame_paths):
                    raise DataError(line.where, "num_frames", f"clip {clip_id}: {line.num_frames} frames "
                                    f"annotated, {len(frame_paths)} found in {frame_dir}; config {config.name} "
                                    "reads the annotated count, which must be 1 to the frames found")
                frame_paths = frame_paths[:line.num_frames]
            wav = self.wav_path(manual_dir, clip_id, line.where)
            if not os.path.isfile(wav):
                if self.AUDIO_REQUIRED:
                    raise DataError(wav, "audio", f"file not found (clip {clip_id} listed at {line.where})")
                fallbacks.add("missing_audio", clip_id)
                wav = None
            clips.append(_Clip(clip_id, line.label, line.where, tuple(frame_paths), wav))

        counts = fallbacks.report(STORED_SPLIT)
        metadata = self.info.metadata
        metadata["stored_split"] = STORED_SPLIT
        metadata["num_clips"] = len(clips)
        metadata["folds"] = {split: [row[line.clip_id] for line in lines] for split, lines in listings.items()}
        metadata["frame_size"] = config.frame_size
        metadata["frame_order"] = config.frame_order
        metadata["frame_count"] = config.frame_count
        metadata["fallbacks"] = counts
        metadata["fallback_examples"] = {kind: list(examples) for kind, examples in fallbacks.examples.items()}
        metadata["annotation_files"] = {split: os.path.basename(p)
                                        for split, p in self.annotation_files(manual_dir).items()}
        clip_bytes = [len(clip.frame_paths) * config.frame_size ** 2 * 3 for clip in clips]
        generate = functools.partial(self._generate_examples, clips)
        return {STORED_SPLIT: self.shard_generators(range(len(clips)), clip_bytes, generate)}

    def _generate_examples(self, clips: list[_Clip], rows: range):
        """(row, example) for the clips of one shard, decoded in threads, in row order."""
        size = self.builder_config.frame_size

        def encode(clip: _Clip) -> dict:
            frames = load_frames(list(clip.frame_paths), size, clip.where)
            if clip.wav_path is None:
                fbank, has_audio = audio.silent_audiomae_fbank(FBANK_FRAMES), False
            else:
                fbank, has_audio = load_fbank(clip.wav_path, clip.where), True
            return {"frames": frames, "num_frames": np.int32(len(frames)), "fbank": fbank.astype(np.float32),
                    "has_audio": has_audio, "label": clip.label, "id": clip.clip_id}

        yield from zip(rows, ordered_map(encode, [clips[row] for row in rows], self.BUILD_THREADS))

    # -- read -----------------------------------------------------------------------------------------------

    def virtual_splits(self) -> dict[str, tuple[str, list[int]]]:
        """{"fold1_train": ("clips", indices), ...} from the metadata written at build time ({} before)."""
        folds = (self.info.metadata or {}).get("folds") or {}
        return {split: (STORED_SPLIT, list(indices)) for split, indices in folds.items()}


_LAYOUT_COMMON = """
`frame_dir` in the annotation files may be any path (the shipped lists hold absolute paths from the authors'
machines, e.g. /scratch/chumache/dfer_datasets/...): only its last component, the clip id, is used, and the
frames are read from `<manual_dir>/{frames}/<clip id>/`. Frames are image files (.jpg, .jpeg, .png); numbered
names (0.jpg, 1.jpg, ... or 00001.jpg, ...) must have no gaps; labels are 0-based.
"""


class Dfew(_VideoEmotionBuilder):
    """DFEW (Jiang et al., ACM MM 2020): 16,372 movie clips, 7 basic emotions, 5 folds (11,697 annotated)."""

    CLASSES = DFEW_CLASSES
    FRAMES_DIR = "clip_224x224"
    WAV_DIR = "raw_wav"
    ANNOTATION_NAME = "DFEW_set_{fold}_{part}.txt"
    AUDIO_REQUIRED = True
    HOMEPAGE = "https://dfew-dataset.github.io/"
    DESCRIPTION = "DFEW clips (face frames + audio) for dynamic facial expression recognition, 7 classes."
    BUILDER_CONFIGS = _configs(mafw=False)
    DEFAULT_CONFIG_NAME = "frames224"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
DFEW is licensed: request it at https://dfew-dataset.github.io/. manual_dir must contain
  annotation/DFEW_set_{1..5}_{train,test}.txt   lines '<frame_dir> <num_frames> <label>' (MMA-DFER's annotation/)
  clip_224x224/<id>/*.jpg                       the corpus's 224x224 face frames, one folder per clip (e.g. 00001)
  raw_wav/<int(id)>.wav                         each clip's audio (e.g. raw_wav/1.wav for clip 00001), extracted
                                                with `ffmpeg -i <id>.mp4 <int(id)>.wav` (native rate, as mp42wav.sh)
""" + _LAYOUT_COMMON.format(frames="clip_224x224") + "Every clip must have its wav."

    def wav_path(self, manual_dir: str, clip_id: str, where: str) -> str:
        if not clip_id.isdigit():
            raise DataError(where, "frame_dir", f"DFEW clip ids are numbers (e.g. 00001), got {clip_id!r}")
        return os.path.join(manual_dir, self.WAV_DIR, f"{int(clip_id)}.wav")


class Mafw(_VideoEmotionBuilder):
    """MAFW (Liu et al., ACM MM 2022): 10,045 clips, 11 single-label classes, 5 folds (faces by MTCNN)."""

    CLASSES = MAFW_CLASSES
    FRAMES_DIR = "clips_faces"
    WAV_DIR = "clips_wav"
    ANNOTATION_NAME = "MAFW_set_{fold}_{part}_faces.txt"
    AUDIO_REQUIRED = False
    HOMEPAGE = "https://mafw-database.github.io/MAFW/"
    DESCRIPTION = "MAFW clips (face crops + audio) for dynamic facial expression recognition, 11 classes."
    BUILDER_CONFIGS = _configs(mafw=True)
    DEFAULT_CONFIG_NAME = "frames224"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
MAFW is licensed: request it at https://mafw-database.github.io/MAFW/. manual_dir must contain
  annotation/MAFW_set_{1..5}_{train,test}_faces.txt   lines '<frame_dir> <num_frames> <label>' (MMA-DFER's)
  clips_faces/<id>/<n>.jpg      face crops per clip (MMA-DFER's data_utils/extract_faces_mfaw.py writes 0.jpg,
                                1.jpg, ...; they are read in numeric order)
  clips_wav/<id>.wav            each clip's audio (e.g. clips_wav/00025.wav), extracted with ffmpeg at the
                                native rate; a clip without a wav gets the reference's zero fbank (has_audio
                                False), counted in info.metadata["fallbacks"]["missing_audio"]
""" + _LAYOUT_COMMON.format(frames="clips_faces") + (
        "The annotated num_frames (one less than the frames on disk in the shipped lists) is checked, "
        "not used: the frames found win, and differences are counted in the metadata. The *_annotated "
        "configs store only the annotated number of frames, as the reference samples from.")
