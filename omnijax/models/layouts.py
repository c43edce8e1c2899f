"""Media layouts on the model side: which embedding each placeholder token of a row takes.

For one modality of one row: the slots' item ids (``batch.py``) give each slot its place in its item
(first / last slot); each slot owns the next ``MediaLayout.slot_tokens(m, first, last, ...)``
placeholder tokens of that modality in the row, the same functions whose sums are the data
pipeline's placeholder counts (``omnijax.media_layouts``), so the two agree by construction.

A placeholder's rank among the row's placeholders of its modality (a cumulative sum) finds its slot
(``searchsorted`` over the spans' ends) and its offset in the slot's span. A layout decodes the
offset into a learned layout vector (an index into the modality's ``mm_embed`` table) or features:
``K`` rows of the row's flattened encoder outputs ``[slots * tokens_per_slot, embed]`` and their
weights (K = 1; K = 4 for AnyRes's bilinear shrink). ``splice`` writes them with ``jnp.where``:
static shapes, no per-item buffers, vmapped over rows.

Each layout class of ``omnijax.media_layouts`` has its decoder here (``DECODERS``, keyed by the class):

- ``OlaLayout`` (Ola-Omni/Ola): a view / frame is its connector's ``rows x cols`` map, each row followed by
  ``newline``. Image = ``[begin, view, (sep, view, ...), end]``; video = ``[begin, per frame: rows +
  newline, sep, end]``; audio clip = ``[speech_begin, per window: tokens, speech_newline, speech_end]``
  (Ola keeps ``speech_begin/newline/end`` in its speech projector ``EncoderProjectorConcat``; here
  they are ``mm_embed/speech_*``).
- ``AnyResLayout`` (LLaVA-OneVision): an image's tiles fill consecutive slots (base tile first, grid tiles
  row-major); its tokens, all on its first slot's span, are transformers'
  ``LlavaOnevisionModel.pack_image_features``: the base tile, then the grid map cropped and shrunk as
  the image's AnyRes plan says, each row followed by ``newline``. The shrink is torch's bilinear
  ``interpolate`` (``align_corners=False``) written as 4 weighted feature rows per token.
- ``OlaNativeLayout`` (Ola as published, OryxViT): Ola's layout with each view's / frame's own grid. The
  features are not per slot: the tower's output is the row's packed patches, and a token's feature is the
  2x2 group of patches its pooled cell covers (4 patch rows, the last row / column repeated on an odd
  side), which the pooling connector turns into one token (``OlaVisionProjector`` with ``groups``).
- ``Qwen2AudioLayout``: each window's first ``qwen2_audio_tokens(valid frames)`` features, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from omnijax.media_layouts import (ANYRES_EMBEDS, SPEECH_EMBEDS, VISION_EMBEDS, AnyResLayout, MediaLayout, OlaLayout,
                                   OlaNativeLayout, Qwen2AudioLayout)
from omnijax.media_tokens import ola_pooled_grid, ola_tile_tokens

FEATURE = -1  # decoded code of a token that takes features (codes >= 0 index the mm_embed table)

# (slot [T], local [T], per-row slot info) -> (code [T], feature rows [T, K], weights [T, K] or None)
Decode = Callable[..., tuple[jax.Array, jax.Array, jax.Array | None]]


def slot_flags(item: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``item [..., S]`` -> (valid, first, last) bool ``[..., S]``: used slot, first / last slot of its item."""
    valid = item >= 0
    pad = jnp.full_like(item[..., :1], -1)
    prev = jnp.concatenate([pad, item[..., :-1]], axis=-1)
    nxt = jnp.concatenate([item[..., 1:], pad], axis=-1)
    return valid, valid & (prev != item), valid & (nxt != item)


def slot_spans(layout: MediaLayout, modality: str, item: jax.Array, plan=None, valid_frames=None,
               grid=None) -> jax.Array:
    """Placeholder tokens each slot owns ``[..., S]`` (0 for empty slots); ``grid`` ``[..., S, 2]``: each
    slot's patch grid (native layouts)."""
    valid, first, last = slot_flags(item)
    spans = layout.slot_tokens(modality, first, last, plan, valid_frames,
                               None if grid is None else (grid[..., 0], grid[..., 1]))
    return jnp.where(valid, spans, 0).astype(jnp.int32)


def _grid_body(o, grid, newline):
    """Offset in a view/frame map of ``grid`` -> (code, feature index within the map)."""
    rows, cols = grid
    r, c = o // (cols + 1), o % (cols + 1)
    return jnp.where(c == cols, newline, FEATURE), r * cols + jnp.minimum(c, cols - 1)


def _ola_slot(local, first, last, *, body_len, body, begin, trailer, end, end_after_trailer):
    """``[begin if first] body trailer [end if last]`` (``end_after_trailer``) or ``[begin if first]
    body (end if last else trailer)``."""
    o = local - first
    code_body, feat = body(jnp.clip(o, 0, body_len - 1))
    tail = jnp.where(o == body_len, trailer, end) if end_after_trailer else jnp.where(last, end, trailer)
    code = jnp.where(first & (local == 0), begin, jnp.where(o < body_len, code_body, tail))
    return code, feat


def ola_decoder(layout: OlaLayout, modality: str, tokens_per_slot: int) -> Decode:
    """Ola's layout of one modality (module docstring)."""
    if modality == "audio":
        i = SPEECH_EMBEDS.index
        body_len, body = layout.chunk_tokens, (lambda o: (jnp.full_like(o, FEATURE), o))
        kw = dict(begin=i("speech_begin"), trailer=i("speech_newline"), end=i("speech_end"), end_after_trailer=True)
    else:
        i = VISION_EMBEDS.index
        body_len, body = ola_tile_tokens(layout.grid), (lambda o: _grid_body(o, layout.grid, i("newline")))
        kw = dict(begin=i("begin"), trailer=i("sep"), end=i("end"), end_after_trailer=modality == "video")

    def decode(slot, local, first, last, plan=None):
        code, feat = _ola_slot(local, first[slot], last[slot], body_len=body_len, body=body, **kw)
        return code, (slot * tokens_per_slot + feat)[:, None], None

    return decode


def _bilinear_source(d, n_in, n_out):
    """torch ``interpolate(mode='bilinear', align_corners=False)`` along one axis, for output index
    ``d`` of ``n_out`` from ``n_in`` (traced ints): (i0, i1, weight of i1), in float32 as torch's
    ``area_pixel_compute_source_index`` on float tensors."""
    scale = n_in.astype(jnp.float32) / jnp.maximum(n_out, 1).astype(jnp.float32)
    src = jnp.maximum(scale * (d.astype(jnp.float32) + 0.5) - 0.5, 0.0)
    i0 = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, jnp.maximum(n_in - 1, 0))
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, jnp.clip(src - i0, 0.0, 1.0)


def anyres_decoder(layout: AnyResLayout, modality: str, tokens_per_slot: int) -> Decode:
    """LLaVA-OneVision's AnyRes packing of one image, driven by its plan (module docstring)."""
    side = layout.tile_side
    newline = ANYRES_EMBEDS.index("newline")

    def decode(slot, local, first, last, plan):
        _, cols, top, bottom, left, right, rh, rw = (plan[slot, i] for i in range(8))
        base = local < side * side
        o = jnp.maximum(local - side * side, 0)
        r, c = o // (rw + 1), o % (rw + 1)
        y0, y1, ly = _bilinear_source(r, bottom - top, rh)
        x0, x1, lx = _bilinear_source(c, right - left, rw)

        def cell(y, x):  # grid map cell -> row of the flattened tile features (grid tiles follow the base)
            yy, xx = top + y, left + x
            tile = 1 + (yy // side) * cols + xx // side
            return (slot + tile) * tokens_per_slot + (yy % side) * side + xx % side

        idx = jnp.stack([cell(y0, x0), cell(y0, x1), cell(y1, x0), cell(y1, x1)], axis=-1)
        w = jnp.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], axis=-1)
        idx = jnp.where(base[:, None], (slot * tokens_per_slot + local)[:, None], idx)
        w = jnp.where(base[:, None], jnp.asarray([1.0, 0.0, 0.0, 0.0]), w)
        return jnp.where(~base & (c == rw), newline, FEATURE), idx, w

    return decode


def native_plan(grid: jax.Array) -> jax.Array:
    """Per slot of a native layout ``(rows, cols, first patch)`` ``[..., S, 3]`` from the slots' patch grids
    ``[..., S, 2]``: the views' patches fill the patch slots one view after another (``omnijax.batch``)."""
    n = grid[..., 0] * grid[..., 1]
    return jnp.stack([grid[..., 0], grid[..., 1], jnp.cumsum(n, axis=-1) - n], axis=-1)


def ola_native_decoder(layout: OlaNativeLayout, modality: str, tokens_per_slot: int) -> Decode:
    """Ola's layout of views / frames of their own grids (module docstring); ``plan``: ``native_plan``.
    Feature rows: the 4 patches of the token's 2x2 group, row-major (``tokens_per_slot`` is not read: the
    features are the row's patches, found through the plan)."""
    if modality == "audio":
        return ola_decoder(layout, modality, tokens_per_slot)
    i = VISION_EMBEDS.index
    kw = dict(begin=i("begin"), trailer=i("sep"), end=i("end"), end_after_trailer=modality == "video")

    def decode(slot, local, first, last, plan):
        rows, cols, start = plan[slot, 0], plan[slot, 1], plan[slot, 2]
        grid = ola_pooled_grid((rows, cols))

        def body(o):
            code, cell = _grid_body(o, grid, i("newline"))
            r, c = cell // jnp.maximum(grid[1], 1), cell % jnp.maximum(grid[1], 1)
            taps = [start + jnp.minimum(2 * r + a, rows - 1) * cols + jnp.minimum(2 * c + b, cols - 1)
                    for a in (0, 1) for b in (0, 1)]
            return code, jnp.stack(taps, axis=-1)

        code, taps = _ola_slot(local, first[slot], last[slot], body_len=ola_tile_tokens(grid), body=body, **kw)
        return code, taps, None

    return decode


def features_decoder(layout: MediaLayout, modality: str, tokens_per_slot: int) -> Decode:
    """The slot's features in order (Qwen2-Audio)."""

    def decode(slot, local, first, last, plan=None):
        return jnp.full_like(local, FEATURE), (slot * tokens_per_slot + local)[:, None], None

    return decode


# Each layout class's decoder: (layout, modality, tokens_per_slot) -> Decode.
DECODERS: dict[type[MediaLayout], Callable[[MediaLayout, str, int], Decode]] = {
    OlaLayout: ola_decoder, OlaNativeLayout: ola_native_decoder, AnyResLayout: anyres_decoder,
    Qwen2AudioLayout: features_decoder}


def decoder(layout: MediaLayout, modality: str, tokens_per_slot: int) -> Decode:
    """The decoder of ``layout``'s class for one modality whose slots hold ``tokens_per_slot`` features."""
    if type(layout) not in DECODERS:
        raise ValueError(f"layout {layout.name!r} ({type(layout).__name__}) has no decoder: add it to "
                         "omnijax.models.layouts.DECODERS")
    return DECODERS[type(layout)](layout, modality, tokens_per_slot)


def decode_rows(is_placeholder, spans, decode: Decode, *, first, last, plan=None):
    """Each token's code ``[B, T]``, feature rows ``[B, T, K]`` and weights ``[B, T, K]`` (or None) for one
    modality: is_placeholder bool ``[B, T]``; spans int ``[B, S]`` (``slot_spans``); first, last bool
    ``[B, S]``; plan ``[B, S, ...]`` (AnyRes, native) or None. Tokens that are not placeholders get
    meaningless values (``splice`` leaves them alone)."""

    def row(ph, sp, fi, la, pl):
        rank = jnp.cumsum(ph) - 1
        ends = jnp.cumsum(sp)
        slot = jnp.clip(jnp.searchsorted(ends, rank, side="right", method="compare_all"), 0, sp.shape[0] - 1)
        local = rank - (ends[slot] - sp[slot])
        return decode(slot, local, fi, la, pl)

    plan_axis = None if plan is None else 0
    return jax.vmap(row, in_axes=(0, 0, 0, 0, plan_axis))(is_placeholder, spans, first, last, plan)


def place(embeds, is_placeholder, code, media, table=None):
    """embeds ``[B, T, d]`` with each placeholder replaced by its layout vector (``code >= 0``: row ``code``
    of ``table [n, d]``) or its ``media [B, T, d]`` feature."""
    if table is not None:
        media = jnp.where((code >= 0)[..., None], table[jnp.maximum(code, 0)].astype(media.dtype), media)
    return jnp.where(is_placeholder[..., None], media.astype(embeds.dtype), embeds)


def splice(embeds, is_placeholder, spans, features, decode: Decode, table=None, *, first, last, plan=None):
    """Write one modality's media tokens into the text embeddings (``decode_rows``, then ``place``).

    embeds ``[B, T, d]``; is_placeholder bool ``[B, T]``; spans int ``[B, S]`` (``slot_spans``);
    features ``[B, S * tokens_per_slot, d]``; table ``[n, d]`` (the layout's mm_embed vectors) or None;
    first, last bool ``[B, S]``; plan ``[B, S, 8]`` (AnyRes) or None. -> ``[B, T, d]``.
    """
    code, idx, w = decode_rows(is_placeholder, spans, decode, first=first, last=last, plan=plan)
    rows = [jnp.take_along_axis(features, idx[..., k:k + 1], axis=1, mode="clip") for k in range(idx.shape[-1])]
    media = rows[0] if w is None else sum(w[..., k, None].astype(r.dtype) * r for k, r in enumerate(rows))
    return place(embeds, is_placeholder, code, media, table)
