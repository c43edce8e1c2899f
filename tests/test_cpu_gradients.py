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
    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-5)
    for g, rg in zip(jax.grad(ours, argnums=(0, 1, 2))(q, k, v), jax.grad(ref, argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g, rg, atol=1e-4, rtol=1e-4)


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
