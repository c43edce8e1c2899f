"""Image feature maps on the model side: torch-exact resize weights and the LLaVA-OneVision AnyRes
packing of one image.

``resize_matrix`` gives the ``[n_out, n_in]`` matrix of ``torch.nn.functional.interpolate`` along one
axis (``align_corners=False``, no antialiasing) for ``mode='bilinear'`` and ``mode='bicubic'``
(cubic convolution with ``A = -0.75``, borders clamped), so a 2-D resize is two small matmuls with
static shapes and no gather: ``out = Wh @ x @ Ww^T`` (the vision tower's position interpolation).

``pack_anyres`` is ``LlavaOnevisionModel.pack_image_features`` for one image: the model's AnyRes
layout (``omnijax.models.layouts.anyres_decoder``) run on one image, following the plan of
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

from omnijax.media_layouts import AnyResLayout
from omnijax.media_tokens import LLAVA_ONEVISION_GRID_PINPOINTS, anyres_plan
from omnijax.models import layouts

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
        tiles row-major: the order of ``image_tiles.anyres_pixel_tiles`` and of HF's processor),
        usually already projected to the LLM width.
      image_size: the original ``(height, width)``, a static Python pair.
      newline: ``[C]``, LLaVA-OneVision's ``image_newline``.
      multi_image: the image belongs to a multi-image sample: one base tile, then one newline.

    Returns ``[anyres_num_tokens(image_size), C]``: base tile, then the unpadded (and, when large,
    bilinearly shrunk) grid map row by row, each row followed by ``newline``.
    """
    layout = AnyResLayout(image_token_id=0, base_image_size=base_image_size, patch_size=patch_size,
                          pinpoints=tuple(map(tuple, pinpoints)), max_num_patches=max_num_patches)
    plan = anyres_plan(image_size, multi_image=multi_image, **layout.anyres_kw)
    side, rows, cols = layout.tile_side, plan[0], plan[1]
    if features.ndim != 3 or features.shape[:2] != (1 + rows * cols, side * side):
        what = "one base tile for an image of a multi-image sample" if multi_image else \
            f"a base tile plus a {rows}x{cols} grid for an image of size {tuple(image_size)}"
        raise ValueError(f"features has shape {tuple(features.shape)}, expected [{1 + rows * cols}, {side * side}, C]: "
                         f"{what}")
    item = jnp.zeros((1, 1 + rows * cols), jnp.int32)
    _, first, last = layouts.slot_flags(item)
    plans = jnp.broadcast_to(jnp.asarray(plan, jnp.int32), (1, 1 + rows * cols, len(plan)))
    spans = layouts.slot_spans(layout, "image", item, plans)
    n = layout.image_tokens(image_size=image_size, multi_image=multi_image)
    decode = layouts.anyres_decoder(layout, "image", side * side)
    out = layouts.splice(jnp.zeros((1, n, features.shape[-1]), features.dtype), jnp.ones((1, n), bool), spans,
                         features.reshape(1, -1, features.shape[-1]), decode, newline[None], first=first, last=last,
                         plan=plans)
    return out[0]
