"""Batches for the trainer, and how their position is checkpointed.

A data iterator yields this process's rows of each global batch (numpy, the fields of
``omnijax.batch.batch_spec``) and says how its state goes into a checkpoint, as one item of the
checkpoint's ``ocp.args.Composite``:

    checkpoint_handler() -> the item's Orbax handler   (``ocp.JsonCheckpointHandler()`` here; a Grain
    save_args()          -> the item's save args        iterator returns ``grain.checkpoint.
    restore_args()       -> the item's restore args     CheckpointHandler()``, ``CheckpointSave(it)``,
    restored(value)      <- what the restore gave back  ``CheckpointRestore(it)``: the restore puts
                                                        the iterator back in place)

``build_data(c, task, mesh)`` picks the stage's iterator by ``c.data.source``: ``'grain'`` is the
Grain pipeline (``data_pipelines.pipeline.Pipeline``, its JSON state in the checkpoint; configured by
``grain_pipeline_config``), ``'random'`` is ``RandomBatches``, the in-memory source: every
row of every step is a pure function of ``(seed, step, row)``, so it resumes exactly from a step
number, and each process computes only its own rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from omnijax.batch import TEXT_FIELDS

MEDIA_ITEM_FIELDS = {"images": "image_item", "videos": "video_item", "audio": "audio_item"}


class RandomBatches:
    """Random packed rows on the batch contract, deterministic from ``(seed, step, row)``.

    Each row holds one or two packed examples (``segment_ids`` 1, 2, then padding). Every media slot
    is filled (item k = slot k) and the first example carries all of them: one run of
    ``tokens`` placeholder ids per slot (``media_tokens``: modality -> (field, placeholder id,
    tokens per slot)). Text ids avoid ``reserved_ids``; the second half of each example is the
    "response" (``loss_weights`` 1, except where the target is a placeholder); ``task_ids`` are per
    example in ``[0, num_tasks)``.
    """

    def __init__(self, spec: Mapping[str, jax.ShapeDtypeStruct], *, vocab_size: int,
                 media_tokens: Mapping[str, tuple[str, int, int]] = {}, num_tasks: int = 0,  # noqa: B006
                 reserved_ids: Sequence[int] = (), seed: int = 0, rows: tuple[int, int] | None = None,
                 step: int = 0):
        self.spec = dict(spec)
        self.batch, self.seq_len = self.spec["input_ids"].shape
        self.rows = rows or (0, self.batch)
        self.seed, self.step, self.num_tasks = int(seed), int(step), int(num_tasks)
        known = set(TEXT_FIELDS) | set(MEDIA_ITEM_FIELDS) | set(MEDIA_ITEM_FIELDS.values()) | {"audio_valid_frames"}
        unknown = sorted(set(self.spec) - known)
        if unknown:
            raise ValueError(f"RandomBatches cannot fill batch fields {unknown}; it knows {sorted(known)}")
        self.media = []  # (field, placeholder id, tokens per slot, slots)
        for modality, (field, token_id, tokens) in media_tokens.items():
            if field in self.spec:
                self.media.append((field, int(token_id), int(tokens), self.spec[field].shape[1]))
        missing = sorted(f for f in MEDIA_ITEM_FIELDS if f in self.spec and f not in {m[0] for m in self.media})
        if missing:
            raise ValueError(f"the batch has media fields {missing} but the task gives no placeholder tokens for "
                             "them (Task.media_tokens)")
        self.media_len = sum(tokens * slots for _, _, tokens, slots in self.media)
        if self.media_len + 4 > self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} cannot hold the media budget's {self.media_len} placeholder "
                             f"tokens plus text; raise seq_len to at least {self.media_len + 4} or lower the budget")
        self.placeholders = np.array(sorted({m[1] for m in self.media}), np.int64)
        self.text_ids = np.setdiff1d(np.arange(vocab_size), np.array(list(reserved_ids) + list(self.placeholders)))

    def row(self, step: int, r: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step, r])
        t = self.seq_len
        fill = int(rng.integers(max(self.media_len + 4, (3 * t) // 4), t + 1))
        text = fill - self.media_len
        first_text = int(rng.integers(2, text - 1))
        ids = [rng.choice(self.text_ids, 1)]
        for _, token_id, tokens, slots in self.media:
            ids.append(np.full(tokens * slots, token_id))
        ids.append(rng.choice(self.text_ids, first_text - 1))
        first = self.media_len + first_text
        ids.append(rng.choice(self.text_ids, fill - first))
        ids.append(np.zeros(t - fill, np.int64))
        ids = np.concatenate(ids).astype(np.int32)
        seg = np.zeros(t, np.int32)
        seg[:first], seg[first:fill] = 1, 2
        starts = np.array([0, first])
        pos = np.where(seg > 0, np.arange(t) - starts[np.clip(seg - 1, 0, 1)], 0).astype(np.int32)
        lengths = np.array([first, fill - first])
        nxt_ids, nxt_seg, nxt_pos = np.append(ids[1:], 0), np.append(seg[1:], 0), np.append(pos[1:], 0)
        same = (nxt_seg == seg) & (seg > 0)
        response = nxt_pos >= lengths[np.clip(seg - 1, 0, 1)] // 2
        weights = same & response & ~np.isin(nxt_ids, self.placeholders)
        tasks = rng.integers(0, max(self.num_tasks, 1), 2)
        out = {
            "input_ids": ids, "segment_ids": seg, "positions": pos,
            "targets": np.where(same, nxt_ids, 0).astype(np.int32),
            "loss_weights": weights.astype(np.float32),
            "task_ids": np.where(seg > 0, tasks[np.clip(seg - 1, 0, 1)], 0).astype(np.int32),
        }
        for field, _, _, slots in self.media:
            shape = self.spec[field].shape[1:]
            out[field] = rng.standard_normal(shape, np.float32)
            out[MEDIA_ITEM_FIELDS[field]] = np.arange(slots, dtype=np.int32)
            if field == "audio" and "audio_valid_frames" in self.spec:
                out["audio_valid_frames"] = np.full(slots, shape[-1], np.int32)
        return out

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global batch of ``step``."""
        rows = [self.row(step, r) for r in range(*self.rows)]
        return {k: np.stack([r[k] for r in rows]).astype(self.spec[k].dtype) for k in self.spec}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def checkpoint_handler(self):
        return ocp.JsonCheckpointHandler()

    def save_args(self):
        return ocp.args.JsonSave({"step": self.step})

    def restore_args(self):
        return ocp.args.JsonRestore()

    def restored(self, value) -> None:
        self.step = int(value["step"])


def grain_pipeline_config(c, process_index: int | None = None, process_count: int | None = None):
    """The ``PipelineConfig`` of a stage with ``c.data.source = 'grain'``: its sources (shard globs
    resolved, ``spoken`` and ``self_kd`` flags), tokenizer, seed and workers from ``c.data``; this
    process's share of ``c.batch_size``; ``c.seq_len``, ``c.task_names``; the media budget and layout of
    the omni model (``c.model``). Self-KD sources and ``c.objective.self_kd`` come together: the pairs are
    what the Self-KD loss reads, and the loss is what pairs are for."""
    import glob

    from data_pipelines.pipeline import PipelineConfig, Source
    from omnijax.training.omni_task import omni_config
    from omnijax.training.stages import StageConfigError

    if c.model.name != "omni":
        raise StageConfigError(f"stage {c.name!r}: c.data.source 'grain' takes the media budget and layout of the "
                               f"omni model (c.model.name = 'omni'), not of {c.model.name!r}")
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
    extra = dict(c.data.get("pipeline") or {})
    return PipelineConfig(sources=tuple(sources), tokenizer=c.data.tokenizer, batch_size=c.batch_size // count,
                          seq_len=c.seq_len, budget=cfg.budget, layout=cfg.media_layout, seed=int(c.data.seed),
                          task_names=tuple(c.task_names), workers=int(c.data.get("workers", 0)),
                          process_index=index, process_count=count, **extra)


def build_data(c, task, mesh=None, *, rows: tuple[int, int] | None = None):
    """The stage's data iterator: ``RandomBatches`` (``c.data.source = 'random'``; ``rows``: this
    process's rows of the global batch) or the Grain ``Pipeline`` (``'grain'``). Both carry their
    position in the trainer's checkpoint (the ``data`` item)."""
    del mesh  # the rows of this process come from the trainer's batch sharding
    if c.data.source == "random":
        return RandomBatches(task.batch_spec, vocab_size=task.vocab_size, media_tokens=task.media_tokens,
                             num_tasks=task.num_tasks, reserved_ids=task.reserved_ids, seed=c.data.seed, rows=rows)
    if c.data.source == "grain":
        from data_pipelines.pipeline import Pipeline

        if rows is not None:
            lo, hi = rows
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
    raise ValueError(f"c.data.source {c.data.source!r} is not 'random' or 'grain'")
