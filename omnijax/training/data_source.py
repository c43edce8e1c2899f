"""Batches for the trainer, and how their position is checkpointed.

A data iterator yields this process's rows of each global batch (numpy, the fields of
``omnijax.batch.batch_spec``) and says how its state goes into a checkpoint, as one item of the
checkpoint's ``ocp.args.Composite``:

    checkpoint_handler() -> the item's Orbax handler   (``ocp.JsonCheckpointHandler()`` here; a Grain
    save_args()          -> the item's save args        iterator returns ``grain.checkpoint.
    restore_args()       -> the item's restore args     CheckpointHandler()``, ``CheckpointSave(it)``,
    restored(value)      <- what the restore gave back  ``CheckpointRestore(it)``: the restore puts
                                                        the iterator back in place)

``c.data.source = 'random'`` is ``RandomBatches``, the in-memory source: every row of every step is a
pure function of ``(seed, step, row)``, so it resumes exactly from a step number, and each process
computes only its own rows. ``'grain'``, the Grain pipeline (``data_pipelines.pipeline.Pipeline``, its
JSON state in the checkpoint), is built above the trainer, by ``omnijax.launch``: training does not
import ``data_pipelines``; the two meet in the batch contract.
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
        known = set(TEXT_FIELDS) | set(MEDIA_ITEM_FIELDS) | set(MEDIA_ITEM_FIELDS.values()) | {"audio_valid_frames",
                                                                                             "audio_fbank"}
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
            if field == "audio" and "audio_fbank" in self.spec:
                out["audio_fbank"] = rng.standard_normal(self.spec["audio_fbank"].shape[1:], np.float32)
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
