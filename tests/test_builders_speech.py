"""Speech builders on tiny corpora in their real layouts (built and read without TensorFlow), their errors,
and the learnable synthetic speech that stands in for ESD."""

import math
import os
import sys

import ml_collections
import numpy as np
import pytest
from scipy.io import wavfile

from jaxemo.data import audio, builders, sources, synthetic_speech
from jaxemo.data.builders import DataError, speech

EMOTIONS = ("Angry", "Happy", "Neutral", "Sad", "Surprise")


def _wav(path, rate=16_000, freq=440.0, seconds=0.05, channels=1, seed=0):
    """A quiet sine (channel 0) plus a little noise, int16; returns the int16 samples of channel 0."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(n)
    data = np.round(x * 32767).astype(np.int16)
    if channels > 1:  # the other channels are silent, so reading channel 0 is visible
        data = np.stack([data] + [np.zeros_like(data)] * (channels - 1), axis=1)
    wavfile.write(path, rate, data)
    return data if channels == 1 else data[:, 0]


def _build(name, manual_dir, data_dir, config=None):
    return builders.prepare(name, str(manual_dir), config=config, data_dir=str(data_dir))


def _rows(source):
    return [source[i] for i in range(len(source))]


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _peak_hz(waveform, rate=16_000):
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()]


# ---------------------------------------------------------------------------------------------------- ESD


def _esd(root, speakers=("0001", "0011"), per_split=(("train", 2), ("evaluation", 1), ("test", 1))):
    """<root>/Emotion Speech Dataset/<spk>/<Emotion>/<split>/<spk>_<utt>.wav, with a transcript and junk."""
    base = root / "Emotion Speech Dataset"
    written = {}
    for speaker in speakers:
        os.makedirs(base / speaker, exist_ok=True)
        (base / speaker / f"{speaker}.txt").write_text(f"{speaker}_000001\thello\tNeutral\n")
        for block, emotion in enumerate(("Neutral", "Angry", "Happy", "Sad", "Surprise")):
            utt = 350 * block
            for split, count in per_split:
                for _ in range(count):
                    utt += 1
                    path = base / speaker / emotion / split / f"{speaker}_{utt:06d}.wav"
                    written[path.stem] = _wav(str(path), freq=200 + 50 * block, seed=utt)
        (base / speaker / "Angry" / "train" / f"._{speaker}_000351.wav").write_bytes(b"AppleDouble junk")
    return written


@pytest.fixture(scope="module")
def esd(tmp_path_factory):
    root = tmp_path_factory.mktemp("esd")
    written = _esd(root)
    builder = _build("esd", root, root / "tfds")
    return builder, written, root


def test_esd_builds_and_reads_back_without_tensorflow(esd):
    builder, written, root = esd
    assert "tensorflow" not in sys.modules
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
        "train": 20, "evaluation": 10, "test": 10}
    assert builder.info.features["label"].names == list(EMOTIONS)
    train = _rows(builders.data_source("esd", "train", data_dir=str(root / "tfds")))
    assert {_text(r["speaker"]) for r in train} == {"0001", "0011"}
    for row in train:
        speaker, emotion = _text(row["speaker"]), _text(row["emotion"])
        assert _text(row["language"]) == ("zh" if speaker == "0001" else "en")
        assert EMOTIONS[row["label"]] == emotion == _text(row["label_name"])
        # 16 kHz int16 in, 16 kHz int16-stored out: bit-exact.
        expected = written[_text(row["id"])]
        assert row["waveform"].dtype == np.float32 and row["num_samples"] == len(expected)
        np.testing.assert_array_equal(row["waveform"], expected.astype(np.float32) / 32768)
    assert [_text(r["id"]) for r in train] == sorted(_text(r["id"]) for r in train)  # stable order
    assert "tensorflow" not in sys.modules


def test_esd_keeps_the_corpus_splits_and_offers_per_speaker_views(esd):
    builder, _, root = esd
    data_dir = str(root / "tfds")
    evaluation = _rows(builders.data_source("esd", "evaluation", data_dir=data_dir))
    assert sorted(_text(r["id"]) for r in evaluation if _text(r["speaker"]) == "0011") == [
        f"0011_{350 * b + 3:06d}" for b in range(5)]
    assert len(builders.data_source("esd", "validation", data_dir=data_dir)) == 10  # alias
    speaker_test = _rows(builders.data_source("esd", "0011_test", data_dir=data_dir))
    assert len(speaker_test) == 5 and {_text(r["speaker"]) for r in speaker_test} == {"0011"}
    assert sorted(r["label"] for r in speaker_test) == [0, 1, 2, 3, 4]
    for split in ("train", "0001_train", "0011_evaluation"):
        index = builder.index(split)
        rows = _rows(builders.data_source("esd", split, data_dir=data_dir))
        np.testing.assert_array_equal(index["label"], [r["label"] for r in rows])
        np.testing.assert_array_equal(index["speaker"], [_text(r["speaker"]) for r in rows])
    assert builder.info.metadata["sample_rate"] == 16_000
    with pytest.raises(DataError, match="'nope' not in esd"):
        builders.data_source("esd", "nope", data_dir=data_dir)


def test_esd_without_split_folders_splits_by_utterance_number(tmp_path, monkeypatch):
    monkeypatch.setattr(speech.Esd, "SHARD_BYTES", 1)  # one utterance per shard: order must survive sharding
    for utt in (1, 21, 51, 351, 371, 700):  # within each emotion's 350: 1-20 evaluation, 21-50 test, rest train
        emotion = "Neutral" if utt <= 350 else "Angry"
        _wav(str(tmp_path / "ESD" / "0013" / emotion / f"0013_{utt:06d}.wav"))
    builder = _build("esd", tmp_path, tmp_path / "tfds")
    ids = {s: sorted(_text(r["id"]) for r in _rows(builder.as_data_source(s))) for s in builder.info.splits}
    assert ids == {"evaluation": ["0013_000001", "0013_000351"], "test": ["0013_000021", "0013_000371"],
                   "train": ["0013_000051", "0013_000700"]}
    assert builder.info.splits["train"].num_shards == 2
    assert [_text(r["id"]) for r in _rows(builder.as_data_source("train"))] == ids["train"]


def test_esd_errors_name_the_file_and_the_field(tmp_path):
    _wav(str(tmp_path / "a" / "0011" / "Angery" / "train" / "0011_000351.wav"))
    with pytest.raises(DataError) as error:
        _build("esd", tmp_path / "a", tmp_path / "tfds_a")
    assert error.value.field == "emotion" and error.value.path.endswith(os.path.join("0011", "Angery"))

    _esd(tmp_path / "b", speakers=("0012",), per_split=(("train", 1), ("evaluation", 1), ("test", 1)))
    broken = tmp_path / "b" / "Emotion Speech Dataset" / "0012" / "Sad" / "test" / "0012_001053.wav"
    broken.write_bytes(b"RIFF not really a wav")
    with pytest.raises(DataError) as error:
        _build("esd", tmp_path / "b", tmp_path / "tfds_b")
    assert error.value.field == "wav" and error.value.path == str(broken)

    os.makedirs(tmp_path / "c" / "0014" / "Happy" / "train")
    with pytest.raises(DataError, match="no utterances found") as error:
        _build("esd", tmp_path / "c", tmp_path / "tfds_c")
    assert error.value.field == "wav"


# ------------------------------------------------------------------------------------------------ IEMOCAP


IEMOCAP = {  # session -> dialog -> [(utterance, label)]
    1: {"Ses01F_impro01": [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "fru"),
                           ("Ses01F_impro01_F001", "xxx"), ("Ses01F_impro01_M001", "ang")],
        "Ses01M_script01_1": [("Ses01M_script01_1_F000", "sad"), ("Ses01M_script01_1_M000", "hap")]},
    2: {"Ses02F_impro02": [("Ses02F_impro02_F000", "exc"), ("Ses02F_impro02_M000", "neu"),
                           ("Ses02F_impro02_F001", "sur"), ("Ses02F_impro02_M001", "oth"),
                           ("Ses02F_impro02_F002", "fea"), ("Ses02F_impro02_M002", "dis")]},
}


def _iemocap(root, sessions=IEMOCAP):
    base = root / "IEMOCAP_full_release"
    for session, dialogs in sessions.items():
        labels = base / f"Session{session}" / "dialog" / "EmoEvaluation"
        os.makedirs(labels / "Categorical", exist_ok=True)  # sub-folders are ignored
        for dialog, utterances in dialogs.items():
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for k, (utt, label) in enumerate(utterances):
                lines += [f"[{k:.4f} - {k + 1:.4f}]\t{utt}\t{label}\t[2.5000, {k + 1:.4f}, 3.0000]",
                          "C-E1:\tNeutral;\t()", ""]
                _wav(str(base / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav"), seed=k)
            (labels / f"{dialog}.txt").write_text("\n".join(lines))
    return base


def test_iemocap_random_split_is_the_seeded_reference_protocol(tmp_path):
    _iemocap(tmp_path)
    builder = _build("iemocap", tmp_path, tmp_path / "tfds")
    assert builder.builder_config.name == "random"
    names = builder.info.features["label"].names
    assert names == sorted(["neu", "fru", "xxx", "ang", "sad", "hap", "exc", "oth", "sur", "fea", "dis"])
    rows = {s: _rows(builder.as_data_source(s)) for s in ("train", "validation", "test")}
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [10, 1, 1]  # ceil(9.6), ceil(10.8)
    ids = sorted(utt for dialogs in IEMOCAP.values() for utts in dialogs.values() for utt, _ in utts)
    order = np.random.RandomState(123).permutation(len(ids))
    assert sorted(_text(r["id"]) for r in rows["test"]) == [ids[order[-1]]]
    assert sorted(_text(r["id"]) for r in rows["train"]) == sorted(ids[i] for i in order[:10])
    truth = {utt: label for dialogs in IEMOCAP.values() for utts in dialogs.values() for utt, label in utts}
    for row in (r for split in rows.values() for r in split):
        utt = _text(row["id"])
        assert _text(row["label_name"]) == truth[utt] == names[row["label"]]
        assert _text(row["speaker"]) == utt[:5] + utt.split("_")[-1][0]  # Ses01F_impro01_M000 -> Ses01M
        assert row["session"] == int(utt[3:5]) and row["vad"].shape == (3,) and row["vad"][0] == 2.5
    assert len(builders.data_source("iemocap", "evaluation", data_dir=str(tmp_path / "tfds"))) == 1


def test_iemocap_leave_one_session_out_folds(tmp_path):
    _iemocap(tmp_path)
    builder = _build("iemocap", tmp_path, tmp_path / "tfds", config="loso")
    assert list(builder.info.splits) == ["utterances"]
    data_dir = str(tmp_path / "tfds")
    test = _rows(builders.data_source("iemocap", "fold1_test", config="loso", data_dir=data_dir))
    train = _rows(builders.data_source("iemocap", "fold1_train", config="loso", data_dir=data_dir))
    assert len(test) == 6 and {r["session"] for r in test} == {1}
    assert len(train) == 6 and {r["session"] for r in train} == {2}
    assert {_text(r["speaker"]) for r in test}.isdisjoint({_text(r["speaker"]) for r in train})
    assert set(builder.virtual_splits()) >= {"fold1_train", "fold1_test", "fold2_train", "fold2_test"}


def test_iemocap_errors_name_the_file_line_and_field(tmp_path):
    base = _iemocap(tmp_path / "a")
    transcript = base / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro02.txt"
    lines = transcript.read_text().splitlines()
    lines[2] = "[0.0000 - 1.0000]\tSes02F_impro02_F000 neu [2.5, 2.5, 2.5]"  # spaces, not tabs
    transcript.write_text("\n".join(lines))
    with pytest.raises(DataError) as error:
        _build("iemocap", tmp_path / "a", tmp_path / "tfds_a")
    assert error.value.path == f"{transcript}:3" and error.value.field == "label line"

    base = _iemocap(tmp_path / "b")
    missing = base / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M001.wav"
    os.remove(missing)
    with pytest.raises(DataError, match="Ses01F_impro01.txt:") as error:
        _build("iemocap", tmp_path / "b", tmp_path / "tfds_b")
    assert error.value.path == str(missing) and error.value.field == "wav"


# ---------------------------------------------------------------------------------- MSP-Improv, Mandarin


def _msp_improv(root, rate=44_100):
    written = {}
    for session in (1, 2):
        for sentence, code in enumerate("AHSN" * 2):
            folder = f"S{sentence + 1:02d}{code}"
            for speaker in ("F", "M"):
                kind = "RT"[sentence % 2]
                stem = f"MSP-IMPROV-{folder}-{speaker}{session:02d}-{kind}-FM01"
                path = root / "Audio" / f"session{session}" / folder / kind / f"{stem}.wav"
                written[stem] = (code, _wav(str(path), rate=rate, freq=1000.0, seconds=0.2, seed=sentence))
    return written


def test_msp_improv_labels_from_folder_suffix_and_resamples_44k1_to_16k(tmp_path):
    written = _msp_improv(tmp_path)
    builder = _build("msp_improv", tmp_path, tmp_path / "tfds")
    assert builder.info.features["label"].names == ["Angry", "Happy", "Neutral", "Sad"]
    counts = [builder.info.splits[s].num_examples for s in ("train", "validation", "test")]
    assert counts == [26, 3, 3]  # 32 utterances: ceil(25.6), ceil(28.8)
    rows = [r for s in ("train", "validation", "test") for r in _rows(builder.as_data_source(s))]
    names = {"A": "Angry", "H": "Happy", "S": "Sad", "N": "Neutral"}
    for row in rows:
        code, original = written[_text(row["id"])]
        assert _text(row["label_name"]) == names[code]
        assert _text(row["speaker"]) == _text(row["id"]).split("-")[3]  # F01 / M02
        assert row["num_samples"] == math.ceil(len(original) * 160 / 441)
        assert abs(_peak_hz(row["waveform"]) - 1000.0) < 16_000 / row["num_samples"]  # one FFT bin
        expected = audio.resample(original.astype(np.float32) / 32768, 44_100)
        np.testing.assert_allclose(row["waveform"], expected, atol=1 / 32768)
    assert {row["session"] for row in rows} == {1, 2}


def test_msp_improv_unknown_emotion_letter(tmp_path):
    _wav(str(tmp_path / "session1" / "S01X" / "R" / "MSP-IMPROV-S01X-F01-R-FM01.wav"))
    with pytest.raises(DataError) as error:
        _build("msp_improv", tmp_path, tmp_path / "tfds")
    assert error.value.field == "emotion" and error.value.path.endswith("S01X")


def test_mandarin_uses_phrase_recordings_only(tmp_path):
    base = tmp_path / "man_aff_spch" / "data"
    for speaker in ("f01", "m01"):
        for emotion in ("anger", "elation", "neutral", "panic", "sadness"):
            for k in range(2):
                _wav(str(base / speaker / emotion / "phrase" / f"{k + 1}.wav"), rate=48_000, freq=300.0)
            _wav(str(base / speaker / emotion / "sentence" / "1.wav"), rate=48_000)
    builder = _build("mandarin_affective_speech", tmp_path, tmp_path / "tfds")
    assert builder.info.features["label"].names == ["anger", "elation", "neutral", "panic", "sadness"]
    rows = [r for s in builder.info.splits for r in _rows(builder.as_data_source(s))]
    assert len(rows) == 20 and [builder.info.splits[s].num_examples for s in ("train", "validation", "test")] \
        == [16, 2, 2]
    for row in rows:
        speaker, emotion, _ = _text(row["id"]).split("/")
        assert _text(row["speaker"]) == speaker and _text(row["label_name"]) == emotion
        assert row["num_samples"] == 800  # 50 ms at 48 kHz -> 16 kHz
        assert abs(_peak_hz(row["waveform"]) - 300.0) < 20.0


def test_mandarin_emotion_folder_without_phrases(tmp_path):
    _wav(str(tmp_path / "data" / "f01" / "anger" / "sentence" / "1.wav"))
    with pytest.raises(DataError) as error:
        _build("mandarin_affective_speech", tmp_path, tmp_path / "tfds")
    assert error.value.field == "phrase" and error.value.path.endswith(os.path.join("anger", "phrase"))


# ------------------------------------------------------------------------------- MSP-Podcast, manifests


PODCAST_ROWS = [  # FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    ("MSP-PODCAST_0001_0001.wav", "N", 4.0, 4.2, 4.4, "127", "Female", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "H", 5.0, 5.8, 4.0, "127", "Female", "Train"),
    ("MSP-PODCAST_0002_0001.wav", "X", 3.0, 4.0, 3.0, "Unknown", "Unknown", "Train"),
    ("MSP-PODCAST_0003_0001.wav", "A", 6.0, 2.0, 5.5, "30", "Male", "Development"),
    ("MSP-PODCAST_0004_0001.wav", "S", 2.0, 2.2, 3.0, "12", "Male", "Test1"),
    ("MSP-PODCAST_0005_0001.wav", "O", 4.0, 4.0, 4.0, "13", "Female", "Test2"),
    ("MSP-PODCAST_0005_0002.wav", "U", 5.0, 4.5, 4.0, "13", "Female", "Test2"),
]
PODCAST_HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"


def _podcast(root, rows=PODCAST_ROWS, header=PODCAST_HEADER):
    os.makedirs(root / "Labels", exist_ok=True)
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    (root / "Labels" / "labels_consensus.csv").write_text("\n".join(lines) + "\n")
    for k, row in enumerate(rows):
        _wav(str(root / "Audios" / row[0]), channels=2, seed=k)


def test_msp_podcast_official_splits_all_codes_and_channel_0(tmp_path):
    _podcast(tmp_path)
    builder = _build("msp_podcast", tmp_path, tmp_path / "tfds")
    assert builder.info.features["label"].names == ["A", "H", "N", "O", "S", "U", "X"]
    data_dir = str(tmp_path / "tfds")
    ids = {s: [_text(r["id"]) for r in _rows(builders.data_source("msp_podcast", s, data_dir=data_dir))]
           for s in ("train", "validation", "evaluation", "test", "test1", "test2")}
    assert ids["train"] == ["MSP-PODCAST_0001_0001", "MSP-PODCAST_0001_0002", "MSP-PODCAST_0002_0001"]
    assert ids["validation"] == ids["evaluation"] == ["MSP-PODCAST_0003_0001"]
    assert ids["test"] == ["MSP-PODCAST_0004_0001", "MSP-PODCAST_0005_0001", "MSP-PODCAST_0005_0002"]
    assert ids["test1"] == ["MSP-PODCAST_0004_0001"] and len(ids["test2"]) == 2
    row = builder.as_data_source("validation")[0]
    assert _text(row["speaker"]) == "30" and _text(row["split_set"]) == "Development"
    np.testing.assert_allclose(row["vad"], [2.0, 6.0, 5.5])  # EmoVal, EmoAct, EmoDom
    assert np.abs(row["waveform"]).max() > 0.2  # channel 0 (channel 1 is silent)

    four = _build("msp_podcast", tmp_path, tmp_path / "tfds", config="four_class")
    assert four.info.features["label"].names == ["A", "H", "N", "S"]
    assert sum(four.info.splits[s].num_examples for s in four.info.splits) == 4


def test_msp_podcast_errors(tmp_path):
    bad_split = PODCAST_ROWS[:2] + [PODCAST_ROWS[2][:-1] + ("Dev",)]
    _podcast(tmp_path / "a", rows=bad_split)
    with pytest.raises(DataError) as error:
        _build("msp_podcast", tmp_path / "a", tmp_path / "tfds_a")
    csv_path = str(tmp_path / "a" / "Labels" / "labels_consensus.csv")
    assert error.value.path == f"{csv_path}:4" and error.value.field == "Split_Set"

    _podcast(tmp_path / "b", header=PODCAST_HEADER.replace("EmoClass", "Emotion"))
    with pytest.raises(DataError) as error:
        _build("msp_podcast", tmp_path / "b", tmp_path / "tfds_b")
    assert error.value.field == "EmoClass" and "column missing" in str(error.value)

    _podcast(tmp_path / "c")
    os.remove(tmp_path / "c" / "Audios" / PODCAST_ROWS[3][0])
    with pytest.raises(DataError, match=r"labels_consensus.csv:5") as error:
        _build("msp_podcast", tmp_path / "c", tmp_path / "tfds_c")
    assert error.value.field == "wav" and error.value.path.endswith(PODCAST_ROWS[3][0])


def test_speech_manifest_any_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    outside = _wav(str(tmp_path / "elsewhere" / "x.wav"), rate=8_000, freq=500.0, seconds=0.1)
    lines = ["path,label,split,speaker", f"{tmp_path / 'elsewhere' / 'x.wav'},calm,test,s2"]
    for k, (label, split) in enumerate([("calm", "train"), ("angry", "train"), ("calm", "dev")]):
        _wav(str(corpus / "wavs" / f"{k}.wav"), rate=22_050, seed=k)
        lines.append(f"wavs/{k}.wav,{label},{split},s{k % 2}")
    (corpus / "manifest.csv").write_text("\n".join(lines) + "\n")
    builder = _build("speech_manifest", corpus, tmp_path / "tfds", config="my_corpus")
    assert builder.builder_config.name == "my_corpus" and sorted(builder.info.splits) == ["dev", "test", "train"]
    assert builder.info.features["label"].names == ["angry", "calm"]
    (row,) = _rows(builder.as_data_source("test"))
    assert row["num_samples"] == 2 * len(outside) and abs(_peak_hz(row["waveform"]) - 500.0) < 20.0
    assert [_text(r["id"]) for r in _rows(builder.as_data_source("train"))] == ["wavs/0", "wavs/1"]

    (corpus / "manifest.csv").write_text("path,label,split\nwavs/0.wav,,train\n")
    with pytest.raises(DataError) as error:
        _build("speech_manifest", corpus, tmp_path / "tfds2", config="broken")
    assert error.value.path == f"{corpus / 'manifest.csv'}:2" and error.value.field == "label"


# ---------------------------------------------------------------------------------------- synthetic speech


def test_synthetic_speech_matches_the_esd_structure_and_is_deterministic():
    config = ml_collections.ConfigDict(dict(name="synthetic_speech", num_speakers=4, train_per_emotion=3,
                                            eval_per_emotion=1, test_per_emotion=2, min_seconds=0.3,
                                            max_seconds=0.6))
    train, evaluation = sources.make_source(config, "train", 5), sources.make_source(config, "evaluation", 5)
    assert (len(train), len(evaluation)) == (4 * 5 * 3, 4 * 5 * 1)
    assert len(sources.make_source(config, "validation", 5)) == len(evaluation)
    row = train[24]
    assert set(row) == {"waveform", "num_samples", "label", "label_name", "emotion", "speaker", "language", "id"}
    assert row["waveform"].dtype == np.float32 and row["num_samples"] == row["waveform"].shape[0]
    assert 0.3 * 16_000 <= row["num_samples"] <= 0.6 * 16_000 and np.abs(row["waveform"]).max() < 1.0
    np.testing.assert_array_equal(row["waveform"], synthetic_speech.make(config, "train", 5)[24]["waveform"])
    assert not np.array_equal(row["waveform"], synthetic_speech.make(config, "train", 6)[24]["waveform"])
    assert (row["speaker"], row["emotion"], int(row["label"])) == (b"0002", b"Sad", 3)  # speaker-major
    assert [train[i]["language"] for i in (0, 15, 30, 45)] == [b"zh", b"zh", b"en", b"en"]
    np.testing.assert_array_equal(train.index["label"], [int(train[i]["label"]) for i in range(len(train))])
    speaker = synthetic_speech.make(config, "0003_test", 5)
    assert len(speaker) == 10 and {speaker[i]["speaker"] for i in range(10)} == {b"0003"}


def _pitch_stats(waveform, rate=16_000, frame=640, hop=320):
    """Autocorrelation pitch (60-500 Hz) of 40 ms frames: log-f0 mean/std/range over voiced frames, voicing."""
    frames = np.lib.stride_tricks.sliding_window_view(waveform, frame)[::hop]
    frames = frames - frames.mean(1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 1024, axis=1)) ** 2, axis=1)[:, :frame]
    low, high = rate // 500, rate // 60
    lag = low + ac[:, low:high].argmax(1)
    voiced = ac[np.arange(len(ac)), lag] / (ac[:, 0] + 1e-9) > 0.5
    log_f0 = np.log(rate / lag)[voiced] if voiced.sum() > 2 else np.log(rate / lag)
    return [log_f0.mean(), log_f0.std(), np.ptp(log_f0), voiced.mean()]


def _features(row):
    fbank = audio.fbank(row["waveform"], 16_000, num_mel_bins=40)
    energy = fbank.mean(1)
    return np.concatenate([fbank.mean(0), fbank.std(0), _pitch_stats(row["waveform"]),
                           [energy.max(), energy.std(), row["num_samples"] / 16_000]])


def _logistic_regression(x, y, classes, steps=500, lr=0.5, l2=1e-3):
    w, b, onehot = np.zeros((x.shape[1], classes)), np.zeros(classes), np.eye(classes)[y]
    for _ in range(steps):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        grad = (p / p.sum(1, keepdims=True) - onehot) / len(x)
        w -= lr * (x.T @ grad + l2 * w)
        b -= lr * grad.sum(0)
    return lambda z: (z @ w + b).argmax(1)


def test_synthetic_speech_emotion_and_speaker_are_learnable_and_per_speaker_few_shot_works():
    config = ml_collections.ConfigDict(dict(num_speakers=4, train_per_emotion=8, test_per_emotion=4,
                                            min_seconds=0.5, max_seconds=1.0))
    train, test = synthetic_speech.make(config, "train", 0), synthetic_speech.make(config, "test", 0)
    x = np.stack([_features(train[i]) for i in range(len(train))])
    x_test = np.stack([_features(test[i]) for i in range(len(test))])
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / std, (x_test - mean) / std
    labels, labels_test = train.index["label"], test.index["label"]
    speakers, speakers_test = train.index["speaker"], test.index["speaker"]

    emotion = _logistic_regression(x, labels, 5)
    assert (emotion(x_test) == labels_test).mean() > 0.5  # chance 0.2
    ids = {s: k for k, s in enumerate(sorted(set(speakers)))}
    speaker = _logistic_regression(x, np.array([ids[s] for s in speakers]), len(ids))
    assert (speaker(x_test) == np.array([ids[s] for s in speakers_test])).mean() > 0.6  # chance 0.25

    # Few-shot per speaker: nearest class mean from 8 of the speaker's own train utterances per emotion.
    accuracies = []
    for name in ids:
        means = np.stack([x[(speakers == name) & (labels == e)][:8].mean(0) for e in range(5)])
        queries = x_test[speakers_test == name]
        guess = ((queries[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        accuracies.append((guess == labels_test[speakers_test == name]).mean())
    assert np.mean(accuracies) > 0.45 and min(accuracies) > 0.3  # chance 0.2
