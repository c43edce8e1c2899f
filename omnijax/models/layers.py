"""Small building blocks shared by the towers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


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
        contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
        if self.use_bias:
            bias_axes = tuple(self.kernel_axes)[-len(features):]
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
                              features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
