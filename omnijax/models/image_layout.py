"""Image feature maps on the model side: torch-exact resizing and the LLaVA-OneVision AnyRes packing.

``resize_matrix`` gives the ``[n_out, n_in]`` matrix of ``torch.nn.functional.interpolate`` along one
axis (``align_corners=False``, no antialiasing) for ``mode='bilinear'`` and ``mode='bicubic'``
(cubic convolution with ``A = -0.75``, borders clamped), so a 2-D resize is two small matmuls with
static shapes and no gather: ``out = Wh @ x @ Ww^T``.

``pack_anyres`` is ``LlavaOnevisionModel.pack_image_features`` for one image: it follows the plan of
``omnijax.media_tokens.anyres_layout`` (the same plan that counts the image's placeholder tokens), so
its output length equals ``anyres_num_tokens`` by construction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.media_tokens import LLAVA_ONEVISION_GRID_PINPOINTS, anyres_layout

_CUBIC_A = -0.75  # torch's bicubic coefficient (PIL and jax.image use -0.5)


def _cubic(x: float) -> float:
    x = abs(x)
    a = _CUBIC_A
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


@functools.lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """``[n_out, n_in]`` float32 weights of torch's 1-D ``interpolate(size=n_out, align_corners=False)``."""
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"resize from {n_in} to {n_out}: sizes must be positive")
    w = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for d in range(n_out):
        if mode == "bilinear":
            src = max(scale * (d + 0.5) - 0.5, 0.0)
            i0 = int(src)
            i1 = i0 + 1 if i0 < n_in - 1 else i0
            w[d, i0] += 1.0 - (src - i0)
            w[d, i1] += src - i0
        elif mode == "bicubic":
            src = scale * (d + 0.5) - 0.5
            i = math.floor(src)
            t = src - i
            for k, c in zip(range(i - 1, i + 3), (_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
                w[d, min(max(k, 0), n_in - 1)] += c
        else:
            raise ValueError(f"resize mode {mode!r} is not one of ('bilinear', 'bicubic')")
    return w.astype(np.float32)


def resize_2d(x: jax.Array, size: tuple[int, int], mode: str) -> jax.Array:
    """Resize a feature map ``[h, w, C] -> [size[0], size[1], C]`` exactly like torch's ``interpolate``."""
    h, w = x.shape[:2]
    if (h, w) == tuple(size):
        return x
    wh = jnp.asarray(resize_matrix(h, size[0], mode), x.dtype)
    ww = jnp.asarray(resize_matrix(w, size[1], mode), x.dtype)
    return jnp.einsum("ph,hwc,qw->pqc", wh, x, ww, precision=jax.lax.Precision.HIGHEST)


def pack_anyres(
    features: jax.Array,
    image_size: Sequence[int],
    newline: jax.Array,
    *,
    base_image_size: int = 384,
    patch_size: int = 14,
    pinpoints: Sequence[Sequence[int]] = LLAVA_ONEVISION_GRID_PINPOINTS,
    max_num_patches: int = 9,
    multi_image: bool = False,
) -> jax.Array:
    """One image's AnyRes token sequence (``LlavaOnevisionModel.pack_image_features``).

    Args:
      features: ``[1 + rows*cols, side*side, C]`` per-tile features (base tile first, then the grid
        tiles row-major: the order of ``media_tokens.anyres_pixel_tiles`` and of HF's processor),
        usually already projected to the LLM width.
      image_size: the original ``(height, width)``, a static Python pair.
      newline: ``[C]``, LLaVA-OneVision's ``image_newline``.
      multi_image: the image belongs to a multi-image sample: one base tile, then one newline.

    Returns ``[anyres_num_tokens(image_size), C]``: base tile, then the unpadded (and, when large,
    bilinearly shrunk) grid map row by row, each row followed by ``newline``.
    """
    side = base_image_size // patch_size
    c = features.shape[-1]
    if multi_image:
        if features.shape[:2] != (1, side * side):
            raise ValueError(f"features has shape {tuple(features.shape)}, expected [1, {side * side}, C] "
                             "(one base tile) for an image of a multi-image sample")
        return jnp.concatenate([features[0], newline[None].astype(features.dtype)], axis=0)
    layout = anyres_layout(image_size, base_image_size=base_image_size, patch_size=patch_size,
                           pinpoints=pinpoints, max_num_patches=max_num_patches)
    rows, cols = layout.grid
    if features.ndim != 3 or features.shape[:2] != (layout.num_tiles, side * side):
        raise ValueError(f"features has shape {tuple(features.shape)}, expected "
                         f"[{layout.num_tiles}, {side * side}, C]: "
                         f"a base tile plus a {rows}x{cols} grid for an image of size {tuple(image_size)}")
    grid = features[1:].reshape(rows, cols, side, side, c).transpose(0, 2, 1, 3, 4).reshape(rows * side, cols * side, c)
    top, bottom, left, right = layout.crop
    grid = resize_2d(grid[top:bottom, left:right], layout.resized, "bilinear")
    rh, rw = layout.resized
    grid = jnp.concatenate([grid, jnp.broadcast_to(newline.astype(grid.dtype), (rh, 1, c))], axis=1)
    return jnp.concatenate([features[0], grid.reshape(rh * (rw + 1), c)], axis=0)
