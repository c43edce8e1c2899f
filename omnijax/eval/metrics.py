"""Scores for generated answers: WER/CER for ASR, exact match for short answers, the option letter
for multiple choice, and the text-query vs spoken-query gap of the Self-KD paper.

Every comparison goes through ``normalize_text`` (Whisper's English normaliser) on both sides, so
case, punctuation and spelled numbers ("twenty one" vs "21") do not count as errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

import jiwer
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer


@lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    # The British->American spelling table normally comes from a Whisper tokenizer's normalizer.json;
    # runs have no downloads, so it is empty and "colour" stays "colour".
    return EnglishTextNormalizer({})


def normalize_text(s: str) -> str:
    """Whisper's English normalisation (``transformers``' ``EnglishTextNormalizer``).

    Lowercases; drops punctuation, words in brackets or parentheses and fillers (um, hmm); expands
    contractions ("it's" -> "it is"); writes spelled numbers as digits ("three" -> "3", "twenty one"
    -> "21", "two point five" -> "2.5", "first" -> "1st"); a lone one goes the other way ("1 apple"
    -> "one apple"), since Whisper keeps "no one" and "one of" as words. The spelling table is empty
    (it lives in a tokenizer's normalizer.json, which needs a download), so British spellings stay.
    """
    return _normalizer()(s).strip()


def _normalized_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: "
                         "pass one hypothesis per reference")
    refs = [normalize_text(r) for r in references]
    if not any(refs):
        raise ValueError(f"all {len(refs)} references are empty after normalisation: "
                         "an error rate needs reference words")
    return refs, [normalize_text(h) for h in hypotheses]


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words, after
    ``normalize_text`` on both sides.

    A reference that is empty after normalisation (silence, a filler) stays in: its hypothesis words
    count as insertions, so hallucinating on silence is penalised. Raises if every reference is empty.
    """
    return float(jiwer.wer(*_normalized_pairs(references, hypotheses)))


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate after ``normalize_text`` (spaces are characters); empty
    references are handled as in ``wer``."""
    return float(jiwer.cer(*_normalized_pairs(references, hypotheses)))


def exact_match(reference: str, hypothesis: str) -> bool:
    """Equal after ``normalize_text``: "Red." matches "red", "three" matches "3"."""
    return normalize_text(reference) == normalize_text(hypothesis)


def _closed_letter(letters: str) -> str:
    """A regex for an option letter of either case, maybe bracketed, closed by ) ] . : , or the end."""
    options = re.escape(letters.upper() + letters.lower())
    return rf"[\(\[]?([{options}])(?:[\)\]\.:,]|\s*$)"


def choice_letter(hypothesis: str, letters: str = "ABCD") -> str | None:
    """The option letter a multiple-choice answer gives, uppercase; None if it gives none.

    Tried in order: the answer opens with the letter ("B", "B.", "(B)", "b. a red circle"); the letter
    follows "answer", "option" or "choice" ("The answer is B", "Answer: (c)"); a bracketed letter
    anywhere ("I pick (D) because"); else a single distinct capital option letter standing alone ("I
    think B"), where "A" followed by a lowercase word is the article, not an option.
    """
    closed, upper = _closed_letter(letters), re.escape(letters.upper())
    found = (re.match(rf"\s*{closed}", hypothesis)
             or re.search(rf"(?i:\b(?:answer|option|choice)\b)(?:\s+is)?[\s:]*(?:{closed}|[\(\[]?([{upper}])\b)",
                          hypothesis)
             or re.search(rf"[\(\[]([{upper + upper.lower()}])[\)\]]", hypothesis))
    if found:
        return next(g for g in found.groups() if g).upper()
    alone = set(re.findall(rf"\b(?!A\s+[a-z])([{upper}])\b", hypothesis))
    return alone.pop() if len(alone) == 1 else None


def choice_match(reference_letter: str, hypothesis: str, letters: str = "ABCD") -> bool:
    """Whether the hypothesis picks the reference option letter (case-insensitive)."""
    return choice_letter(hypothesis, letters) == reference_letter.strip().upper()


def accuracy(pairs: Iterable[tuple[str, str]], match: Callable[[str, str], bool] = exact_match) -> float:
    """Fraction of (reference, hypothesis) pairs for which ``match`` holds."""
    hits = [bool(match(r, h)) for r, h in pairs]
    if not hits:
        raise ValueError("accuracy of no pairs: pass at least one (reference, hypothesis) pair")
    return sum(hits) / len(hits)


def spoken_gap(text_correct: Sequence[bool], spoken_correct: Sequence[bool]) -> dict[str, float]:
    """Accuracy with text queries, with the same queries spoken, and their gap (text - spoken), as in
    the Self-KD paper; both lists score the same items in the same order."""
    if len(text_correct) != len(spoken_correct):
        raise ValueError(f"{len(text_correct)} text-query results but {len(spoken_correct)} spoken-query results: "
                         "score the same items with both query kinds")
    if not text_correct:
        raise ValueError("spoken_gap of no items: pass at least one result per query kind")
    text_acc = sum(map(bool, text_correct)) / len(text_correct)
    spoken_acc = sum(map(bool, spoken_correct)) / len(spoken_correct)
    return {"text_acc": text_acc, "spoken_acc": spoken_acc, "gap": text_acc - spoken_acc}


TASK_KINDS = ("asr", "exact", "choice")


def score(task_kind: str, references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float | int]:
    """The evaluator's scores for one task: 'asr' -> {wer, cer, n}; 'exact' and 'choice' -> {accuracy, n}."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: "
                         "pass one hypothesis per reference")
    if task_kind == "asr":
        return {"wer": wer(references, hypotheses), "cer": cer(references, hypotheses), "n": len(references)}
    if task_kind in ("exact", "choice"):
        match = exact_match if task_kind == "exact" else choice_match
        return {"accuracy": accuracy(zip(references, hypotheses), match), "n": len(references)}
    raise ValueError(f"unknown task kind {task_kind!r}: kinds are {', '.join(TASK_KINDS)}")
