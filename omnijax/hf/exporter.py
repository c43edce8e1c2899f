"""omnijax params -> HF model directory (legacy Hub layout, sharded safetensors + index).

The same table the importer reads, read the other way. The directory is written whole or not at
all (``omnijax.outdir.atomic_dir``); ``transformers`` loads it with no missing or unexpected keys.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from omnijax.hf.architectures import Architecture
from omnijax.hf.importer import check_table, get_path
from omnijax.hf.safetensors_io import nbytes, plan_shards, write_sharded
from omnijax.outdir import atomic_dir

# Files beside the weights that a HF model directory carries and export copies through.
ASSET_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
)
DEFAULT_SHARD_BYTES = 5 * 1024**3


def _to_host(a) -> np.ndarray:
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        a = multihost_utils.process_allgather(a, tiled=True)
    return np.asarray(jax.device_get(a))


def copy_assets(assets_dir: str, out_dir: str) -> None:
    """Copy the ``ASSET_FILES`` that ``assets_dir`` has into ``out_dir``."""
    for name in ASSET_FILES:
        if os.path.exists(os.path.join(assets_dir, name)):
            shutil.copy2(os.path.join(assets_dir, name), out_dir)


def _plan(arch: Architecture, cfg: Any, params: dict, dtype, max_shard_bytes: int):
    """({directory: its shards, lists of HF keys} ('' the top one), each key's (table entry, layer index or None))
    for ``params``."""
    table = arch.table(cfg)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    check_table(arch, table, abstract)
    keys: dict[str, int] = {}
    entry_of = {}
    for e in table:
        leaf = get_path(abstract, e.path)
        per_layer = leaf.shape[1:] if e.stacked else leaf.shape
        for i in range(leaf.shape[0]) if e.stacked else [None]:
            for key in (e.hf_key(i), *e.tied_keys(i)):
                keys[key] = nbytes(e.transform.hf_shape(per_layer), dtype or leaf.dtype)
                entry_of[key] = (e, i)
    by_dir: dict[str, dict[str, int]] = {}  # a key ``<subdir>/<name>`` goes to that subdirectory's one file
    for key, n in keys.items():
        by_dir.setdefault(key.rpartition("/")[0], {})[key] = n
    return {d: plan_shards(sizes, max_shard_bytes if not d else sum(sizes.values())) for d, sizes in by_dir.items()}, \
        entry_of


def _tensors(params: dict, ordered: list[str], entry_of, dtype, progress: bool):
    """(HF key, numpy tensor in the HF layout) in ``ordered``'s order; a parameter is gathered to the host once."""
    host: dict[str, np.ndarray] = {}
    for key in tqdm(ordered, desc="export", disable=not progress, unit="tensor"):
        e, i = entry_of[key]
        if e.path not in host:
            host = {e.path: _to_host(get_path(params, e.path))}
        a = host[e.path][i] if e.stacked else host[e.path]
        t = np.ascontiguousarray(e.transform.to_hf(a))
        yield key, t.astype(dtype or t.dtype)


def _write_config(out_dir: str, config: dict) -> None:
    """``config.json``, and a ``generation_config.json`` of its special token ids when the assets gave none."""
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    gen_path = os.path.join(out_dir, "generation_config.json")
    if not os.path.exists(gen_path):
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        with open(gen_path, "w") as f:
            json.dump(gen, f, indent=2)


def save_hf(
    out_dir: str,
    arch: Architecture,
    cfg: Any,
    params: dict,
    *,
    assets_dir: str | None = None,
    dtype=None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Write ``params`` as a HF directory loadable by ``transformers`` (``arch.name``).

    Args:
      assets_dir: a directory whose tokenizer / generation-config files are copied through.
      dtype: tensor dtype to write (default: each parameter's own).
    """
    if arch.export_unsupported:
        raise ValueError(f"export to {arch.name} is not supported: {arch.export_unsupported}")
    plans, entry_of = _plan(arch, cfg, params, dtype, max_shard_bytes)
    tensors = _tensors(params, [k for shards in plans.values() for shard in shards for k in shard], entry_of, dtype,
                       progress)
    if jax.process_index() != 0:
        for _ in tensors:  # every process takes part in the all-gathers
            pass
        return
    with atomic_dir(out_dir, overwrite) as tmp:
        for sub, shards in plans.items():
            n = len(sub) + 1 if sub else 0  # a subdirectory's keys are written without their ``<subdir>/``
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
            write_sharded(os.path.join(tmp, sub), [[k[n:] for k in shard] for shard in shards],
                          ((k[n:], t) for k, t in itertools.islice(tensors, sum(map(len, shards)))))
        for path, extra in (arch.extra_configs(cfg) if arch.extra_configs else {}).items():
            with open(os.path.join(tmp, path), "w") as f:
                json.dump(extra, f, indent=2)
        config = arch.hf_config(cfg)
        if dtype is not None:
            config["torch_dtype"] = np.dtype(dtype).name
        if assets_dir:
            copy_assets(assets_dir, tmp)
        _write_config(tmp, config)
