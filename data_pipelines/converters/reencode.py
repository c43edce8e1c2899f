"""Media files -> `schema.Media`, re-encoded only when the schema lacks their format.

Media are copied as the bytes of their files when the schema has their format (JPEG, PNG, FLAC, WAV,
MP4, recognised by their signature, not their name) and re-encoded otherwise: other images -> PNG
(lossless; the first frame of an animation); other audio (MP3, OGG, M4A, ...) -> decoded to 16-bit
PCM and stored as FLAC at its own sampling rate; other video containers (WebM, AVI, MKV, ...) and
folders of frames -> `jpeg_frames` (every frame, JPEG quality 95; JPEG frames are kept as they are).
Headers are probed (size, sampling rate, fps) and kept files checked for being cut short (`schema.truncation`:
JPEG, PNG, WAV, MP4), so unreadable files are skipped here, not in training.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence

import numpy as np
import soundfile
from PIL import Image, UnidentifiedImageError

from data_pipelines.converters.writer import Skip
from data_pipelines.schema import Media, sniff_format, truncation

JPEG_QUALITY = 95
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_FRAME_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def read_bytes(path: str, what: str) -> bytes:
    """The file at `path`; `what` names the entry it belongs to in the skip details."""
    if not os.path.exists(path):
        raise Skip("missing media file", f"{what}: {path} does not exist")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Skip("unreadable media", f"{what}: {path}: {e}") from e


def _unreadable(what: str, error: Exception) -> Skip:
    return Skip("unreadable media", f"{what}: {type(error).__name__}: {error}")


def _whole(data: bytes, fmt: str, what: str) -> None:
    """A file kept as it is must not be cut short (`schema.truncation`): training would only find out later."""
    cut = truncation(data, fmt)
    if cut:
        raise Skip("unreadable media", f"{what}: {cut}")


def image_media(data: bytes, what: str) -> Media:
    """JPEG and PNG bytes as they are (when whole); any other image PIL reads -> PNG (first frame)."""
    fmt = sniff_format(data)
    if fmt in ("jpeg", "png"):
        _whole(data, fmt, what)
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        if fmt in ("jpeg", "png"):
            return Media("image", fmt, data, size=size)
        image.load()
        if image.mode not in _PNG_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return Media("image", "png", _encode_image(image, "PNG"), size=size)
    except UnidentifiedImageError as e:
        raise Skip("unreadable media", f"{what}: not an image PIL can read (starts {data[:12]!r})") from e
    except Exception as e:  # PIL raises many kinds for damaged files
        raise _unreadable(what, e) from e


def image_array_media(array: np.ndarray, what: str) -> Media:
    """A uint8 array `[H, W]`, `[H, W, 1|3|4]` -> PNG."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise Skip(
            "unreadable media",
            f"{what}: image arrays must be uint8 [H, W] or [H, W, 1|3|4], got {array.dtype} {array.shape}",
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    image = Image.fromarray(array)
    return Media("image", "png", _encode_image(image, "PNG"), size=image.size)


def _encode_image(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _jpeg_frame(data: bytes, what: str) -> bytes:
    if sniff_format(data) == "jpeg":
        return data
    try:
        image = Image.open(io.BytesIO(data))
        return _encode_image(image.convert("RGB"), "JPEG", quality=JPEG_QUALITY)
    except Exception as e:
        raise _unreadable(what, e) from e


def frames_media(frames: Sequence[bytes], what: str, fps: float | None = None) -> Media:
    """Encoded frames -> `jpeg_frames` (JPEG frames kept as they are, others re-encoded)."""
    if not frames:
        raise Skip("unreadable media", f"{what}: no frames")
    jpegs = tuple(_jpeg_frame(frame, f"{what} frame {i}") for i, frame in enumerate(frames))
    try:
        size = Image.open(io.BytesIO(jpegs[0])).size
    except Exception as e:
        raise _unreadable(f"{what} frame 0", e) from e
    return Media("video", "jpeg_frames", jpegs, fps=fps, size=size)


def video_media(data: bytes, what: str) -> Media:
    """MP4 (any ISO-BMFF file) as it is (when whole), probed for fps and size; other containers -> `jpeg_frames`."""
    import av  # only video needs PyAV

    if sniff_format(data) == "mp4":
        _whole(data, "mp4", what)
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            if sniff_format(data) == "mp4":
                size = (stream.codec_context.width, stream.codec_context.height)
                return Media("video", "mp4", data, fps=fps, size=size if all(size) else None)
            frames = [
                _encode_image(frame.to_image(), "JPEG", quality=JPEG_QUALITY) for frame in container.decode(stream)
            ]
    except Exception as e:
        raise _unreadable(what, e) from e
    return frames_media(frames, what, fps=fps)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_folder_media(folder: str, what: str) -> Media:
    """A folder of frame images, in natural name order (`frame_2` before `frame_10`) -> `jpeg_frames`."""
    names = sorted(
        (n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in _FRAME_SUFFIXES), key=_natural_key
    )
    if not names:
        raise Skip(
            "missing media file", f"{what}: folder {folder} holds no frames ({', '.join(sorted(_FRAME_SUFFIXES))})"
        )
    return frames_media([read_bytes(os.path.join(folder, n), what) for n in names], what)


def audio_media(data: bytes, what: str) -> Media:
    """FLAC and WAV bytes as they are (when libsndfile reads them, a WAV whole); other audio -> 16-bit FLAC."""
    fmt = sniff_format(data)
    if fmt in ("flac", "wav"):
        _whole(data, fmt, what)
        try:
            info = soundfile.info(io.BytesIO(data))
            return Media("audio", fmt, data, sampling_rate=int(info.samplerate))
        except Exception:
            pass  # e.g. a WAV holding a codec libsndfile lacks: decode it below
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception:
        samples, rate = _decode_audio_with_av(data, what)
    return flac_media(samples, rate, what)


def _decode_audio_with_av(data: bytes, what: str) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.channels
            resampler = av.AudioResampler(format="s16", layout=stream.layout.name, rate=stream.rate)
            chunks = [
                out.to_ndarray().reshape(-1, channels)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1, channels) for out in resampler.resample(None)]
            rate = stream.rate
    except Exception as e:
        raise _unreadable(what, e) from e
    if not chunks:
        raise Skip("unreadable media", f"{what}: no audio samples")
    return np.concatenate(chunks), int(rate)


def flac_media(samples: np.ndarray, sampling_rate: int, what: str) -> Media:
    """Samples `[samples]` or `[samples, channels]` -> FLAC: int16 as 16-bit; int32 and floats (full
    scale +-1, clipped) as 24-bit."""
    samples = np.asarray(samples)
    if (
        samples.ndim not in (1, 2)
        or samples.size == 0
        or samples.dtype not in (np.int16, np.int32, np.float32, np.float64)
    ):
        raise Skip(
            "unreadable media",
            f"{what}: audio arrays must be int16, int32 or float, [samples] or [samples, channels]; "
            f"got {samples.dtype} {samples.shape}",
        )
    if samples.dtype.kind == "f":
        samples = np.clip(samples, -1.0, 1.0)
    subtype = "PCM_16" if samples.dtype == np.int16 else "PCM_24"
    out = io.BytesIO()
    try:
        soundfile.write(out, samples, int(sampling_rate), format="FLAC", subtype=subtype)
    except Exception as e:
        raise _unreadable(what, e) from e
    return Media("audio", "flac", out.getvalue(), sampling_rate=int(sampling_rate))
