"""Synthetic per-speaker emotional speech with ESD's structure, generated on the fly (`synthetic_speech`).

Each utterance is a string of syllables: a consonant (a noise burst through a fricative resonance) then a
voiced vowel (a band-limited glottal pulse train, a one-pole spectral tilt, three formant resonators for
one of five vowels, aspiration noise). What carries the emotion is what carries it in acted speech:

    emotion   pitch  range  contour              rate     loudness  tilt      attack
    Angry     high   mid    falling              fast     loud      bright    sharp
    Happy     high   wide   gently falling       fast     loud-ish  bright-ish
    Neutral   base   narrow falling              medium   medium
    Sad       low    narrow steeply falling      slow     soft      dark      soft, breathy
    Surprise  highest widest rising at the end   medium   loud-ish

Each speaker has a voice (base pitch, vocal-tract length scaling the formants, spectral tilt, breathiness,
speaking rate, loudness) and their own slightly different way of expressing each emotion, so that a
per-speaker few-shot classifier beats a pooled one, and the speaker is recoverable from the audio. Speakers
0001..N/2 are 'zh' (syllables carry lexical tones), the rest 'en', as ESD's 0001-0010 / 0011-0020.

Elements match the `esd` builder's: float32 16 kHz `waveform`, int32 `num_samples` and `label` (index into
`EMOTIONS`, ESD's ClassLabel order), and as bytes (how TFDS returns Text) `label_name`, `emotion`,
`speaker`, `language`, `id`. Splits `train` / `evaluation` (alias `validation`) / `test` hold, for every
speaker and emotion, `train_per_emotion` / `eval_per_emotion` / `test_per_emotion` utterances (ESD: 300 /
20 / 30), speaker-major like the builder; `<speaker>_<split>` selects one speaker. Sample i of a split
depends only on (the split's seed, i); the voices depend only on `speaker_seed`, shared by all splits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.signal import lfilter

from jaxemo.data.builders.base import Subset
from jaxemo.data.datasource import SourceBase

EMOTIONS = ("Angry", "Happy", "Neutral", "Sad", "Surprise")  # the `esd` builder's ClassLabel order
SPLITS = ("train", "evaluation", "test")
SPLIT_SEED_OFFSETS = {"train": 0, "evaluation": 1_000_003, "test": 2_000_006}

# Per emotion: pitch factor, accent range (semitones), declination over the utterance (semitones), final
# movement (semitones over the last ~15%), syllables per second, loudness (dB), tilt offset (+ darker),
# attack fraction of the vowel, breathiness offset.
PROSODY = {
    "Angry":    dict(pitch=1.22, range=2.5, slope=-2.0, final=-1.0, rate=5.2, gain_db=6.0, tilt=-0.12,
                     attack=0.08, breath=0.00),
    "Happy":    dict(pitch=1.30, range=4.5, slope=-1.0, final=1.5, rate=4.8, gain_db=3.0, tilt=-0.06,
                     attack=0.15, breath=0.02),
    "Neutral":  dict(pitch=1.00, range=1.5, slope=-2.5, final=-1.5, rate=4.0, gain_db=0.0, tilt=0.00,
                     attack=0.20, breath=0.02),
    "Sad":      dict(pitch=0.88, range=1.0, slope=-3.5, final=-2.0, rate=3.0, gain_db=-6.0, tilt=0.10,
                     attack=0.35, breath=0.12),
    "Surprise": dict(pitch=1.42, range=5.0, slope=1.0, final=6.0, rate=4.3, gain_db=3.0, tilt=-0.03,
                     attack=0.15, breath=0.03),
}
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480],
                   [570, 840, 2410]], np.float64)  # a, i, u, e, o (Peterson & Barney, adult male)
BANDWIDTHS = np.array([80.0, 100.0, 150.0])
TONES = np.array([[0.0, 0.0], [-1.0, 1.0], [-0.5, 0.5], [1.0, -1.0]])  # Mandarin-like: level, rise, dip, fall


@dataclasses.dataclass(frozen=True)
class SyntheticSpeech(SourceBase):
    """Random-access source (`len`, `[i]`) of one split; sample i depends only on (seed, i)."""

    per_emotion: int  # utterances per speaker and emotion in this split
    split: str = "train"
    num_speakers: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 3.0
    noise: float = 0.002  # background noise floor (RMS)
    sample_rate: int = 16_000
    seed: int = 0
    speaker_seed: int = 4321  # the voices: shared by every split

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {SPLITS}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        object.__setattr__(self, "_voices", [_voice(self.speaker_seed, k) for k in range(self.num_speakers)])

    @property
    def speakers(self) -> list[str]:
        return [f"{k + 1:04d}" for k in range(self.num_speakers)]

    def language(self, speaker: int) -> str:
        return "zh" if speaker < (self.num_speakers + 1) // 2 else "en"

    def __len__(self) -> int:
        return self.num_speakers * len(EMOTIONS) * self.per_emotion

    def _position(self, index: int) -> tuple[int, int, int]:
        speaker, rest = divmod(index, len(EMOTIONS) * self.per_emotion)
        emotion, utterance = divmod(rest, self.per_emotion)
        return speaker, emotion, utterance

    @property
    def index(self) -> dict[str, np.ndarray]:
        """{'label': int32 [n], 'speaker': str [n]} without generating audio, like `Esd.index(split)`."""
        rows = np.arange(len(self))
        speaker, rest = np.divmod(rows, len(EMOTIONS) * self.per_emotion)
        return {"label": (rest // self.per_emotion).astype(np.int32),
                "speaker": np.asarray(self.speakers)[speaker]}

    row_index = index  # the DataSource capability: the same arrays

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic utterances")
        speaker, emotion, utterance = self._position(int(index))
        rng = np.random.default_rng((self.seed, int(index)))
        name = EMOTIONS[emotion]
        waveform = _utterance(rng, self._voices[speaker], name, self.language(speaker) == "zh",
                              self.min_seconds, self.max_seconds, self.noise, self.sample_rate)
        speaker_id = self.speakers[speaker]
        return {
            "waveform": waveform,
            "num_samples": np.int32(waveform.shape[0]),
            "label": np.int32(emotion),
            "label_name": name.encode(),
            "emotion": name.encode(),
            "speaker": speaker_id.encode(),
            "language": self.language(speaker).encode(),
            "id": f"{speaker_id}_{self.split}_{emotion * self.per_emotion + utterance:06d}".encode(),
        }


def _voice(speaker_seed: int, speaker: int) -> dict:
    """A speaker's voice and their personal take on each emotion."""
    rng = np.random.default_rng((speaker_seed, speaker))
    female = bool(speaker % 2)
    voice = {
        "f0": rng.uniform(175, 245) if female else rng.uniform(90, 140),
        "formants": rng.uniform(1.05, 1.2) if female else rng.uniform(0.88, 1.0),  # vocal-tract length
        "tilt": rng.uniform(0.55, 0.85),  # one-pole low-pass coefficient of the glottal source
        "breath": rng.uniform(0.02, 0.1),
        "rate": rng.uniform(0.85, 1.15),
        "gain_db": rng.uniform(-3, 3),
        "vowel_bias": rng.dirichlet(np.ones(len(VOWELS))),
    }
    # Idiosyncrasy: each speaker shifts every emotion's pitch, rate and loudness a little.
    voice["emotion"] = {name: {"pitch": np.exp(rng.normal(0, 0.05)), "rate": np.exp(rng.normal(0, 0.08)),
                               "gain_db": rng.normal(0, 1.5), "range": np.exp(rng.normal(0, 0.2))}
                        for name in EMOTIONS}
    return voice


def _utterance(rng, voice, emotion, tonal, min_seconds, max_seconds, noise, sr) -> np.ndarray:
    prosody, personal = PROSODY[emotion], voice["emotion"][emotion]
    rate = prosody["rate"] * voice["rate"] * personal["rate"] * np.exp(rng.normal(0, 0.05))
    seconds = float(np.clip(rng.uniform(min_seconds, max_seconds) * np.sqrt(4.0 / rate), min_seconds, max_seconds))
    n = int(round(seconds * sr))
    lead, tail = rng.uniform(0.03, 0.1), rng.uniform(0.03, 0.1)
    speech = max(seconds - lead - tail, 0.1)
    count = max(1, int(round(speech * rate)))
    lengths = np.exp(rng.normal(0, 0.25, count))
    bounds = lead + np.concatenate([[0.0], np.cumsum(lengths / lengths.sum() * speech)])
    edges = np.minimum((bounds * sr).astype(int), n)

    # Pitch contour (semitones) over normalized time: declination, final movement, accents, tones, jitter.
    t = np.arange(n) / n
    semitones = prosody["slope"] * t + prosody["final"] / (1 + np.exp(-(t - 0.88) / 0.03))
    accents = rng.normal(0, prosody["range"] * personal["range"] / 2, count)
    tones = TONES[rng.integers(len(TONES), size=count)] * prosody["range"] * personal["range"] if tonal else None
    for s in range(count):
        a, b = edges[s], edges[s + 1]
        if b <= a:
            continue
        u = np.linspace(0, 1, b - a, endpoint=False)
        semitones[a:b] += accents[s] * np.sin(np.pi * u)
        if tonal:
            semitones[a:b] += tones[s, 0] * (1 - u) + tones[s, 1] * u - tones[s].mean()
    jitter = lfilter([0.02], [1, -0.98], rng.normal(0, 1, n)) * 0.4
    f0 = voice["f0"] * prosody["pitch"] * personal["pitch"] * np.exp(rng.normal(0, 0.03)) * 2 ** (
        (semitones + jitter) / 12)
    f0 = np.clip(f0, 60.0, 0.4 * sr / 4)

    # Glottal source: band-limited pulse train (Dirichlet kernel), then a one-pole spectral tilt.
    phase = 2 * np.pi * np.cumsum(f0) / sr
    harmonics = int(0.45 * sr / f0.max())
    half = np.sin(phase / 2)
    safe = np.where(np.abs(half) < 1e-6, 1e-6, half)
    pulses = np.where(np.abs(half) < 1e-6, harmonics + 0.5, np.sin((harmonics + 0.5) * phase) / (2 * safe)) - 0.5
    tilt = np.clip(voice["tilt"] + prosody["tilt"] + rng.normal(0, 0.02), 0.3, 0.97)
    source = lfilter([1 - tilt], [1, -tilt], pulses / harmonics)

    out = np.zeros(n)
    breath = voice["breath"] + prosody["breath"]
    for s in range(count):
        a, b = edges[s], edges[s + 1]
        if b - a < 16:
            continue
        split = a + int((b - a) * rng.uniform(0.15, 0.35))
        # Vowel: the voiced source (plus aspiration) through three formants.
        vowel = VOWELS[rng.choice(len(VOWELS), p=voice["vowel_bias"] * 0.5 + 0.1)] * voice["formants"]
        voiced = source[split:b] + breath * rng.normal(0, 0.05, b - split)
        for formant, bandwidth in zip(vowel, BANDWIDTHS, strict=True):
            voiced = _resonate(voiced, min(formant, 0.45 * sr), bandwidth, sr)
        voiced = voiced * _envelope(b - split, prosody["attack"]) * 10 ** (rng.normal(0, 2) / 20)
        # Consonant: a noise burst through one resonance around 2.5-5 kHz, 10-20 dB below the vowel.
        burst = rng.normal(0, 1, split - a)
        centre = min(rng.uniform(2500, 5000) * voice["formants"], 0.45 * sr)
        burst = _resonate(burst, centre, 600.0, sr) * np.hanning(split - a)
        level = np.sqrt(np.mean(voiced**2) / (np.mean(burst**2) + 1e-12)) * 10 ** (-rng.uniform(10, 20) / 20)
        out[a:split] += burst * level
        out[split:b] += voiced

    voiced_rms = np.sqrt(np.mean(out[edges[0]:edges[-1]] ** 2)) + 1e-9
    gain_db = prosody["gain_db"] + voice["gain_db"] + personal["gain_db"] + rng.normal(0, 1.5)
    out = out / voiced_rms * 0.025 * 10 ** (gain_db / 20) + rng.normal(0, noise, n)
    return (0.99 * np.tanh(out / 0.99)).astype(np.float32)  # a soft limiter for the loudest peaks


def _resonate(x: np.ndarray, frequency: float, bandwidth: float, sr: int) -> np.ndarray:
    """Second-order resonator (Klatt), unit gain at DC."""
    r = np.exp(-np.pi * bandwidth / sr)
    c, d = 2 * r * np.cos(2 * np.pi * frequency / sr), -r * r
    return lfilter([1 - c - d], [1, -c, -d], x)


def _envelope(length: int, attack: float) -> np.ndarray:
    """Raised-cosine attack over `attack` of the vowel, sustain, raised-cosine decay over the last 30%."""
    rise, fall = max(1, int(length * attack)), max(1, int(length * 0.3))
    env = np.ones(length)
    env[:rise] = 0.5 - 0.5 * np.cos(np.pi * np.arange(rise) / rise)
    env[length - fall:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, fall + 1) / fall)
    return env


def make(data_config, split: str, seed: int):
    """`synthetic_speech` source of `split` (train, evaluation/validation, test, or `<speaker>_<split>`).

    data_config fields (all optional): num_speakers (20), train_per_emotion (300), eval_per_emotion (20),
    test_per_emotion (30), min_seconds (1.0), max_seconds (3.0), noise (0.002), speaker_seed (4321)."""
    speaker = None
    if "_" in split and split.split("_", 1)[0].isdigit():
        speaker, split = split.split("_", 1)
    split = "evaluation" if split == "validation" else split
    if split not in SPLITS:
        raise ValueError(f"synthetic_speech has splits {SPLITS}, validation and <speaker>_<split>; not {split!r}")
    get = data_config.get
    per_emotion = {"train": get("train_per_emotion", 300), "evaluation": get("eval_per_emotion", 20),
                   "test": get("test_per_emotion", 30)}[split]
    source = SyntheticSpeech(per_emotion, split=split, num_speakers=get("num_speakers", 20),
                             min_seconds=get("min_seconds", 1.0), max_seconds=get("max_seconds", 3.0),
                             noise=get("noise", 0.002), seed=seed + SPLIT_SEED_OFFSETS[split],
                             speaker_seed=get("speaker_seed", 4321))
    if speaker is None:
        return source
    if speaker not in source.speakers:
        raise ValueError(f"speaker {speaker!r} is not one of {source.speakers}")
    rows = np.flatnonzero(source.index["speaker"] == speaker)
    return Subset(source, rows, f"synthetic_speech/{speaker}_{split}")
