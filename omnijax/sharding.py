"""Device mesh, logical-axis rules and multi-host start-up.

Every parameter and main activation carries logical axis names (``vocab, embed, mlp, heads, ...``,
``activation_batch, activation_length, ...``). A rules table maps them to the mesh axes ``data``,
``fsdp`` and ``tensor``; choosing a preset (``dp``, ``fsdp``, ``fsdp_tp``) chooses the parallelism
with no model change.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

_BATCH = ("activation_batch", ("data", "fsdp"))

# Each preset is a complete rules table: (logical name, mesh axis | tuple of axes | None).
RULES: dict[str, tuple[tuple[str, Any], ...]] = {
    # Data parallel: parameters replicated, batch split over every device.
    "dp": (_BATCH,),
    # Fully sharded data parallel: parameters split on their embed (or vocab) axis over `fsdp`.
    "fsdp": (
        _BATCH,
        ("embed", "fsdp"),
        ("vision_embed", "fsdp"),
        ("audio_embed", "fsdp"),
    ),
    # FSDP + tensor parallel (Megatron layout): heads, mlp and vocab on `tensor`, embed on `fsdp`.
    "fsdp_tp": (
        _BATCH,
        ("embed", "fsdp"),
        ("vision_embed", "fsdp"),
        ("audio_embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("activation_heads", "tensor"),
        ("activation_kv_heads", "tensor"),
        ("activation_mlp", "tensor"),
        ("activation_vocab", "tensor"),
    ),
}


def logical_rules(preset: str) -> tuple[tuple[str, Any], ...]:
    if preset not in RULES:
        raise ValueError(f"unknown logical-axis rules preset {preset!r}; presets are: {', '.join(RULES)}")
    return RULES[preset]


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over ``data x fsdp x tensor``. A value of -1 takes the remaining devices.

    ``make_mesh({'fsdp': 2, 'tensor': 4})`` on 8 devices gives a 1x2x4 mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(shape or {"data": -1})
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axis {unknown}; mesh axes are {MESH_AXES}")
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"mesh {shape}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {shape}: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"{len(devices)} are available; set one axis to -1 to use all of them"
        )
    # Auto axes: shardings come from the rules (GSPMD propagation), not from explicit array types.
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (e.g. 2 KV heads on a 4-way tensor axis)."""
    dims = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            dims.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = []
        for a in axes:
            if dim % (mesh.shape[a] * int(np.prod([mesh.shape[k] for k in kept]))) == 0:
                kept.append(a)
        dims.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*dims)


def logical_to_sharding(logical_specs: Any, shapes: Any, mesh: Mesh, rules) -> Any:
    """Map a tree of logical ``PartitionSpec``s (and matching shapes) to ``NamedSharding``s."""
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)

    def one(spec, shape):
        shape = getattr(shape, "shape", shape)
        return NamedSharding(mesh, _fit_spec(spec if spec is not None else PartitionSpec(), shape, mesh))

    return jax.tree.map(one, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
    """Context in which the models' logical activation constraints resolve on ``mesh``."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def init_distributed() -> None:
    """``jax.distributed.initialize()`` when launched as one of several processes.

    Reads ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` when set (CPU
    clusters and tests); on TPU pods and SLURM/Open MPI GPU clusters JAX detects them itself.
    """
    if os.environ.get("JAX_NUM_PROCESSES", "1") != "1" and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
