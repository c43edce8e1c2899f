"""How a held-out task is scored, learned from its examples -- what the data carries, not the task's name --
so a user's converted data is scored as omni-synth is.

    spoken   every example carries a ``spoken_question``: the question asked in text and in speech (the
             Self-KD paper's gap)
    choice   every question lists lettered options, one a line (``A. ...``, ``B. ...``), and its answer is
             one of their letters: the option letter is matched
    asr      every example's one media item is an audio clip, under one instruction shared by the task
             (``data_pipelines.build asr-dir``'s prompt): the answer is a transcript (WER, CER)
    exact    anything else: the answer, matched after normalisation

A task is evaluated unasked (``evaluated_by_default``) when its examples hold media -- what the evaluator
measures is answers about media -- and, when it is matched exactly, every answer is at most
``SHORT_ANSWER`` words: longer free text (captions, descriptions) has no fair exact-match score, so it is
evaluated only when named.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from data_pipelines import schema

KINDS = ("asr", "exact", "choice", "spoken")
SHORT_ANSWER = 2  # words
_OPTION = re.compile(r"^\s*([A-Z])\.\s+\S", re.MULTILINE)  # an option line: "B. a red circle"


def answer_of(example: schema.Example) -> str:
    """The first assistant turn's text."""
    return next(t.text for t in example.turns if t.role == "assistant")


def question_of(example: schema.Example) -> str:
    """The first user turn's text without its media placeholders."""
    text = next(t.text for t in example.turns if t.role == "user")
    return re.sub(r"<(image|video|audio)>", "", text).strip()


def option_letters(example: schema.Example) -> str:
    """The letters of the options the question lists, in order ("ABCD"); empty when it lists none."""
    return "".join(_OPTION.findall(question_of(example)))


def _example_kind(example: schema.Example) -> str:
    if example.spoken_question is not None:
        return "spoken"
    letters = option_letters(example)
    if len(letters) >= 2 and answer_of(example).strip() in letters:
        return "choice"
    if [m.kind for m in example.media] == ["audio"]:
        return "asr"
    return "exact"


def task_kind(examples: Sequence[schema.Example]) -> str:
    """The kind of a task (module docstring) from its held-out examples."""
    if not examples:
        raise ValueError("the kind of a task with no examples: give at least one held-out example")
    kinds = {_example_kind(e) for e in examples}
    kind = kinds.pop() if len(kinds) == 1 else "exact"
    if kind == "asr" and len({question_of(e) for e in examples}) > 1:
        return "exact"  # questions about audio, not one instruction to transcribe it
    return kind


def evaluated_by_default(examples: Sequence[schema.Example]) -> bool:
    """Whether the evaluator scores the task unasked (module docstring)."""
    if not examples or not all(e.media for e in examples):
        return False
    return task_kind(examples) != "exact" or all(len(answer_of(e).split()) <= SHORT_ANSWER for e in examples)


def choice_chance(examples: Sequence[schema.Example]) -> float:
    """Chance accuracy of a multiple-choice task: one over the number of options, averaged over its examples."""
    return sum(1 / len(option_letters(e)) for e in examples) / len(examples)
