"""Running converters into shards: an entry that cannot become an example raises `Skip` with its reason,
which `write_shards` counts (with the first few details of each reason) in a `Summary` instead of stopping the
build; a schema error counts as the skip "invalid example".
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from tqdm import tqdm

from data_pipelines.schema import Example, SchemaError, ShardWriter


class Skip(Exception):
    """An input entry that cannot become an example: `reason` is the category, `detail` says which and why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Summary:
    """Examples written per shard and skips per reason (with the first few details of each)."""

    MAX_DETAILS = 10

    def __init__(self):
        self.skipped = collections.Counter()
        self.details = collections.defaultdict(list)
        self.shards: dict[str, int] = {}

    def skip(self, skip: Skip) -> None:
        self.skipped[skip.reason] += 1
        if len(self.details[skip.reason]) < self.MAX_DETAILS:
            self.details[skip.reason].append(skip.detail)

    def to_dict(self) -> dict:
        return {
            "written": sum(self.shards.values()),
            "shards": self.shards,
            "skipped": dict(self.skipped),
            "skip_details": dict(self.details),
        }

    def report(self) -> str:
        lines = [f"wrote {sum(self.shards.values())} examples to {len(self.shards)} shard(s):"]
        lines += [f"  {path}: {count}" for path, count in self.shards.items()]
        total = sum(self.skipped.values())
        lines.append(f"skipped {total} entr{'y' if total == 1 else 'ies'}" + (":" if total else ""))
        for reason, count in self.skipped.most_common():
            lines.append(f"  {reason}: {count}, e.g.")
            lines += [f"    {detail}" for detail in self.details[reason][:3]]
        return "\n".join(lines)


def write_shards(
    items: Iterable[Callable[[], Example]], total: int | None, out: str, num_shards: int, desc: str
) -> Summary:
    """Run each item's conversion and write the examples; a `Skip` or schema error is counted, not raised."""
    summary = Summary()
    with ShardWriter(out, num_shards) as writer:
        progress = tqdm(items, total=total, desc=desc, unit="ex", dynamic_ncols=True)
        for convert in progress:
            try:
                writer.write(convert())
            except Skip as skip:
                summary.skip(skip)
            except SchemaError as e:
                summary.skip(Skip("invalid example", str(e)))
            progress.set_postfix(skipped=sum(summary.skipped.values()), refresh=False)
    summary.shards = dict(zip(writer.paths, writer.counts, strict=True))
    return summary
