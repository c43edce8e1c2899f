"""Self-KD pairs (arXiv 2503.00059): an example as a teacher and a student part in one element (`pair`), and a
packed row's segments split at each pair's student part (`split_pairs`).

In a source with `self_kd=True` every example becomes one element holding two parts: the example with its
written question (the teacher, `kd_part` 1) followed by its spoken view (`Example.spoken_view`, the student,
`kd_part` 2), each tokenised as an example of its own (targets never cross from teacher to student); its media
in placeholder order across the pair (teacher image, student image, student audio). `pipeline.FinishRow` gives
each part its own segment and restarts the positions at 0 for the student. Pairs are packed whole: one that
does not fit a row is dropped (counted as `dropped_too_long`) under either over-long policy, since a cut pair
would not answer with the same tokens on both sides. An example without a spoken question in such a source is
an error. When any source is a Self-KD source, every element carries `kd_part` (0 for ordinary examples) and
the batches have it (`omnijax.batch.batch_spec(self_kd=True)`).
"""

from __future__ import annotations

import collections

import numpy as np

from data_pipelines import schema
from data_pipelines.chat_template import ChatTemplate, token_fields
from data_pipelines.media_expansion import MediaExpansion
from data_pipelines.records import Skip
from omnijax.batch import KD_STUDENT, KD_TEACHER


def pair(example: schema.Example, chat: ChatTemplate, expansion: MediaExpansion, task_id: int) -> dict:
    """A Self-KD pair as one element: the teacher part (the written question) then the student part
    (`spoken_view`), whole or skipped as `dropped_too_long` (module docstring)."""
    if example.spoken_question is None:
        raise ValueError(
            f"source {chat.source_name!r} is a Self-KD source (self_kd=True), but example {example.id!r} has no "
            "spoken_question; such a source holds questions with their recordings (omni-synth's spoken_image_qa): "
            "leave other examples out of it, or set self_kd=False")
    views = (example, example.spoken_view())
    tokens = [chat.tokens(view) for view in views]
    text = sum(len(ids) - len(order) for ids, _, order in tokens)
    if text > expansion.seq_len:
        raise Skip("dropped_too_long", f"{text} text tokens in the Self-KD pair for seq_len {expansion.seq_len}")
    # The student's media are the teacher's and the recording: each item is decoded once.
    student_items, trimmed = expansion.media(views[1], tokens[1][2])
    decoded = dict(zip(tokens[1][2], student_items, strict=True))
    per_part = ([decoded[i] for i in tokens[0][2]], student_items)
    parts = []
    for kd_part, (ids, learn, _), mine in zip((KD_TEACHER, KD_STUDENT), tokens, per_part, strict=True):
        ids, learn, _, _ = expansion.runs(ids, learn, mine)
        parts.append(token_fields(ids, learn, task_id, kd_part))
    items = per_part[0] + per_part[1]  # placeholder order across the pair
    n = sum(len(p["input_ids"]) for p in parts)
    used = collections.Counter()
    for item in items:
        used[item.kind] += item.slots
    if n > expansion.seq_len or any(used[m] > expansion.budget.slots(m) for m in used):
        media = "; ".join(f"{m}: {expansion.budget.describe(m, used[m])} of {expansion.budget.describe(m)}"
                          for m in used)
        raise Skip("dropped_too_long", f"the Self-KD pair takes {n} tokens for seq_len {expansion.seq_len}"
                                       f"{' and ' + media if media else ''}; pairs are never cut")
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out.update(expansion.slots(items), truncated=trimmed)
    return out


def split_pairs(segment_ids: np.ndarray, kd_part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One packed row's segment ids ``[t]`` (one per packed element) -> segment ids with each Self-KD
    pair's student part a segment of its own, numbered 1, 2, ... in row order (0 = padding), and RoPE
    positions restarting at 0 in every segment."""
    t = np.arange(len(segment_ids))
    before = lambda x: np.concatenate([[0], x[:-1]])  # noqa: E731
    start = (segment_ids > 0) & ((segment_ids != before(segment_ids))
                                 | ((kd_part == KD_STUDENT) & (before(kd_part) != KD_STUDENT)))
    first = np.maximum.accumulate(np.where(start, t, 0))
    real = segment_ids > 0
    return np.where(real, np.cumsum(start), 0).astype(np.int32), np.where(real, t - first, 0).astype(np.int32)
