"""TPU slices as the compiler sees them, without a TPU: chips, accelerator names, JAX topologies.

``topology('v5p-64')`` -> the 32 devices of that slice (``jax.experimental.topologies`` with ``libtpu``), on
which ``jax.jit(...).lower(...).compile()`` runs the real TPU compiler (``omnijax.compile``).

Names: ``v5p-N`` and ``v4-N`` count TensorCores (two per chip: v5p-64 is 32 chips), ``v5e-N`` /
``v5litepod-N`` and ``v6e-N`` count chips; or a JAX topology string such as ``v5p:2x4x4``.
"""

from __future__ import annotations

import dataclasses
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_flops: float  # bf16 FLOP/s per chip
    megacore: bool  # two TensorCores acting as one device (accelerator names count cores)


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, True),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, False),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, True),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, False),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}
# Chips -> the slice's shape (Cloud TPU's accelerator types): 3D tori for v4 / v5p, 2D for v5e / v6e.
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


class TopologyError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user gave it
    jax_name: str  # e.g. 'v5p:2x4x4'
    chip: Chip
    devices: tuple


def topology(name: str) -> Topology:
    """The devices of the TPU slice ``name`` (``TopologyError`` naming the accepted forms otherwise)."""
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v5lite|v6e)-(\d+)", name)
    if m:
        kind = _ALIASES.get(m.group(1), m.group(1))
        chip, n = CHIPS[kind], int(m.group(2))
        chips = n // 2 if chip.megacore else n
        shapes = _SHAPES_3D if kind in ("v4", "v5p") else _SHAPES_2D
        if (chip.megacore and n % 2) or chips not in shapes:
            sizes = ", ".join(f"{kind}-{c * 2 if chip.megacore else c}" for c in shapes)
            raise TopologyError(f"unknown slice {name!r}: {kind} slices are {sizes} (or give a JAX topology string "
                                f"such as {kind}:{shapes[min(shapes, key=lambda c: abs(c - chips))]})")
        jax_name = f"{kind}:{shapes[chips]}"
    elif re.fullmatch(r"(v4|v5p|v5e|v6e):\d+(x\d+){1,2}", name):
        jax_name, kind = name, name.split(":")[0]
        chip = CHIPS[kind]
    else:
        raise TopologyError(f"unknown topology {name!r}: give a slice (v5p-64, v5e-256, v6e-64, v4-128) or a JAX "
                            "topology string (v5p:2x4x4, v5e:16x16)")
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - jax always has it
        raise TopologyError(f"this JAX has no jax.experimental.topologies ({e})") from None
    shape = [int(d) for d in jax_name.split(":")[1].split("x")]
    kw = {"chips_per_host_bounds": tuple(min(d, 2) for d in shape) + (1,) * (3 - len(shape))}  # hosts of <= 4 chips
    if chip.megacore:
        kw["chip_config_name"] = "megacore"
    # Only the compiler is used, no TPU: several processes may load libtpu at once (it takes a lock otherwise).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(topology_name=jax_name, platform="tpu", **kw)
    except Exception as e:  # noqa: BLE001 - libtpu missing or the shape unknown to it
        import importlib.util

        hint = "" if importlib.util.find_spec("libtpu") else (
            "; compiling for a TPU on this machine needs libtpu: pip install -e '.[tpu]'")
        raise TopologyError(f"cannot describe the TPU slice {jax_name!r}: {type(e).__name__}: {str(e)[:300]}{hint}") \
            from None
    return Topology(name, jax_name, chip, tuple(desc.devices))
