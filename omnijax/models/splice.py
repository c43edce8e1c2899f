"""Scatter encoder outputs into text embeddings at placeholder positions (static shapes).

The data pipeline expands each media placeholder into exactly as many placeholder tokens as the
encoder produces for that item, so the k-th placeholder token of a row takes the k-th media token of
that row: a cumulative-sum index and ``jnp.where`` (MaxText's ``merge_mm_embeddings`` pattern),
vmapped over the batch. Equal to transformers' ``masked_scatter`` when each row's media tokens are
listed in placeholder order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def merge_embeddings(text_embeds: jax.Array, media_embeds: jax.Array, is_placeholder: jax.Array) -> jax.Array:
    """``text_embeds [b, t, d]``, ``media_embeds [b, m, d]``, ``is_placeholder bool [b, t]`` -> ``[b, t, d]``.

    Row i's placeholders take ``media_embeds[i, :n_i]`` in order (``n_i`` = its placeholder count,
    at most ``m``; the caller checks counts before tracing).
    """

    def one(text, media, mask):
        idx = jnp.clip(jnp.cumsum(mask) - 1, 0, media.shape[0] - 1)
        return jnp.where(mask[:, None], media[idx].astype(text.dtype), text)

    return jax.vmap(one)(text_embeds, media_embeds, is_placeholder)


def pack_valid(embeds: jax.Array, counts: jax.Array) -> jax.Array:
    """The first ``counts[i]`` outputs of every item, concatenated in item order (static shape).

    ``embeds [n, t, d]``, ``counts [n]`` -> ``[n * t, d]``: row ``j < sum(counts)`` is the ``j``-th
    valid output; the rows after carry no meaning.
    """
    n, t, _ = embeds.shape
    ends = jnp.cumsum(counts)
    slot = jnp.arange(n * t)
    item = jnp.minimum(jnp.searchsorted(ends, slot, side="right"), n - 1)
    pos = jnp.clip(slot - (ends[item] - counts[item]), 0, t - 1)
    return embeds[item, pos]
