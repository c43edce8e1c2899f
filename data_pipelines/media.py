"""Media arrays -> the encoded files the record schema stores (``schema.Media``): PNG images, FLAC or WAV
audio, H.264 MP4 video. Deterministic: the same array gives the same bytes (one encoder thread), so a
corpus rebuilt from the same seed is byte-identical and an in-memory question (``omnijax.experiment``)
goes through exactly the decoding a file on disk does.

    encode_png(pixels [h, w, 3] uint8)                     -> bytes
    encode_flac(waveform [samples], rate)                  -> bytes (16-bit)
    encode_wav(waveform [samples] | [samples, channels], rate) -> bytes (float32 samples kept exactly)
    encode_mp4(frames [n, h, w, 3] uint8, fps)             -> bytes (H.264, near-lossless)
"""

from __future__ import annotations

import fractions
import io

import av
import numpy as np
import soundfile as sf
from PIL import Image

MP4_CRF = "12"  # near-lossless: colours stay checkable
# No B-frames: with them, x264's B-frame lookahead encoded the same frames to different bytes now and then (about one
# video in 200 between two builds of omni-synth's held-out split, 1 encode in 60 in one process), so the corpus was
# not byte-for-byte the same from one build to the next. Without them: 0 in 600, and 200 of 200 in one process.
X264_PARAMS = "bframes=0"


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_flac(waveform: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, waveform, int(rate), format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def encode_wav(waveform: np.ndarray, rate: int) -> bytes:
    """A WAV of ``waveform``: int16 samples as 16-bit PCM, floats as 32-bit float (decoded back unchanged)."""
    buffer = io.BytesIO()
    subtype = "PCM_16" if waveform.dtype == np.int16 else "FLOAT"
    sf.write(buffer, waveform, int(rate), format="WAV", subtype=subtype)
    return buffer.getvalue()


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """H.264 MP4 of ``[frames, height, width, 3]`` uint8 frames (even height and width)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": MP4_CRF, "preset": "veryfast", "x264-params": X264_PARAMS}
        stream.codec_context.thread_count = 1
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
