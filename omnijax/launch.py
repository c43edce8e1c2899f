"""Launch one stage: the trainer (``omnijax.training.trainer``) with what the layers above it give it.

The trainer reads no data format and no model directory; this module, above both, wires them in:

- ``init_from`` sources that are model directories (HF or omnijax, ``omnijax.checkpoint.load_model``) are
  read for ``trainer.setup`` (``load_init``);
- ``c.data.source = 'grain'`` is the Grain pipeline (``data_pipelines.pipeline.Pipeline``) for the media
  budget and layout of the model the task trains (``Task.model_config``), configured by
  ``grain_pipeline_config``; ``'random'`` is the trainer's in-memory source;
- the workdir of a stage that trains an omni model becomes a model directory
  (``omnijax.checkpoint.describe_stage``), so ``load_model(workdir)`` opens the finished stage.

``run(c, workdir)`` is what ``python -m omnijax.train`` and the recipe runner call; a stage fed by the Grain
pipeline ends with its ``length_report``: per source, the records dropped (and cut) for length.
"""

from __future__ import annotations

import glob
import os

import jax

from data_pipelines.pipeline import Pipeline, PipelineConfig, Source
from omnijax import sharding
from omnijax.checkpoint import describe_stage, load_model
from omnijax.models.omni import NATIVE_PROCESSOR, OmniConfig
from omnijax.training import trainer
from omnijax.training.omni_task import omni_config
from omnijax.training.stages import StageConfigError
from omnijax.training.task import Task


def load_init(path: str, mesh, rules):
    """The params of the model directory at ``path`` (HF or omnijax), laid out on ``mesh`` by ``rules``."""
    return load_model(path, mesh=mesh, rules=rules, progress=jax.process_index() == 0).params


def setup(c, task: Task | None = None, devices=None) -> trainer.Stage:
    """``trainer.setup`` that reads ``init_from`` model directories."""
    return trainer.setup(c, task, devices, load_init=load_init)


def _sources(c) -> list[Source]:
    """``c.data.sources`` with their shard globs resolved (``StageConfigError`` naming one that matches none)."""
    sources = []
    for src in c.data.sources:
        patterns = [src["paths"]] if isinstance(src["paths"], str) else list(src["paths"])
        paths = []
        for pattern in patterns:
            found = sorted(glob.glob(pattern))
            if not found:
                raise StageConfigError(f"stage {c.name!r}: c.data.sources {src['name']!r}: no shard matches "
                                       f"{pattern!r}")
            paths.extend(found)
        sources.append(Source(src["name"], tuple(paths), weight=float(src.get("weight", 1.0)),
                              spoken=bool(src.get("spoken", False)), self_kd=bool(src.get("self_kd", False))))
    return sources


def grain_pipeline_config(c, process_index: int | None = None, process_count: int | None = None) -> PipelineConfig:
    """The ``PipelineConfig`` of an omni stage with ``c.data.source = 'grain'``: its sources (shard globs
    resolved, ``spoken`` and ``self_kd`` flags), tokenizer, seed and workers from ``c.data``; this process's
    share of ``c.batch_size``; ``c.seq_len``, ``c.task_names``; the media budget and layout of the omni model
    (``c.model``). Self-KD sources and ``c.objective.self_kd`` come together: the pairs are what the Self-KD loss
    reads, and the loss is what pairs are for."""
    extra = dict(c.data.get("pipeline") or {})
    for name in NATIVE_PROCESSOR:
        if name in extra:
            raise StageConfigError(f"stage {c.name!r}: c.data.pipeline.{name}: Ola's processor settings are the "
                                   f"model's (exported with it): set c.model.{name}")
    sources = _sources(c)
    pairs = [s.name for s in sources if s.self_kd]
    self_kd = (c.get("objective") or {}).get("self_kd")
    if pairs and self_kd is None:
        raise StageConfigError(f"stage {c.name!r}: c.data.sources {pairs} give Self-KD pairs (self_kd=True) but "
                               "c.objective.self_kd is None; set c.objective.self_kd = dict(alpha=..., "
                               "max_response_tokens=...) or read those sources as ordinary examples")
    if not pairs and self_kd is not None:
        raise StageConfigError(f"stage {c.name!r}: c.objective.self_kd is set but no c.data.sources entry has "
                               "self_kd=True; the Self-KD loss needs teacher-student pairs from such a source")
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    cfg = omni_config(c)
    return PipelineConfig(sources=tuple(sources), tokenizer=c.data.tokenizer, batch_size=c.batch_size // count,
                          seq_len=c.seq_len, budget=cfg.budget, layout=cfg.media_layout, seed=int(c.data.seed),
                          task_names=tuple(c.task_names), workers=int(c.data.get("workers", 0)),
                          process_index=index, process_count=count,
                          **{k: getattr(cfg, k) for k in NATIVE_PROCESSOR}, **extra)


def build_data(stage: trainer.Stage):
    """The data iterator of a stage (``setup``'s): the random source (``c.data.source = 'random'``) or the
    Grain ``Pipeline`` (``'grain'``) of this process's rows. Both carry their position in the trainer's
    checkpoint (the ``data`` item)."""
    c, task = stage.config, stage.task
    if c.data.source == "random":
        return stage.random_batches()
    if not isinstance(task.model_config, OmniConfig):
        raise StageConfigError(f"stage {c.name!r}: c.data.source 'grain' makes batches for an omni model's media "
                               f"budget and layout; the task of c.model.name {c.model.name!r} trains "
                               f"{type(task.model_config).__name__} (Task.model_config); use c.data.source 'random'")
    lo, hi = stage.rows
    per = c.batch_size // jax.process_count()
    if hi - lo != per or lo != jax.process_index() * per:
        raise ValueError(f"this process holds rows {lo}:{hi} of the global batch; the Grain pipeline gives "
                         f"process i rows i*{per}:(i+1)*{per}: use a mesh whose batch axes follow the "
                         "process order")
    pipeline = Pipeline(grain_pipeline_config(c))
    if dict(pipeline.spec).keys() != dict(task.batch_spec).keys():
        pipeline.close()
        raise ValueError(f"stage {c.name!r}: the pipeline's batch fields {sorted(pipeline.spec)} differ from the "
                         f"model's {sorted(task.batch_spec)}")
    return pipeline


def run(c, workdir: str, *, data=None, progress: bool | None = None) -> trainer.Result:
    """Train stage ``c`` in ``workdir`` (``trainer.run``, resuming from its newest complete checkpoint) on
    ``data`` (default: ``build_data``'s, closed at the end), its ``init_from`` model directories read and
    its workdir described as a model directory. ``progress``: a progress bar (default: when stderr is a
    terminal)."""
    sharding.init_distributed()
    stage = setup(c)
    own = data is None
    data = build_data(stage) if own else data
    try:
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            describe_stage(c, stage.task, workdir)  # an omni stage's workdir is then a model directory
        result = trainer.run(c, workdir, stage=stage, data=data, progress=progress)
        if jax.process_index() == 0 and isinstance(data, Pipeline):
            share = f" (process 0's share of {jax.process_count()})" if jax.process_count() > 1 else ""
            print(f"stage {c.name!r}: {data.length_report()}{share}", flush=True)
        return result
    finally:
        if own and hasattr(data, "close"):
            data.close()  # the pipeline's workers
