"""One attention interface, three implementations chosen by config.

`attention(q, k, v, ...)` computes softmax(q k^T * scale + mask) v with grouped-query heads, causal
masking and segment ids (packed sequences: a query attends only to keys of its own segment; segment
id 0 is padding). Implementations:

- ``xla``: einsums, softmax in float32, a hand-written backward and causal query blocks (see
  ``xla_attention``). The reference; runs everywhere (CPU tests, CPU training).
- ``cudnn``: cuDNN flash attention through ``jax.nn.dot_product_attention(implementation='cudnn')``.
  Without segment ids (or with a single segment per row) it runs as pure causal flash attention with
  per-row valid lengths; packed causal rows as the packer writes them use cuDNN's packed layout
  (per-segment lengths and offsets, ``packed_layout``), other packed rows and KV-cache decoding an
  explicit mask.
- ``splash``: Pallas splash attention for TPU (``make_splash_mha`` with a causal mask and native
  segment ids), vmapped over the rows and run under ``shard_map`` on a mesh (``splash_attention``).
  ``interpret=True`` runs the kernel in the Pallas interpreter, which is how it is checked on CPU.

Configs may say ``'auto'``: the platform's implementation (``resolve_implementation``).

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
AUTO = "auto"  # a config setting: the implementation of the platform the model runs on (``resolve_implementation``)


def resolve_implementation(name: str, platform: str | None = None, *, causal: bool = True,
                           dtype: str = "bfloat16") -> str:
    """``'auto'`` -> the implementation for ``platform`` (default: JAX's default backend): on GPU ``cudnn`` for
    bfloat16 / float16 compute (cuDNN's flash attention takes no float32), on TPU ``splash`` for causal
    attention and ``xla`` for the bidirectional encoders (splash here is causal only), ``xla`` otherwise. Any
    other name is returned as it is."""
    if name != AUTO:
        return name
    platform = platform or jax.default_backend()
    if platform in ("gpu", "cuda", "rocm"):
        return "cudnn" if dtype in ("bfloat16", "float16") else "xla"
    return "splash" if platform == "tpu" and causal else "xla"


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


# Query rows per block when the mask is causal over aligned slots (see ``xla_attention``).
CAUSAL_QUERY_BLOCK = 128


def _query_blocks(q_len: int, kv_len: int, causal_block: int | None) -> tuple[tuple[int, int, int], ...]:
    """Static ``(q_start, q_end, kv_end)`` per block of query rows."""
    if not causal_block or causal_block >= q_len:
        return ((0, q_len, kv_len),)
    return tuple((s, e, e) for s in range(0, q_len, causal_block) for e in [min(s + causal_block, q_len)])


def _dot_f32(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``einsum`` accumulated in float32. XLA:CPU's dot runtime has no bf16 x bf16 -> f32 for every
    layout (the dk/dv products of bidirectional attention fail with "Unsupported element type for
    DotThunk"), so on CPU low-precision operands are upcast first: exact, and the same accumulation."""
    if jax.default_backend() == "cpu" and a.dtype != jnp.float32:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _grouped_forward(qg, kg, vg, mask, scale, blocks):
    """qg ``[b, kv, rep, t, h]``, kg/vg ``[b, kv, s, h]`` -> (out ``[b, kv, rep, t, h]``, f32 probs per block)."""
    outs, probs = [], []
    for qs, qe, ke in blocks:
        scores = _dot_f32("bkrth,bksh->bkrts", qg[:, :, :, qs:qe], kg[:, :, :ke]) * scale
        p = jax.nn.softmax(jnp.where(mask[:, None, None, qs:qe, :ke], scores, _MASK_VALUE), axis=-1)
        outs.append(jnp.einsum("bkrts,bksh->bkrth", p.astype(vg.dtype), vg[:, :, :ke]))
        probs.append(p)
    return jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0], probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _grouped_attention(qg, kg, vg, mask, scale, blocks):
    return _grouped_forward(qg, kg, vg, mask, scale, blocks)[0]


def _grouped_attention_fwd(qg, kg, vg, mask, scale, blocks):
    out, probs = _grouped_forward(qg, kg, vg, mask, scale, blocks)
    return out, (qg, kg, vg, mask, probs)


def _grouped_attention_bwd(scale, blocks, res, dout):
    # Every product keeps the big [rows, keys] operand row-major with its contraction where XLA:CPU's
    # matmul library takes it; dk and dv come out as [h, keys] and are transposed (small) at the end.
    qg, kg, vg, mask, probs = res
    f32 = jnp.float32
    dq = []
    dkt = jnp.zeros(kg.shape[:2] + kg.shape[3:] + kg.shape[2:3], f32)  # [b, kv, h, s]
    dvt = jnp.zeros_like(dkt)
    for (qs, qe, ke), p in zip(blocks, probs):
        q_i, do_i, m_i = qg[:, :, :, qs:qe], dout[:, :, :, qs:qe], mask[:, None, None, qs:qe, :ke]
        dp = _dot_f32("bkrth,bksh->bkrts", do_i, vg[:, :, :ke])
        ds = jnp.where(m_i, p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)), 0.0) * scale
        dq.append(_dot_f32("bkrts,bksh->bkrth", ds.astype(kg.dtype), kg[:, :, :ke]))
        dk_i = _dot_f32("bkrth,bkrts->bkhs", q_i, ds.astype(qg.dtype))
        dv_i = _dot_f32("bkrth,bkrts->bkhs", do_i, p.astype(vg.dtype))
        dkt, dvt = dkt.at[..., :ke].add(dk_i), dvt.at[..., :ke].add(dv_i)
    dq = jnp.concatenate(dq, axis=3) if len(dq) > 1 else dq[0]
    return (dq.astype(qg.dtype), jnp.swapaxes(dkt, 2, 3).astype(kg.dtype),
            jnp.swapaxes(dvt, 2, 3).astype(vg.dtype), None)


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


def xla_attention(q, k, v, mask, scale, causal_block: int | None = None):
    """Reference attention. ``mask`` is boolean ``[batch, q_len, kv_len]``.

    The query heads of one kv head are laid out ``[batch, kv_heads, rep, q_len, head_dim]``, so each
    product is one batched matmul over (batch, kv head) with ``rep * q_len`` rows, and the backward
    is written out (``custom_vjp``) so that it keeps that layout instead of autodiff's transposed
    copies of the ``[q_len, kv_len]`` probabilities. Softmax in float32.

    ``causal_block``: only when ``mask`` implies causality over aligned slots (query ``i`` sees at
    most keys ``<= i``, ``q_len == kv_len``): query rows go in blocks of this many, each against the
    keys up to its own end, which skips the masked upper triangle. Rows that see at least one key are
    unchanged; a row that sees none (a padding query) averages ``v`` over its block's keys instead
    of over all keys — such rows carry no information either way.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    rep = n // kv_heads
    qg = q.reshape(b, t, kv_heads, rep, h).transpose(0, 2, 3, 1, 4)
    kg, vg = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    blocks = _query_blocks(t, k.shape[1], causal_block)
    out = _grouped_attention(qg, kg, vg, mask, scale, blocks)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


CUDNN_LENGTH_MULTIPLE = 64


# The segments a packed row may hold in cuDNN's packed layout by default; rows with more take the explicit
# mask. cuDNN's backward takes float32 workspace for every segment slot of every row: at 2 rows x 4096
# tokens x 28 heads of 128 on an H100, 1.1 GiB with 4 segments a row, 3.8 GiB with 16, 14.7 GiB with 64
# (benchmarks/RESULTS.md section 6.3). LLMConfig.cudnn_max_segments sets it per model.
CUDNN_MAX_SEGMENTS = 16


def packed_layout(segment_ids: jax.Array, max_segments: int | None = None):
    """Segment ids ``[b, t]`` -> cuDNN's packed layout ``(lengths [b, m], offsets [b, m + 1], ok)``,
    ``m = max_segments + 1``: per row the length and first position of each segment, -1 after the last.
    The padding after a row's last segment (id 0) is one more segment, so that every position has an
    output. ``ok`` (a scalar) says whether every row is laid out as the packer writes it -- segments
    numbered 1, 2, ... from the row's start, each one contiguous run, padding only at the end -- and holds
    at most ``max_segments`` (default ``CUDNN_MAX_SEGMENTS``); the layout means nothing otherwise."""
    max_segments = CUDNN_MAX_SEGMENTS if max_segments is None else max_segments
    seg = segment_ids.astype(jnp.int32)
    prev, nxt = seg[:, :-1], seg[:, 1:]
    # A position in a segment follows one of the same segment or of the one before; padding follows anything.
    ok = jnp.all((nxt == 0) | ((prev != 0) & ((nxt == prev) | (nxt == prev + 1))))
    ok &= jnp.all((seg[:, 0] == 0) | (seg[:, 0] == 1)) & jnp.all(jnp.max(seg, axis=1) <= max_segments)
    ids = jnp.where(seg == 0, jnp.max(seg, axis=1, keepdims=True) + 1, seg)
    m = max_segments + 1
    counts = jax.vmap(lambda r: jnp.bincount(r, length=m + 1))(jnp.minimum(ids, m))[:, 1:]
    starts = jnp.cumsum(counts, axis=1) - counts
    lengths = jnp.where(counts > 0, counts, -1)
    offsets = jnp.pad(jnp.where(counts > 0, starts, -1), ((0, 0), (0, 1)), constant_values=-1)
    return lengths, offsets, ok


def cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, mask, scale, causal: bool, use_mask: bool,
                    packed_self: bool = False, max_segments: int | None = None):
    """cuDNN flash attention (GPU only). Unpacked rows use (causal) flash with per-row lengths; packed
    causal self-attention rows laid out as the packer writes them use cuDNN's packed layout (per-segment
    lengths and offsets, ``packed_layout``); other packed rows and KV-cache decoding pass the explicit mask
    (cuDNN turns it into a bias and skips no masked-out block)."""
    def with_mask():
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask[:, None, :, :], scale=scale, implementation="cudnn"
        )

    if packed_self:
        from jax._src.cudnn import fused_attention_stablehlo as cudnn

        lengths, offsets, ok = packed_layout(q_segment_ids, max_segments)
        ok &= jnp.all(q_segment_ids == kv_segment_ids)

        def with_layout():
            return cudnn.dot_product_attention(
                q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets, scale=scale,
                mask_type=cudnn.MaskType.PADDING_CAUSAL,
            )

        return jax.lax.cond(ok, with_layout, with_mask)
    if use_mask:
        return with_mask()
    # Rows hold one sequence right-padded with segment id 0: (causal +) valid lengths is exact. cuDNN's
    # flash backward takes lengths in multiples of 64 only (SigLIP-so400m's 729 patches, Whisper's 1500
    # frames are not): pad the rows at the end, where the lengths mask them, and cut the output back.
    q_len = jnp.sum(q_segment_ids != 0, axis=-1).astype(jnp.int32)
    kv_len = jnp.sum(kv_segment_ids != 0, axis=-1).astype(jnp.int32)
    t = q.shape[1]
    q = jnp.pad(q, ((0, 0), (0, -t % CUDNN_LENGTH_MULTIPLE), (0, 0), (0, 0)))
    k, v = (jnp.pad(x, ((0, 0), (0, -x.shape[1] % CUDNN_LENGTH_MULTIPLE), (0, 0), (0, 0))) for x in (k, v))
    out = jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=causal, query_seq_lengths=q_len,
        key_value_seq_lengths=kv_len, implementation="cudnn",
    )
    return out[:, :t]


# Splash attention's blocks are multiples of the TPU's 128 lanes: rows are padded to a multiple of this.
SPLASH_LANES = 128
SPLASH_BLOCK = 512  # the largest block tried (queries and keys alike)


def splash_block(length: int, block: int = SPLASH_BLOCK) -> int:
    """The block splash uses for rows of ``length`` tokens (a multiple of ``SPLASH_LANES``): the largest of
    ``block``, ``block / 2``, ... (at least ``SPLASH_LANES``) that divides it."""
    if length % SPLASH_LANES or block % SPLASH_LANES:
        raise ValueError(f"splash attention: length {length} and block {block} must be multiples of {SPLASH_LANES}")
    while length % block:
        block //= 2
    return max(block, SPLASH_LANES)


def _splash_kernel(heads: int, length: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
    b = splash_block(length, block)
    sizes = sk.BlockSizes(block_q=b, block_kv_compute=b, block_kv=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def _splash_partition(heads: int):
    """``(mesh, batch axes, head axis)`` of the activations under the ambient mesh and logical rules
    (``jax.set_mesh`` + ``nn.logical_axis_rules``), or None outside a mesh or on a single device."""
    import flax.linen as nn

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    spec = nn.logical_to_mesh_axes(("activation_batch", "activation_length", "activation_heads", None))
    batch, length, head = (tuple(spec) + (None,) * 4)[:3]
    if length is not None:
        raise ValueError(f"splash attention: the sequence axis is sharded over {length!r}; splash takes whole rows")
    if head is not None and heads % mesh.shape[head]:
        head = None  # heads the tensor axis does not divide: every device computes all of them
    return mesh, batch, head


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, block: int = SPLASH_BLOCK,
                     interpret: bool = False):
    """Pallas splash attention (TPU; ``interpret=True`` anywhere). Causal, segment ids native.

    Rows are padded with segment id 0 to a multiple of ``SPLASH_LANES`` (cut off again after), so every
    length works; on a mesh the kernel runs under ``shard_map`` (a Mosaic kernel cannot be partitioned
    automatically): batch rows over the batch axes of the logical rules, heads over their head axis. When
    that axis does not divide the kv heads, k and v are repeated to one per query head first."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, n, h = q.shape
    pad = -t % SPLASH_LANES
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
        q_segment_ids, kv_segment_ids = (jnp.pad(s, ((0, 0), (0, pad))) for s in (q_segment_ids, kv_segment_ids))
    length = t + pad
    q = q * jnp.asarray(scale, q.dtype)  # splash does not scale: folded into q
    part = _splash_partition(n)
    if part is not None and part[2] is not None and k.shape[2] % part[0].shape[part[2]]:
        k, v = (jnp.repeat(x, n // k.shape[2], axis=2) for x in (k, v))

    def local(q, k, v, q_seg, kv_seg):
        # Splash wants [heads, len, head_dim] per example.
        kernel = _splash_kernel(q.shape[2], length, block, interpret)
        segs = sk.SegmentIds(q=q_seg.astype(jnp.int32), kv=kv_seg.astype(jnp.int32))
        out = jax.vmap(kernel)(jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), segment_ids=segs)
        return jnp.swapaxes(out, 1, 2)

    if part is None:
        out = local(q, k, v, q_segment_ids, kv_segment_ids)
    else:
        mesh, batch, head = part
        P = jax.sharding.PartitionSpec
        heads, rows = P(batch, None, head, None), P(batch, None)
        out = jax.shard_map(local, mesh=mesh, in_specs=(heads, heads, heads, rows, rows), out_specs=heads,
                            check_vma=False)(q, k, v, q_segment_ids, kv_segment_ids)
    return out[:, :t]


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
    max_segments: int | None = None,
    splash_interpret: bool = False,
) -> jax.Array:
    """Grouped-query attention with causal + segment masking (see module docstring for shapes).

    Args:
      q_segment_ids, kv_segment_ids: int ``[batch, q_len]`` / ``[batch, kv_len]``; 0 marks padding.
      q_slots, kv_slots: int ``[batch, len]`` token indices for causality (default ``arange``);
        differ from ``arange`` only when decoding against a KV cache.
      packed: whether rows may hold several segments (selects the cuDNN code path).
      max_segments: cuDNN, packed rows: the most segments a row may hold in cuDNN's packed layout
        (default ``CUDNN_MAX_SEGMENTS``); rows with more take the explicit mask.
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
    aligned = q_slots is None and kv_slots is None and t == k.shape[1]
    if q_slots is None:
        q_slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    if kv_slots is None:
        kv_slots = jnp.broadcast_to(jnp.arange(k.shape[1]), (b, k.shape[1]))
    mask = make_attention_mask(q_segment_ids, kv_segment_ids, q_slots, kv_slots, causal)
    if implementation == "cudnn":
        use_mask = packed or q_slots_given
        return cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, mask, scale, causal, use_mask,
                               packed_self=packed and aligned and causal, max_segments=max_segments)
    return xla_attention(q, k, v, mask, scale, CAUSAL_QUERY_BLOCK if causal and aligned else None)
