"""The data's schema: the record format (``data_pipelines.record``, whose names this module re-exports) and
the ArrayRecord shards that hold the records.

A shard is ``PREFIX.array_record-0000i-of-0000N`` (the TFDS naming, so ``PREFIX.array_record-*`` globs a
set), written with ``group_size:1`` (one record per chunk: cheap random access for Grain). ``ShardWriter``
writes examples round-robin into a set and moves each shard into place only when it is complete;
``read_shard`` / ``read_shards`` give the examples back in order, ``num_records`` counts them. A shard that
does not read raises ``omnijax.errors.DamagedFileError`` naming it and what is wrong (``damaged_shard``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from array_record.python import array_record_module

from data_pipelines.record import (FORMATS, PLACEHOLDERS, ROLES, SCHEMA_VERSION, Example, Media, SchemaError,
                                   SpokenQuestion, Turn, placeholder_kinds, sniff_format, truncation)
from omnijax.errors import DamagedFileError

__all__ = ["ARRAY_RECORD_OPTIONS", "FORMATS", "PLACEHOLDERS", "ROLES", "SCHEMA_VERSION", "Example", "Media",
           "SchemaError", "ShardWriter", "SpokenQuestion", "Turn", "damaged_shard", "num_records", "placeholder_kinds",
           "read_shard", "read_shards", "shard_paths", "sniff_format", "truncation"]

ARRAY_RECORD_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for Grain
RIEGELI_BLOCK = 1 << 16  # an ArrayRecord file is whole blocks of 64 KiB
# the 64 bytes every Riegeli file starts with
RIEGELI_SIGNATURE = bytes.fromhex("83af70d10d884a3f" + "00" * 8 + "40" + "00" * 7 + "91bac23c9287e1a9" + "00" * 8
                                  + "e19f13c0e9b1c372" + "73" + "00" * 15)
REBUILD = "rebuild the shard (python -m data_pipelines.build, or data_pipelines.synth) or copy it again"


def shard_paths(path_prefix: str, num_shards: int) -> list[str]:
    """`PREFIX.array_record-00000-of-00004`, ... (the TFDS naming, so `PREFIX.array_record-*` globs them)."""
    return [f"{path_prefix}.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


class ShardWriter:
    """Writes examples round-robin into `num_shards` ArrayRecord files with `group_size:1`.

    Each shard is written under a hidden temporary name in the same folder and renamed into place by
    `close()`, so a reader never sees a half-written shard; leaving a `with` block by an exception
    deletes the temporary files instead. `counts[i]` is the number of examples in shard i.
    """

    def __init__(self, path_prefix: str, num_shards: int):
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
        self.paths = shard_paths(path_prefix, num_shards)
        folder = os.path.dirname(os.path.abspath(path_prefix))
        os.makedirs(folder, exist_ok=True)
        self._tmp_paths = [os.path.join(folder, f".{os.path.basename(p)}.tmp-{os.getpid()}") for p in self.paths]
        self._writers = []
        try:
            for path in self._tmp_paths:
                self._writers.append(array_record_module.ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS))
        except Exception:
            self.abort()
            raise
        self.counts = [0] * num_shards
        self._next = 0

    def write(self, example: Example) -> int:
        """Append `example` to the next shard in turn; returns the shard index."""
        if self._writers is None:
            raise ValueError("ShardWriter is closed")
        shard = self._next
        self._writers[shard].write(example.to_bytes())
        if not self._writers[shard].ok():
            raise OSError(f"writing {self._tmp_paths[shard]} failed")
        self.counts[shard] += 1
        self._next = (shard + 1) % len(self.paths)
        return shard

    def close(self) -> list[str]:
        """Finish every shard and move it into place; returns the shard paths."""
        if self._writers is None:
            return self.paths
        for writer in self._writers:
            writer.close()
        self._writers = None
        for tmp, path in zip(self._tmp_paths, self.paths, strict=True):
            os.replace(tmp, path)
        return self.paths

    def abort(self) -> None:
        """Drop everything written so far; no shard is created or replaced."""
        for writer in self._writers or ():
            writer.close()
        self._writers = None
        for tmp in self._tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def damaged_shard(path: str, cause: str) -> DamagedFileError:
    """The error for a shard the ArrayRecord reader refuses (``cause``: the reader's words): not an ArrayRecord
    file, truncated (not whole 64 KiB blocks, as ArrayRecord writes them), or damaged inside (a hash mismatch)."""
    with open(path, "rb") as f:
        head = f.read(len(RIEGELI_SIGNATURE))
    size = os.path.getsize(path)
    if head != RIEGELI_SIGNATURE:
        what = "wrong format: not an ArrayRecord file (it does not start with the Riegeli file signature)"
    elif size % RIEGELI_BLOCK:
        what = (f"truncated: {size} bytes, not a whole number of the 64 KiB blocks ArrayRecord files are written in "
                f"(the reader: {cause})")
    else:
        what = f"damaged: {cause}"
    return DamagedFileError(path, what, REBUILD)


def _open_reader(path: str) -> array_record_module.ArrayRecordReader:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ArrayRecord shard at {path}")
    try:
        reader = array_record_module.ArrayRecordReader(path)
        if not reader.ok():
            reader.close()  # raises the reader's error status
    except RuntimeError as e:
        raise damaged_shard(path, str(e)) from e
    if not reader.ok():
        raise damaged_shard(path, "the reader is not ok")
    return reader


def num_records(path: str) -> int:
    """Number of examples in the shard at `path`."""
    reader = _open_reader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def read_shard(path: str, batch: int = 64) -> Iterator[Example]:
    """The examples of one shard, in order; reads `batch` records at a time."""
    reader = _open_reader(path)
    try:
        total = reader.num_records()
        for start in range(0, total, batch):
            end = min(start + batch, total)
            try:
                records = reader.read(start, end)
            except RuntimeError as e:  # a chunk that fails its hash
                raise DamagedFileError(path, f"damaged: records {start} to {end - 1} of {total} do not read ({e})",
                                       REBUILD) from e
            for record in records:
                yield Example.from_bytes(record)
    finally:
        reader.close()


def read_shards(paths: Sequence[str]) -> Iterator[Example]:
    """The examples of several shards, shard after shard."""
    for path in paths:
        yield from read_shard(path)
