"""Registry of the HF architectures omnijax reads and writes.

An ``Architecture`` ties a transformers ``architectures`` name to: how to build the omnijax module
and its config from ``config.json``, the name/shape table, the ``config.json`` to write back, and
example inputs for abstract initialisation (shapes only, nothing allocated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from omnijax.hf.maps import Entry


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., tuple[nn.Module, Any]]  # (hf config dict, **overrides) -> (module, model config)
    table: Callable[[Any], list[Entry]]  # model config -> entries covering every parameter
    hf_config: Callable[[Any], dict]  # model config -> config.json dict
    init_inputs: Callable[[Any], tuple]  # model config -> positional ShapeDtypeStructs for module.init
    # (module, params, HF forward keyword arrays) -> what transformers returns: logits for a full
    # model, ``last_hidden_state`` for a tower. Used by ``omnijax.tools.dump_logits``.
    hf_forward: Callable[[Any, Any, dict], Any]
    aliases: tuple[tuple[str, str], ...] = ()  # (table key prefix, alternative prefix found in checkpoints)
    # Checkpoint key prefixes omnijax reads none of by design (Whisper's decoder for an audio tower):
    # the importer notes them instead of warning.
    expected_unused: tuple[str, ...] = ()
    export_unsupported: str | None = None  # why ``save_hf`` refuses this architecture, if it does
    init_method: str | None = None  # the module method ``init`` runs on ``init_inputs`` (None: ``__call__``)
    # (directory, its config.json dict) -> (the config ``build`` reads, the tensors' reader with the
    # ``SafetensorsDir`` API) for a layout whose weights span directories (Ola's release: the speech encoders' files
    # beside it, keys ``<subdir>/<key>``); None: the config as it is and ``SafetensorsDir(directory)``
    open_dir: Callable[[str, dict], tuple[dict, Any]] | None = None
    # model config -> {path relative to the exported directory: JSON dict}: further config files export writes
    extra_configs: Callable[[Any], dict[str, dict]] | None = None


REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    REGISTRY[arch.name] = arch
    return arch


def get(name: str) -> Architecture:
    if name not in REGISTRY:
        raise ValueError(
            f"architecture {name!r} is not supported; supported architectures: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name]


def from_config(config: dict, source: str = "config.json") -> Architecture:
    names = config.get("architectures") or []
    if not names:
        raise ValueError(f"{source} has no 'architectures' entry; supported: {', '.join(sorted(REGISTRY))}")
    return get(names[0])
