"""Media layouts and token counts: how an image, a video or an audio clip of a given size becomes tiles, chunks and
placeholder tokens (audio counts at the end of the module).

Pure Python/numpy (PIL only inside the pixel helpers): the data pipeline imports this module to expand
each placeholder into exactly as many tokens as the model will produce, and the model side
(``omnijax.models.layouts``, ``omnijax.models.audio``) uses the same formulas, so both agree by
construction. ``MediaLayout`` (built by ``OmniConfig.media_layout``) bundles what a model's layout
needs: its placeholder ids and, per modality, the tokens of one slot (an image view or tile, a video
frame, an audio window) and of one item (the sum over its slots): Ola's layout (``ola_*_tokens``),
AnyRes (``anyres_*``) and Qwen2-Audio's (``qwen2_audio_tokens``).

Two image tilings:

**LLaVA-OneVision AnyRes** (``LlavaOnevisionProcessor`` / ``LlavaOnevisionModel.pack_image_features``
in transformers). Tiles: a base image (the whole image squashed to ``base x base``) followed by the
best-fit grid from ``grid_pinpoints`` (``select_best_resolution``), tiles row-major. Tokens: the base
tile's ``s*s`` features (``s = base // patch``), then the grid's features arranged as one
``(rows*s) x (cols*s)`` map, unpadded to the original aspect ratio, bilinearly shrunk by
``ratio = sqrt(h*w / (max_num_patches * s^2))`` when ``ratio > 1.1`` (``anyres_max_9``), a newline
column after each row, flattened row-major.

**Capybara-OMNI dynamic resolution.** The paper (Capybara-OMNI, arXiv 2504.12315, summary in
``shared/seeds/000_*.txt``) says it uses "dynamic resolution splitting for high-resolution images" and
"MiniCPM scoring to split images allows 1344x1344 resolution handling ... mitigated by 2x2
compression". We take MiniCPM-V's slicing rule (``get_sliced_grid`` of the MiniCPM-V image
processor): with ``ratio = h*w / base^2`` and ``multiple = min(ceil(ratio), max_tiles)``, an image with
``multiple <= 1`` is not split; otherwise every ``cols x rows`` factorisation of ``multiple - 1``,
``multiple``, ``multiple + 1`` (excluding 1 and counts above ``max_tiles``) is a candidate and the one
minimising ``|log(w/h) - log(cols/rows)|`` wins (first one on ties, in that enumeration order).
Unlike MiniCPM-V, whose slices have variable sizes, every tile here is resized to ``base x base`` so
shapes are static; a thumbnail (the whole image at ``base x base``) comes first, then the tiles
row-major. Tokens = ``(1 + rows*cols) * tokens_per_tile`` (``1 * tokens_per_tile`` unsplit, and
``rows*cols`` alone with ``thumbnail=False``). With ``base=448``, ``max_tiles=9`` this handles
1344x1344 as the paper states; the 2x2 compression is the connector's business and enters here only
through ``tokens_per_tile``.

Sizes are ``(height, width)`` throughout, pixel tiles NHWC float32 (HF processors give NCHW).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# LLaVA-OneVision's `image_grid_pinpoints`: every (rows, cols) grid of 384-pixel tiles up to 6 x 6.
LLAVA_ONEVISION_GRID_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2:
        raise ValueError(f"image size must be (height, width), got {tuple(image_size)}")
    h, w = (int(x) for x in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size (height, width) = ({h}, {w}) has a zero or negative side")
    return h, w


def grid_pinpoints(base: int, max_grid: int = 6) -> tuple[tuple[int, int], ...]:
    """LLaVA-OneVision-style pinpoints for another base size: every ``(i*base, j*base)``, ``i, j <= max_grid``."""
    return tuple((base * i, base * j) for i in range(1, max_grid + 1) for j in range(1, max_grid + 1))


def select_best_resolution(image_size: Sequence[int], possible_resolutions: Sequence[Sequence[int]]) -> tuple[int, int]:
    """transformers' ``select_best_resolution``: the ``(height, width)`` that keeps the most of the image
    after an aspect-preserving downscale, ties broken by the least wasted area."""
    h, w = _check_size(image_size)
    best, best_eff, best_waste = None, 0, float("inf")
    for rh, rw in possible_resolutions:
        scale = min(rw / w, rh / h)
        eff = min(int(w * scale) * int(h * scale), w * h)
        waste = rw * rh - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(rh), int(rw)), eff, waste
    if best is None:
        raise ValueError("possible_resolutions is empty")
    return best


@dataclasses.dataclass(frozen=True)
class AnyResLayout:
    """Where every AnyRes token of one image comes from (all static Python ints).

    ``grid``: (rows, cols) of high-resolution tiles; ``side``: features per tile side (``base // patch``);
    ``crop``: (top, bottom, left, right) kept of the ``(rows*side, cols*side)`` grid feature map after
    unpadding; ``resized``: the map's (height, width) after the bilinear shrink (== the crop's size
    when there is none); ``num_tokens``: base ``side^2`` + resized area + one newline per resized row.
    """

    image_size: tuple[int, int]
    grid: tuple[int, int]
    side: int
    crop: tuple[int, int, int, int]
    resized: tuple[int, int]

    @property
    def num_tiles(self) -> int:
        return 1 + self.grid[0] * self.grid[1]

    @property
    def shrunk(self) -> bool:
        top, bottom, left, right = self.crop
        return self.resized != (bottom - top, right - left)

    @property
    def num_tokens(self) -> int:
        rh, rw = self.resized
        return self.side * self.side + rh * rw + rh

    @property
    def plan(self) -> tuple[int, ...]:
        """The layout as the 8 ints a batch carries per image (``batch.ANYRES_PLAN``):
        ``(rows, cols, top, bottom, left, right, resized_h, resized_w)``."""
        return (*self.grid, *self.crop, *self.resized)


def anyres_layout(
    image_size: Sequence[int],
    *,
    base_image_size: int = 384,
    patch_size: int = 14,
    pinpoints: Sequence[Sequence[int]] = LLAVA_ONEVISION_GRID_PINPOINTS,
    max_num_patches: int = 9,
) -> AnyResLayout:
    """The AnyRes plan of an image of ``image_size = (height, width)`` (LLaVA-OneVision, ``anyres_max_9``)."""
    h, w = _check_size(image_size)
    best_h, best_w = select_best_resolution((h, w), pinpoints)
    rows, cols = best_h // base_image_size, best_w // base_image_size
    side = base_image_size // patch_size
    cur_h, cur_w = rows * side, cols * side
    # unpad_image: drop the rows/columns that correspond to the processor's padding.
    top, bottom, left, right = 0, cur_h, 0, cur_w
    if w / h > cur_w / cur_h:
        new_h = int(round(h * (cur_w / w), 7))
        pad = (cur_h - new_h) // 2
        top, bottom = pad, cur_h - pad
    else:
        new_w = int(round(w * (cur_h / h), 7))
        pad = (cur_w - new_w) // 2
        left, right = pad, cur_w - pad
    ch, cw = bottom - top, right - left
    ratio = math.sqrt(ch * cw / (max_num_patches * side * side))
    resized = (int(ch // ratio), int(cw // ratio)) if ratio > 1.1 else (ch, cw)
    return AnyResLayout((h, w), (rows, cols), side, (top, bottom, left, right), resized)


def anyres_num_tokens(image_size: Sequence[int], *, multi_image: bool = False, **layout_kw) -> int:
    """Placeholder tokens of one image: ``LlavaOnevisionProcessor._get_number_of_features`` (single
    image, AnyRes) or base tile + one newline (``multi_image``: images of a multi-image sample are not
    tiled)."""
    if multi_image:
        _check_size(image_size)
        side = layout_kw.get("base_image_size", 384) // layout_kw.get("patch_size", 14)
        return side * side + 1
    return anyres_layout(image_size, **layout_kw).num_tokens


# The plan of an image of a multi-image example: no grid, an empty 1 x 0 map, i.e. the base tile and
# one newline (``rows * (cols + 1) = 1`` token after the base tile).
MULTI_IMAGE_PLAN = (0, 0, 0, 0, 0, 0, 1, 0)


def anyres_plan(image_size: Sequence[int], *, multi_image: bool = False, **layout_kw) -> tuple[int, ...]:
    """The 8-int AnyRes plan (``AnyResLayout.plan``) the model follows for one image;
    ``MULTI_IMAGE_PLAN`` for an image of a multi-image example."""
    if multi_image:
        _check_size(image_size)
        return MULTI_IMAGE_PLAN
    return anyres_layout(image_size, **layout_kw).plan


def anyres_plan_tokens(plan, side: int):
    """Tokens of an image laid out by ``plan`` (8 ints, or an int array ``[..., 8]`` of plans): the base
    tile's ``side^2`` features, then ``resized_h`` rows of ``resized_w`` features each + newline.
    Equals ``anyres_num_tokens`` of the image the plan was made for."""
    plan = plan if hasattr(plan, "shape") else np.asarray(plan)
    return side * side + plan[..., 6] * (plan[..., 7] + 1)


def dynamic_tiling_grid(image_size: Sequence[int], *, base_size: int = 448, max_tiles: int = 9) -> tuple[int, int]:
    """(rows, cols) of the Capybara/MiniCPM-V split (module docstring); (1, 1) = not split."""
    h, w = _check_size(image_size)
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    multiple = min(math.ceil(h * w / (base_size * base_size)), max_tiles)
    if multiple <= 1:
        return 1, 1
    log_ratio = math.log(w / h)
    best, best_err = (1, 1), float("inf")
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > max_tiles:
            continue
        for cols in range(1, n + 1):
            if n % cols == 0:
                err = abs(log_ratio - math.log(cols / (n // cols)))
                if err < best_err:
                    best, best_err = (n // cols, cols), err
    return best


def dynamic_tiling_num_tiles(image_size: Sequence[int], *, base_size: int = 448, max_tiles: int = 9,
                             thumbnail: bool = True) -> int:
    rows, cols = dynamic_tiling_grid(image_size, base_size=base_size, max_tiles=max_tiles)
    if rows * cols == 1:
        return 1  # unsplit: the image itself is the only tile
    return rows * cols + int(thumbnail)


def dynamic_tiling_num_tokens(image_size: Sequence[int], *, tokens_per_tile: int, base_size: int = 448,
                              max_tiles: int = 9, thumbnail: bool = True) -> int:
    """Placeholder tokens of one image under dynamic tiling: tiles (incl. thumbnail) x ``tokens_per_tile``."""
    return tokens_per_tile * dynamic_tiling_num_tiles(image_size, base_size=base_size, max_tiles=max_tiles,
                                                      thumbnail=thumbnail)



# ---- audio: Whisper / Qwen2-Audio / Ola (integer formulas work on ints and numpy / jax int arrays) ----

MEL_FRAMES_PER_SECOND = 100  # Whisper log-mel: 16 kHz, hop 160


def whisper_conv_steps(frames):
    """Encoder steps after Whisper's stride-2 conv for ``frames`` valid mel frames ``L``:
    ``(L - 1) // 2 + 1`` (transformers' ``_get_feat_extract_output_lengths``; the valid length of
    Qwen2-Audio's padding mask)."""
    return (frames - 1) // 2 + 1


def qwen2_audio_tokens(frames):
    """Qwen2-Audio tokens for ``frames`` valid mel frames ``L`` (AvgPool1d(2, 2) after the convs):
    ``(((L - 1) // 2 + 1) - 2) // 2 + 1``; 750 for a full 30 s clip."""
    return (whisper_conv_steps(frames) - 2) // 2 + 1


def whisper_frames_per_chunk(chunk_seconds: float = 30.0) -> int:
    """Whisper encoder outputs per window of ``chunk_seconds`` whatever the clip's length inside it
    (Whisper encodes the whole padded window): 1500 for 30 s, before any connector."""
    mel = chunk_seconds * MEL_FRAMES_PER_SECOND
    if mel < 2 or abs(mel - round(mel)) > 1e-6:
        raise ValueError(f"chunk_seconds must be a positive multiple of 0.01 s, got {chunk_seconds!r}")
    return round(mel) // 2


def audio_chunks(num_samples: int, sampling_rate: int = 16_000, chunk_seconds: float = 30.0,
                 max_chunks: int = 25) -> int:
    """Windows of ``chunk_seconds`` a clip of ``num_samples`` is cut into (Ola: up to 25 x 30 s)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples!r}")
    chunks = math.ceil(num_samples / round(chunk_seconds * sampling_rate))
    if chunks > max_chunks:
        raise ValueError(f"audio of {num_samples / sampling_rate:.1f} s needs {chunks} chunks of {chunk_seconds} s, "
                         f"more than max_chunks={max_chunks}; trim or split the clip, or raise max_chunks")
    return chunks


def ola_audio_encoder_frames(num_samples: int, sampling_rate: int = 16_000, chunk_seconds: float = 30.0,
                             max_chunks: int = 25) -> int:
    """Whisper encoder outputs of a clip in Ola's chunked form, before the speech projector:
    ``chunks * 1500`` for 30 s chunks (the last chunk is padded to a whole window)."""
    return audio_chunks(num_samples, sampling_rate, chunk_seconds, max_chunks) * whisper_frames_per_chunk(chunk_seconds)


# ---- Ola's layout (Ola-Omni/Ola: OlaMLP image/video tokens, EncoderProjectorConcat speech tokens) ----
#
# Each media item fills consecutive slots of its modality (image tiles or views, video frames, audio
# windows). A slot's tokens are a fixed function of its place in the item (first / last): the
# ``*_slot_tokens`` functions below. An item's count is the sum over its slots, and the model lays out
# each slot's span with the same functions (``omnijax.models.layouts``), so the pipeline's placeholder
# counts and the model's layout agree by construction. ``first``/``last`` may be Python bools or bool
# arrays (numpy or jax); counts are then int arrays.

def ola_tile_tokens(grid: Sequence[int]) -> int:
    """Tokens of one tile or frame feature map of ``grid = (rows, cols)``: each row followed by newline."""
    rows, cols = grid
    return rows * (cols + 1)


def ola_image_slot_tokens(grid: Sequence[int], first, last):
    """One image view: ``[begin if first] rows (+ newline each) [end if last, else sep]``."""
    del last  # the closing token is there either way: sep between views, end after the last
    return ola_tile_tokens(grid) + 1 + first * 1


def ola_video_slot_tokens(grid: Sequence[int], first, last):
    """One video frame: ``[begin if first] rows (+ newline each) sep [end if last]``."""
    return ola_tile_tokens(grid) + 1 + first * 1 + last * 1


def ola_audio_slot_tokens(chunk_tokens: int, first, last):
    """One audio window: ``[speech_begin if first] its tokens speech_newline [speech_end if last]``."""
    return chunk_tokens + 1 + first * 1 + last * 1


def _slots(n: int, what: str) -> range:
    if int(n) < 1:
        raise ValueError(f"a media item has at least one {what}, got {n!r}")
    return range(int(n))


def ola_image_tokens(views: int = 1, *, grid: Sequence[int]) -> int:
    """Ola image of ``views`` feature maps of ``grid`` tokens: ``[begin, view rows each + newline,
    (sep, next view ...), end]``; ``views=2`` is Ola's lowres / sep / highres form."""
    return sum(ola_image_slot_tokens(grid, i == 0, i == views - 1) for i in _slots(views, "view"))


def ola_video_tokens(frames: int, *, grid: Sequence[int]) -> int:
    """Ola video of ``frames`` frames: ``[begin, per frame: rows each + newline, sep, end]``."""
    return sum(ola_video_slot_tokens(grid, i == 0, i == frames - 1) for i in _slots(frames, "frame"))


def ola_audio_tokens(chunks: int, *, chunk_tokens: int) -> int:
    """Ola audio clip of ``chunks`` windows: ``[speech_begin, per window: its tokens + speech_newline,
    speech_end]`` (151 tokens per 30 s window at 150 tokens per window; no length masking)."""
    return sum(ola_audio_slot_tokens(chunk_tokens, i == 0, i == chunks - 1) for i in _slots(chunks, "chunk"))


LAYOUTS = ("ola", "llava_onevision", "qwen2_audio")
MODALITIES = ("image", "video", "audio")
_LAYOUT_MODALITIES = {"ola": MODALITIES, "llava_onevision": ("image",), "qwen2_audio": ("audio",)}


@dataclasses.dataclass(frozen=True)
class MediaLayout:
    """How a model turns media items into placeholder tokens: everything the data pipeline needs to
    expand placeholders, and what the model follows to lay the encoder outputs out.

    ``OmniConfig.media_layout`` builds it from a model config; it is plain data (no JAX).

    - ``layout='ola'``: images (views), videos (frames) and audio (windows) in Ola's form;
      ``grid`` = LLM tokens ``(rows, cols)`` per view or frame after the vision connector,
      ``chunk_tokens`` = LLM tokens per audio window after the audio connector.
    - ``layout='llava_onevision'``: images only, AnyRes (``anyres_layout`` with ``base_image_size``,
      ``patch_size``, ``pinpoints``, ``max_num_patches``).
    - ``layout='qwen2_audio'``: audio only, each window's ``qwen2_audio_tokens(valid mel frames)``
      features and nothing else.
    """

    layout: str
    image_token_id: int | None = None
    video_token_id: int | None = None
    audio_token_id: int | None = None
    grid: tuple[int, int] | None = None
    chunk_tokens: int | None = None
    base_image_size: int | None = None
    patch_size: int | None = None
    pinpoints: tuple[tuple[int, int], ...] | None = None
    max_num_patches: int | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {LAYOUTS}")
        allowed = _LAYOUT_MODALITIES[self.layout]
        for m in MODALITIES:
            if getattr(self, f"{m}_token_id") is not None and m not in allowed:
                raise ValueError(f"layout {self.layout!r} lays out {' and '.join(allowed)} only, not {m}s")
        if self.layout == "llava_onevision" and None in (self.base_image_size, self.patch_size, self.pinpoints,
                                                         self.max_num_patches):
            raise ValueError("layout 'llava_onevision' needs base_image_size, patch_size, pinpoints, max_num_patches")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this model takes (those with a placeholder id)."""
        return tuple(m for m in MODALITIES if getattr(self, f"{m}_token_id") is not None)

    def token_id(self, modality: str) -> int:
        tid = getattr(self, f"{modality}_token_id")
        if tid is None:
            raise ValueError(f"this model ({self.layout} layout) takes no {modality}s; it takes "
                             f"{', '.join(self.modalities) or 'text only'}")
        return tid

    @property
    def anyres_kw(self) -> dict:
        """Keyword arguments of ``anyres_layout`` / ``anyres_plan`` for this model."""
        return dict(base_image_size=self.base_image_size, patch_size=self.patch_size, pinpoints=self.pinpoints,
                    max_num_patches=self.max_num_patches)

    @property
    def tile_side(self) -> int:
        """AnyRes features per tile side."""
        return self.base_image_size // self.patch_size

    def _need(self, field: str, modality: str):
        self.token_id(modality)
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"media layout {self.layout!r} has no {field} for {modality}s")
        return value

    # -- per slot (the model's spans; numpy or jax int arrays, or ints) --

    def image_slot_tokens(self, first, last, plan=None):
        """Tokens of one image slot. ``plan`` (llava_onevision): the item's AnyRes plan ``[..., 8]``;
        the whole image's tokens go to its first tile's slot, the other tiles' spans are 0."""
        if self.layout == "llava_onevision":
            self.token_id("image")
            return first * anyres_plan_tokens(plan, self.tile_side)
        return ola_image_slot_tokens(self._need("grid", "image"), first, last)

    def video_slot_tokens(self, first, last):
        return ola_video_slot_tokens(self._need("grid", "video"), first, last)

    def audio_slot_tokens(self, first, last, valid_frames):
        if self.layout == "qwen2_audio":
            self.token_id("audio")
            return qwen2_audio_tokens(valid_frames)
        return ola_audio_slot_tokens(self._need("chunk_tokens", "audio"), first, last)

    # -- per item (the pipeline's placeholder counts) --

    def image_tokens(self, views: int = 1, *, image_size: Sequence[int] | None = None,
                     multi_image: bool = False) -> int:
        """Placeholder tokens of one image: ``views`` feature maps (ola), or the AnyRes tokens of an
        image of ``image_size`` (llava_onevision)."""
        if self.layout == "llava_onevision":
            self.token_id("image")
            if image_size is None:
                raise ValueError("AnyRes token counts need the image's (height, width): pass image_size")
            return anyres_num_tokens(image_size, multi_image=multi_image, **self.anyres_kw)
        return ola_image_tokens(views, grid=self._need("grid", "image"))

    def video_tokens(self, frames: int) -> int:
        return ola_video_tokens(frames, grid=self._need("grid", "video"))

    def audio_tokens(self, chunks: int = 1, *, valid_frames: Sequence[int] | None = None) -> int:
        """Placeholder tokens of one audio clip of ``chunks`` windows (ola), or of the windows with
        ``valid_frames`` valid mel frames each (qwen2_audio)."""
        if self.layout == "qwen2_audio":
            self.token_id("audio")
            if valid_frames is None:
                raise ValueError("Qwen2-Audio token counts need each window's valid mel frames: pass valid_frames")
            return int(sum(int(qwen2_audio_tokens(int(n))) for n in valid_frames))
        return ola_audio_tokens(chunks, chunk_tokens=self._need("chunk_tokens", "audio"))


# ---- pixels (PIL in, NHWC float32 out) ----

def _rgb_array(image) -> np.ndarray:
    if getattr(image, "mode", None) != "RGB":
        mode = getattr(image, "mode", type(image).__name__)
        raise ValueError(f"expected a PIL image in mode 'RGB', got mode {mode!r}: "
                         "decode with Image.open(...).convert('RGB')")
    _check_size((image.height, image.width))
    return np.asarray(image)


def _normalize(tiles: list[np.ndarray], mean, std) -> np.ndarray:
    x = (np.stack(tiles).astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def anyres_pixel_tiles(image, *, base_image_size: int = 384,
                       pinpoints: Sequence[Sequence[int]] = LLAVA_ONEVISION_GRID_PINPOINTS,
                       mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD) -> np.ndarray:
    """AnyRes tiles ``[1 + rows*cols, base, base, 3]`` float32, base image first: what
    ``LlavaOnevisionImageProcessorPil`` gives for a single image (bicubic resize keeping the aspect
    ratio into the best pinpoint, centred zero padding, row-major tiles), NHWC instead of NCHW."""
    from PIL import Image

    arr = _rgb_array(image)
    h, w = arr.shape[:2]
    best_h, best_w = select_best_resolution((h, w), pinpoints)
    if best_w / w < best_h / h:
        new_h, new_w = min(math.ceil(h * best_w / w), best_h), best_w
    else:
        new_h, new_w = best_h, min(math.ceil(w * best_h / h), best_w)
    resized = np.asarray(image.resize((new_w, new_h), Image.BICUBIC))
    py, px = (best_h - new_h) // 2, (best_w - new_w) // 2
    canvas = np.zeros((best_h, best_w, 3), np.uint8)
    canvas[py:py + new_h, px:px + new_w] = resized
    tiles = [np.asarray(image.resize((base_image_size, base_image_size), Image.BICUBIC))]
    tiles += [canvas[i:i + base_image_size, j:j + base_image_size]
              for i in range(0, best_h, base_image_size) for j in range(0, best_w, base_image_size)]
    return _normalize(tiles, mean, std)


def dynamic_pixel_tiles(image, *, base_size: int = 448, max_tiles: int = 9, thumbnail: bool = True,
                        mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD) -> np.ndarray:
    """Dynamic-resolution tiles ``[n, base, base, 3]`` float32 (``n = dynamic_tiling_num_tiles``):
    thumbnail first, then the image resized (bicubic) to ``(rows*base, cols*base)`` cut row-major."""
    from PIL import Image

    arr = _rgb_array(image)
    rows, cols = dynamic_tiling_grid(arr.shape[:2], base_size=base_size, max_tiles=max_tiles)
    thumb = np.asarray(image.resize((base_size, base_size), Image.BICUBIC))
    if rows * cols == 1:
        return _normalize([thumb], mean, std)
    big = np.asarray(image.resize((cols * base_size, rows * base_size), Image.BICUBIC))
    tiles = [thumb] if thumbnail else []
    tiles += [big[i * base_size:(i + 1) * base_size, j * base_size:(j + 1) * base_size]
              for i in range(rows) for j in range(cols)]
    return _normalize(tiles, mean, std)
