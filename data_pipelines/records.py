"""Records as the pipeline reads them: ArrayRecord shards as one random-access source (`Records`), a record's
bytes -> `schema.Example` (`parse`), and `Skip`, raised for a record the pipeline leaves out (its `reason` is
the counter it is counted under: a bad record, a placeholder mismatch, corrupt media, or `dropped_too_long`).
A record whose chunk does not read (a hash mismatch inside a shard) is a bad record.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import grain
import msgpack
import numpy as np

from data_pipelines import schema


class Skip(Exception):  # noqa: N818  (control flow inside Prepare: it becomes a skip marker, never leaves it)
    """A record left out: `reason` is its counter, the message says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class Unreadable(str):
    """In place of a record's bytes: the reader's error for a record whose chunk does not read."""


class Records:
    """ArrayRecord shards as one random-access source of `(index, record bytes)` (`Unreadable` for a record
    that does not read); `where(index)` names the shard and the record inside it. `counts`: the shards' record
    counts when already known. Picklable (readers open lazily in each worker)."""

    def __init__(self, paths: Sequence[str], counts: Sequence[int] | None = None):
        self.paths = tuple(paths)
        counts = [schema.num_records(p) for p in self.paths] if counts is None else list(counts)
        self.starts = np.cumsum([0, *counts]).tolist()
        if self.starts[-1] == 0:
            raise ValueError(f"the shards {list(self.paths)} hold no records")
        self._source = grain.sources.ArrayRecordDataSource(list(self.paths))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> tuple[int, bytes | Unreadable]:
        try:
            return int(index), self._source[index]
        except RuntimeError as e:  # Riegeli: "chunk data hash mismatch", ...
            return int(index), Unreadable(e)

    def where(self, index: int) -> str:
        shard = bisect.bisect_right(self.starts, index) - 1
        return f"shard {self.paths[shard]} record {index - self.starts[shard]}"


def parse(data: bytes | Unreadable) -> schema.Example:
    """A record's bytes -> its example; raises `Skip` ('bad_record' or 'placeholder_mismatch')."""
    if isinstance(data, Unreadable):
        raise Skip("bad_record", f"the record does not read ({data})")
    try:
        record = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError) as e:
        raise Skip("bad_record", f"not msgpack ({type(e).__name__}: {e})") from e
    try:
        return schema.Example.from_dict(record)
    except schema.SchemaError as e:
        raise Skip("placeholder_mismatch" if _placeholders_mismatch(record) else "bad_record", str(e)) from e


def _placeholders_mismatch(record) -> bool:
    """Whether a raw record's placeholders disagree with its media list (count per turn or in all)."""
    try:
        turns, media = record["turns"], record["media"]
        counts = [len(schema.placeholder_kinds(t["text"])) for t in turns]
        return any(c != len(t["media"]) for c, t in zip(counts, turns, strict=True)) or sum(counts) != len(media)
    except (TypeError, KeyError, AttributeError):
        return False
