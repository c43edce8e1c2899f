"""omni-synth and eSpeak NG: determinism, splits, real speech, and answers checked against decoded media."""

import io
import json
import operator
import os
import re
import subprocess
import sys
import threading

import av
import librosa
import numpy as np
import pytest
import soundfile as sf
from array_record.python import array_record_module
from PIL import Image

from data_pipelines import schema, speech, synth

SEED = 0
FILL_RATIO = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding-box area


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("omni_synth"))
    synth.main(["--out", out, "--seed", str(SEED), "--size", "tiny"])
    return out


@pytest.fixture(scope="module")
def examples():
    return {split: list(synth.generate(split, SEED, "tiny")) for split in synth.SPLITS}


def _decode_audio(item):
    waveform, rate = sf.read(io.BytesIO(item["data"]), dtype="float32")
    assert rate == item["sampling_rate"] == 16_000
    return waveform


def _decode_video(item):
    with av.open(io.BytesIO(item["data"])) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _background(pixels):
    """The most frequent colour of an image `[h, w, 3]`."""
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()].astype(int)


def _answer(example):
    return example["turns"][1]["text"]


# ---------------------------------------------------------------- speech


def test_synthesize_is_deterministic_and_thread_safe():
    text = "the blue square is on the left"
    first, rate = speech.synthesize(text, "en-us+f2", 160, 40)
    speech.synthesize("something else entirely", "en-gb-scotland", 210, 65)
    again, _ = speech.synthesize(text, "en-us+f2", 160, 40)
    assert rate == speech.SAMPLE_RATE and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)

    requests = [("one two three", v, 150 + 10 * i, 40 + 5 * i) for i, v in enumerate(speech.ENGLISH_VOICES)]
    expected = [speech.synthesize(*r)[0] for r in requests]
    results = [None] * len(requests)

    def speak(i):
        results[i] = speech.synthesize(*requests[i])[0]

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_synthesize_is_the_same_in_another_process():
    """Breathy variants (f2, f3) draw noise from a seed espeak takes from the clock: it must be fixed."""
    requests = [("seven blue squares", "en-us+f3", 200, 60), ("the cat sat", "en+f2", 150, 40)]
    code = (
        "import sys; from data_pipelines import speech; "
        f"[sys.stdout.buffer.write(speech.synthesize(*r)[0].tobytes()) for r in {requests!r}]"
    )
    here = b"".join(speech.synthesize(*r)[0].tobytes() for r in requests)
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60).stdout
    assert here == there


def test_synthesize_16k_and_errors(monkeypatch):
    waveform = speech.synthesize_16k("seven green triangles", "en", 175, 50)
    native, rate = speech.synthesize("seven green triangles", "en", 175, 50)
    assert waveform.dtype == np.float32
    assert abs(waveform.size / 16_000 - native.size / rate) < 0.01
    with pytest.raises(speech.SpeechSynthesisError, match="no voice 'xx'"):
        speech.synthesize("hello", "xx")
    with pytest.raises(ValueError, match="rate must be 80-450"):
        speech.synthesize("hello", rate=20)
    # a library that cannot load names itself and the fix
    monkeypatch.setattr(speech, "_espeak_paths", lambda: ("/nonexistent/libespeak-ng.so", "/nonexistent"))
    monkeypatch.setattr(speech, "_client", None)
    with pytest.raises(speech.SpeechSynthesisError, match="cannot load libespeak-ng.*espeakng-loader"):
        speech.synthesize("hello")


def test_speech_is_real_and_plausibly_timed(examples):
    clips = []
    for example in examples["train"] + examples["eval"]:
        if example["task"] != "sound_qa":  # speech; sounds: tests/test_synth_sounds.py
            clips += [m for m in example["media"] if m["kind"] == "audio"]
        if example["spoken_question"] is not None:
            clips.append(example["spoken_question"])
    assert len(clips) >= 30
    for clip in clips:
        waveform = _decode_audio(clip)
        text = clip["metadata"]["text"] if "metadata" in clip else clip["text"]
        words = len(text.split())
        seconds = waveform.size / 16_000
        assert 0.15 * words <= seconds <= 0.9 * words, (text, seconds)  # 130-220 wpm, short words
        frame_rms = librosa.feature.rms(y=waveform, frame_length=400, hop_length=160)[0]
        assert np.sqrt(np.mean(waveform**2)) > 0.02, text
        assert np.mean(frame_rms > 0.01) > 0.5, f"{text!r}: mostly silence"
        assert frame_rms.std() / frame_rms.mean() > 0.3, f"{text!r}: no syllable structure"


def test_speech_varies_across_examples(examples):
    settings, seconds_per_char = set(), []
    for example in examples["train"]:
        if example["task"] == "asr":
            item = example["media"][0]
            meta = item["metadata"]
            settings.add((meta["voice"], meta["rate"], meta["pitch"]))
            seconds_per_char.append(meta["num_samples"] / 16_000 / len(meta["text"]))
    assert len(settings) == len(seconds_per_char)  # every clip its own voice setting
    voices = {v.split("+")[0] for v, _, _ in settings}
    assert len(voices) >= 3
    rates = np.array([r for _, r, _ in settings])
    assert rates.max() - rates.min() >= 30
    assert np.std(seconds_per_char) / np.mean(seconds_per_char) > 0.05


# ---------------------------------------------------------------- corpus structure


def test_default_size_has_more_train_examples_of_the_cheap_tasks():
    counts = synth.split_counts("default")
    assert counts["eval"] == dict.fromkeys(synth.TASKS, 100)
    assert counts["train"]["image_caption"] == counts["train"]["image_qa"] == 10_000
    assert counts["train"]["asr"] == 3000 and counts["train"]["video_audio_qa"] == 1000
    assert counts["train"]["aspect_qa"] == 10_000 and counts["train"]["sound_qa"] == 3000
    assert counts["train"]["aspect_video_qa"] == 3000
    assert sum(counts["train"].values()) == 4 * 10_000 + 3 * 3000 + 4 * 1000
    # round-robin: example i of every task that has one, so a prefix of the stream mixes all tasks
    tiny = [e["task"] for e in synth.generate("eval", size="tiny")]
    assert tiny[:len(synth.TASKS)] == list(synth.TASKS) and len(tiny) == 3 * len(synth.TASKS)
    with pytest.raises(ValueError, match="unknown omni-synth size 'huge'"):
        synth.split_counts("huge")


def test_build_writes_every_task_in_both_splits_and_caches(corpus_dir, examples, capsys):
    manifest = json.load(open(os.path.join(corpus_dir, synth.MANIFEST)))
    assert manifest["seed"] == SEED and manifest["size"] == "tiny" and manifest["version"] == synth.VERSION
    ids = {}
    for split in synth.SPLITS:
        paths = [os.path.join(corpus_dir, f) for f in manifest["splits"][split]["files"]]
        for p in paths:  # the options the shard was written with
            reader = array_record_module.ArrayRecordReader(p)
            assert reader.writer_options_string().startswith("group_size:1")
            reader.close()
        records = list(schema.read_shards(paths))
        ids[split] = {r.id for r in records}
        assert len(ids[split]) == len(records) == sum(synth.split_counts("tiny")[split].values())
        assert {r.task for r in records} == set(synth.TASKS)
        for task in synth.TASKS:
            assert manifest["splits"][split]["tasks"][task]["examples"] == synth.split_counts("tiny")[split][task]
        # the shards hold exactly the generated examples, byte for byte
        fresh = {e["id"]: synth.to_schema_example(e).to_bytes() for e in examples[split]}
        assert all(fresh[r.id] == r.to_bytes() for r in records)
    assert not ids["train"] & ids["eval"]

    mtime = os.path.getmtime(os.path.join(corpus_dir, synth.MANIFEST))
    capsys.readouterr()
    synth.main(["--out", corpus_dir, "--seed", str(SEED), "--size", "tiny"])
    assert "skipping" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(corpus_dir, synth.MANIFEST)) == mtime
    assert not synth.is_complete(corpus_dir, SEED + 1, "tiny")


def test_same_seed_same_bytes_other_seed_other_bytes():
    first = [synth.to_schema_example(e).to_bytes() for _, e in zip(range(16), synth.generate("train", SEED, "tiny"))]
    # rebuilt one at a time in reverse order: each example has its own random stream
    tasks = synth.TASKS
    again = [synth.make_example(tasks[i % len(tasks)], "train", SEED, i // len(tasks)) for i in reversed(range(16))]
    assert first == [synth.to_schema_example(e).to_bytes() for e in reversed(again)]
    other = synth.generate("train", SEED + 1, "tiny")
    other = [synth.to_schema_example(e).to_bytes() for _, e in zip(range(16), other)]
    assert all(a != b for a, b in zip(first, other))


def test_a_narrated_video_is_the_same_bytes_every_time_it_is_built():
    # x264's B-frame lookahead gave the same frames other bytes now and then (this held-out example: 0 to 8 of 30
    # builds in one process, with speech synthesised between them); the corpus encodes without B-frames.
    builds = {synth.make_example("video_audio_qa", "eval", SEED, 11)["media"][0]["data"] for _ in range(60)}
    assert len(builds) == 1


def test_spoken_questions_match_the_written_question(examples):
    for example in examples["train"]:
        question = example["spoken_question"]
        if example["task"] != "spoken_image_qa":
            assert question is None
            continue
        assert example["turns"][0]["text"] == "<image>\n" + question["text"]
        assert question["metadata"]["text"] == question["text"]
        student = synth.to_schema_example(example).spoken_view()
        assert student.turns[0].text == "<image>\n<audio>"
        assert [m.kind for m in student.media] == ["image", "audio"]


def test_asr_and_text_answers(examples):
    for example in examples["train"] + examples["eval"]:
        if example["task"] == "asr":
            assert example["turns"][0]["text"] == "<audio>\n" + synth.ASR_PROMPT
            assert _answer(example) == example["media"][0]["metadata"]["text"]
        if example["task"] == "text_instruct":
            assert not example["media"]
            question = example["turns"][0]["text"]
            arithmetic = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", question)
            if arithmetic:
                a, op, b = arithmetic.groups()
                value = {"+": operator.add, "-": operator.sub, "*": operator.mul}[op](int(a), int(b))
                assert int(_answer(example)) == value
            if question.startswith("Reverse"):
                assert _answer(example).split() == question.split(": ")[1].split()[::-1]
            digits = re.fullmatch(r"Write (\w+) in digits\.", question)
            if digits:
                assert synth.NUMBER_WORDS.index(digits.group(1)) == int(_answer(example))


# ---------------------------------------------------------------- images


def _regions(pixels):
    """{colour name: (pixel count, shape from the bounding-box fill ratio, centre x)} for the colours present."""
    found = {}
    for name, rgb in synth.COLOURS.items():
        mask = np.all(pixels == rgb, axis=-1)
        if mask.any():
            ys, xs = np.nonzero(mask)
            fill = mask.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
            shape = min(FILL_RATIO, key=lambda s: abs(FILL_RATIO[s] - fill))
            found[name] = (int(mask.sum()), shape, xs.mean())
    return found


def test_images_show_the_stated_shapes_and_colours(examples):
    checked = 0
    for example in examples["train"] + examples["eval"]:
        if not example["task"].startswith(("image_", "spoken_image")):
            continue
        item = example["media"][0]
        pixels = np.asarray(Image.open(io.BytesIO(item["data"])).convert("RGB"))
        assert pixels.shape == (64, 64, 3) and item["size"] == [64, 64]
        regions = _regions(pixels)
        assert all(count >= 60 for count, _, _ in regions.values())
        described = {s["colour"]: s["shape"] for s in example["metadata"]["scene"]["shapes"]}
        assert {c: s for c, (_, s, _) in regions.items()} == described
        answer = _answer(example)
        if example["task"] == "image_caption":
            assert dict(re.findall(r"an? (\w+) (circle|square|triangle)", answer)) == described
        elif example["task"] == "image_choice":
            options = re.findall(r"^([A-D])\. (.*)$", example["turns"][0]["text"], flags=re.M)
            right = [letter for letter, text in options if dict(re.findall(r"an? (\w+) (\w+)", text)) == described]
            assert right == [answer] and len(options) == 4
        else:
            question = example["turns"][0]["text"]
            if question.startswith("<image>\nWhat colour is the "):
                shape = question.split()[-1].rstrip("?")
                assert described[answer] == shape
            elif question.endswith("furthest to the left?"):
                assert answer == min(regions.values(), key=lambda r: r[2])[1]
            elif question.startswith("<image>\nWhich shape is "):
                assert described[question.split()[-1].rstrip("?")] == answer
            elif question.startswith("<image>\nHow many"):
                assert int(answer) == len(regions)
            elif question.startswith("<image>\nIs there a "):
                colour, shape = question.split()[-2:]
                assert answer == ("yes" if described.get(colour) == shape.rstrip("?") else "no")
        checked += 1
    assert checked == 4 * sum(synth.SIZES["tiny"].values())


# ---------------------------------------------------------------- videos


def test_video_answers_follow_the_frames_and_the_audio(examples):
    directions = set()
    for example in examples["train"] + examples["eval"]:
        if not example["task"].startswith("video_"):
            continue
        video, audio = example["media"]
        assert (video["kind"], video["format"], audio["kind"], audio["format"]) == ("video", "mp4", "audio", "flac")
        assert example["turns"][0]["text"].startswith("<video><audio>\n")
        frames = _decode_video(video)
        assert frames.shape == (synth.VIDEO_FRAMES, 64, 64, 3)
        background = _background(frames[0])
        masks = np.abs(frames.astype(int) - background).sum(-1) > 90
        centroids = np.array([np.argwhere(m).mean(0) for m in masks])  # (y, x) per frame
        dy, dx = centroids[-1] - centroids[0]
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert max(abs(dx), abs(dy)) > 20 and min(abs(dx), abs(dy)) < 2
        shape_rgb = np.concatenate([f[m] for f, m in zip(frames, masks)]).astype(int)
        colour = min(synth.COLOURS, key=lambda c: np.abs(np.median(shape_rgb, 0) - synth.COLOURS[c]).sum())
        narration = example["metadata"]["narration"]
        question, answer = example["turns"][0]["text"], _answer(example)
        assert audio["metadata"]["text"] == narration["text"]
        if example["task"] == "video_visual_qa":
            assert answer not in narration["text"].split()  # the audio does not give it away
            if "Which way" in question:
                assert answer == seen
                directions.add(seen)
            elif "What colour" in question:
                assert answer == colour
        else:
            assert answer == narration["value"]
            if narration["kind"] == "colour":
                assert answer != colour
                distance = np.abs(frames.astype(int) - synth.COLOURS[answer]).sum(-1)
                assert distance.min() > 60, f"the narrated colour {answer} appears in the frames"
            else:
                assert synth.NUMBER_WORDS[int(answer)] in narration["text"].split()
                assert int(answer) in synth.SPOKEN_NUMBERS  # a number the ASR sentences also say
    assert directions  # the tiny corpus asks at least one direction question


def test_narrations_speak_only_words_the_asr_sentences_teach(examples):
    """The speech tower learns from the ASR sentences alone: a narration in other words is heard as the
    nearest sentence it knows, and its questions cannot be answered from the audio."""
    rng = np.random.default_rng(0)
    heard = {word for _ in range(3000) for word in synth.sentences.sentence(rng).split()}
    narrations = [e["metadata"]["narration"]["text"] for e in examples["train"] + examples["eval"]
                  if e["task"] in ("video_visual_qa", "video_audio_qa")]
    assert narrations
    for text in narrations:
        assert set(text.split()) <= heard, (text, set(text.split()) - heard)
