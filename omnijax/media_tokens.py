"""The token contract: how many placeholder tokens an image, a video or an audio clip of a given size
becomes, and where each comes from (pure Python/numpy, no JAX, no PIL).

The data pipeline expands each placeholder into exactly as many tokens as the model will produce,
and the model side (``omnijax.models.layouts``, ``omnijax.models.audio``) uses the same formulas, so
both agree by construction. The layouts (``omnijax.media_layouts``: Ola, AnyRes, Qwen2-Audio) count
with these functions: Ola's slots and items (``ola_*_tokens``), AnyRes plans (``anyres_*``) and the
Whisper / Qwen2-Audio encoder lengths (``qwen2_audio_tokens``). The pixels of the tiles are
``omnijax.image_tiles``.

**LLaVA-OneVision AnyRes** (``LlavaOnevisionProcessor`` / ``LlavaOnevisionModel.pack_image_features``
in transformers). Tiles: a base image (the whole image squashed to ``base x base``) followed by the
best-fit grid from ``grid_pinpoints`` (``select_best_resolution``), tiles row-major. Tokens: the base
tile's ``s*s`` features (``s = base // patch``), then the grid's features arranged as one
``(rows*s) x (cols*s)`` map, unpadded to the original aspect ratio, bilinearly shrunk by
``ratio = sqrt(h*w / (max_num_patches * s^2))`` when ``ratio > 1.1`` (``anyres_max_9``), a newline
column after each row, flattened row-major.

Sizes are ``(height, width)`` throughout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

MODALITIES = ("image", "video", "audio")
# LLaVA-OneVision's `image_grid_pinpoints`: every (rows, cols) grid of 384-pixel tiles up to 6 x 6.
LLAVA_ONEVISION_GRID_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


def check_size(image_size: Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` as ints; ``ValueError`` for a zero or negative side."""
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
    h, w = check_size(image_size)
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
class AnyResImage:
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
) -> AnyResImage:
    """The AnyRes plan of an image of ``image_size = (height, width)`` (LLaVA-OneVision, ``anyres_max_9``)."""
    h, w = check_size(image_size)
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
    return AnyResImage((h, w), (rows, cols), side, (top, bottom, left, right), resized)


def anyres_num_tokens(image_size: Sequence[int], *, multi_image: bool = False, **layout_kw) -> int:
    """Placeholder tokens of one image: ``LlavaOnevisionProcessor._get_number_of_features`` (single
    image, AnyRes) or base tile + one newline (``multi_image``: images of a multi-image sample are not
    tiled)."""
    if multi_image:
        check_size(image_size)
        side = layout_kw.get("base_image_size", 384) // layout_kw.get("patch_size", 14)
        return side * side + 1
    return anyres_layout(image_size, **layout_kw).num_tokens


# The plan of an image of a multi-image example: no grid, an empty 1 x 0 map, i.e. the base tile and
# one newline (``rows * (cols + 1) = 1`` token after the base tile).
MULTI_IMAGE_PLAN = (0, 0, 0, 0, 0, 0, 1, 0)


def anyres_plan(image_size: Sequence[int], *, multi_image: bool = False, **layout_kw) -> tuple[int, ...]:
    """The 8-int AnyRes plan (``AnyResImage.plan``) the model follows for one image;
    ``MULTI_IMAGE_PLAN`` for an image of a multi-image example."""
    if multi_image:
        check_size(image_size)
        return MULTI_IMAGE_PLAN
    return anyres_layout(image_size, **layout_kw).plan


def anyres_plan_tokens(plan, side: int):
    """Tokens of an image laid out by ``plan`` (8 ints, or an int array ``[..., 8]`` of plans): the base
    tile's ``side^2`` features, then ``resized_h`` rows of ``resized_w`` features each + newline.
    Equals ``anyres_num_tokens`` of the image the plan was made for."""
    plan = plan if hasattr(plan, "shape") else np.asarray(plan)
    return side * side + plan[..., 6] * (plan[..., 7] + 1)


def native_patch_grid(image_size: Sequence[int], patch_size: int = 16) -> tuple[int, int]:
    """``(rows, cols)`` of patches of an image kept at its own size (Ola's OryxViT): each side padded
    up to a multiple of ``patch_size``."""
    h, w = check_size(image_size)
    return -(-h // patch_size), -(-w // patch_size)


def ola_native_size(image_size: Sequence[int], max_patches: int, patch_size: int = 16) -> tuple[int, int, bool]:
    """``(height, width, resized)`` of the view Ola's processor makes of an image of ``image_size``
    (``data_pipelines.image_tiles.native_view``): its sides padded up to multiples of ``2 * patch_size`` when
    those take at most ``max_patches`` patches; else the image scaled to ``max_patches`` patches of area (aspect
    ratio kept) and its sides floored to multiples of ``2 * patch_size`` (at least one; an image too thin for that
    has its long side cut to the budget)."""
    h, w = check_size(image_size)
    stride = 2 * patch_size
    if max_patches < 4:
        raise ValueError(f"max_patches={max_patches}: a native view takes at least 2 x 2 patches")
    padded = (-(-h // stride) * stride, -(-w // stride) * stride)
    if padded[0] * padded[1] <= max_patches * patch_size * patch_size:
        return padded[0], padded[1], False
    scale = math.sqrt(max_patches * patch_size * patch_size / (h * w))
    sides = [max(stride, int(x * scale / stride) * stride) for x in (h, w)]
    for i in sorted((0, 1), key=lambda i: -sides[i]):  # an extreme aspect ratio: the long side takes what is left
        most = max_patches // (sides[1 - i] // patch_size) // 2 * 2 * patch_size
        sides[i] = min(sides[i], most)
    return sides[0], sides[1], True


def ola_lowres_size(image_size: Sequence[int], base: int, *, max_patches: int, patch_size: int = 16) -> tuple[int, int]:
    """``(height, width)`` of Ola's low-resolution view of an image of ``image_size``. Ola makes it from the image
    its processor has already sized (``ola_native_size`` within ``max_patches``, the row's image budget: padded to
    multiples of ``2 * patch_size``, or scaled; ``process_anyres_highres_image`` of Ola's ``ola/mm_utils.py``
    calls ``resize_images`` for the high-res view, then again on that image with ``LOWRES_RESIZE``), scaled to
    ``base x base`` pixels of area, aspect ratio kept, sides floored to multiples of ``2 * patch_size`` (at least
    one)."""
    h, w, _ = ola_native_size(image_size, max_patches, patch_size)
    stride, scale = 2 * patch_size, base / math.sqrt(h * w)
    return max(stride, int(h * scale / stride) * stride), max(stride, int(w * scale / stride) * stride)


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



BEATS_FBANK_BINS = 128  # BEATs' kaldi fbank bins (BEATs.preprocess)


def beats_fbank_frames(mel_frames: int) -> int:
    """BEATs fbank frames of the window whose Whisper log-mel has ``mel_frames`` frames (``mel_frames * 160``
    samples at 16 kHz; kaldi's 400-sample frames every 160 samples, whole frames only): ``mel_frames - 2``,
    2998 for 30 s."""
    if mel_frames < 3:
        raise ValueError(f"a window of {mel_frames} mel frames holds no 25 ms fbank frame; give it at least 3")
    return 1 + (mel_frames * 160 - 400) // 160

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



def ola_pooled_grid(patch_grid):
    """Token grid ``(rows, cols)`` of a patch grid pooled 2x2 by OlaMLP's pooler (ints or int arrays); an odd
    side rounds up (omnijax's ``LocalGlobalAttentionPool`` repeats the last row / column; Ola's processor
    makes sides even)."""
    rows, cols = patch_grid
    return (rows + 1) // 2, (cols + 1) // 2


def ola_native_grid(image_size: Sequence[int], patch_size: int = 16) -> tuple[int, int]:
    """Token grid of one native-resolution view in Ola's layout: its OryxViT patch grid
    (``native_patch_grid``) pooled 2x2 (``ola_pooled_grid``)."""
    return ola_pooled_grid(native_patch_grid(image_size, patch_size))


def ola_native_image_tokens(view_sizes: Sequence[Sequence[int]], patch_size: int = 16) -> int:
    """Ola image whose views keep their own sizes (``(height, width)`` pixels each; Ola's lowres then
    highres): ``[begin, view rows each + newline, (sep, next view ...), end]``."""
    last = len(_slots(len(view_sizes), "view")) - 1
    return sum(ola_image_slot_tokens(ola_native_grid(s, patch_size), i == 0, i == last)
               for i, s in enumerate(view_sizes))


def ola_native_video_tokens(frame_sizes: Sequence[Sequence[int]], patch_size: int = 16) -> int:
    """Ola video whose frames keep their own sizes: ``[begin, per frame: rows each + newline, sep, end]``."""
    last = len(_slots(len(frame_sizes), "frame")) - 1
    return sum(ola_video_slot_tokens(ola_native_grid(s, patch_size), i == 0, i == last)
               for i, s in enumerate(frame_sizes))


def ola_native_image_newlines(view_sizes: Sequence[Sequence[int]], patch_size: int = 16) -> list[int]:
    """Positions of the ``newline`` tokens within the image's ``ola_native_image_tokens`` tokens."""
    out, start = [], 1  # after begin
    for size in view_sizes:
        rows, cols = ola_native_grid(size, patch_size)
        out += [start + r * (cols + 1) + cols for r in range(rows)]
        start += ola_tile_tokens((rows, cols)) + 1  # the view, then sep (or end)
    return out
