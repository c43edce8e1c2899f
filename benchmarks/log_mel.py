"""Whisper log-mel features: ``data_pipelines.audio.whisper_log_mel`` (its STFT one batched
``numpy.fft.rfft`` over strided frames) against the same features through ``librosa.stft`` and against
``transformers.WhisperFeatureExtractor``, side by side in one run on the same clips; prints the time per
clip of each, the ratios and the largest difference from transformers.

    python benchmarks/log_mel.py [--seconds 4 --clips 64 --mels 80 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import librosa
import numpy as np

from data_pipelines import audio


def librosa_log_mel(waveform: np.ndarray, n_mels: int, chunk_seconds: float) -> np.ndarray:
    """``whisper_log_mel`` with ``librosa.stft`` for its STFT (what the pipeline computed before)."""
    samples = audio._chunk_frames(chunk_seconds) * audio.HOP_LENGTH
    array = librosa.util.fix_length(waveform.astype(np.float64), size=samples)
    stft = librosa.stft(array, n_fft=audio.N_FFT, hop_length=audio.HOP_LENGTH, window="hann", center=True,
                        pad_mode="reflect")
    mel = audio._mel_filters(n_mels) @ (np.abs(stft[:, :-1]) ** 2)
    log_mel = np.log10(np.maximum(mel, 1e-10))
    return ((np.maximum(log_mel, log_mel.max() - 8.0) + 4.0) / 4.0).astype(np.float32)


def _per_clip(fn, clips, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for clip in clips:
            fn(clip)
        best = min(best, (time.perf_counter() - start) / len(clips))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="clip and window length (omni-synth tiny: 4)")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--mels", type=int, default=80)
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the fastest counts")
    args = p.parse_args()
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    clips = [rng.normal(scale=0.1, size=int(args.seconds * audio.SAMPLING_RATE)).astype(np.float32)
             for _ in range(args.clips)]
    extractor = WhisperFeatureExtractor(feature_size=args.mels, chunk_length=args.seconds)
    ours = lambda c: audio.whisper_log_mel(c, audio.SAMPLING_RATE, args.mels, args.seconds)
    via_librosa = lambda c: librosa_log_mel(c, args.mels, args.seconds)
    hf = lambda c: extractor(c, sampling_rate=audio.SAMPLING_RATE, return_tensors="np").input_features[0]
    diff = max(float(np.abs(ours(c) - hf(c)).max()) for c in clips[:8])
    same = all(np.array_equal(ours(c), via_librosa(c)) for c in clips[:8])
    times = {name: _per_clip(fn, clips, args.repeats) for name, fn in
             (("whisper_log_mel", ours), ("librosa.stft", via_librosa), ("transformers", hf))}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.clips} clips of "
          f"{args.seconds} s, {args.mels} mels; fastest of {args.repeats} passes")
    for name, seconds in times.items():
        print(f"  {name:16s} {seconds * 1e3:8.2f} ms a clip   x{seconds / times['whisper_log_mel']:7.1f}")
    print(f"  equal to the librosa.stft path bit for bit: {same}; max |difference| from transformers: {diff:.2e}")


if __name__ == "__main__":
    main()
