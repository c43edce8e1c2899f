"""Small building blocks shared by the towers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _contract(x, kernel, n_in: int):
    return lax.dot_general(x, kernel, ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _contract_cpu(x, kernel, n_in: int):
    return _contract(x, kernel, n_in)


def _contract_cpu_fwd(x, kernel, n_in):
    return _contract(x, kernel, n_in), (x, kernel)


def _contract_cpu_bwd(n_in, res, dy):
    x, kernel = res
    lead = tuple(range(x.ndim - n_in))  # the token axes, shared by x and dy
    n_out = kernel.ndim - n_in
    dx = lax.dot_general(dy, kernel, ((tuple(range(len(lead), dy.ndim)), tuple(range(n_in, kernel.ndim))), ((), ())))
    if x.size <= dy.size + kernel.size:  # dk = x^T dy, transposing x
        xt = lax.optimization_barrier(jnp.transpose(x, tuple(range(len(lead), x.ndim)) + lead))
        dk = lax.dot_general(xt, dy, ((tuple(range(n_in, xt.ndim)), lead), ((), ())))
    else:  # dk = (dy^T x)^T, transposing dy and the (smaller) result
        dyt = lax.optimization_barrier(jnp.transpose(dy, tuple(range(len(lead), dy.ndim)) + lead))
        dkt = lax.dot_general(dyt, x, ((tuple(range(n_out, dyt.ndim)), lead), ((), ())))
        dk = jnp.transpose(dkt, tuple(range(n_out, n_out + n_in)) + tuple(range(n_out)))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_contract_cpu.defvjp(_contract_cpu_fwd, _contract_cpu_bwd)


def contract(x: jax.Array, kernel: jax.Array, n_in: int = 1) -> jax.Array:
    """``x [..., *in] . kernel [*in, *out] -> [..., *out]``: ``lax.dot_general`` over the last
    ``n_in`` axes of ``x`` and the first ``n_in`` of ``kernel``.

    On the CPU backend the backward is written out: XLA:CPU's matmul library (YNNPACK) takes only a
    row-major left operand contracted on its last axis, and autodiff's kernel gradient ``x^T dy``
    contracts the leading token axes of both, so XLA falls back to a slower matmul and writes the
    wider of the two gradients transposed, inside the elementwise fusion that produces it. Here the
    smaller of ``x`` and ``dy`` is transposed explicitly, behind an optimization barrier so XLA does
    not fold it back. Same forward; same gradients up to float summation order. Other backends
    handle transposed operands natively and get plain autodiff.
    """
    if jax.default_backend() == "cpu":
        return _contract_cpu(x, kernel, n_in)
    return _contract(x, kernel, n_in)


class DenseGeneral(nn.Module):
    """Linear map over the last ``n_in`` axes to ``features`` (a tuple), with logical axis names.

    ``[..., *in_dims] -> [..., *features]``; kernel ``[*in_dims, *features]`` named ``kernel_axes``,
    bias ``[*features]`` named by the last ``len(features)`` kernel axes. (flax's ``DenseGeneral``
    initialises a flattened kernel, whose logical names do not fit its rank under a mesh.)
    """

    features: Sequence[int]
    kernel_axes: Sequence[str]
    n_in: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x):
        features = tuple(self.features)
        in_dims = x.shape[x.ndim - self.n_in:]
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.kernel_axes)),
                            in_dims + features, self.param_dtype)
        y = contract(x.astype(self.dtype), kernel.astype(self.dtype), self.n_in)
        if self.use_bias:
            bias_axes = tuple(self.kernel_axes)[-len(features):]
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                              features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
