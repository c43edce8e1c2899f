"""Decode media bytes and turn them into model inputs, each item with its placeholder token count.

`MediaFeatures.item(media, ...)` takes one `schema.Media` (encoded bytes) and returns a `Feature`: the
slot arrays of the item (`omnijax.batch.MediaItem` form) and the number of placeholder tokens the
model will produce for it, from the shared count functions (the layout, `omnijax.media_layouts.MediaLayout`).

- images: PIL, RGB; `ola` layout: one view resized to the budget's `image_size` (bicubic), or
  `image_tiling='dynamic'`: thumbnail + MiniCPM-V tiles (`image_tiles.dynamic_pixel_tiles`), one view
  per tile; `llava_onevision`: AnyRes tiles and plan, or the base tile alone for an image of a
  multi-image example; a native-resolution budget (`image_patches`, layout `ola_native`): one view at
  the image's own size, padded or (over `native_maxres` squared pixels, Ola's MAXRES) scaled as Ola's processor
  does (`image_tiles.native_view`), after Ola's low-resolution view when `native_lowres` is set
  (`image_tiles.lowres_view`, made as Ola makes it from the padded or scaled image), each cut into patches
  (`image_tiles.native_patches`); an image whose views take more than the row's `image_patches` is dropped as
  too long (`media_expansion`). Pixels are normalised as SigLIP's processor does (/255, mean = std = 0.5).
- videos: PyAV (one decoder thread); `video_frames` frames taken uniformly
  (`linspace(0, n - 1, k)` floored, Ola's sampling), fewer when the video has fewer; each resized to
  `video_size`, or at native resolution (`video_patches`) each sized as Ola's `resize_video` does (padded, or
  scaled to `native_video_maxres` / `native_video_minres` squared pixels, `frame_view`) and cut into patches; a
  video whose frames take more than the row's `video_patches` is dropped as too long. `jpeg_frames` videos
  sample their JPEG list the same way.
- audio: soundfile, channels averaged, resampled to 16 kHz, cut into windows of the budget's
  `audio_frames / 100` seconds (`audio.split_into_chunks`), Whisper log-mel per window
  (`audio.whisper_log_mel`) and its valid frames (`audio.chunk_valid_frames`).

Broken media raise `MediaError` with a reason (`corrupt_image`, `corrupt_video`, `corrupt_audio`)
for the pipeline's skip counters; an audio clip longer than the model takes (the budget's
`max_audio_windows` windows) raises `TooLongError`, in seconds (the pipeline's over-long policy decides).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from data_pipelines import audio as audio_features
from data_pipelines import schema
from data_pipelines import image_tiles
from omnijax import media_layouts, media_tokens
from omnijax.batch import MediaBudget

IMAGE_TILINGS = ("resize", "dynamic")
_BLAS_LIMIT = []


def limit_blas_threads() -> None:
    """One BLAS thread in this process from now on. The features are small matrix products (mel filters,
    resizing); OpenBLAS's worker threads spin against a train step or other workers on the same cores and
    made them 30x slower on a 2-core machine. XLA does not use this BLAS."""
    if not _BLAS_LIMIT:
        from threadpoolctl import threadpool_limits

        _BLAS_LIMIT.append(threadpool_limits(limits=1, user_api="blas"))


class MediaError(ValueError):
    """A media item that cannot be decoded; `reason` names the skip counter."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class TooLongError(ValueError):
    """A media item longer than the model takes (audio beyond the budget's `max_audio_windows` windows); the
    message is a predicate in seconds ('is 812.0 s; this model takes at most ...'), after the item's name."""


@dataclasses.dataclass(frozen=True)
class Feature:
    """One media item ready for the slots: `data` `[slots, ...]` float32, `tokens` placeholder tokens,
    `valid_frames` (audio, per window), `fbank` (audio of a model with BEATs: BEATs' fbank per window) and
    `plan` (llava_onevision images, AnyRes plan); native resolution: `data` the views' patches
    `[patches, p, p, 3]` and `grids` each view's patch grid `[slots, 2]`."""

    kind: str
    data: np.ndarray
    tokens: int
    valid_frames: np.ndarray | None = None
    plan: tuple[int, ...] | None = None
    trimmed: bool = False  # audio cut to the budget's max_audio_windows windows
    seconds: float | None = None  # audio: the clip's length (before any cut)
    fbank: np.ndarray | None = None
    grids: np.ndarray | None = None  # native resolution: (rows, cols) of each view / frame

    @property
    def slots(self) -> int:
        return int(self.data.shape[0] if self.grids is None else len(self.grids))

    @property
    def patches(self) -> int:
        """Patch slots the item takes (native resolution; 0 otherwise)."""
        return 0 if self.grids is None else int(self.data.shape[0])

    def describe(self) -> str:
        """The item in the units a user thinks in: 'audio of 40.0 s', 'video of 8 frames', 'image of 5 views
        or tiles'."""
        if self.kind == "audio":
            return f"audio of {self.seconds:.1f} s"
        return f"video of {self.slots} frames" if self.kind == "video" else f"image of {self.slots} views or tiles"


def _undecodable(kind: str, data: bytes, error: Exception) -> MediaError:
    """The error for media that does not decode: truncated where the file's structure says so
    (`schema.truncation`), with the decoder's words."""
    cut = schema.truncation(data, schema.sniff_format(data))
    cause = f"{type(error).__name__}: {error}"
    return MediaError(f"corrupt_{kind}", f"{cut} ({cause})" if cut else f"{kind} does not decode ({cause})")


def _open_image(data: bytes):
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise _undecodable("image", data, e) from e


def _view(image, size: int) -> np.ndarray:
    """The whole image resized (bicubic) to `size` x `size`, normalised: `[1, size, size, 3]`."""
    return image_tiles.dynamic_pixel_tiles(image, base_size=size, max_tiles=1)


def _uniform(n: int, k: int) -> np.ndarray:
    """`k` of `n` frame indices spread uniformly, first and last included (Ola's `linspace`)."""
    return np.linspace(0, n - 1, min(k, n), dtype=int)


def _video_frames(data: bytes, k: int) -> list:
    """`k` frames (PIL images) sampled uniformly from an encoded video."""
    import av
    from PIL import Image

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise MediaError("corrupt_video", "the file has no video stream")
            count = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
        if count == 0:
            raise MediaError("corrupt_video", "the video has no frames")
        wanted = set(_uniform(count, k).tolist())
        last, frames = max(wanted), []
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # one FFmpeg thread per pipeline worker
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames.append(Image.fromarray(frame.to_ndarray(format="rgb24")))
                if i == last:
                    break
    except MediaError:
        raise
    except Exception as e:  # av.error.FFmpegError and friends
        raise _undecodable("video", data, e) from e
    if not frames:
        raise MediaError("corrupt_video", f"none of the video's {count} frames decodes")
    return frames


def _waveform(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    cut = schema.truncation(data, schema.sniff_format(data))
    if cut:  # a WAV's decoder reads what is there
        raise MediaError("corrupt_audio", cut)
    blocks, expected, rate, error = [], None, None, ""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            expected, rate = f.frames, f.samplerate
            for block in f.blocks(blocksize=4096, dtype="float32", always_2d=True):
                blocks.append(block)
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError
        if expected is None:  # not even the header reads
            raise _undecodable("audio", data, e) from e
        error = f" ({type(e).__name__}: {e})"
    samples = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)
    if expected == 0:
        raise MediaError("corrupt_audio", "the audio has no samples")
    if len(samples) != expected:
        raise MediaError("corrupt_audio", f"truncated or damaged: {len(samples)} of the {expected} samples its "
                                          f"header gives decode ({len(samples) / rate:.2f} s of {expected / rate:.2f} "
                                          f"s){error}")
    return samples.mean(axis=1), rate


def check_decodes(media: schema.Media) -> None:
    """Raises `MediaError` saying what is wrong when `media` is cut short (`schema.truncation`) or does not
    decode: an image whole, audio whole, a video's first frame."""
    cut = schema.truncation(media.data, media.format)
    if cut:
        raise MediaError(f"corrupt_{media.kind}", cut)
    if media.kind == "image":
        _open_image(media.data)
    elif media.kind == "audio":
        _waveform(media.data)
    elif media.format == "jpeg_frames":
        for frame in media.data:
            _open_image(frame)
    else:
        _video_frames(media.data, 1)


@dataclasses.dataclass(frozen=True)
class MediaFeatures:
    """Turns media items into slot arrays for one stage: its budget (sizes, mel bins, window) and
    layout (token counts), plus the sampling options."""

    budget: MediaBudget
    layout: media_layouts.MediaLayout
    video_frames: int = 8
    image_tiling: str = "resize"  # ola layout: 'resize' (one view) or 'dynamic' (thumbnail + tiles)
    max_image_tiles: int = 9
    native_lowres: int = 0  # native resolution: side of Ola's low-resolution view (its area), 0 = none
    native_maxres: int = media_tokens.OLA_MAXRES  # native resolution: images above this side squared are scaled
    native_video_maxres: int = media_tokens.OLA_VIDEO_MAXRES  # and frames above this side squared
    native_video_minres: int = media_tokens.OLA_VIDEO_MINRES  # and frames below this side squared (scaled up)

    def __post_init__(self):
        if self.image_tiling not in IMAGE_TILINGS:
            raise ValueError(f"image_tiling {self.image_tiling!r} is not one of {IMAGE_TILINGS}")
        if self.video_frames < 1 or self.max_image_tiles < 1:
            raise ValueError("video_frames and max_image_tiles must be at least 1")
        if self.layout.image_plans and self.budget.image_slots and \
                self.budget.image_size != self.layout.base_image_size:
            raise ValueError(f"budget image_size {self.budget.image_size} differs from the AnyRes tile size "
                             f"{self.layout.base_image_size} of the {self.layout.name} layout")

    @property
    def chunk_seconds(self) -> float:
        """Audio window length: the budget's mel frames at 100 frames per second."""
        return self.budget.audio_frames / audio_features.FRAMES_PER_SECOND

    def item(self, media: schema.Media, *, multi_image: bool = False, trim_audio: bool = False) -> Feature:
        """The features of one media item. `multi_image`: the example holds several images (AnyRes
        tiles only single images); `trim_audio`: keep the first `max_audio_windows` windows of a longer
        clip instead of raising `TooLongError`."""
        if media.kind == "image":
            return self.image(_open_image(media.data), multi_image=multi_image)
        if media.kind == "video":
            return self.video(media)
        return self.audio(media, trim=trim_audio)

    def native_image(self, image) -> Feature:
        """An image at native resolution: Ola's low-resolution view if ``native_lowres``, then its high-resolution
        view, both sized by ``native_maxres`` alone as Ola's processor sizes them (``media_tokens.ola_native_views``);
        whether they fit the row's patch slots is ``MediaExpansion.fit``'s check."""
        p = self.budget.patch_size
        views = [image_tiles.native_view(image, maxres=self.native_maxres, patch_size=p)]
        if self.native_lowres:
            views.insert(0, image_tiles.lowres_view(image, base=self.native_lowres, maxres=self.native_maxres,
                                                    patch_size=p))
        sizes = [v.shape[:2] for v in views]
        return self._patches("image", views, self.layout.image_tokens(len(sizes), view_sizes=sizes))

    def native_video(self, frames: list) -> Feature:
        """Video frames at native resolution, each sized as Ola's ``resize_video`` sizes it (``native_video_maxres``,
        ``native_video_minres``); whether they fit the row's patch slots is ``MediaExpansion.fit``'s check."""
        views = [image_tiles.frame_view(f, maxres=self.native_video_maxres, minres=self.native_video_minres,
                                        patch_size=self.budget.patch_size) for f in frames]
        return self._patches("video", views, self.layout.video_tokens(len(views), frame_size=views[0].shape[:2]))

    def _patches(self, kind: str, views: list, tokens: int) -> Feature:
        cut = [image_tiles.native_patches(v, self.budget.patch_size) for v in views]
        grids = np.asarray([c[1] for c in cut], np.int32)
        return Feature(kind, np.concatenate([c[0] for c in cut]), tokens, grids=grids)

    def image(self, image, *, multi_image: bool = False) -> Feature:
        if self.budget.patches("image"):
            return self.native_image(image)
        size = self.budget.image_size
        hw = (image.height, image.width)
        if self.layout.image_plans:
            kw = self.layout.anyres_kw
            plan = media_tokens.anyres_plan(hw, multi_image=multi_image, **kw)
            tokens = self.layout.image_tokens(image_size=hw, multi_image=multi_image)
            if multi_image:
                return Feature("image", _view(image, size), tokens, plan=plan)
            tiles = image_tiles.anyres_pixel_tiles(image, base_image_size=size, pinpoints=kw["pinpoints"])
            return Feature("image", tiles, tokens, plan=plan)
        if self.image_tiling == "dynamic":
            views = image_tiles.dynamic_pixel_tiles(image, base_size=size, max_tiles=self.max_image_tiles)
        else:
            views = _view(image, size)
        return Feature("image", views, self.layout.image_tokens(len(views)))

    def video(self, media: schema.Media) -> Feature:
        if media.format == "jpeg_frames":
            try:
                frames = [_open_image(media.data[i]) for i in _uniform(len(media.data), self.video_frames)]
            except MediaError as e:
                raise MediaError("corrupt_video", f"a JPEG frame: {e}") from e
        else:
            frames = _video_frames(media.data, self.video_frames)
        if self.budget.patches("video"):  # every frame of the video the same size: its share of the row
            return self.native_video([f.convert("RGB") for f in frames])
        data = np.concatenate([_view(frame.convert("RGB"), self.budget.video_size) for frame in frames])
        return Feature("video", data, self.layout.video_tokens(len(frames)))

    def audio(self, media: schema.Media, *, trim: bool = False) -> Feature:
        waveform, rate = _waveform(media.data)
        waveform = audio_features.resample_to_16k(waveform, rate)
        rate = audio_features.SAMPLING_RATE
        window, most = round(self.chunk_seconds * rate), self.budget.max_audio_windows
        seconds = len(waveform) / rate
        trimmed = len(waveform) > most * window
        if trimmed:
            if not trim:
                raise TooLongError(f"is {seconds:.1f} s; this model takes at most {self.budget.max_audio_seconds:g} s "
                                   f"({most} windows of {self.chunk_seconds:g} s): cut it or raise "
                                   "model.max_audio_windows")
            waveform = waveform[: most * window]
        chunks = audio_features.split_into_chunks(waveform, rate, self.chunk_seconds, most)
        if self.budget.n_mels:
            mels = np.stack([audio_features.whisper_log_mel(c, rate, self.budget.n_mels, self.chunk_seconds)
                             for c in chunks])
        else:  # a model without a speech encoder (BEATs alone) reads no log-mel: windows of 0 mel bins
            mels = np.zeros((len(chunks), 0, self.budget.audio_frames), np.float32)
        valid = np.array([audio_features.chunk_valid_frames(len(c), self.chunk_seconds) for c in chunks], np.int32)
        tokens = self.layout.audio_tokens(len(chunks), valid_frames=valid.tolist())
        fbank = None
        if self.budget.audio_fbank_frames:  # BEATs reads the same window, zero-padded as Ola pads it
            fbank = np.stack([audio_features.beats_fbank(np.pad(c, (0, window - len(c)))) for c in chunks])
        return Feature("audio", mels, tokens, valid_frames=valid, trimmed=trimmed, seconds=seconds, fbank=fbank)
