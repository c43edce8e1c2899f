"""omnijax model directories: an Orbax checkpoint of the params plus the model's description.

Layout::

    DIR/omnijax.json   {"format_version": 1, "architecture": ..., "hf_config": {...}}
    DIR/params/        Orbax (StandardCheckpointer) pytree of the params
    DIR/assets/        tokenizer / generation-config files carried from the HF source

``load_model(path)`` opens either such a directory or a HF model directory.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from omnijax import sharding
from omnijax.hf import architectures
from omnijax.hf.exporter import ASSET_FILES
from omnijax.hf.importer import Loaded, abstract_model, load_hf
from omnijax.hf.safetensors_io import CheckpointError
from omnijax.outdir import atomic_dir

MODEL_FILE = "omnijax.json"
FORMAT_VERSION = 1


def save_model_dir(out: str, loaded: Loaded, assets_dir: str | None = None, overwrite: bool = False) -> None:
    """Write ``loaded`` (params + description) to ``out``, whole or not at all."""
    with atomic_dir(out, overwrite) as tmp:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.abspath(os.path.join(tmp, "params")), loaded.params)
        ckptr.wait_until_finished()
        desc = {"format_version": FORMAT_VERSION, "architecture": loaded.arch.name,
                "hf_config": loaded.arch.hf_config(loaded.cfg)}
        with open(os.path.join(tmp, MODEL_FILE), "w") as f:
            json.dump(desc, f, indent=2)
        if assets_dir:
            os.makedirs(os.path.join(tmp, "assets"))
            for name in ASSET_FILES:
                if os.path.exists(os.path.join(assets_dir, name)):
                    shutil.copy2(os.path.join(assets_dir, name), os.path.join(tmp, "assets"))


def assets_of(path: str) -> str | None:
    """Where a model directory keeps its tokenizer / generation-config files."""
    if os.path.exists(os.path.join(path, MODEL_FILE)):
        return os.path.join(path, "assets") if os.path.isdir(os.path.join(path, "assets")) else None
    return path


def load_model_dir(path: str, *, mesh: Mesh | None = None, rules=None, **overrides) -> Loaded:
    with open(os.path.join(path, MODEL_FILE)) as f:
        desc = json.load(f)
    if desc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {desc.get('format_version')} is not {FORMAT_VERSION}")
    arch = architectures.get(desc["architecture"])
    module, cfg = arch.build(desc["hf_config"], **overrides)
    specs, abstract = abstract_model(arch, module, cfg)
    if mesh is None:
        mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
        rules = ()
    shardings = sharding.logical_to_sharding(specs, abstract, mesh, rules or ())
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, "params")), target)
    return Loaded(arch, module, cfg, params, desc["hf_config"])


def load_model(path: str, *, mesh: Mesh | None = None, rules=None, progress: bool = True, **overrides) -> Loaded:
    """Open an omnijax model directory or a HF model directory."""
    if os.path.exists(os.path.join(path, MODEL_FILE)):
        return load_model_dir(path, mesh=mesh, rules=rules, **overrides)
    if os.path.exists(os.path.join(path, "config.json")):
        return load_hf(path, mesh=mesh, rules=rules, progress=progress, **overrides)
    raise CheckpointError(f"{path} is neither an omnijax model directory ({MODEL_FILE}) nor a HF one (config.json)")
