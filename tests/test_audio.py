"""The fbank frontend against kaldi-native-fbank (same options), in NumPy and in JAX; AudioMAE framing."""

import jax
import jax.numpy as jnp
import kaldi_native_fbank as knf
import numpy as np
import pytest
from scipy.io import wavfile

from jaxemo.data import audio

# Log-mel values agree to ~1e-4 absolute (0.01% in energy); JAX's float32 FFT adds a little.
LOG_MEL_ATOL = 1e-3


def kaldi_fbank(waveform, sample_rate, num_bins):
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.samp_freq = sample_rate
    options.frame_opts.window_type = "hanning"
    options.frame_opts.preemph_coeff = 0.97
    options.frame_opts.remove_dc_offset = True
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = num_bins
    options.mel_opts.low_freq = 20.0
    options.mel_opts.high_freq = 0.0
    options.use_energy = False
    options.use_log_fbank = True
    options.use_power = True
    computer = knf.OnlineFbank(options)
    computer.accept_waveform(sample_rate, waveform.tolist())
    computer.input_finished()
    return np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])


def random_noise(rate, rng):
    return (0.1 * rng.standard_normal(rate)).astype(np.float32)


def speech_like(rate, rng):
    """A pitch-modulated harmonic tone with an energy envelope, pauses and a little noise."""
    t = np.arange(int(1.3 * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 2.0 * t), 0, None)
    return (0.3 * voiced * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


# 128 bins need the larger FFT of 44.1/48 kHz audio (Kaldi refuses mel bins that cover no FFT bin; at
# 16 kHz MMA-DFER's torchaudio frontend silently produces such empty bins). 80 bins are checked at 16 kHz.
@pytest.mark.parametrize("rate,bins", [(16_000, 80), (44_100, 128), (48_000, 128)])
@pytest.mark.parametrize("signal", [random_noise, speech_like])
def test_fbank_matches_kaldi_native_fbank(rate, bins, signal):
    waveform = signal(rate, np.random.default_rng(rate))
    expected = kaldi_fbank(waveform, rate, bins)
    ours = audio.fbank(waveform, rate, num_mel_bins=bins)
    on_device = jax.jit(lambda w: audio.fbank(w, rate, num_mel_bins=bins, xp=jnp))(waveform)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=LOG_MEL_ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(on_device), expected, atol=LOG_MEL_ATOL, rtol=0)
    assert np.median(np.abs(ours - expected)) < 1e-4


def test_fbank_vmaps_over_a_batch():
    waves = np.random.default_rng(0).standard_normal((3, 16_000)).astype(np.float32)
    batched = jax.jit(jax.vmap(lambda w: audio.fbank(w, 16_000, num_mel_bins=64, xp=jnp)))(waves)
    np.testing.assert_allclose(np.asarray(batched[1]), audio.fbank(waves[1], 16_000, num_mel_bins=64), atol=1e-3)


def test_audiomae_input_is_cropped_or_padded_to_512_frames_and_normalised():
    rate = 44_100
    short = speech_like(rate, np.random.default_rng(1))  # 1.3 s -> 128 frames, zero-padded
    features = audio.audiomae_fbank(short, rate)
    assert features.shape == (512, 128)
    raw = audio.fbank(short - short.mean(), rate)
    np.testing.assert_allclose(features[: raw.shape[0]], audio.normalize_audioset(raw), rtol=1e-6)
    np.testing.assert_allclose(features[raw.shape[0]:], audio.normalize_audioset(0.0), rtol=1e-6)
    long = np.tile(short, 5)  # 6.5 s -> 648 frames, the first 512 kept
    np.testing.assert_allclose(audio.audiomae_fbank(long, rate),
                               audio.normalize_audioset(audio.fbank(long - long.mean(), rate)[:512]), rtol=1e-6)
    np.testing.assert_allclose(audio.silent_audiomae_fbank(), (0 + 4.2677393) / (4.5689974 * 2), rtol=1e-6)


def test_read_wav_scales_pcm_and_takes_channel_0(tmp_path):
    stereo = np.stack([np.array([0, 16384, -32768], np.int16), np.array([1, 2, 3], np.int16)], axis=1)
    wavfile.write(tmp_path / "a.wav", 8000, stereo)
    waveform, rate = audio.read_wav(str(tmp_path / "a.wav"))
    assert rate == 8000
    np.testing.assert_allclose(waveform, [0.0, 0.5, -1.0])
    with pytest.raises(FileNotFoundError, match="no such audio file"):
        audio.read_wav(str(tmp_path / "missing.wav"))
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    with pytest.raises(ValueError, match="bad.wav: not a readable wav file"):
        audio.read_wav(str(tmp_path / "bad.wav"))


def test_resampling_to_16k_keeps_a_tone_at_its_frequency():
    rate = 44_100
    tone = np.sin(2 * np.pi * 440.0 * np.arange(rate) / rate).astype(np.float32)
    out = audio.resample(tone, rate, 16_000)
    assert out.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16_000 / out.size - 440.0) <= 1.0
    np.testing.assert_allclose(np.sqrt(np.mean(out[1000:-1000] ** 2)), np.sqrt(0.5), rtol=0.01)


def test_too_short_or_multichannel_waveforms_are_reported():
    with pytest.raises(ValueError, match="shorter than one 400-sample frame"):
        audio.fbank(np.zeros(100, np.float32), 16_000)
    with pytest.raises(ValueError, match="mono waveform"):
        audio.fbank(np.zeros((2, 16_000), np.float32), 16_000)
