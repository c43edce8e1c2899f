"""Evaluate a model on held-out omni tasks: ASR WER/CER, question accuracy, the spoken-question gap.

    python -m omnijax.evaluate --ckpt W/3b --data workdirs/omni-synth [--tasks asr,image_qa] [--limit 100]
           [--out W --stage 3b]

``--ckpt``: a finished stage workdir (or an omnijax/HF model directory holding an omni model).
``--data``: a folder with one held-out shard per task, ``DATA/tasks/eval/<task>.array_record-*``
(what ``data_pipelines.synth.prepare`` writes for omni-synth, and ``data_pipelines.build --out
DATA/tasks/eval/<task>`` for a user's data); ``--tasks`` default: those the evaluator scores unasked
(``omnijax.eval.kinds.evaluated_by_default``). Answers are greedy
(``omnijax.inference.omni.OmniGenerator``), prompts prepared exactly as the stage's training pipeline
prepared them (its ``c.data.pipeline`` options, e.g. frames per video, are read from the stage).

Each task is scored by its kind, learned from its examples (``omnijax.eval.kinds``): ``asr`` ->
``<task>/wer`` and ``<task>/cer``
(jiwer, Whisper English normalisation); ``exact`` -> ``<task>/accuracy`` (normalised exact match);
``choice`` -> ``<task>/accuracy`` (the option letter); ``spoken`` -> the same image questions asked
in text and in speech: ``<task>/text_acc``, ``<task>/spoken_acc`` and their ``<task>/gap`` (the
Self-KD paper's metric). With ``--out``, the metrics become row ``--stage`` of ``OUT/eval.md`` and
``OUT/eval.json``. ``by_template`` (``evaluate(..., by_template={})``; the CLI prints it, the recipe
runner writes it to ``W/<stage>/eval_by_template.json``) splits the accuracy of ``exact`` and
``spoken`` tasks by question template: which kinds of question a model answers.

Chance (``chance_levels``): for ``choice`` tasks one over the number of options; for ``exact`` and
``spoken`` tasks the accuracy of a blind answerer that knows the eval set's most frequent answer to each
question template (the question with omni-synth's colour, shape and number words masked; other data's
questions are their own templates) but not the media -- what a model reaches from the text alone.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import time

from data_pipelines import schema
from data_pipelines.synth import COLOURS, NUMBER_WORDS, SHAPES
from omnijax import errors
from omnijax.checkpoint import assets_of, load_model
from omnijax.eval import metrics, report
from omnijax.eval.kinds import answer_of, choice_chance, evaluated_by_default, question_of, task_kind
from omnijax.inference.omni import OmniGenerator, generation_config, stage_prompt_options

_TEMPLATE_WORDS = re.compile(r"\b(" + "|".join(sorted([*COLOURS, *SHAPES, *NUMBER_WORDS], key=len, reverse=True))
                             + r")\b")
# Greedy decoding stops at the answer's end: one length for the short-answer kinds gives a stage's tasks of one
# modality (image questions, multiple choice, the spoken questions' text pass) one compiled generate.
MAX_NEW_TOKENS = {"asr": 48, "exact": 24, "choice": 24, "spoken": 24}
BATCH_SIZE = 16


def has_task(data: str, task: str) -> bool:
    """Whether ``data`` holds a held-out shard of ``task``."""
    return bool(glob.glob(os.path.join(data, "tasks", "eval", task + ".array_record-*")))


def tasks_in(data: str) -> list[str]:
    """The tasks ``data`` holds held-out shards of, by name."""
    names = (os.path.basename(p).split(".array_record-")[0]
             for p in glob.glob(os.path.join(data, "tasks", "eval", "*.array_record-*")))
    return sorted(set(names))


def default_tasks(data: str, among=None) -> tuple[str, ...]:
    """The tasks of ``data`` (of ``among``, in its order, when given) that the evaluator scores unasked
    (``omnijax.eval.kinds.evaluated_by_default``: every held-out example is read)."""
    held = tasks_in(data)
    candidates = held if among is None else [t for t in among if t in held]
    return tuple(t for t in candidates if evaluated_by_default(read_task(data, t)))


def task_files(data: str, task: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(data, "tasks", "eval", task + ".array_record-*")))
    if not files:
        raise FileNotFoundError(f"no held-out shard for task {task!r} under {data}/tasks/eval/ (build it with "
                                "data_pipelines.synth.prepare, or write DATA/tasks/eval/<task>.array_record-* shards)")
    return files


def read_task(data: str, task: str, limit: int | None = None) -> list[schema.Example]:
    examples = []
    for example in schema.read_shards(task_files(data, task)):
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    return examples


def _template(question: str) -> str:
    return _TEMPLATE_WORDS.sub("_", question.lower())


def blind_accuracy(examples: list[schema.Example]) -> float:
    """The most frequent answer per question template, scored on the same examples (module docstring)."""
    by_template = collections.defaultdict(list)
    for e in examples:
        by_template[_template(question_of(e))].append(metrics.normalize_text(answer_of(e)))
    hits = sum(collections.Counter(answers).most_common(1)[0][1] for answers in by_template.values())
    return hits / len(examples)


def chance_levels(tasks, data: str, limit: int | None = None) -> dict[str, float]:
    """Chance accuracy per task metric, on the first ``limit`` held-out examples (module docstring); ``asr``
    has none."""
    out = {}
    for task in tasks:
        examples = read_task(data, task, limit)
        kind = task_kind(examples)
        if kind == "choice":
            out[f"{task}/accuracy"] = round(choice_chance(examples), 4)
        elif kind in ("exact", "spoken"):
            key = f"{task}/accuracy" if kind == "exact" else f"{task}/text_acc"
            out[key] = round(blind_accuracy(examples), 4)
    return out


def generator(path: str, max_prompt_len: int | None = None) -> OmniGenerator:
    """An ``OmniGenerator`` for the model at ``path`` (stage workdir or model directory)."""
    loaded = load_model(path, progress=False)
    tokenizer_dir = assets_of(path)
    if not tokenizer_dir:
        raise FileNotFoundError(f"{path} carries no tokenizer (assets); the evaluator needs the model's tokenizer")
    options, seq_len = stage_prompt_options(path)
    cfg = generation_config(loaded.cfg, options.get("video_frames"))
    return OmniGenerator(cfg, loaded.params, tokenizer_dir, max_prompt_len=max_prompt_len or seq_len or 512,
                         batch_size=BATCH_SIZE, bucket=max_prompt_len or seq_len or 512, **options)


def accuracy_by_template(examples: list[schema.Example], hits: list[bool]) -> dict[str, dict]:
    """``{question template: {"n": examples, "accuracy": rate}}``, templates in order of first appearance."""
    by = collections.defaultdict(list)
    for e, hit in zip(examples, hits):
        by[_template(question_of(e))].append(bool(hit))
    return {t: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for t, v in by.items()}


def evaluate(path: str, data: str, tasks, *, limit: int | None = None, log=print, gen=None,
             by_template: dict | None = None) -> dict[str, float]:
    """Metrics of the model at ``path`` on the held-out ``tasks`` (module docstring); ``by_template``, a
    dict, receives each ``exact`` / ``spoken`` task's ``accuracy_by_template`` (text questions)."""
    missing = [t for t in tasks if not has_task(data, t)]
    if missing:
        raise FileNotFoundError(f"no held-out shard for task(s) {missing} under {data}/tasks/eval/; it holds "
                                f"{', '.join(tasks_in(data)) or 'none'} (write DATA/tasks/eval/<task>.array_record-* "
                                "shards, e.g. with data_pipelines.build --out DATA/tasks/eval/<task>)")
    gen = gen or generator(path)
    out = {}
    for task in tasks:
        start = time.perf_counter()
        examples = read_task(data, task, limit)
        kind = task_kind(examples)
        refs = [answer_of(e) for e in examples]
        hyps = [h.strip() for h in gen.answer(examples, MAX_NEW_TOKENS[kind])]
        if kind == "spoken":
            spoken = [h.strip() for h in gen.answer(examples, MAX_NEW_TOKENS[kind], spoken=True)]
            gap = metrics.spoken_gap([metrics.exact_match(r, h) for r, h in zip(refs, hyps)],
                                     [metrics.exact_match(r, h) for r, h in zip(refs, spoken)])
            out.update({f"{task}/{k}": v for k, v in gap.items()})
            if by_template is not None:
                by_template[task] = accuracy_by_template(examples, [metrics.exact_match(r, h)
                                                                    for r, h in zip(refs, hyps)])
        else:
            scores = metrics.score(kind, refs, hyps)
            out.update({f"{task}/{k}": v for k, v in scores.items() if k != "n"})
            if kind == "exact" and by_template is not None:
                by_template[task] = accuracy_by_template(examples, [metrics.exact_match(r, h)
                                                                    for r, h in zip(refs, hyps)])
        log(f"  eval {task}: {len(examples)} examples in {time.perf_counter() - start:.0f} s; e.g. "
            f"{refs[0]!r} -> {hyps[0]!r}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m omnijax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="finished stage workdir, or omnijax/HF model directory")
    p.add_argument("--data", required=True, help="folder with DATA/tasks/eval/<task>.array_record-* shards")
    p.add_argument("--tasks", help="comma-separated eval tasks (default: those of --data the evaluator scores unasked)")
    p.add_argument("--limit", type=int, help="examples per task (default: all)")
    p.add_argument("--out", help="write/update OUT/eval.md and OUT/eval.json")
    p.add_argument("--stage", help="the row name in the report (default: the checkpoint folder's name)")
    args = p.parse_args(argv)
    try:
        tasks = tuple(t for t in args.tasks.split(",") if t) if args.tasks else default_tasks(args.data)
        templates = {}
        result = evaluate(args.ckpt, args.data, tasks, limit=args.limit, by_template=templates)
    except (FileNotFoundError, ValueError) as e:  # damaged shards too (omnijax.errors)
        return errors.report(e)
    for task, rows in templates.items():
        print(f"{task} by question template:")
        for template, row in rows.items():
            print(f"  {100 * row['accuracy']:5.1f}%  ({row['n']:3d})  {template}")
    stage = args.stage or os.path.basename(os.path.normpath(args.ckpt))
    if args.out:
        rows = report.update_report(args.out, stage, result, chance=chance_levels(tasks, args.data, args.limit))
        print(report.format_table(rows))
    else:
        print(report.format_table([(stage, result)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
