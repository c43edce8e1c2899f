"""Connector configurations: which connector a tower feeds the LLM through, with its settings, as small
frozen classes; ``build`` makes the Flax module (``omnijax.models.connectors``), ``tokens`` / ``grid``
count what it gives. ``OmniConfig.vision_connector`` / ``audio_connector`` hold these objects.

Vision (``[views, h, w, C]`` patch features of a view or frame):

- ``MLP(gelu_approximate=False)``, ``'mlp'``: LLaVA's 2-layer GELU MLP per patch (``MLPProjector``;
  tanh GELU when LLaVA's ``projector_hidden_act`` is ``gelu_pytorch_tanh``).
- ``LocalGlobalPool()``, ``'ola'``: Ola's ``OlaMLP``, 2x2 local-global attention pooling
  (``OlaVisionProjector``): a ``g x g`` grid becomes ``ceil(g/2) x ceil(g/2)`` tokens.
- ``AvgPool()``, ``'avg_pool'``: plain 2x2 average pooling then LLaVA's MLP (``AvgPoolProjector``), the same
  ``ceil(g/2) x ceil(g/2)`` tokens with equal weights in each group: the baseline of Ola's pooling.

Audio (``[windows, L, C]`` encoder outputs of a window):

- ``Linear()``, ``'linear'``: Qwen2-Audio's projector, one token per output (``LinearProjector``).
- ``MLP()``, ``'mlp'``: Capybara-OMNI's 1-hidden-layer adapter, one token per output.
- ``FrameStack(k=10, hidden=2048)``, ``'frame_stack'``: Ola's ``EncoderProjectorConcat``, ``k`` stacked
  frames per token (``FrameStackProjector``; ``k`` divides ``L``).
- ``ConvGMLP(stride=4)``, ``'conv_gmlp'``: Baichuan-Omni-1.5's Conv-GMLP, ``ceil(L / stride)`` tokens.
- ``StridePool(stride=2)``, ``'stride_pool'``: average pooling over ``stride`` frames (the last partial
  window dropped) then one Linear (``StridePoolProjector``), ``L // stride`` tokens.

Each class is registered by name (``VISION_CONNECTORS``, ``AUDIO_CONNECTORS``); its settings have flat
names (``FIELDS``: ``frame_stack_k``, ``conv_gmlp_stride``, ...), the form of a stage config's
``c.model`` and of an omni directory's ``config.json``: ``from_fields`` / ``to_fields`` translate.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn

from omnijax.models import connectors

TOWERS = ("vision", "audio")


@dataclasses.dataclass(frozen=True)
class Connector:
    """A connector of one tower: ``name`` (the registry key), ``FIELDS`` (flat setting name -> attribute;
    ``{tower}`` stands for the tower), ``keeps_length`` (one LLM token per encoder output), ``spatial``
    (a vision connector that takes each view's ``[g, g, C]`` patch map rather than ``[g*g, C]``)."""

    name: ClassVar[str] = ""
    FIELDS: ClassVar[dict[str, str]] = {}
    keeps_length: ClassVar[bool] = True
    spatial: ClassVar[bool] = False

    def tokens(self, length: int) -> int:
        """LLM tokens from ``length`` encoder outputs (an audio window)."""
        return length

    def grid(self, rows: int, cols: int) -> tuple[int, int]:
        """LLM tokens ``(rows, cols)`` from a ``rows x cols`` patch grid (an image view or video frame)."""
        return rows, cols

    def check(self, length: int) -> None:
        """``ValueError`` when the connector cannot take ``length`` encoder outputs per window."""

    def build(self, out_dim: int, *, in_axis: str, dtype, param_dtype) -> nn.Module:
        """The Flax module (its parameters are the group ``<tower>_connector``)."""
        raise NotImplementedError

    def to_fields(self, tower: str) -> dict:
        """The flat settings of this connector on ``tower``: ``<tower>_connector`` and its ``FIELDS``."""
        return {f"{tower}_connector": self.name,
                **{key.format(tower=tower): getattr(self, attr) for key, attr in self.FIELDS.items()}}


@dataclasses.dataclass(frozen=True)
class MLP(Connector):
    name: ClassVar[str] = "mlp"
    FIELDS: ClassVar[dict[str, str]] = {"{tower}_gelu_approximate": "gelu_approximate"}

    gelu_approximate: bool = False

    def build(self, out_dim, *, in_axis, dtype, param_dtype):
        return connectors.MLPProjector(out_dim, gelu_approximate=self.gelu_approximate, in_axis=in_axis, dtype=dtype,
                                       param_dtype=param_dtype)


@dataclasses.dataclass(frozen=True)
class _Pooled2x2(Connector):
    """A vision connector on the 2x2-pooled grid (``pooled_grid``): one token per 2x2 neighbourhood of patches."""

    keeps_length: ClassVar[bool] = False
    spatial: ClassVar[bool] = True

    def grid(self, rows, cols):
        return connectors.pooled_grid(rows, cols)


@dataclasses.dataclass(frozen=True)
class LocalGlobalPool(_Pooled2x2):
    name: ClassVar[str] = "ola"

    def build(self, out_dim, *, in_axis, dtype, param_dtype):
        return connectors.OlaVisionProjector(out_dim, in_axis=in_axis, dtype=dtype, param_dtype=param_dtype)


@dataclasses.dataclass(frozen=True)
class AvgPool(_Pooled2x2):
    name: ClassVar[str] = "avg_pool"

    def build(self, out_dim, *, in_axis, dtype, param_dtype):
        return connectors.AvgPoolProjector(out_dim, in_axis=in_axis, dtype=dtype, param_dtype=param_dtype)


@dataclasses.dataclass(frozen=True)
class Linear(Connector):
    name: ClassVar[str] = "linear"

    def build(self, out_dim, *, in_axis, dtype, param_dtype):
        return connectors.LinearProjector(out_dim, in_axis=in_axis, dtype=dtype, param_dtype=param_dtype)


@dataclasses.dataclass(frozen=True)
class FrameStack(Connector):
    name: ClassVar[str] = "frame_stack"
    FIELDS: ClassVar[dict[str, str]] = {"frame_stack_k": "k", "frame_stack_hidden": "hidden"}
    keeps_length: ClassVar[bool] = False

    k: int = 10  # Ola: 1500 Whisper frames per 30 s -> 150 tokens
    hidden: int = 2048

    def tokens(self, length):
        return connectors.stacked_length(length, self.k)

    def check(self, length):
        if length % self.k:
            raise ValueError(f"frame_stack_k={self.k} must divide the encoder's {length} outputs per window")

    def build(self, out_dim, *, in_axis, dtype, param_dtype):
        return connectors.FrameStackProjector(out_dim, k=self.k, hidden_dim=self.hidden, in_axis=in_axis, dtype=dtype,
                                              param_dtype=param_dtype)


@dataclasses.dataclass(frozen=True)
class ConvGMLP(Connector):
    name: ClassVar[str] = "conv_gmlp"
    FIELDS: ClassVar[dict[str, str]] = {"conv_gmlp_stride": "stride"}
    keeps_length: ClassVar[bool] = False

    stride: int = 4  # Baichuan: 50 Hz -> 12.5 Hz

    def tokens(self, length):
        return connectors.strided_length(length, self.stride)

    def build(self, out_dim, *, in_axis, dtype, param_dtype):
        return connectors.ConvGMLP(self.stride, out_dim=out_dim, in_axis=in_axis, dtype=dtype, param_dtype=param_dtype)


@dataclasses.dataclass(frozen=True)
class StridePool(Connector):
    name: ClassVar[str] = "stride_pool"
    FIELDS: ClassVar[dict[str, str]] = {"stride_pool_stride": "stride"}
    keeps_length: ClassVar[bool] = False

    stride: int = 2

    def tokens(self, length):
        return length // self.stride

    def check(self, length):
        if not 1 <= self.stride <= length:
            raise ValueError(f"stride_pool_stride={self.stride} must be in [1, {length}] (the encoder's outputs "
                             "per window)")

    def build(self, out_dim, *, in_axis, dtype, param_dtype):
        return connectors.StridePoolProjector(out_dim, stride=self.stride, in_axis=in_axis, dtype=dtype,
                                              param_dtype=param_dtype)


VISION_CONNECTORS: dict[str, type[Connector]] = {c.name: c for c in (MLP, LocalGlobalPool, AvgPool)}
AUDIO_CONNECTORS: dict[str, type[Connector]] = {c.name: c for c in (Linear, MLP, FrameStack, ConvGMLP, StridePool)}
_REGISTRY = {"vision": VISION_CONNECTORS, "audio": AUDIO_CONNECTORS}


def from_fields(tower: str, fields: dict) -> Connector | None:
    """The connector ``fields[f'{tower}_connector']`` names (None for none), with its settings from ``fields``
    (absent ones keep their defaults; other keys are ignored)."""
    name = fields.get(f"{tower}_connector")
    if name is None:
        return None
    if name not in _REGISTRY[tower]:
        raise ValueError(f"{tower}_connector {name!r} is not one of {tuple(_REGISTRY[tower])}")
    cls = _REGISTRY[tower][name]
    return cls(**{attr: fields[key.format(tower=tower)] for key, attr in cls.FIELDS.items()
                  if key.format(tower=tower) in fields})


def field_names() -> set[str]:
    """Every flat connector setting (``<tower>_connector`` and the classes' ``FIELDS``)."""
    names = {f"{t}_connector" for t in TOWERS}
    for tower, registry in _REGISTRY.items():
        names |= {key.format(tower=tower) for cls in registry.values() for key in cls.FIELDS}
    return names


def check_connector(tower: str, connector) -> None:
    """``ValueError`` unless ``connector`` is None or one of ``tower``'s registered connector classes."""
    if connector is not None and type(connector) not in _REGISTRY[tower].values():
        names = ", ".join(c.__name__ for c in _REGISTRY[tower].values())
        raise ValueError(f"{tower}_connector {connector!r} is not a {tower} connector ({names}); a stage config "
                         f"names it by string ({tuple(_REGISTRY[tower])}), OmniConfig takes the object")

