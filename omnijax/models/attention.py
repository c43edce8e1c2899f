"""One attention interface, three implementations chosen by config.

`attention(q, k, v, ...)` computes softmax(q k^T * scale + mask) v with grouped-query heads, causal
masking and segment ids (packed sequences: a query attends only to keys of its own segment; segment
id 0 is padding). Implementations:

- ``xla``: plain einsums, softmax in float32. The reference; runs everywhere (CPU tests).
- ``cudnn``: cuDNN flash attention through ``jax.nn.dot_product_attention(implementation='cudnn')``.
  Without segment ids (or with a single segment per row) it runs as pure causal flash attention with
  per-row valid lengths; packed rows pass an explicit boolean mask.
- ``splash``: Pallas splash attention for TPU (``make_splash_mha`` with a causal mask and native
  segment ids), vmapped over the batch. ``interpret=True`` runs the kernel in the Pallas interpreter,
  which is how it is checked on CPU.

Shapes: q ``[batch, q_len, heads, head_dim]``, k/v ``[batch, kv_len, kv_heads, head_dim]`` with
``heads % kv_heads == 0`` (kv head j serves query heads ``j*rep ... (j+1)*rep-1``, transformers'
``repeat_kv``); output ``[batch, q_len, heads, head_dim]``.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Implementation = Literal["xla", "cudnn", "splash"]
IMPLEMENTATIONS = ("xla", "cudnn", "splash")

# Large finite negative: fully masked rows (padding queries) stay finite instead of NaN.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def make_attention_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_slots: jax.Array,
    kv_slots: jax.Array,
    causal: bool,
) -> jax.Array:
    """Boolean mask ``[batch, q_len, kv_len]``: same non-zero segment and, if causal, kv slot <= q slot.

    ``*_slots`` are the indices of tokens in the row (or in the KV cache), used for causality;
    they are not the RoPE positions, which restart per packed segment.
    """
    mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (kv_segment_ids[:, None, :] != 0)
    if causal:
        mask &= kv_slots[:, None, :] <= q_slots[:, :, None]
    return mask


def xla_attention(q, k, v, mask, scale):
    """Reference attention. ``mask`` is boolean ``[batch, q_len, kv_len]``."""
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    rep = n // kv_heads
    q = q.reshape(b, t, kv_heads, rep, h)
    scores = jnp.einsum("btkrh,bskh->bkrts", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkrts,bskh->btkrh", probs, v)
    return out.reshape(b, t, n, h)


def cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, mask, scale, causal: bool, use_mask: bool):
    """cuDNN flash attention (GPU only). Unpacked rows use (causal) flash with per-row lengths;
    packed rows and KV-cache decoding pass the explicit mask (cuDNN turns it into a bias)."""
    if use_mask:
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None, :, :], scale=scale, implementation="cudnn"
        )
    # Rows hold one sequence right-padded with segment id 0: (causal +) valid lengths is exact.
    q_len = jnp.sum(q_segment_ids != 0, axis=-1).astype(jnp.int32)
    kv_len = jnp.sum(kv_segment_ids != 0, axis=-1).astype(jnp.int32)
    return jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=causal, query_seq_lengths=q_len,
        key_value_seq_lengths=kv_len, implementation="cudnn",
    )


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, q_len: int, kv_len: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.CausalMask((q_len, kv_len)) for _ in range(heads)])
    sizes = sk.BlockSizes(
        block_q=min(block, q_len), block_kv_compute=min(block, kv_len), block_kv=min(block, kv_len),
        block_q_dkv=min(block, q_len), block_kv_dkv=min(block, kv_len),
        block_kv_dkv_compute=min(block, kv_len), block_q_dq=min(block, q_len), block_kv_dq=min(block, kv_len),
    )
    return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, block: int = 512, interpret: bool = False):
    """Pallas splash attention (TPU; ``interpret=True`` anywhere). Causal, segment ids native."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, n, h = q.shape
    kernel = _splash_kernel(n, t, k.shape[1], block, interpret)
    # Splash wants [heads, len, head_dim] per example; query scaling folded into q.
    qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)
    kh = jnp.swapaxes(k, 1, 2)
    vh = jnp.swapaxes(v, 1, 2)
    segs = sk.SegmentIds(q=q_segment_ids.astype(jnp.int32), kv=kv_segment_ids.astype(jnp.int32))
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=segs)
    return jnp.swapaxes(out, 1, 2)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_slots: jax.Array | None = None,
    kv_slots: jax.Array | None = None,
    causal: bool = True,
    implementation: Implementation = "xla",
    packed: bool = True,
    splash_interpret: bool = False,
) -> jax.Array:
    """Grouped-query attention with causal + segment masking (see module docstring for shapes).

    Args:
      q_segment_ids, kv_segment_ids: int ``[batch, q_len]`` / ``[batch, kv_len]``; 0 marks padding.
      q_slots, kv_slots: int ``[batch, len]`` token indices for causality (default ``arange``);
        differ from ``arange`` only when decoding against a KV cache.
      packed: whether rows may hold several segments (selects the cuDNN code path).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
    b, t, n, h = q.shape
    if n % k.shape[2]:
        raise ValueError(f"query heads ({n}) must be a multiple of kv heads ({k.shape[2]})")
    scale = h ** -0.5
    if implementation == "splash":
        if q_slots is not None or kv_slots is not None or not causal:
            raise ValueError("splash attention supports causal self-attention over a full row only (no KV cache)")
        return splash_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, interpret=splash_interpret)
    q_slots_given = q_slots is not None
    if q_slots is None:
        q_slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    if kv_slots is None:
        kv_slots = jnp.broadcast_to(jnp.arange(k.shape[1]), (b, k.shape[1]))
    mask = make_attention_mask(q_segment_ids, kv_segment_ids, q_slots, kv_slots, causal)
    if implementation == "cudnn":
        use_mask = packed or q_slots_given
        return cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, mask, scale, causal, use_mask)
    return xla_attention(q, k, v, mask, scale)
