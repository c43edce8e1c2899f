"""Convert raw corpora into ArrayRecord shards of `data_pipelines.schema.Example` records.

    python -m data_pipelines.build llava-json DATA.json [MORE.json ...] --media-root DIR --out PREFIX --num-shards N
    python -m data_pipelines.build asr-dir LibriSpeech/train-clean-100 --out PREFIX --num-shards N
    python -m data_pipelines.build tfds NAME --data-dir DIR --split train --text-field question \\
        --answer-field answer [--image-field image] [--audio-field audio] --out PREFIX --num-shards N

Shards are `PREFIX.array_record-0000i-of-0000N` (`group_size:1`); a summary (examples per shard,
skips by reason with examples) is printed and written to `PREFIX.build_summary.json`. A bad entry is
skipped with its reason, never the end of the build: missing media file, unreadable media,
placeholder mismatch, empty conversation, malformed entry, spoken question (audio_q that cannot be
paired with its text), invalid example (breaks the schema).

The converters, one module a source format, are in `data_pipelines.converters`: `llava_json`, `asr_folder`
and `tfds` (each module's docstring says what it reads), all re-encoding media with `converters.reencode`
and writing through `converters.writer`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from data_pipelines.converters.asr_folder import ASR_PROMPT, asr_items
from data_pipelines.converters.llava_json import llava_items
from data_pipelines.converters.tfds import tfds_items
from data_pipelines.converters.writer import write_shards


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.build", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser, task: str) -> None:
        sub.add_argument("--out", required=True, help="shard path prefix: PREFIX.array_record-0000i-of-0000N")
        sub.add_argument("--num-shards", type=int, default=1)
        sub.add_argument("--source", help="the examples' source name (default: from the input's name)")
        sub.add_argument("--task", default=task, help=f"the examples' task (default {task!r})")

    llava = commands.add_parser("llava-json", help="LLaVA / Ola JSON or JSON Lines with media files")
    llava.add_argument("json", nargs="+")
    llava.add_argument("--media-root", help="folder media paths are relative to (default: each JSON file's folder)")
    common(llava, "sft")

    asr = commands.add_parser("asr-dir", help="a LibriSpeech-layout folder")
    asr.add_argument("root")
    asr.add_argument("--prompt", default=ASR_PROMPT, help="user instruction after the <audio> placeholder")
    common(asr, "asr")

    tf = commands.add_parser("tfds", help="a TFDS dataset prepared in array_record format")
    tf.add_argument("name", help="dataset name, optionally with config and version (name/config:1.0.0)")
    tf.add_argument("--data-dir", required=True)
    tf.add_argument("--split", default="train")
    question = tf.add_mutually_exclusive_group()
    question.add_argument("--text-field", help="the user's text (question / instruction)")
    question.add_argument("--prompt", help="a fixed user instruction, when the dataset has none")
    tf.add_argument("--answer-field", required=True, help="the assistant's text")
    tf.add_argument("--image-field")
    tf.add_argument("--audio-field")
    tf.add_argument("--sampling-rate", type=int, help="Hz of --audio-field arrays, if its feature does not say")
    tf.add_argument("--id-field", help="a field with the example id (default NAME/SPLIT[index])")
    common(tf, "sft")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.num_shards < 1:
        raise SystemExit(f"--num-shards must be at least 1, got {args.num_shards}")
    if args.command == "llava-json":
        items = list(llava_items(args.json, args.media_root, args.source, args.task))
        total = len(items)
    elif args.command == "asr-dir":
        items = asr_items(args.root, args.source, args.task, args.prompt)
        total = len(items)
    else:
        total, items = tfds_items(args)
    summary = write_shards(items, total, args.out, args.num_shards, desc=args.command)
    with open(f"{args.out}.build_summary.json", "w", encoding="utf-8") as f:
        json.dump(
            {"command": args.command, "argv": list(argv if argv is not None else sys.argv[1:]), **summary.to_dict()},
            f,
            indent=2,
        )
    print(summary.report())
    return 0 if sum(summary.shards.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
