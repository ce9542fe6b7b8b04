"""Learnable synthetic audio-visual clips with the element structure of the DFEW / MAFW builders.

    frames      uint8   [T, S, S, 3]   T varies per clip between min and max frames (also below 16, so that
                                       the sampler's edge padding is exercised)
    num_frames  int32   T
    fbank       float32 [F, 128]       AudioSet-normalised log-mel-like features; the tail after the clip's
                                       audio length holds the value of a zero fbank, as real padded fbanks
    has_audio   bool    False for a `missing_audio` fraction of clips (fbank = audio.silent_audiomae_fbank)
    label       int32
    id          bytes   b"synthetic-<seed>-<index>" (the builders' Text ids read back as bytes)

Both modalities carry the label, each only partly, so that fusing them beats either alone: class c has the
video code `c // 2` and the audio code `(c + 1) // 2`. Video cannot tell 0 from 1, 2 from 3, ...; audio cannot
tell 1 from 2, 3 from 4, ...; the pair of codes names the class. With perfect codes each modality alone is
right for about (C + 1) / 2 of C classes (4/7 for DFEW's 7, 6/11 for MAFW's 11); both together for all.

- Video code k: a class tint (a hue on a circle around grey) and a sinusoidal grating (orientation, frequency,
  colour) that drifts over the clip, under a random translation, per-clip brightness and colour jitter (scaled
  by `noise`) and pixel noise.
- Audio code k: a band of energy around a code-specific mel bin, amplitude-modulated in time like syllables,
  over a spectral tilt, with per-clip band shift, gain and Gaussian noise (scaled by `noise`).

Sample i depends only on (seed, i); the class patterns depend only on `class_seed` (shared by all splits).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxemo.data import audio
from jaxemo.data.datasource import SourceBase
from jaxemo.data.synthetic import split_size_and_seed

SILENT_LEVEL = float(audio.normalize_audioset(np.float32(0.0)))  # a zero fbank after AudioSet normalisation


def video_code(label, num_classes: int):
    return np.asarray(label) // 2


def audio_code(label, num_classes: int):
    return (np.asarray(label) + 1) // 2


@dataclasses.dataclass(frozen=True)
class SyntheticAVClips(SourceBase):
    """Random-access source (`len`, `[i]`) of deterministic audio-visual clips."""

    num_examples: int
    num_classes: int = 7
    frame_size: int = 32
    min_frames: int = 8
    max_frames: int = 24
    fbank_frames: int = 512
    mel_bins: int = 128
    noise: float = 0.5
    missing_audio: float = 0.0
    seed: int = 0
    class_seed: int = 1234

    def __post_init__(self):
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 1 <= min_frames ({self.min_frames}) <= max_frames ({self.max_frames})")
        if self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes}: need at least 2")
        rng = np.random.default_rng(self.class_seed)
        kv = int(video_code(self.num_classes - 1, self.num_classes)) + 1
        ka = int(audio_code(self.num_classes - 1, self.num_classes)) + 1
        # Video: tints are hues evenly spaced around grey (every tint a vertex of their convex hull).
        grey_u = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
        grey_v = np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0)
        hues = 2 * np.pi * (np.arange(kv) + rng.uniform(0, 0.3)) / kv
        tints = 0.12 * (np.cos(hues)[:, None] * grey_u + np.sin(hues)[:, None] * grey_v)
        object.__setattr__(self, "_tints", tints)
        object.__setattr__(self, "_angles", np.pi * (np.arange(kv) + rng.uniform(0, 1, kv)) / kv)
        object.__setattr__(self, "_freqs", rng.uniform(1.5, 3.5, kv))
        object.__setattr__(self, "_colors", rng.uniform(-1.0, 1.0, (kv, 3)))
        # Audio: band centres spread over the mel axis, one per audio code.
        margin = 0.1 * self.mel_bins
        object.__setattr__(self, "_centres", np.linspace(margin, self.mel_bins - margin, ka))
        object.__setattr__(self, "_band_width", 0.35 * (self.mel_bins - 2 * margin) / max(ka - 1, 1))

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic clips")
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.integers(self.num_classes))
        num_frames = int(rng.integers(self.min_frames, self.max_frames + 1))
        frames = self._video(int(video_code(label, self.num_classes)), num_frames, rng)
        has_audio = not rng.uniform() < self.missing_audio
        if has_audio:
            fbank = self._audio(int(audio_code(label, self.num_classes)), rng)
        else:
            fbank = np.full((self.fbank_frames, self.mel_bins), SILENT_LEVEL, np.float32)
        return {"frames": frames, "num_frames": np.int32(num_frames), "fbank": fbank,
                "has_audio": np.bool_(has_audio), "label": np.int32(label),
                "id": f"synthetic-{self.seed}-{index}".encode()}

    def _video(self, code: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        size, noise = self.frame_size, self.noise
        coords = (np.arange(size) + 0.5) / size
        shift = rng.uniform(0, 1, 2)
        drift = rng.uniform(-0.04, 0.04, 2)
        t = np.arange(num_frames)[:, None, None]
        y = coords[None, :, None] - shift[0] - t * drift[0]
        x = coords[None, None, :] - shift[1] - t * drift[1]
        angle = self._angles[code]
        wave = np.sin(2 * np.pi * self._freqs[code] * (x * np.cos(angle) + y * np.sin(angle)))
        contrast = rng.uniform(0.5, 1.0)
        jitter = noise * 0.06 * rng.standard_normal(3)  # per-clip colour cast: confuses neighbouring tints
        brightness = rng.uniform(-0.1, 0.1)
        pixels = (0.5 + brightness + self._tints[code] + jitter
                  + 0.15 * contrast * wave[..., None] * self._colors[code])
        pixels = pixels + noise * 0.2 * rng.standard_normal(pixels.shape)
        return np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)

    def _audio(self, code: int, rng: np.random.Generator) -> np.ndarray:
        frames, bins, noise = self.fbank_frames, self.mel_bins, self.noise
        length = int(rng.integers(frames // 2, frames + 1))  # the clip's audio; the rest is padding
        mel = np.arange(bins)[None, :]
        centre = self._centres[code] + noise * 0.25 * self._band_width * rng.standard_normal()
        band = np.exp(-0.5 * ((mel - centre) / self._band_width) ** 2)
        # Syllable-like envelope: a few bursts of energy at random times.
        time = np.arange(length)[:, None]
        bursts = rng.integers(2, 7)
        onsets = rng.uniform(0, length, bursts)
        widths = rng.uniform(8, 40, bursts)
        envelope = np.exp(-0.5 * ((time - onsets[None, :]) / widths[None, :]) ** 2).sum(axis=1, keepdims=True)
        envelope = 0.4 + np.minimum(envelope, 1.0)
        tilt = 0.2 - 0.6 * mel / bins
        gain = noise * 0.15 * rng.standard_normal()
        values = tilt + gain + 0.6 * rng.uniform(0.7, 1.3) * envelope * band
        values = values + noise * 0.3 * rng.standard_normal((length, bins))
        fbank = np.full((frames, bins), SILENT_LEVEL, np.float32)
        fbank[:length] = values
        return fbank


def _frame_range(data_config) -> tuple[int, int]:
    num_frames = data_config.get("num_frames", None)
    if isinstance(num_frames, (tuple, list)):
        low, high = num_frames
    elif num_frames:
        low = high = int(num_frames)
    else:
        low, high = 8, 24
    return int(data_config.get("min_frames", None) or low), int(data_config.get("max_frames", None) or high)


def make(data_config, split: str, seed: int) -> SyntheticAVClips:
    """`data_config` keys: num_classes (7 or 11), frame_size (or image_size), num_frames (an int, or a
    (min, max) pair; min_frames / max_frames override), fbank_frames (512), train_size, eval_size, noise,
    missing_audio (fraction of clips without audio)."""
    size, split_seed = split_size_and_seed(data_config, split, seed)
    low, high = _frame_range(data_config)
    return SyntheticAVClips(
        size, num_classes=data_config.get("num_classes", 7),
        frame_size=data_config.get("frame_size", None) or data_config.get("image_size", 32),
        min_frames=low, max_frames=high, fbank_frames=data_config.get("fbank_frames", 512),
        noise=data_config.get("noise", 0.5), missing_audio=data_config.get("missing_audio", 0.0),
        seed=split_seed)
