"""Audio front end: resampling, 30 s chunking, Whisper log-mel and BEATs fbank features, built on librosa.

`whisper_log_mel` reproduces `transformers.WhisperFeatureExtractor` (`input_features[0]`), and
`chunk_valid_frames` reproduces the sum of its `attention_mask` (with `return_attention_mask=True`).
The window length is configuration: `chunk_seconds` (default 30 s -> 3000 frames; 4 s -> 400 frames)
plays the role of the extractor's `chunk_length`. `kaldi_fbank` reproduces `torchaudio.compliance.kaldi.fbank`
and `beats_fbank` the input of the BEATs music encoder (`BEATs.preprocess` in microsoft/unilm `beats/BEATs.py`).
"""

from __future__ import annotations

import functools
import math

import librosa
import numpy as np

SAMPLING_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
FRAMES_PER_SECOND = SAMPLING_RATE // HOP_LENGTH  # 100 mel frames per second


def _check_sampling_rate(sampling_rate: float) -> None:
    if not np.isfinite(sampling_rate) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive number of Hz, got {sampling_rate!r}")


def _check_waveform(waveform: np.ndarray, sampling_rate: float, max_seconds: float | None = None) -> np.ndarray:
    """Validate a mono waveform `[samples]` and return it as a float array."""
    _check_sampling_rate(sampling_rate)
    array = np.asarray(waveform)
    if array.ndim != 1:
        raise ValueError(
            f"waveform must be mono with shape [samples], got shape {array.shape}; "
            "for multi-channel audio average the channels first, e.g. waveform.mean(axis=-1) for [samples, channels]"
        )
    if array.size == 0:
        raise ValueError("waveform is empty (0 samples); need at least 1 sample of audio")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"waveform must hold real numbers, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(
            f"waveform contains {bad} NaN or Inf sample(s) out of {array.size}; all samples must be finite"
        )
    if max_seconds is not None:
        seconds = array.size / sampling_rate
        if seconds > max_seconds:
            raise ValueError(
                f"waveform is {seconds:.2f} s long ({array.size} samples at {sampling_rate} Hz), "
                f"longer than max_seconds={max_seconds}; trim it or split it with split_into_chunks"
            )
    return array


def _chunk_frames(chunk_seconds: float) -> int:
    """Mel frames in a window of `chunk_seconds` (100 per second); the window must be whole frames."""
    frames = chunk_seconds * FRAMES_PER_SECOND
    if not np.isfinite(frames) or frames < 1 or abs(frames - round(frames)) > 1e-6:
        raise ValueError(
            f"chunk_seconds must be a positive multiple of 0.01 s (one 160-sample hop at 16 kHz), got {chunk_seconds!r}"
        )
    return int(round(frames))


def _resample(array: np.ndarray, sampling_rate: float) -> np.ndarray:
    if sampling_rate != SAMPLING_RATE:
        array = librosa.resample(array, orig_sr=sampling_rate, target_sr=SAMPLING_RATE, res_type="soxr_hq")
    return np.asarray(array, dtype=np.float32)


def resample_to_16k(waveform: np.ndarray, sampling_rate: float) -> np.ndarray:
    """Resample a mono waveform `[samples]` to 16 kHz with soxr (`soxr_hq`); returns float32 `[samples']`.

    A 16 kHz input is returned unchanged (as float32).
    """
    return _resample(_check_waveform(waveform, sampling_rate), sampling_rate)


def split_into_chunks(
    waveform: np.ndarray, sampling_rate: float = SAMPLING_RATE, chunk_seconds: float = 30.0, max_chunks: int = 25
) -> list[np.ndarray]:
    """Cut a mono waveform `[samples]` into consecutive chunks of `chunk_seconds` (Ola's audio chunking).

    Every chunk but the last has exactly `chunk_seconds * sampling_rate` samples; the last holds the
    remainder (it is not padded: `whisper_log_mel` pads it). Audio needing more than `max_chunks`
    chunks (25 x 30 s = 12.5 min by default, Ola's limit) is an error. It does not resample: the
    pipeline calls it on 16 kHz audio from `resample_to_16k`.
    """
    array = _check_waveform(waveform, sampling_rate)
    if not chunk_seconds * sampling_rate >= 1:
        raise ValueError(f"chunk_seconds must give at least one sample per chunk, got {chunk_seconds!r}")
    chunk_samples = round(chunk_seconds * sampling_rate)
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be at least 1, got {max_chunks!r}")
    num_chunks = math.ceil(array.size / chunk_samples)
    if num_chunks > max_chunks:
        raise ValueError(
            f"audio is {array.size / sampling_rate:.1f} s long: {num_chunks} chunks of {chunk_seconds} s, "
            f"more than max_chunks={max_chunks} ({max_chunks * chunk_seconds:.0f} s); "
            "trim the clip or split it into several examples, or raise max_chunks"
        )
    return [array[start : start + chunk_samples] for start in range(0, array.size, chunk_samples)]


def chunk_valid_frames(num_samples: int, chunk_seconds: float = 30.0) -> int:
    """Valid mel frames of a 16 kHz clip of `num_samples` in a `chunk_seconds` window.

    Equals `WhisperFeatureExtractor(return_attention_mask=True)(...)["attention_mask"].sum()`:
    `ceil(num_samples / 160)`, capped at the window's frame count (longer clips are trimmed).
    """
    frames = _chunk_frames(chunk_seconds)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples!r}")
    return min(math.ceil(num_samples / HOP_LENGTH), frames)


@functools.lru_cache(maxsize=8)
def _mel_filters(n_mels: int) -> np.ndarray:
    """Slaney mel filters 0-8000 Hz for n_fft 400 at 16 kHz, float64 ``[n_mels, 201]`` (built once)."""
    return librosa.filters.mel(sr=SAMPLING_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=0.0, fmax=8000.0, htk=False,
                               norm="slaney", dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return librosa.filters.get_window("hann", N_FFT, fftbins=True)  # periodic, float64


def _stft(array: np.ndarray) -> np.ndarray:
    """``librosa.stft(array, n_fft=400, hop_length=160, window='hann', center=True, pad_mode='reflect')``,
    bit for bit, as one batched ``numpy.fft.rfft`` over strided frames -> complex ``[201, frames]``
    (log-mel of a 4 s clip 1.38 ms against 1.71 ms through librosa's on an idle 2-core machine,
    ``benchmarks/log_mel.py``; with both cores busy in another process, librosa's STFT took 126 ms)."""
    padded = np.pad(array, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    return np.fft.rfft(frames * _hann(), axis=-1).T


def whisper_log_mel(
    waveform: np.ndarray,
    sampling_rate: float,
    n_mels: int = 80,
    chunk_seconds: float = 30.0,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Whisper log-mel features of one mono clip `[samples]` -> float32 `[n_mels, chunk_seconds * 100]`.

    Reproduces `transformers.WhisperFeatureExtractor(feature_size=n_mels, chunk_length=chunk_seconds)`
    `input_features[0]`: resample to 16 kHz, pad with zeros / trim to `chunk_seconds * 16000` samples,
    centred reflect-padded STFT (periodic Hann, n_fft 400, hop 160), power spectrum, slaney mel filters
    0-8000 Hz, drop the last frame, `log10(max(mel, 1e-10))`, clamp below `max - 8`, `(x + 4) / 4`.
    Computed in float64. Clips longer than `max_seconds` (when given) are an error rather than trimmed.
    """
    if n_mels < 1:
        raise ValueError(f"n_mels must be at least 1, got {n_mels!r}")
    frames = _chunk_frames(chunk_seconds)
    array = _check_waveform(waveform, sampling_rate, max_seconds)
    array = _resample(array, sampling_rate).astype(np.float64)
    array = librosa.util.fix_length(array, size=frames * HOP_LENGTH)
    mel = _mel_filters(n_mels) @ (np.abs(_stft(array)[:, :-1]) ** 2)
    log_mel = np.log10(np.maximum(mel, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


# torchaudio.compliance.kaldi.fbank at its defaults, as BEATs calls it (frame_length 25 ms, frame_shift 10 ms).
KALDI_WINDOW = 400  # 25 ms at 16 kHz
KALDI_PADDED_WINDOW = 512  # round_to_power_of_two
KALDI_PREEMPHASIS = 0.97
KALDI_LOW_FREQ = 20.0  # high_freq 0 -> Nyquist
FLOAT32_EPSILON = float(np.finfo(np.float32).eps)  # Kaldi's floor under the mel energies before the log
BEATS_MEL_BINS = 128
BEATS_FBANK_MEAN = 15.41663  # BEATs.extract_features' fbank_mean / fbank_std defaults
BEATS_FBANK_STD = 6.55582


def _kaldi_mel(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq) / 700.0)


@functools.lru_cache(maxsize=4)
def _kaldi_mel_banks(n_mels: int) -> np.ndarray:
    """Kaldi's triangular mel filters (``get_mel_banks``: 20 Hz - 8 kHz, equal steps on ``1127 ln(1 + f / 700)``)
    with the zero column for the Nyquist bin, float64 ``[n_mels, 257]``."""
    if n_mels < 4:
        raise ValueError(f"n_mels must be at least 4 for Kaldi's mel banks, got {n_mels!r}")
    low, high = _kaldi_mel(KALDI_LOW_FREQ), _kaldi_mel(SAMPLING_RATE / 2)
    delta = (high - low) / (n_mels + 1)
    left = low + np.arange(n_mels)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    mel = _kaldi_mel(SAMPLING_RATE / KALDI_PADDED_WINDOW * np.arange(KALDI_PADDED_WINDOW // 2))[None, :]
    banks = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1)))


@functools.lru_cache(maxsize=1)
def _povey() -> np.ndarray:
    """Kaldi's Povey window: the symmetric Hann window to the power 0.85."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(KALDI_WINDOW) / (KALDI_WINDOW - 1))) ** 0.85


def kaldi_fbank(waveform: np.ndarray, n_mels: int = 23) -> np.ndarray:
    """Kaldi log mel filterbank of a 16 kHz mono clip ``[samples]`` -> float32 ``[frames, n_mels]``.

    ``torchaudio.compliance.kaldi.fbank(waveform[None], num_mel_bins=n_mels)`` at its defaults: frames of 400
    samples every 160 that fit whole (``1 + (samples - 400) // 160``), no dither, each frame's mean removed,
    pre-emphasis 0.97 (the first sample repeated), Povey window, zero padding to 512, power spectrum, Kaldi
    mel banks 20-8000 Hz, ``log(max(energy, float32 eps))``. The samples are used as given (Kaldi scale is
    ``int16``: ``beats_fbank`` multiplies by ``2 ** 15``). Computed in float64.
    """
    array = _check_waveform(waveform, SAMPLING_RATE).astype(np.float64)
    if array.size < KALDI_WINDOW:
        raise ValueError(f"waveform has {array.size} samples, fewer than one Kaldi frame ({KALDI_WINDOW} samples "
                         f"= 25 ms at {SAMPLING_RATE} Hz); pad the clip to at least {KALDI_WINDOW} samples")
    frames = np.lib.stride_tricks.sliding_window_view(array, KALDI_WINDOW)[::HOP_LENGTH]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - KALDI_PREEMPHASIS * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    spectrum = np.fft.rfft(frames * _povey(), n=KALDI_PADDED_WINDOW, axis=-1)
    energies = (np.abs(spectrum) ** 2) @ _kaldi_mel_banks(n_mels).T
    return np.log(np.maximum(energies, FLOAT32_EPSILON)).astype(np.float32)


def beats_fbank(waveform: np.ndarray, sampling_rate: float = SAMPLING_RATE, mean: float = BEATS_FBANK_MEAN,
                std: float = BEATS_FBANK_STD) -> np.ndarray:
    """BEATs' input features of one mono clip ``[samples]`` -> float32 ``[frames, 128]``, ``frames = 1 + (samples
    at 16 kHz - 400) // 160``.

    ``BEATs.preprocess`` (microsoft/unilm ``beats/BEATs.py``): the waveform in [-1, 1] (resampled to 16 kHz with
    soxr first) times ``2 ** 15``, ``kaldi_fbank`` with 128 bins, then ``(fbank - mean) / (2 * std)``.
    """
    array = _resample(_check_waveform(waveform, sampling_rate), sampling_rate)
    fbank = kaldi_fbank(array.astype(np.float64) * 2**15, n_mels=BEATS_MEL_BINS)
    return ((fbank - mean) / (2 * std)).astype(np.float32)
