"""Building omni-synth: the examples of a split (`generate`), written as ArrayRecord shards with a manifest
(`build`), then prepared as recipes read them (`prepare`: the synth tokenizer and one shard per task and split),
and the command line `python -m data_pipelines.synth --out DIR [--seed S] [--size default|tiny]`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Iterator

from tqdm import tqdm

from data_pipelines import schema
from data_pipelines import tokenizer as tok
from data_pipelines.synth.tasks import NAME, SPLITS, TASKS, make_example

VERSION = 6  # bump when the content of any example changes: a cached corpus of another version is rebuilt
# Examples per task and split. `default` builds in about two minutes on one CPU core, `tiny` in seconds.
SIZES = {
    "default": {"train": 1000, "eval": 100},
    "tiny": {"train": 6, "eval": 3},
}
# The default size's train examples of the tasks that need more than 1000: the image tasks cost a
# millisecond each, and on 1000 scenes a tiny model learns them by heart (the colours of a training
# caption 97% right, of a held-out one 60%) instead of learning to see; ASR sentences likewise.
# The pictures of aspect_qa cost as little; a sound clip, or a video with no narration to speak, a few milliseconds.
DEFAULT_TRAIN = {"image_caption": 10_000, "image_qa": 10_000, "image_choice": 10_000, "asr": 3000,
                 "aspect_qa": 10_000, "sound_qa": 3000, "aspect_video_qa": 3000}


def split_counts(size: str) -> dict[str, dict[str, int]]:
    """Examples of each task in each split for a named size: ``{split: {task: count}}``."""
    if size not in SIZES:
        raise ValueError(f"unknown omni-synth size {size!r}; sizes are: {', '.join(SIZES)}")
    counts = {split: dict.fromkeys(TASKS, n) for split, n in SIZES[size].items()}
    if size == "default":
        counts["train"].update(DEFAULT_TRAIN)
    return counts


def _make(job: tuple[str, str, int, int]) -> dict:
    return make_example(*job)


def generate(split: str, seed: int = 0, size: str = "default", workers: int = 1) -> Iterator[dict]:
    """The examples of one split, tasks interleaved round-robin (example i of every task that has one, then
    i + 1). ``workers`` > 1 makes them in that many processes (each example is a function of its task, split,
    seed and index alone, so the stream is the same, in the same order)."""
    counts = split_counts(size)[split]
    jobs = ((task, split, seed, index) for index in range(max(counts.values())) for task in TASKS
            if index < counts[task])
    if workers <= 1:
        yield from map(_make, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: the caller may hold JAX's threads
        yield from pool.imap(_make, jobs, chunksize=32)


def to_schema_example(example: dict) -> schema.Example:
    """A corpus dict -> `data_pipelines.schema.Example`: placeholders take the media items in order."""
    turns, next_ref = [], 0
    for turn in example["turns"]:
        count = len(schema.placeholder_kinds(turn["text"]))
        turns.append(schema.Turn(turn["role"], turn["text"], tuple(range(next_ref, next_ref + count))))
        next_ref += count
    media = [
        schema.Media(
            m["kind"], m["format"], m["data"], sampling_rate=m.get("sampling_rate"), fps=m.get("fps"),
            size=tuple(m["size"]) if "size" in m else None,
        )
        for m in example["media"]
    ]
    question = example["spoken_question"]
    spoken = None
    if question is not None:
        spoken = schema.SpokenQuestion(
            question["format"], question["data"], question["text"], sampling_rate=question["sampling_rate"]
        )
    return schema.Example(example["id"], example["source"], example["task"], turns, media, spoken)


MANIFEST = "manifest.json"
NUM_SHARDS = {"default": {"train": 4, "eval": 1}, "tiny": {"train": 1, "eval": 1}}


def _audio_seconds(example: dict) -> float:
    clips = [m for m in example["media"] if m["kind"] == "audio"]
    if example["spoken_question"] is not None:
        clips.append(example["spoken_question"])
    return sum(c["metadata"]["num_samples"] / c["sampling_rate"] for c in clips)


def _media_bytes(example: dict) -> int:
    question = example["spoken_question"]
    return sum(len(m["data"]) for m in example["media"]) + (len(question["data"]) if question else 0)


def _read_manifest(out_dir: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_complete(out_dir: str, seed: int, size: str) -> bool:
    """Whether `out_dir` holds a finished corpus of this seed, size and version (its manifest is written last)."""
    manifest = _read_manifest(out_dir)
    want = {"name": NAME, "version": VERSION, "schema_version": schema.SCHEMA_VERSION, "seed": seed, "size": size}
    if manifest is None or any(manifest.get(k) != v for k, v in want.items()):
        return False
    files = [f for split in manifest["splits"].values() for f in split["files"]]
    return all(os.path.isfile(os.path.join(out_dir, f)) for f in files)


def build(out_dir: str, seed: int = 0, size: str = "default", progress: bool = True,
          workers: int | None = None) -> dict:
    """Write the corpus into `out_dir` as ArrayRecord shards `<split>.array_record-*` plus `manifest.json`.

    Skips the work when `out_dir` already holds a complete corpus of the same seed, size and version.
    Returns the manifest: per split its shard files and, per task, examples, audio seconds and media bytes.
    `workers`: processes making examples (default: the CPUs, up to 8, for splits of over 1000 examples; one
    for smaller ones, which start faster than processes do). The shards are the same bytes either way.
    """
    counts = split_counts(size)
    if is_complete(out_dir, seed, size):
        return _read_manifest(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # an interrupted rebuild must not look complete
    start = time.perf_counter()
    splits = {}
    for split in SPLITS:
        prefix = os.path.join(out_dir, split)
        stats = {task: {"examples": 0, "audio_seconds": 0.0, "media_bytes": 0} for task in TASKS}
        total = sum(counts[split].values())
        bar = tqdm(total=total, desc=f"{NAME} {split}", unit="ex", disable=not progress)
        procs = workers or (min(os.cpu_count() or 1, 8) if total > 1000 else 1)
        with schema.ShardWriter(prefix, NUM_SHARDS[size][split]) as writer:
            for example in generate(split, seed, size, procs):
                writer.write(to_schema_example(example))
                task = stats[example["task"]]
                task["examples"] += 1
                task["audio_seconds"] += _audio_seconds(example)
                task["media_bytes"] += _media_bytes(example)
                bar.update()
        bar.close()
        paths = writer.paths
        for stale in os.listdir(out_dir):
            if stale.startswith(f"{split}.array_record-") and os.path.join(out_dir, stale) not in paths:
                os.remove(os.path.join(out_dir, stale))
        for task in stats.values():
            task["audio_seconds"] = round(task["audio_seconds"], 2)
        splits[split] = {"files": [os.path.basename(p) for p in paths], "tasks": stats}
    manifest = {
        "name": NAME,
        "version": VERSION,
        "schema_version": schema.SCHEMA_VERSION,
        "seed": seed,
        "size": size,
        "splits": splits,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + ".tmp", manifest_path)
    return manifest


TASK_DIR = "tasks"  # per-task shards: `tasks/<split>/<task>.array_record-00000-of-00001`
PREPARED = "prepared.json"


def task_shards(out_dir: str, split: str) -> dict[str, str]:
    """Per task, the path prefix of its shard in `split` (written by `prepare`), e.g. for a stage's source globs
    `task_shards(corpus, "train")["asr"] + "*"`."""
    return {task: os.path.join(out_dir, TASK_DIR, split, task) for task in TASKS}


def prepared_size(out_dir: str) -> str | None:
    """The size of the corpus `prepare` left complete in `out_dir` (this version), or None."""
    try:
        with open(os.path.join(out_dir, PREPARED)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    ok = stamp.get("version") == VERSION and is_complete(out_dir, stamp.get("seed"), stamp.get("size"))
    return stamp["size"] if ok else None


def prepare(out_dir: str, seed: int = 0, size: str = "default", progress: bool = True) -> dict:
    """The corpus as recipes read it: `build` (cached), the synth tokenizer in `out_dir/tokenizer`, and one shard
    per task and split (a stage mixes tasks with its own weights, and the pipeline's sources are per task).
    Cached: skipped when `out_dir/prepared.json` names this corpus build. Returns the manifest."""
    manifest = build(out_dir, seed, size, progress)
    stamp = {"version": VERSION, "seed": seed, "size": size, "build_seconds": manifest["build_seconds"]}
    marker = os.path.join(out_dir, PREPARED)
    try:
        with open(marker) as f:
            if json.load(f) == stamp:
                return manifest
    except (OSError, ValueError):
        pass
    tok.build_synth_tokenizer(out_dir)
    for split in SPLITS:
        prefixes = task_shards(out_dir, split)
        os.makedirs(os.path.dirname(prefixes[TASKS[0]]), exist_ok=True)
        writers = {task: schema.ShardWriter(prefix, 1) for task, prefix in prefixes.items()}
        files = [os.path.join(out_dir, f) for f in manifest["splits"][split]["files"]]
        for example in schema.read_shards(files):
            writers[example.task].write(example)
        for writer in writers.values():
            writer.close()
    with open(marker + ".tmp", "w") as f:
        json.dump(stamp, f)
    os.replace(marker + ".tmp", marker)
    return manifest


def summary(manifest: dict) -> str:
    """A table of examples, audio seconds and media bytes per task and split."""
    lines = [f"{'task':<17} {'split':<6} {'examples':>8} {'audio s':>9} {'media MB':>9}"]
    for split, info in manifest["splits"].items():
        for task, s in info["tasks"].items():
            lines.append(
                f"{task:<17} {split:<6} {s['examples']:>8} {s['audio_seconds']:>9.1f} {s['media_bytes'] / 1e6:>9.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.synth",
                                     description=f"Build the {NAME} corpus (ArrayRecord shards + manifest.json).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed; the eval split draws its own streams")
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="examples per task: " + str(SIZES))
    args = parser.parse_args(argv)
    if is_complete(args.out, args.seed, args.size):
        print(f"{NAME}: {args.out} already holds the {args.size} corpus of seed {args.seed} (v{VERSION}); skipping")
        manifest = _read_manifest(args.out)
    else:
        manifest = build(args.out, args.seed, args.size)
        print(f"{NAME}: built {args.size} corpus of seed {args.seed} in {manifest['build_seconds']} s into {args.out}")
    print(summary(manifest))
