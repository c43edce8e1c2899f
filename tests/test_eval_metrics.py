"""Eval metrics against hand-counted edits and jiwer itself, the Whisper normaliser's behaviour on
our references, option-letter parsing, and the per-stage report's files."""

import json
import math
import os

import jiwer
import pytest

from omnijax.eval import (accuracy, cer, choice_letter, choice_match, exact_match, format_table, normalize_text,
                          read_report, score, spoken_gap, update_report, wer, write_report)


def test_normalize_text_case_punctuation_numbers():
    assert normalize_text("Red.") == "red"
    assert normalize_text("Three cats, and twenty one dogs!") == "3 cats and 21 dogs"
    assert normalize_text("It's two point five [noise] um metres.") == "it is 2.5 metres"
    assert normalize_text("1,000") == "1000"
    assert normalize_text("no one has 1") == "no one has one"


def test_exact_match_uses_the_normaliser():
    assert exact_match("Red.", "red")
    assert exact_match("three", "3")
    assert exact_match("Twenty-one", "21")
    assert not exact_match("red", "blue")
    # Whisper keeps a lone one as a word ("no one", "one of") and writes a lone "1" as "one".
    assert exact_match("one apple", "1 apple")


def test_wer_one_substitution_one_deletion_over_eight_words():
    ref, hyp = "the cat sat on the mat by itself", "the dog sat on the mat by"
    assert wer([ref], [hyp]) == 0.25
    assert jiwer.wer(ref, hyp) == 0.25
    assert wer(["The cat sat on the mat, by itself."], ["the DOG sat on the mat by"]) == 0.25


def test_wer_corpus_level_and_normalisation_against_jiwer():
    refs = ["the cat sat on the mat by itself", "three red balls"]
    hyps = ["the dog sat on the mat by", "3 red ball"]
    # Raw text: 2 errors in the first pair, 2 in the second ("three"->"3", "balls"->"ball"), over 11 words.
    assert jiwer.wer(refs, hyps) == pytest.approx(4 / 11)
    # Normalised, "three" equals "3": 3 errors over 11 words (pooled, not a mean of per-pair rates).
    assert wer(refs, hyps) == pytest.approx(3 / 11)
    assert wer(refs, refs) == 0.0


def test_wer_counts_insertions_against_an_empty_reference():
    # "[noise]" normalises to "", "uh" is a filler: one inserted word ("yes") over two reference words.
    assert wer(["hello world", "[noise]"], ["hello world", "uh yes"]) == 0.5
    with pytest.raises(ValueError, match="empty after normalisation"):
        wer(["[noise]", "um"], ["a", "b"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


def test_cer_by_hand_and_against_jiwer():
    # "abc de" has 6 characters (the space counts); one substitution.
    assert cer(["abc de"], ["abd de"]) == pytest.approx(1 / 6)
    assert jiwer.cer("abc de", "abd de") == pytest.approx(1 / 6)
    assert cer(["ABC, de."], ["abd de"]) == pytest.approx(1 / 6)


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("[c]", "C"), ("a", "A"), ("The answer is B", "B"),
    ("The answer is B because it is red.", "B"), ("Answer: (c)", "C"), ("b. a red circle", "B"),
    ("A. blue", "A"), ("I pick (D) since it is largest", "D"), ("I think it's D", "D"),
    ("A red circle", None), ("The answer is a red circle", None), ("E", None), ("B or C", None), ("", None),
])
def test_choice_letter(answer, letter):
    assert choice_letter(answer) == letter


def test_choice_letter_other_option_sets_and_match():
    assert choice_letter("E", letters="ABCDE") == "E"
    assert choice_match("b", "(B) a red circle")
    assert not choice_match("A", "The answer is C")


def test_accuracy_and_score_dispatch():
    assert accuracy([("Red.", "red"), ("three", "3"), ("blue", "green"), ("cat", "dog")]) == 0.5
    assert accuracy([("A", "(A)"), ("B", "C.")], match=choice_match) == 0.5
    assert score("choice", ["A", "C", "D"], ["(A)", "The answer is B", "d."]) == {"accuracy": 2 / 3, "n": 3}
    assert score("exact", ["Paris"], ["paris."]) == {"accuracy": 1.0, "n": 1}
    asr = score("asr", ["the cat sat on the mat by itself"], ["the dog sat on the mat by"])
    assert asr["wer"] == 0.25 and asr["n"] == 1
    assert asr["cer"] == pytest.approx(jiwer.cer("the cat sat on the mat by itself", "the dog sat on the mat by"))
    with pytest.raises(ValueError, match="kinds are asr, exact, choice"):
        score("bleu", ["a"], ["a"])


def test_spoken_gap():
    got = spoken_gap([True, True, True, False], [True, False, False, False])
    assert got == {"text_acc": 0.75, "spoken_acc": 0.25, "gap": 0.5}
    with pytest.raises(ValueError, match="4 text-query results but 3 spoken-query"):
        spoken_gap([True] * 4, [True] * 3)


ROWS = [("audio_align", {"librispeech/wer": 0.0523, "n": 10}),
        ("full", {"librispeech/wer": 0.031, "mmbench/accuracy": 0.613, "loss": float("nan")})]
CHANCE = {"mmbench/accuracy": 0.25}


def test_report_round_trip(tmp_path):
    write_report(ROWS, str(tmp_path), CHANCE)
    rows, chance = read_report(str(tmp_path))
    assert rows[0] == ROWS[0]
    assert rows[1][1]["mmbench/accuracy"] == 0.613 and rows[1][1]["loss"] is None
    assert chance == CHANCE
    assert json.loads((tmp_path / "eval.json").read_text())["stages"][1]["stage"] == "full"
    md = (tmp_path / "eval.md").read_text().splitlines()
    assert md[0] == "| stage | librispeech/wer | n | mmbench/accuracy | loss |"
    assert md[2] == "| audio_align | 5.2 | 10 | – | – |"
    assert md[3] == "| full | 3.1 | – | 61.3 | – |"
    assert md[4] == "| chance | – | – | 25.0 | – |"
    assert format_table(ROWS).splitlines() == md[:4]
    assert sorted(os.listdir(tmp_path)) == ["eval.json", "eval.md"]


def test_update_report_replaces_in_place_and_appends(tmp_path):
    assert read_report(str(tmp_path)) == ([], None)
    update_report(str(tmp_path), "audio_align", {"librispeech/wer": 0.2}, chance=CHANCE)
    update_report(str(tmp_path), "vision_align", {"mmbench/accuracy": 0.4})
    update_report(str(tmp_path), "audio_align", {"librispeech/wer": 0.1})
    rows, chance = read_report(str(tmp_path))
    assert rows == [("audio_align", {"librispeech/wer": 0.1}), ("vision_align", {"mmbench/accuracy": 0.4})]
    assert chance == CHANCE
    assert "| audio_align | 10.0 | – |" in (tmp_path / "eval.md").read_text()


def test_update_report_adds_the_chance_levels_of_other_tasks(tmp_path):
    update_report(str(tmp_path), "1a", {"mmbench/accuracy": 0.4}, chance={"mmbench/accuracy": 0.25})
    update_report(str(tmp_path), "3a", {"librispeech/wer": 0.3}, chance={"librispeech/wer": 1.0})
    _, chance = read_report(str(tmp_path))
    assert chance == {"mmbench/accuracy": 0.25, "librispeech/wer": 1.0}
    assert (tmp_path / "eval.md").read_text().splitlines()[-1] == "| chance | 25.0 | 100.0 |"


def test_failed_write_keeps_old_report_and_no_temp_files(tmp_path, monkeypatch):
    write_report(ROWS[:1], str(tmp_path))
    before = (tmp_path / "eval.json").read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(ROWS, str(tmp_path))
    assert (tmp_path / "eval.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["eval.json", "eval.md"]
    assert not math.isnan(read_report(str(tmp_path))[0][0][1]["librispeech/wer"])


def _qa(i: int, question: str, answer: str):
    from data_pipelines.schema import Example, Turn

    return Example(id=f"t/{i}", source="t", task="text_instruct",
                   turns=(Turn("user", question), Turn("assistant", answer)))


def test_blind_accuracy_and_accuracy_by_template():
    from omnijax.evaluate import accuracy_by_template, blind_accuracy

    examples = [_qa(0, "What colour is the circle?", "red"), _qa(1, "What colour is the square?", "red"),
                _qa(2, "What colour is the triangle?", "blue"), _qa(3, "How many shapes are there?", "2"),
                _qa(4, "How many shapes are there?", "3"), _qa(5, "How many shapes are there?", "3"),
                _qa(6, "How many shapes are there?", "1")]
    # the most frequent answer per template: "red" (2 of 3) and "3" (2 of 4)
    assert blind_accuracy(examples) == pytest.approx(4 / 7)
    by = accuracy_by_template(examples, [True, False, True, True, True, False, False])
    assert list(by) == ["what colour is the _?", "how many shapes are there?"]
    assert by["what colour is the _?"] == {"n": 3, "accuracy": round(2 / 3, 4)}
    assert by["how many shapes are there?"] == {"n": 4, "accuracy": 0.5}


def _media(kind: str):
    import io

    import numpy as np
    import soundfile as sf
    from PIL import Image

    from data_pipelines.schema import Media

    buf = io.BytesIO()
    if kind == "audio":
        sf.write(buf, np.zeros(1600, np.float32), 16000, format="FLAC")
        return Media("audio", "flac", buf.getvalue(), sampling_rate=16000)
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return Media("image", "png", buf.getvalue())


def _converted(i: int, user: str, answer: str, media=()):
    """An example as a converter writes it (``data_pipelines.build``): its task name says nothing."""
    from data_pipelines.schema import Example, Turn

    refs = tuple(range(len(media)))
    return Example(id=f"u/{i}", source="user", task="sft", media=tuple(_media(k) for k in media),
                   turns=(Turn("user", user, refs), Turn("assistant", answer)))


def test_task_kinds_are_learned_from_the_examples():
    from data_pipelines import synth
    from omnijax.eval.kinds import choice_chance, evaluated_by_default, task_kind

    want = {"asr": "asr", "image_caption": "exact", "image_qa": "exact", "image_choice": "choice",
            "spoken_image_qa": "spoken", "video_visual_qa": "exact", "video_audio_qa": "exact",
            "text_instruct": "exact"}
    by_task = {t: [synth.to_schema_example(synth.make_example(t, "eval", 0, i)) for i in range(3)] for t in want}
    assert {t: task_kind(e) for t, e in by_task.items()} == want
    assert [t for t, e in by_task.items() if evaluated_by_default(e)] == [
        "asr", "image_qa", "image_choice", "spoken_image_qa", "video_visual_qa", "video_audio_qa"]
    assert choice_chance(by_task["image_choice"]) == 0.25

    prompt = "<audio>\nPlease give the ASR results of the given speech."  # asr-dir's
    asr = [_converted(i, prompt, "HELLO THERE WORLD", ["audio"]) for i in range(2)]
    audio_qa = [_converted(0, "<audio>\nWhat is making the sound?", "a dog", ["audio"]),
                _converted(1, "<audio>\nIs it raining?", "yes", ["audio"])]
    choice = [_converted(0, "<image>\nWhich is it?\nA. a cat\nB. a dog\nC. a bird", "C", ["image"])]
    chat = [_converted(0, "<image>\nDescribe the picture in detail.", "A long answer about it.", ["image"])]
    assert [task_kind(e) for e in (asr, audio_qa, choice, chat)] == ["asr", "exact", "choice", "exact"]
    assert [evaluated_by_default(e) for e in (asr, audio_qa, choice, chat)] == [True, True, True, False]
    assert choice_chance(choice) == pytest.approx(1 / 3)
