"""omnijax model directories: an Orbax checkpoint of the params plus the model's description.

Layout::

    DIR/omnijax.json   {"format_version": 1, "architecture": ..., "hf_config": {...}}
    DIR/params/        Orbax (StandardCheckpointer) pytree of the params
    DIR/assets/        tokenizer / generation-config files carried from the HF source

A trainer stage workdir of an omni model is a model directory too: ``omnijax.launch`` writes
``WORKDIR/omnijax.json`` (``describe_stage``: architecture ``OmnijaxOmniModel``, its config, the stage's
name and its tokenizer directory ``c.data.tokenizer`` as ``assets_dir``), and the params are those of
the finished stage (``WORKDIR/checkpoints/<last step>/params``). When that step cannot be read, the newest
step that can is loaded, with one line on stderr saying which and why (the unreadable step is moved to
``WORKDIR/damaged_checkpoints/``; ``omnijax.training.checkpointing.loadable_params``).

``load_model(path)`` opens any of these or a HF model directory.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from omnijax import sharding
from omnijax.hf import architectures
from omnijax.hf.exporter import copy_assets
from omnijax.hf.importer import Loaded, abstract_model, load_hf, open_hf
from omnijax.hf.omni import OMNI
from omnijax.hf.safetensors_io import CheckpointError
from omnijax.models.omni import OmniConfig
from omnijax.outdir import atomic_dir
from omnijax.training.checkpointing import CheckpointError as StageCheckpointError, loadable_params
from omnijax.training.stages import StageConfigError
from omnijax.training.task import Task

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
            copy_assets(assets_dir, os.path.join(tmp, "assets"))


def describe_stage(c, task: Task, workdir: str) -> None:
    """Make the workdir of a stage that trains an omni model (``task.model_config`` an ``OmniConfig``) a model
    directory: write ``WORKDIR/omnijax.json`` (module docstring). Stages of other models get none."""
    if not isinstance(task.model_config, OmniConfig):
        return
    tokenizer = c.data.get("tokenizer") or None
    desc = {"format_version": FORMAT_VERSION, "architecture": OMNI.name, "hf_config": OMNI.hf_config(task.model_config),
            "stage": c.name, "assets_dir": os.path.abspath(tokenizer) if tokenizer else None}
    tmp = os.path.join(workdir, f".{MODEL_FILE}.partial")
    with open(tmp, "w") as f:
        json.dump(desc, f, indent=2)
    os.replace(tmp, os.path.join(workdir, MODEL_FILE))


def _description(path: str) -> dict:
    with open(os.path.join(path, MODEL_FILE)) as f:
        desc = json.load(f)
    if desc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {desc.get('format_version')} is not {FORMAT_VERSION}")
    return desc


def assets_of(path: str) -> str | None:
    """Where a model directory keeps its tokenizer / generation-config files."""
    if not os.path.exists(os.path.join(path, MODEL_FILE)):
        return path
    desc = _description(path)
    if "stage" in desc:
        return desc.get("assets_dir")
    return os.path.join(path, "assets") if os.path.isdir(os.path.join(path, "assets")) else None


def _restore_target(arch, module, cfg, mesh: Mesh | None, rules):
    """The params' ``ShapeDtypeStruct``s with their shardings on ``mesh`` (default: the first device)."""
    specs, abstract = abstract_model(arch, module, cfg)
    if mesh is None:
        mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
        rules = ()
    shardings = sharding.logical_to_sharding(specs, abstract, mesh, rules or ())
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _tell(line: str) -> None:
    if jax.process_index() == 0:
        print(line, file=sys.stderr, flush=True)


def load_model_dir(path: str, *, mesh: Mesh | None = None, rules=None, **overrides) -> Loaded:
    """An omnijax model directory, or a finished stage workdir that describes its model."""
    desc = _description(path)
    arch = architectures.get(desc["architecture"])
    module, cfg = arch.build(desc["hf_config"], **overrides)
    target = _restore_target(arch, module, cfg, mesh, rules)
    if "stage" in desc:
        try:
            params = loadable_params(path, target, say=_tell)
        except StageConfigError as e:
            why = str(e).removeprefix(f"init_from {path}: ")  # the message as the next stage's config would get it
            raise CheckpointError(f"{path} is the workdir of stage {desc['stage']!r}, which is not finished, so it "
                                  f"holds no final params to load: {why}") from None
        except StageCheckpointError as e:
            raise CheckpointError(str(e)) from None
    else:
        params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, "params")), target)
    return Loaded(arch, module, cfg, params, desc["hf_config"])


def load_model(path: str, *, mesh: Mesh | None = None, rules=None, progress: bool = True, **overrides) -> Loaded:
    """Open an omnijax model directory, a finished omni stage workdir or a HF model directory."""
    if os.path.exists(os.path.join(path, MODEL_FILE)):
        return load_model_dir(path, mesh=mesh, rules=rules, **overrides)
    if os.path.exists(os.path.join(path, "config.json")):
        return load_hf(path, mesh=mesh, rules=rules, progress=progress, **overrides)
    raise CheckpointError(f"{path} is neither an omnijax model directory ({MODEL_FILE}) nor a HF one (config.json)")


def model_config(path: str, **overrides):
    """The model config of what ``load_model`` opens at ``path`` (an omnijax model directory, a finished stage
    workdir, a HF model directory or Ola's release layout), without reading its params."""
    if os.path.exists(os.path.join(path, MODEL_FILE)):
        desc = _description(path)
        return architectures.get(desc["architecture"]).build(desc["hf_config"], **overrides)[1]
    if os.path.exists(os.path.join(path, "config.json")):
        arch, hf_config, _ = open_hf(path)
        return arch.build(hf_config, **overrides)[1]
    raise CheckpointError(f"{path} is neither an omnijax model directory ({MODEL_FILE}) nor a HF one (config.json)")
