"""The hand-written CPU backwards (attention, DenseGeneral) against plain autodiff of the textbook math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnijax.models.attention import attention, make_attention_mask
from omnijax.models.layers import DenseGeneral


def _reference_attention(q, k, v, mask):
    rep = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(jnp.where(mask[:, None], scores, -1e30), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


@pytest.mark.parametrize("t,causal,packed", [(300, True, True), (64, True, False), (40, False, True)])
def test_attention_values_and_gradients_equal_autodiff(t, causal, packed):
    rng = np.random.RandomState(t)
    b, n, kv, h = 2, 4, 2, 8
    q, k, v = (jnp.asarray(rng.randn(b, t, heads, h), jnp.float32) for heads in (n, kv, kv))
    seg = np.ones((b, t), np.int32)
    if packed:
        seg[0, t // 3:] = 2
        seg[1, t - 7:] = 0
    seg = jnp.asarray(seg)
    slots = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = make_attention_mask(seg, seg, slots, slots, causal)
    valid = (np.asarray(seg) != 0)[:, :, None, None]
    w = jnp.asarray(rng.randn(b, t, n, h), jnp.float32)

    def loss(f):
        return lambda q, k, v: jnp.sum(jnp.where(valid, f(q, k, v), 0.0) * w)

    ours = loss(lambda q, k, v: attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal))
    ref = loss(lambda q, k, v: _reference_attention(q, k, v, mask))
    ours, ref = jax.jit(ours), jax.jit(ref)
    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-5)
    for g, rg in zip(jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(q, k, v),
                     jax.jit(jax.grad(ref, argnums=(0, 1, 2)))(q, k, v)):
        np.testing.assert_allclose(g, rg, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("causal,kv", [(False, 4), (False, 2), (True, 2)])
def test_bf16_attention_gradients_run_on_cpu_and_stay_close_to_f32(causal, kv):
    # The towers' bidirectional attention in bf16 (the 7b presets' numerics) once failed on XLA:CPU.
    rng = np.random.RandomState(kv)
    b, t, n, h = 2, 96, 4, 16
    q, k, v, w = (jnp.asarray(rng.randn(b, t, heads, h), jnp.float32) for heads in (n, kv, kv, n))
    seg = jnp.ones((b, t), jnp.int32)

    def loss(q, k, v):
        out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, packed=False)
        return jnp.sum(out.astype(jnp.float32) * w)

    def grads(dtype):
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*(x.astype(dtype) for x in (q, k, v)))

    for low, ref in zip(grads(jnp.bfloat16), grads(jnp.float32)):
        assert low.dtype == jnp.bfloat16
        err = float(jnp.linalg.norm(low.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
        assert err < 2e-2, err


@pytest.mark.parametrize("n_in,features", [(1, (6,)), (1, (3, 4)), (2, (5,))])
def test_dense_general_gradients_equal_autodiff(n_in, features):
    rng = np.random.RandomState(0)
    in_dims = (3, 4) if n_in == 2 else (12,)
    x = jnp.asarray(rng.randn(2, 7, *in_dims), jnp.float32)
    layer = DenseGeneral(features, ("a",) * n_in + ("b",) * len(features), n_in=n_in)
    params = layer.init(jax.random.key(0), x)
    kernel, bias = params["params"]["kernel"].value, params["params"]["bias"].value
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))

    def ours(x, kernel, bias):
        return jnp.sum(jnp.sin(layer.apply({"params": {"kernel": kernel, "bias": bias}}, x)))

    def ref(x, kernel, bias):
        return jnp.sum(jnp.sin(jax.lax.dot_general(x, kernel, (contract, ((), ()))) + bias))

    np.testing.assert_allclose(ours(x, kernel, bias), ref(x, kernel, bias), rtol=1e-6)
    for g, rg in zip(jax.grad(ours, argnums=(0, 1, 2))(x, kernel, bias), jax.grad(ref, argnums=(0, 1, 2))(x, kernel, bias)):
        np.testing.assert_allclose(g, rg, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t,causal", [(729, False), (150, True)])
def test_cudnn_wrapper_pads_lengths_to_its_multiple(monkeypatch, t, causal):
    """The cuDNN path of the towers (per-row lengths) on row lengths cuDNN's flash backward refuses
    (SigLIP-so400m's 729 patches): the wrapper pads to a multiple of 64 and cuts back. On the CPU, JAX's
    own XLA kernel of ``dot_product_attention`` stands in for cuDNN; values and gradients must equal
    omnijax's reference attention on the valid rows."""
    import omnijax.models.attention as attn

    seen, xla_kernel = [], jax.nn.dot_product_attention

    def stand_in(q, k, v, **kw):
        seen.append((q.shape[1], k.shape[1]))
        assert kw.pop("implementation") == "cudnn"
        return xla_kernel(q, k, v, implementation="xla", **kw)

    monkeypatch.setattr(attn.jax.nn, "dot_product_attention", stand_in)
    rng = np.random.RandomState(t)
    b, n, h = 2, 4, 8
    q, k, v, w = (jnp.asarray(rng.randn(b, t, n, h), jnp.float32) for _ in range(4))
    seg = np.ones((b, t), np.int32)
    seg[1, t - 37:] = 0
    seg = jnp.asarray(seg)
    valid = (np.asarray(seg) != 0)[:, :, None, None]

    def loss(impl):
        return lambda q, k, v: jnp.sum(jnp.where(valid, attention(
            q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, implementation=impl, packed=False), 0) * w)

    np.testing.assert_allclose(jax.jit(loss("cudnn"))(q, k, v), jax.jit(loss("xla"))(q, k, v), rtol=1e-5)
    grads = zip(jax.jit(jax.grad(loss("cudnn"), argnums=(0, 1, 2)))(q, k, v),
                jax.jit(jax.grad(loss("xla"), argnums=(0, 1, 2)))(q, k, v))
    for g, rg in grads:
        np.testing.assert_allclose(np.where(valid, g, 0), np.where(valid, rg, 0), atol=1e-4, rtol=1e-4)
    padded = -(-t // attn.CUDNN_LENGTH_MULTIPLE) * attn.CUDNN_LENGTH_MULTIPLE
    assert set(seen) == {(padded, padded)}


def _layout_stand_in(q, k, v, *, q_seqlen, kv_seqlen, q_offsets, kv_offsets, scale, mask_type):
    """cuDNN's packed layout read back on the CPU: a position attends to the positions of its own
    (lengths, offsets) segment, and to earlier ones only when the mask type is causal."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    t = q.shape[1]
    pos = jnp.arange(t)
    start = q_offsets[:, :-1, None]
    inside = (pos >= start) & (pos < start + q_seqlen[..., None]) & (q_seqlen >= 0)[..., None]  # [b, segment, t]
    which = jnp.argmax(inside, axis=1) + jnp.where(inside.any(axis=1), 0, 10 ** 6)  # [b, t]; -> a stray id
    mask = which[:, :, None] == which[:, None, :]
    if mask_type == cudnn.MaskType.PADDING_CAUSAL:
        mask &= pos[:, None] >= pos[None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation="xla")


@pytest.mark.parametrize("rows", ["packer", "other"])
def test_cudnn_packed_layout_means_the_segment_mask(monkeypatch, rows):
    """Packed causal rows on the cuDNN path go through cuDNN's packed layout (per-segment lengths and
    offsets) when laid out as the packer writes them, through the explicit mask otherwise. On the CPU,
    stand-ins read the layout back as a mask and run JAX's XLA kernel: values and gradients must equal
    omnijax's reference attention on the valid rows either way."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    import omnijax.models.attention as attn

    xla_kernel = jax.nn.dot_product_attention
    monkeypatch.setattr(cudnn, "dot_product_attention", _layout_stand_in)
    monkeypatch.setattr(attn.jax.nn, "dot_product_attention",
                        lambda q, k, v, implementation, **kw: xla_kernel(q, k, v, implementation="xla", **kw))
    b, t, n, kv, h = 3, 48, 4, 2, 8
    if rows == "packer":
        seg = [[1] * 10 + [2] * 20 + [3] * 18, [1] * 30 + [0] * 18, [1] * 5 + [2] * 5 + [3] * 30 + [0] * 8]
    else:  # a segment id reused after another, and padding before a segment
        seg = [[1] * 10 + [2] * 20 + [1] * 18, [0] * 8 + [1] * 40, [1] * 48]
    seg = jnp.asarray(seg, jnp.int32)
    assert bool(attn.packed_layout(seg)[2]) == (rows == "packer")
    rng = np.random.RandomState(0)
    q, w = (jnp.asarray(rng.randn(b, t, n, h), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.randn(b, t, kv, h), jnp.float32) for _ in range(2))
    valid = (np.asarray(seg) != 0)[:, :, None, None]

    def loss(impl):
        return jax.jit(lambda q, k, v: jnp.sum(jnp.where(valid, attention(
            q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, implementation=impl, packed=True), 0) * w))

    np.testing.assert_allclose(loss("cudnn")(q, k, v), loss("xla")(q, k, v), rtol=1e-5)
    grads = zip(jax.jit(jax.grad(loss("cudnn"), argnums=(0, 1, 2)))(q, k, v),
                jax.jit(jax.grad(loss("xla"), argnums=(0, 1, 2)))(q, k, v))
    for g, rg in grads:
        np.testing.assert_allclose(g, rg, atol=1e-4, rtol=1e-4)
