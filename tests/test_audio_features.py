"""`data_pipelines.audio` against transformers' WhisperFeatureExtractor (built offline from its constructor)."""

import functools

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from data_pipelines.audio import chunk_valid_frames, resample_to_16k, split_into_chunks, whisper_log_mel

SR = 16_000
TOL = 1e-4


@functools.cache
def hf_extractor(n_mels: int = 80, chunk_length: int = 30) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=n_mels, chunk_length=chunk_length)


def hf_features(waveform: np.ndarray, n_mels: int = 80, chunk_length: int = 30) -> np.ndarray:
    return hf_extractor(n_mels, chunk_length)(waveform, sampling_rate=SR, return_tensors="np")["input_features"][0]


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def speech_like(seconds: float = 3.0, silence: float = 2.0) -> np.ndarray:
    """Syllable-rate AM tone plus band-limited noise bursts, then trailing silence."""
    t = np.arange(int(seconds * SR)) / SR
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    voiced = syllables * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t))
    white = np.random.default_rng(1).standard_normal(t.size)
    fricative = np.convolve(white, np.ones(8) / 8, mode="same") * (np.sin(2 * np.pi * 1.5 * t) > 0.7)
    return np.concatenate([0.2 * voiced + 0.1 * fricative, np.zeros(int(silence * SR))]).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "waveform", "n_mels"),
    [
        ("noise", noise(7.0), 80),
        ("tone_440hz", tone(5.0), 128),
        ("speech_like_then_silence", speech_like(), 80),
        ("speech_like_then_silence", speech_like(), 128),
        ("noise_longer_than_window", noise(31.0, seed=2), 80),
    ],
)
def test_matches_whisper_feature_extractor(name, waveform, n_mels):
    ours = whisper_log_mel(waveform, SR, n_mels=n_mels)
    ref = hf_features(waveform, n_mels)
    assert ours.shape == ref.shape == (n_mels, 3000)
    assert ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    print(f"{name} ({n_mels} mels): max abs diff {diff:.2e}")
    assert diff < TOL


def test_resampled_44k_matches_whisper_feature_extractor():
    t = np.arange(int(2.5 * 44_100)) / 44_100
    waveform = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.05 * np.random.default_rng(3).standard_normal(t.size))
    resampled = resample_to_16k(waveform, 44_100)
    assert resampled.dtype == np.float32 and resampled.shape == (40_000,)
    diff = float(np.abs(whisper_log_mel(waveform, 44_100) - hf_features(resampled)).max())
    print(f"44.1 kHz input: max abs diff {diff:.2e}")
    assert diff < TOL


def test_resample_keeps_16k_input():
    waveform = noise(0.5)
    np.testing.assert_array_equal(resample_to_16k(waveform, SR), waveform)


def test_short_window_matches_extractor_with_chunk_length_4():
    extractor = hf_extractor(80, 4)
    assert (extractor.n_samples, extractor.nb_max_frames) == (64_000, 400)
    waveform = speech_like(seconds=2.0, silence=1.0)
    ours = whisper_log_mel(waveform, SR, chunk_seconds=4.0)
    assert ours.shape == (80, 400)
    diff = float(np.abs(ours - hf_features(waveform, 80, 4)).max())
    print(f"4 s window: max abs diff {diff:.2e}")
    assert diff < TOL


@pytest.mark.parametrize(
    ("num_samples", "chunk_length"),
    [(1, 30), (159, 30), (160, 30), (161, 30), (16_001, 30), (479_999, 30), (480_000, 30), (500_000, 30),
     (12_345, 4), (64_000, 4), (70_000, 4)],
)
def test_valid_frames_match_attention_mask(num_samples, chunk_length):
    extractor = hf_extractor(80, chunk_length)
    mask = extractor(np.full(num_samples, 0.1, np.float32), sampling_rate=SR, return_attention_mask=True)
    assert chunk_valid_frames(num_samples, chunk_length) == int(mask["attention_mask"].sum())


@pytest.mark.parametrize(("seconds", "lengths"), [(40.0, [480_000, 160_000]), (30.0, [480_000]), (0.5, [8_000])])
def test_split_into_chunks(seconds, lengths):
    chunks = split_into_chunks(np.zeros(int(seconds * SR), np.float32))
    assert [c.size for c in chunks] == lengths


def test_split_keeps_at_most_max_chunks():
    rate = 100  # a low rate keeps the 12.5 min arrays small; the limit is in seconds
    assert len(split_into_chunks(np.zeros(25 * 30 * rate), sampling_rate=rate)) == 25
    message = r"1860\.0 s long: 62 chunks of 30\.0 s, more than max_chunks=25 \(750 s\).*trim"
    with pytest.raises(ValueError, match=message):
        split_into_chunks(np.zeros(31 * 60 * rate), sampling_rate=rate)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: whisper_log_mel(np.zeros(0), SR), r"empty \(0 samples\)"),
        (lambda: whisper_log_mel(np.array([0.0, np.nan, 0.1]), SR), r"1 NaN or Inf sample\(s\) out of 3"),
        (lambda: whisper_log_mel(np.array([np.inf, 0.1]), SR), r"NaN or Inf"),
        (lambda: whisper_log_mel(noise(2.0), SR, max_seconds=1.5), r"2\.00 s long .* longer than max_seconds=1\.5"),
        (lambda: whisper_log_mel(noise(0.1), 0), r"sampling_rate must be a positive number of Hz, got 0"),
        (lambda: whisper_log_mel(noise(0.1), -16000), r"sampling_rate must be a positive.*-16000"),
        (lambda: whisper_log_mel(np.zeros((800, 2)), SR), r"mono with shape \[samples\].*\(800, 2\).*average the"),
        (lambda: whisper_log_mel(noise(0.1), SR, chunk_seconds=0.005), r"chunk_seconds must be a positive multiple"),
        (lambda: whisper_log_mel(noise(0.1), SR, n_mels=0), r"n_mels must be at least 1"),
        (lambda: resample_to_16k(np.zeros(0), 44_100), r"empty"),
        (lambda: resample_to_16k(noise(0.1), -1), r"sampling_rate"),
        (lambda: split_into_chunks(np.zeros((2, 100))), r"mono"),
        (lambda: split_into_chunks(np.zeros(100), chunk_seconds=0.0), r"chunk_seconds must give at least one sample"),
        (lambda: chunk_valid_frames(0), r"num_samples must be at least 1"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
