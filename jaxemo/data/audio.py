"""Audio frontend: Kaldi-compatible log-mel filterbanks (NumPy and JAX), wav reading and 16 kHz resampling.

`fbank` follows `torchaudio.compliance.kaldi.fbank` as MMA-DFER / AudioMAE call it: 25 ms Hann(ing) window,
10 ms shift, 128 mel bins from 20 Hz to Nyquist, pre-emphasis 0.97, no dither, per-frame DC removal, power
spectrum, FFT size rounded up to a power of two, `snip_edges`, log floored at float32 epsilon. The same
code runs on NumPy arrays (data preparation) and on JAX arrays (on device, under jit/vmap): pass `xp`.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import numpy as np

# AudioMAE's AudioSet statistics (main_finetune_as.py, norm_stats['audioset']).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


def mel_scale(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def mel_banks(num_bins: int, fft_size: int, sample_rate: float, low_freq: float = 20.0,
              high_freq: float = 0.0) -> np.ndarray:
    """Kaldi's triangular mel filters, `[fft_size // 2 + 1, num_bins]` (the Nyquist row is zero, as Kaldi)."""
    nyquist = 0.5 * sample_rate
    high_freq = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel range [{low_freq}, {high_freq}] Hz does not fit below Nyquist {nyquist} Hz")
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    fft_mel = mel_scale(sample_rate / fft_size * np.arange(fft_size // 2))[None, :]
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # [bins, fft_size // 2]
    return np.pad(banks, ((0, 0), (0, 1))).T.astype(np.float32)


def _frame_indices(num_samples: int, frame_length: int, frame_shift: int) -> np.ndarray:
    num_frames = 1 + (num_samples - frame_length) // frame_shift
    if num_frames < 1:
        raise ValueError(f"a waveform of {num_samples} samples is shorter than one {frame_length}-sample frame")
    return np.arange(num_frames)[:, None] * frame_shift + np.arange(frame_length)[None, :]


def fbank(waveform, sample_rate: float, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
          frame_shift_ms: float = 10.0, preemphasis: float = 0.97, low_freq: float = 20.0,
          high_freq: float = 0.0, xp=np):
    """Log-mel filterbank `[frames, num_mel_bins]` of a mono float waveform (any scale; torchaudio's [-1, 1])."""
    waveform = xp.asarray(waveform, xp.float32)
    if waveform.ndim != 1:
        raise ValueError(f"fbank expects a mono waveform [samples], got shape {tuple(waveform.shape)}")
    frame_length = int(round(sample_rate * frame_length_ms / 1000.0))
    frame_shift = int(round(sample_rate * frame_shift_ms / 1000.0))
    fft_size = 1 << max(frame_length - 1, 1).bit_length()
    frames = waveform[_frame_indices(waveform.shape[0], frame_length, frame_shift)]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = xp.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - preemphasis * previous
    window = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(frame_length) / (frame_length - 1))
    frames = frames * xp.asarray(window, xp.float32)
    spectrum = xp.fft.rfft(frames, n=fft_size, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    energies = power @ xp.asarray(mel_banks(num_mel_bins, fft_size, float(sample_rate), low_freq, high_freq))
    return xp.log(xp.maximum(energies, np.finfo(np.float32).eps)).astype(xp.float32)


def fit_frames(features, target_frames: int = 512, xp=np):
    """Crops to the first `target_frames` frames or zero-pads at the end, as AudioMAE's `_wav2fbank`."""
    frames = features.shape[0]
    if frames >= target_frames:
        return features[:target_frames]
    return xp.pad(features, ((0, target_frames - frames), (0, 0)))


def normalize_audioset(features):
    return (features - AUDIOSET_MEAN) / (AUDIOSET_STD * 2)


def audiomae_fbank(waveform, sample_rate: float, target_frames: int = 512, xp=np):
    """MMA-DFER's audio input `[target_frames, 128]`: mean-removed waveform -> fbank -> crop/pad -> AudioSet norm."""
    waveform = xp.asarray(waveform, xp.float32)
    features = fbank(waveform - waveform.mean(), sample_rate, xp=xp)
    return normalize_audioset(fit_frames(features, target_frames, xp))


def silent_audiomae_fbank(target_frames: int = 512) -> np.ndarray:
    """The reference's input for a clip without audio: a zero fbank, then AudioSet normalisation."""
    return normalize_audioset(np.zeros((target_frames, 128), np.float32))


def read_wav(path: str, channel: Optional[int] = 0) -> tuple[np.ndarray, int]:
    """(float32 waveform in [-1, 1], sample rate). Multi-channel audio keeps `channel` (0, as Kaldi does);
    `channel=None` keeps all channels as `[samples, channels]`."""
    from scipy.io import wavfile

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such audio file")
    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable wav file ({error})") from error
    data = _to_float(data, path)
    if data.ndim == 2 and channel is not None:
        data = data[:, channel]
    return data, int(rate)


def _to_float(data: np.ndarray, path: str) -> np.ndarray:
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32)
    raise ValueError(f"{path}: unsupported wav sample type {data.dtype}")


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int = 16_000) -> np.ndarray:
    """Polyphase resampling (anti-aliased, Kaiser window) to `target_rate`, e.g. 16 kHz for wav2vec 2.0."""
    from scipy.signal import resample_poly

    if sample_rate == target_rate:
        return np.asarray(waveform, np.float32)
    divisor = math.gcd(int(sample_rate), int(target_rate))
    out = resample_poly(waveform, target_rate // divisor, int(sample_rate) // divisor, axis=0)
    return out.astype(np.float32)
