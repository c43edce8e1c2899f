"""HF checkpoint directory -> omnijax params, lazily, tensor by tensor, landing sharded.

Everything is checked before any tensor is read: the architecture, every key of the table (missing
ones named), every shape (both shapes named). Then each parameter is built with
``jax.make_array_from_callback``: each device's shard is cut from tensors read from the memory-mapped
safetensors files, so a host only ever holds the parameter being loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from omnijax import sharding
from omnijax.hf import architectures
from omnijax.hf.architectures import Architecture
from omnijax.hf.maps import Entry
from omnijax.hf.safetensors_io import CheckpointError, SafetensorsDir

# Tensors old checkpoints carry that no model parameter corresponds to.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass
class Loaded:
    arch: Architecture
    module: nn.Module
    cfg: Any
    params: Any
    hf_config: dict


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"{hf_dir} is not a directory")
    if not os.path.exists(path):
        raise CheckpointError(f"{hf_dir} has no config.json: not a HF model directory")
    with open(path) as f:
        return json.load(f)


def get_path(tree: dict, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def set_path(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def flat_paths(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat_paths(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def abstract_model(arch: Architecture, module: nn.Module, cfg) -> tuple[dict, dict]:
    """(logical PartitionSpec tree, ShapeDtypeStruct tree) of the params; nothing allocated."""
    init = functools.partial(module.init, method=arch.init_method) if arch.init_method else module.init
    boxed = jax.eval_shape(init, jax.random.key(0), *arch.init_inputs(cfg))
    return nn.get_partition_spec(boxed)["params"], nn.meta.unbox(boxed)["params"]


def check_table(arch: Architecture, table: list[Entry], abstract: dict) -> None:
    """The table covers each parameter exactly once (a programming error otherwise)."""
    paths = set(flat_paths(abstract))
    mapped = [e.path for e in table]
    missing, extra = paths - set(mapped), set(mapped) - paths
    dupes = {p for p in mapped if mapped.count(p) > 1}
    if missing or extra or dupes:
        raise AssertionError(f"{arch.name} table: unmapped {sorted(missing)}, unknown {sorted(extra)}, "
                             f"twice {sorted(dupes)}")


def resolve_keys(arch: Architecture, reader: SafetensorsDir, table: list[Entry], abstract: dict, source: str):
    """For each entry, the checkpoint key per layer (aliases applied), after checking presence and shape."""
    resolved: dict[str, list[str]] = {}
    problems: list[str] = []
    tied: set[str] = set()
    for e in table:
        leaf = get_path(abstract, e.path)
        layers = range(leaf.shape[0]) if e.stacked else [None]
        per_layer_shape = leaf.shape[1:] if e.stacked else leaf.shape
        want = e.transform.hf_shape(per_layer_shape)
        keys = []
        for i in layers:
            key = e.hf_key(i)
            candidates = [key] + [alt + key[len(pre):] for pre, alt in arch.aliases if key.startswith(pre)]
            found = next((k for k in candidates if k in reader), None)
            if found is None:
                problems.append(f"tensor {key!r} is missing (needed for omnijax parameter {e.path})")
                continue
            keys.append(found)
            tied.update(e.tied_keys(i))
            for k in (found, *(t for t in e.tied_keys(i) if t in reader)):  # a tied copy is checked where present
                if reader.shape(k) != want:
                    problems.append(f"tensor {k!r} has shape {reader.shape(k)}, the config expects {want}")
        resolved[e.path] = keys
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise CheckpointError(f"{source} does not match its config.json ({arch.name}):\n  {shown}")
    used = {k for ks in resolved.values() for k in ks} | tied
    unused = [k for k in reader.keys() if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    unexpected = [k for k in unused if not k.startswith(arch.expected_unused)]
    if len(unused) > len(unexpected):
        logging.info("%s: %d tensors under %s are not part of %s as omnijax reads it (expected)",
                     source, len(unused) - len(unexpected), ", ".join(arch.expected_unused), arch.name)
    if unexpected:
        logging.warning("%s: %d tensors not used by %s, e.g. %s", source, len(unexpected), arch.name, unexpected[:5])
    return resolved


def _load_entry(reader: SafetensorsDir, e: Entry, keys: list[str], leaf, sharding: NamedSharding):
    """One parameter as a global array; each device's shard is sliced from the layers it needs."""
    cache: dict[int, np.ndarray] = {}
    per_layer_shape = leaf.shape[1:] if e.stacked else leaf.shape

    def layer(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = e.transform.to_ours(reader.get(keys[i]), per_layer_shape).astype(leaf.dtype)
        return cache[i]

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        if not e.stacked:
            return layer(0)[index]
        rows = range(*index[0].indices(leaf.shape[0]))
        return np.stack([layer(i)[index[1:]] for i in rows])

    return jax.make_array_from_callback(leaf.shape, sharding, shard)


def open_hf(hf_dir: str) -> tuple[Architecture, dict, SafetensorsDir]:
    """A HF model directory's architecture, its config (with what the architecture's ``open_dir`` adds: Ola's
    release reads its speech encoders' configs) and a reader of its tensors; no tensor is read."""
    hf_config = read_config(hf_dir)
    arch = architectures.from_config(hf_config, os.path.join(hf_dir, "config.json"))
    if arch.open_dir is not None:
        hf_config, reader = arch.open_dir(hf_dir, hf_config)
        return arch, hf_config, reader
    return arch, hf_config, SafetensorsDir(hf_dir)


def load_hf(
    hf_dir: str,
    *,
    mesh: Mesh | None = None,
    rules=None,
    progress: bool = True,
    **overrides,
) -> Loaded:
    """Read a HF model directory into omnijax params.

    Args:
      mesh, rules: where the params land (``sharding.logical_rules(preset)``); default: replicated on
        the first device.
      overrides: model config fields (e.g. ``dtype='bfloat16'``, ``param_dtype``, ``attention``).
    """
    arch, hf_config, reader = open_hf(hf_dir)
    module, cfg = arch.build(hf_config, **overrides)
    specs, abstract = abstract_model(arch, module, cfg)
    table = arch.table(cfg)
    check_table(arch, table, abstract)
    resolved = resolve_keys(arch, reader, table, abstract, hf_dir)
    if mesh is None:
        mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
        rules = ()
    shardings = sharding.logical_to_sharding(specs, abstract, mesh, rules or ())
    params: dict = {}
    desc = f"import {os.path.basename(os.path.normpath(hf_dir))}"
    for e in tqdm(table, desc=desc, disable=not progress, unit="param"):
        set_path(params, e.path, _load_entry(reader, e, resolved[e.path], get_path(abstract, e.path),
                                             get_path(shardings, e.path)))
    return Loaded(arch, module, cfg, params, hf_config)
