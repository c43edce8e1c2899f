"""HF <-> omnijax name/shape maps as data.

A map is a list of ``Entry(hf, path, transform)``: ``hf`` is a safetensors key (``{i}`` marks a
layer index: the omnijax parameter stacks those tensors on a leading ``layers`` axis), ``path`` the
``/``-joined omnijax parameter path, ``transform`` one of a handful of named, invertible layout
changes. The importer reads the table HF -> omnijax, the exporter omnijax -> HF; shapes are checked
against the model's abstract parameters in both directions.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform(abc.ABC):
    """An invertible layout change between one HF tensor and one (per-layer) omnijax array."""

    name: str

    @abc.abstractmethod
    def hf_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The HF tensor's shape for an omnijax array of ``shape``."""

    @abc.abstractmethod
    def to_ours(self, t: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """HF tensor -> omnijax array of ``shape``."""

    @abc.abstractmethod
    def to_hf(self, a: np.ndarray) -> np.ndarray:
        """omnijax array -> HF tensor."""


@dataclasses.dataclass(frozen=True)
class Same(Transform):
    """Same layout (norm scales, embeddings, position tables)."""

    name: str = "same"

    def hf_shape(self, shape):
        return tuple(shape)

    def to_ours(self, t, shape):
        return t

    def to_hf(self, a):
        return a


@dataclasses.dataclass(frozen=True)
class Linear(Transform):
    """torch ``Linear.weight [out, in]`` <-> kernel ``[*in_dims, *out_dims]`` (transpose + reshape).

    ``n_in`` is how many leading omnijax dims form ``in``: 1 for ``q_proj [embed, heads, head_dim]``,
    2 for ``o_proj [heads, head_dim, embed]``.
    """

    n_in: int = 1
    name: str = "linear"

    def hf_shape(self, shape):
        return (math.prod(shape[self.n_in:]), math.prod(shape[: self.n_in]))

    def to_ours(self, t, shape):
        return t.T.reshape(shape)

    def to_hf(self, a):
        return a.reshape(math.prod(a.shape[: self.n_in]), -1).T


@dataclasses.dataclass(frozen=True)
class Reshape(Transform):
    """Flat HF vector/matrix <-> split omnijax dims (``q_proj.bias [heads*head_dim] <-> [heads, head_dim]``)."""

    hf_rank: int = 1
    name: str = "reshape"

    def hf_shape(self, shape):
        lead = tuple(shape[: self.hf_rank - 1])
        return lead + (math.prod(shape[self.hf_rank - 1:]),)

    def to_ours(self, t, shape):
        return t.reshape(shape)

    def to_hf(self, a):
        return a.reshape(self.hf_shape(a.shape))


@dataclasses.dataclass(frozen=True)
class Permute(Transform):
    """Axis permutation: torch conv ``(out, in, *k)`` <-> flax conv ``(*k, in, out)``.

    ``perm`` maps omnijax axes to HF axes: ``ours = hf.transpose(perm)``.
    """

    perm: tuple[int, ...] = ()
    name: str = "permute"

    def hf_shape(self, shape):
        out = [0] * len(shape)
        for ours_axis, hf_axis in enumerate(self.perm):
            out[hf_axis] = shape[ours_axis]
        return tuple(out)

    def to_ours(self, t, shape):
        return t.transpose(self.perm)

    def to_hf(self, a):
        return a.transpose(np.argsort(self.perm))


@dataclasses.dataclass(frozen=True)
class LeadingOne(Transform):
    """A HF tensor with a leading axis of 1 (timm's ``pos_embed [1, n, D]``) <-> the array without it."""

    name: str = "leading_one"

    def hf_shape(self, shape):
        return (1, *shape)

    def to_ours(self, t, shape):
        return t.reshape(shape)

    def to_hf(self, a):
        return a[None]


SAME = Same()
LINEAR = Linear(n_in=1)
LINEAR_IN2 = Linear(n_in=2)
BIAS_SPLIT = Reshape(hf_rank=1)
LEADING_ONE = LeadingOne()


def conv_permute(spatial_dims: int) -> Permute:
    """torch ``Conv{n}d.weight (out, in, *k)`` <-> flax ``nn.Conv`` kernel ``(*k, in, out)``."""
    n = spatial_dims
    return Permute(perm=tuple(range(2, 2 + n)) + (1, 0))


@dataclasses.dataclass(frozen=True)
class Entry:
    hf: str
    path: str
    transform: Transform = SAME
    # Further HF keys of the same tensor, for a module the reference model shares (BEATs' relative position
    # table, registered in every layer): export writes each, import reads ``hf`` and counts these as used.
    tied: tuple[str, ...] = ()

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf

    def hf_key(self, layer: int | None = None) -> str:
        return self.hf.format(i=layer) if self.stacked else self.hf

    def tied_keys(self, layer: int | None = None) -> tuple[str, ...]:
        """The ``tied`` keys of one layer (``{i}`` in them marks the layer index, as in ``hf``)."""
        return tuple(k.format(i=layer) if self.stacked else k for k in self.tied)


def prefixed(entries: Sequence[Entry], hf_prefix: str = "", path_prefix: str = "") -> list[Entry]:
    """The same entries under another HF key prefix and omnijax path prefix (sub-models)."""
    return [dataclasses.replace(e, hf=hf_prefix + e.hf, path=path_prefix + e.path,
                                tied=tuple(hf_prefix + k for k in e.tied)) for e in entries]
