"""Image pixels to tiles (PIL in, NHWC float32 out): the two image tilings the data pipeline cuts.

**LLaVA-OneVision AnyRes** (``anyres_pixel_tiles``): what ``LlavaOnevisionImageProcessorPil`` gives
for a single image, a base tile (the whole image squashed to ``base x base``) then the best-fit grid
of ``grid_pinpoints`` row-major; its token count is ``omnijax.media_tokens.anyres_layout``.

**Capybara-OMNI dynamic resolution** (``dynamic_pixel_tiles``). The paper (Capybara-OMNI, arXiv
2504.12315, summary in ``shared/seeds/000_*.txt``) says it uses "dynamic resolution splitting for
high-resolution images" and "MiniCPM scoring to split images allows 1344x1344 resolution handling
... mitigated by 2x2 compression". We take MiniCPM-V's slicing rule (``get_sliced_grid`` of the
MiniCPM-V image processor, ``dynamic_tiling_grid``): with ``ratio = h*w / base^2`` and ``multiple =
min(ceil(ratio), max_tiles)``, an image with ``multiple <= 1`` is not split; otherwise every ``cols x
rows`` factorisation of ``multiple - 1``, ``multiple``, ``multiple + 1`` (excluding 1 and counts above
``max_tiles``) is a candidate and the one minimising ``|log(w/h) - log(cols/rows)|`` wins (first one
on ties, in that enumeration order). Unlike MiniCPM-V, whose slices have variable sizes, every tile
here is resized to ``base x base`` so shapes are static; a thumbnail (the whole image at ``base x
base``) comes first, then the tiles row-major: ``1 + rows*cols`` tiles (one unsplit, ``rows*cols``
alone with ``thumbnail=False``). With ``base=448``, ``max_tiles=9`` this handles 1344x1344 as the
paper states; the 2x2 compression is the connector's business. Each tile is one view of the Ola
layout, so the image's tokens are ``OlaLayout.image_tokens(len(tiles))``.

**Native resolution** (``native_patches``, ``pack_native``): Ola's OryxViT keeps each image's size; its
pixels are zero-padded at the bottom and right to multiples of the patch and cut into patches row-major
(``omnijax.media_tokens.native_patch_grid``), and several images and video frames share one row of
fixed-size patch slots, each under its own segment id (``omnijax.models.oryx_vit``). ``native_view``
is Ola's processor for such an image (``resize_images`` of ``ola/mm_utils.py`` as Ola's inference
runs it: ``HIGHRES_BASE='0x32'``, ``PAD2STRIDE``): an image whose sides padded to a multiple of two
patches fit the patch budget keeps its size and is padded, centred, with grey (127); a larger one is
scaled, aspect ratio kept, to the budget's area and its sides floored to multiples of two patches
(``omnijax.media_tokens.ola_native_size``), so the 2x2 pooling always sees whole groups. Ola gives each image a
second, low-resolution view before that one (``LOWRES_RESIZE='384x32'``): the image as the processor has just
sized it (padded or scaled within the row's whole image budget, as Ola pads before it makes this view), scaled to
``384 x 384`` pixels of area, sides floored to multiples of 32 (``omnijax.media_tokens.ola_lowres_size``,
``lowres_view``); the high-res view then takes what is left of the budget.

Sizes are ``(height, width)`` throughout, tiles NHWC float32 (HF processors give NCHW).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from omnijax.media_tokens import (LLAVA_ONEVISION_GRID_PINPOINTS, check_size, native_patch_grid, ola_lowres_size,
                                  ola_native_size, select_best_resolution)

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def dynamic_tiling_grid(image_size: Sequence[int], *, base_size: int = 448, max_tiles: int = 9) -> tuple[int, int]:
    """(rows, cols) of the Capybara/MiniCPM-V split (module docstring); (1, 1) = not split."""
    h, w = check_size(image_size)
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


def _rgb_array(image) -> np.ndarray:
    if getattr(image, "mode", None) != "RGB":
        mode = getattr(image, "mode", type(image).__name__)
        raise ValueError(f"expected a PIL image in mode 'RGB', got mode {mode!r}: "
                         "decode with Image.open(...).convert('RGB')")
    check_size((image.height, image.width))
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
    """Dynamic-resolution tiles ``[n, base, base, 3]`` float32 (module docstring): thumbnail first,
    then the image resized (bicubic) to ``(rows*base, cols*base)`` cut row-major."""
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


def native_patches(pixels: np.ndarray, patch_size: int = 16) -> tuple[np.ndarray, tuple[int, int]]:
    """One image or frame ``[H, W, C]`` (normalised float) -> ``([rows*cols, p, p, C]`` patches row-major,
    ``(rows, cols))``: the image zero-padded at the bottom and right to multiples of ``p``, as OryxViT
    pads it (``forward_features_list``)."""
    if pixels.ndim != 3:
        raise ValueError(f"an image has shape {pixels.shape}; expected [height, width, channels]")
    h, w, c = pixels.shape
    rows, cols = native_patch_grid((h, w), patch_size)
    p = patch_size
    padded = np.zeros((rows * p, cols * p, c), np.float32)
    padded[:h, :w] = pixels
    return padded.reshape(rows, p, cols, p, c).transpose(0, 2, 1, 3, 4).reshape(rows * cols, p, p, c), (rows, cols)


def pack_native(images: Sequence[np.ndarray], *, slots: int, max_images: int,
                patch_size: int = 16) -> dict[str, np.ndarray]:
    """Images and video frames (each ``[H, W, C]``, normalised float, any size) packed into one row of
    ``slots`` patch slots, one after another: ``patches [slots, p, p, C]`` float32, ``segment_ids
    [slots]`` int32 (image ``i`` is segment ``i + 1``; 0 = empty slot, at the end), ``grids [max_images, 2]``
    int32 (each image's ``(rows, cols)``; ``(0, 0)`` for unused entries). The input of ``OryxViT`` for one
    batch row."""
    if len(images) > max_images:
        raise ValueError(f"{len(images)} images do not fit a row of max_images={max_images}: raise max_images "
                         "or put the rest in another row")
    cut = [native_patches(np.asarray(x, np.float32), patch_size) for x in images]
    used = sum(len(p) for p, _ in cut)
    if used > slots:
        sizes = ", ".join(f"{r}x{c}" for _, (r, c) in cut)
        raise ValueError(f"images of {sizes} patches need {used} patch slots, the row has slots={slots}: raise "
                         "slots, downscale the images, or put some in another row")
    channels = cut[0][0].shape[-1] if cut else 3
    patches = np.zeros((slots, patch_size, patch_size, channels), np.float32)
    segment_ids = np.zeros((slots,), np.int32)
    grids = np.zeros((max_images, 2), np.int32)
    start = 0
    for i, (p, grid) in enumerate(cut):
        patches[start:start + len(p)] = p
        segment_ids[start:start + len(p)] = i + 1
        grids[i] = grid
        start += len(p)
    return {"patches": patches, "segment_ids": segment_ids, "grids": grids}


def _ola_pixels(image, max_patches: int, patch_size: int) -> np.ndarray:
    """The image (PIL, RGB) as Ola's processor sizes it, ``[H, W, 3]`` uint8, ``H x W`` = ``ola_native_size``:
    padded, centred, with grey (127), or scaled (bicubic)."""
    rgb = _rgb_array(image)
    h, w, resized = ola_native_size((image.height, image.width), max_patches, patch_size)
    if resized:
        return np.asarray(image.resize((w, h), Image.BICUBIC))
    out = np.full((h, w, 3), 127, np.uint8)
    top, left = (h - image.height) // 2, (w - image.width) // 2
    out[top:top + image.height, left:left + image.width] = rgb
    return out


def native_view(image, *, max_patches: int, patch_size: int = 16, mean: Sequence[float] = SIGLIP_MEAN,
                std: Sequence[float] = SIGLIP_STD) -> np.ndarray:
    """One image or frame (PIL, RGB) as Ola's processor gives it to OryxViT (module docstring):
    ``[H, W, 3]`` float32 normalised, ``H x W`` = ``ola_native_size``."""
    return _normalize([_ola_pixels(image, max_patches, patch_size)], mean, std)[0]


def lowres_view(image, *, base: int, max_patches: int, patch_size: int = 16, mean: Sequence[float] = SIGLIP_MEAN,
                std: Sequence[float] = SIGLIP_STD) -> np.ndarray:
    """Ola's low-resolution view of an image (PIL, RGB): ``[H, W, 3]`` float32 normalised, ``ola_lowres_size``;
    resized (bicubic) from the image as Ola's processor has sized it within ``max_patches`` (``native_view``'s
    pixels: padded with grey, or scaled), not from the image itself."""
    h, w = ola_lowres_size((image.height, image.width), base, max_patches=max_patches, patch_size=patch_size)
    sized = Image.fromarray(_ola_pixels(image, max_patches, patch_size))
    return _normalize([np.asarray(sized.resize((w, h), Image.BICUBIC))], mean, std)[0]
