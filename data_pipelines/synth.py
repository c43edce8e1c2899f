"""omni-synth: a small synthetic omni-modal corpus, deterministic from a seed, built on a CPU in about two minutes.

Every task of the recipes has a thousand or more training examples a tiny model can learn (`split_counts`),
with answers that are checkable from the media: coloured shapes on a plain background (captions, questions, multiple
choice), real speech from eSpeak NG (ASR over a closed vocabulary of about 150 words; the image
questions spoken, for Self-KD), short videos of a moving shape with a narrated audio track whose
questions need either the frames or the audio, and text-only instructions.

An example is a plain dict:

    id               "omni-synth/<split>/<task>/<index>"; unique across splits
    task             one of TASKS
    source           "omni-synth"
    split            "train" or "eval"
    turns            [{"role": "user" | "assistant", "text": ...}]; the user text holds one placeholder
                     `<image>`, `<video>` or `<audio>` per media item, in the order of `media`
    media            [{"kind": "image" | "video" | "audio", "format": "png" | "mp4" | "flac",
                       "data": encoded bytes, "size": [width, height] (image, video), "fps" (video),
                       "sampling_rate" (audio), "metadata": {...}}]; audio metadata names the text
                       spoken and the voice, rate and pitch that spoke it
    spoken_question  None, or the question of the first user turn (its text after the placeholders)
                     as speech: {"format": "flac", "data": bytes, "sampling_rate": 16000,
                     "text": question, "metadata": {...}}; a Self-KD student input replaces that text
                     with `<audio>` and appends this clip
    metadata         ground truth the answers were made from (scene, motion, narration, ...)

`to_schema_example` turns it into a `data_pipelines.schema.Example` (the per-item and per-example
metadata are not part of the record schema and stay behind).

Images are 64x64 PNG (exact colours), videos 8 frames of 64x64 at 4 fps in MP4 (H.264), audio is
16 kHz mono FLAC. Each example is drawn from its own random stream keyed by (seed, split, task,
index), so any example can be rebuilt alone and the eval split (its own streams) never shares an id
with train. `python -m data_pipelines.synth --out DIR` writes the corpus (see `build`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from data_pipelines import media, schema, speech

NAME = "omni-synth"
VERSION = 5  # bump when the content of any example changes: a cached corpus of another version is rebuilt
SPLITS = ("train", "eval")
TASKS = (
    "image_caption",
    "image_qa",
    "image_choice",
    "spoken_image_qa",
    "asr",
    "video_visual_qa",
    "video_audio_qa",
    "text_instruct",
)
# The media kinds each task's examples hold (a spoken question adds audio: ``Example.spoken_view``).
TASK_MEDIA = {
    "image_caption": ("image",),
    "image_qa": ("image",),
    "image_choice": ("image",),
    "spoken_image_qa": ("image", "audio"),
    "asr": ("audio",),
    "video_visual_qa": ("video", "audio"),
    "video_audio_qa": ("video", "audio"),
    "text_instruct": (),
}
# Examples per task and split. `default` builds in about two minutes on one CPU core, `tiny` in seconds.
SIZES = {
    "default": {"train": 1000, "eval": 100},
    "tiny": {"train": 6, "eval": 3},
}
# The default size's train examples of the tasks that need more than 1000: the image tasks cost a
# millisecond each, and on 1000 scenes a tiny model learns them by heart (the colours of a training
# caption 97% right, of a held-out one 60%) instead of learning to see; ASR sentences likewise.
DEFAULT_TRAIN = {"image_caption": 10_000, "image_qa": 10_000, "image_choice": 10_000, "asr": 3000}
ASR_PROMPT = "Please give the ASR results of the given speech."  # Ola's ASR instruction
CAPTION_PROMPTS = ("Describe the image briefly.", "What is in the picture?", "Write a short caption for this image.")

IMAGE_SIZE = 64
VIDEO_FRAMES = 8
VIDEO_FPS = 4
AUDIO_RATE = 16_000

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (205, 205, 205), "dark grey": (60, 60, 60)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
# The numbers the ASR sentences and the narrations say: a narration only uses words the speech data teaches.
SPOKEN_NUMBERS = range(2, 13)

# A closed vocabulary of about 150 common words for the ASR sentences, next to the shape, colour and
# number words: each word is heard often enough in a thousand utterances for a tiny model to learn it.
NOUNS = (
    "apple ball bird boat book box bread car cat chair cloud cup dog door egg fish flower garden hat horse "
    "house key lamp letter moon mountain paper park pencil phone river road school ship shoe sky star "
    "table teacher tower train tree window"
).split()
ADJECTIVES = "big small old new long short happy sad warm cold bright dark fast slow clean quiet".split()
VERBS_PAST = "saw found took made painted opened carried pushed watched cleaned".split()
VERBS_BASE = "open close carry push watch clean move find take paint".split()
PREPOSITIONS = "near behind under above beside inside".split()
NAMES = "anna ben clara david emma jack kate leo mia sam".split()
IRREGULAR_PLURALS = {"fish": "fish"}
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")


def _rng(seed: int, split: str, task: str, index: int) -> np.random.Generator:
    """The random stream of one example: keyed by everything that names it, so examples are independent."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), TASKS.index(task), index]))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


# ---------------------------------------------------------------- media


def _speech_item(text: str, rng: np.random.Generator) -> dict:
    """`text` spoken by a voice drawn from `rng` -> an audio media item (FLAC, 16 kHz)."""
    voice = speech.VoiceParams.sample(rng)
    waveform = speech.synthesize_16k(text, voice.voice, voice.rate, voice.pitch)
    return {
        "kind": "audio",
        "format": "flac",
        "data": media.encode_flac(waveform, AUDIO_RATE),
        "sampling_rate": AUDIO_RATE,
        "metadata": {
            "num_samples": int(waveform.size),
            "text": text,
            "voice": voice.voice,
            "rate": voice.rate,
            "pitch": voice.pitch,
        },
    }


# ---------------------------------------------------------------- scenes of shapes


def _sample_scene(rng: np.random.Generator) -> dict:
    """1-3 shapes of distinct kinds and colours at non-overlapping places on a plain background."""
    count = int(rng.integers(1, 4))
    kinds = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:count]]
    colour_names = list(COLOURS)
    colours = [colour_names[i] for i in rng.permutation(len(colour_names))[:count]]
    background = _pick(rng, list(BACKGROUNDS))
    while True:
        boxes = []
        for _ in range(count):
            side = int(rng.integers(14, 23))
            x0, y0 = (int(v) for v in rng.integers(2, IMAGE_SIZE - side - 2, size=2))
            boxes.append([x0, y0, x0 + side, y0 + side])
        if all(_apart(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            break
    shapes = [{"shape": k, "colour": c, "box": b} for k, c, b in zip(kinds, colours, boxes)]
    shapes.sort(key=lambda s: s["box"][0] + s["box"][2])  # left to right, the order captions use
    return {"background": background, "shapes": shapes}


def _apart(a: list[int], b: list[int], gap: int = 3) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: list[int], rgb: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=rgb)


def render_scene(scene: dict) -> np.ndarray:
    """The scene's pixels `[64, 64, 3]` uint8, drawn without anti-aliasing (only the named colours appear)."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(image)
    for s in scene["shapes"]:
        _draw(draw, s["shape"], s["box"], COLOURS[s["colour"]])
    return np.asarray(image)


def _a(word: str) -> str:
    """The indefinite article for `word`."""
    return "an" if word[0] in "aeiou" else "a"


def _describe(items: list[tuple[str, str]]) -> str:
    """[(colour, shape), ...] -> "a red circle, a blue square and a green triangle"."""
    parts = [f"{_a(colour)} {colour} {shape}" for colour, shape in items]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _items(scene: dict) -> list[tuple[str, str]]:
    return [(s["colour"], s["shape"]) for s in scene["shapes"]]


def _image_question(scene: dict, rng: np.random.Generator, spatial: bool = True) -> tuple[str, str, str]:
    """A question about the scene with a short answer -> (kind, question, answer); `spatial=False` leaves
    out questions about positions (for scenes described in words, which do not give them)."""
    shapes = scene["shapes"]
    kinds = ["colour_of_shape", "shape_of_colour", "count", "exists"]
    centres = sorted((s["box"][0] + s["box"][2]) / 2 for s in shapes)
    if spatial and len(shapes) >= 2 and centres[1] - centres[0] >= 8:
        kinds.append("leftmost")
    kind = _pick(rng, kinds)
    target = _pick(rng, shapes)
    if kind == "colour_of_shape":
        return kind, f"What colour is the {target['shape']}?", target["colour"]
    if kind == "shape_of_colour":
        return kind, f"Which shape is {target['colour']}?", target["shape"]
    if kind == "count":
        return kind, "How many shapes are there?", str(len(shapes))
    if kind == "leftmost":
        return kind, "Which shape is furthest to the left?", shapes[0]["shape"]
    present = set(_items(scene))
    if rng.random() < 0.5:
        colour, shape = _pick(rng, sorted(present))
        return kind, f"Is there {_a(colour)} {colour} {shape}?", "yes"
    absent = sorted((c, s) for c in COLOURS for s in SHAPES if (c, s) not in present)
    colour, shape = _pick(rng, absent)
    return kind, f"Is there {_a(colour)} {colour} {shape}?", "no"


def _distractors(scene: dict, rng: np.random.Generator, count: int = 3) -> list[str]:
    """Wrong descriptions close to the right one: a colour or a shape changed, two colours swapped, or a
    shape left out (MMAlign-style attribute-binding distractors)."""
    items = _items(scene)
    truth = frozenset(items)
    candidates = []
    for i, (colour, shape) in enumerate(items):
        for other in COLOURS:
            if other not in {c for c, _ in items}:
                candidates.append(items[:i] + [(other, shape)] + items[i + 1 :])
        for other in SHAPES:
            if other not in {s for _, s in items}:
                candidates.append(items[:i] + [(colour, other)] + items[i + 1 :])
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            swapped = list(items)
            swapped[i], swapped[j] = (items[j][0], items[i][1]), (items[i][0], items[j][1])
            candidates.append(swapped)
    if len(items) > 1:
        candidates += [items[:i] + items[i + 1 :] for i in range(len(items))]
    unique = {frozenset(c): c for c in candidates if frozenset(c) != truth}
    keys = sorted(unique, key=lambda k: _describe(unique[k]))
    return [_describe(unique[keys[i]]) for i in rng.permutation(len(keys))[:count]]


def _image_media(scene: dict) -> dict:
    return {
        "kind": "image",
        "format": "png",
        "data": media.encode_png(render_scene(scene)),
        "size": [IMAGE_SIZE, IMAGE_SIZE],
        "metadata": {},
    }


# ---------------------------------------------------------------- tasks


def _image_caption(rng: np.random.Generator) -> dict:
    scene = _sample_scene(rng)
    prompt = _pick(rng, CAPTION_PROMPTS)
    return _example([_image_media(scene)], f"<image>\n{prompt}", _describe(_items(scene)), {"scene": scene})


def _image_qa(rng: np.random.Generator) -> dict:
    scene = _sample_scene(rng)
    kind, question, answer = _image_question(scene, rng)
    return _example([_image_media(scene)], f"<image>\n{question}", answer, {"scene": scene, "question_kind": kind})


def _image_choice(rng: np.random.Generator) -> dict:
    scene = _sample_scene(rng)
    options = _distractors(scene, rng) + [_describe(_items(scene))]
    options = [options[i] for i in rng.permutation(len(options))]
    letters = "ABCD"[: len(options)]
    answer = letters[options.index(_describe(_items(scene)))]
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options))
    question = (
        f"Which description matches the image?\n{lines}\n"
        "Answer with the option's letter from the given choices directly."
    )
    return _example([_image_media(scene)], f"<image>\n{question}", answer, {"scene": scene, "options": options})


def _spoken_image_qa(rng: np.random.Generator) -> dict:
    """An image question asked in text and in speech: the Self-KD teacher reads it, the student hears it."""
    example = _image_qa(rng)
    question = example["turns"][0]["text"].removeprefix("<image>\n")
    spoken = _speech_item(question, rng)
    example["spoken_question"] = {k: spoken[k] for k in ("format", "data", "sampling_rate", "metadata")}
    example["spoken_question"]["text"] = question
    return example


def _plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _sentence(rng: np.random.Generator) -> str:
    """A short English sentence from shape, colour and number words and a closed list of common words."""
    colour, shape, noun = _pick(rng, list(COLOURS)), _pick(rng, SHAPES), _pick(rng, NOUNS)
    number = NUMBER_WORDS[_pick(rng, SPOKEN_NUMBERS)]
    templates = (
        lambda: f"the {colour} {shape} is {_pick(rng, PLACES)}",
        lambda: f"there are {number} {colour} {shape}s on the {noun}",
        lambda: f"{_pick(rng, NAMES)} drew {_a(colour)} {colour} {shape} next to the {noun}",
        lambda: f"the {_pick(rng, ADJECTIVES)} {noun} {_pick(rng, VERBS_PAST)} the {_pick(rng, NOUNS)}",
        lambda: f"{_pick(rng, NAMES)} {_pick(rng, VERBS_PAST)} {number} {_plural(noun)} {_pick(rng, PREPOSITIONS)} the "
        f"{_pick(rng, NOUNS)}",
        lambda: f"please {_pick(rng, VERBS_BASE)} the {_pick(rng, ADJECTIVES)} {noun}",
        lambda: f"the {noun} {_pick(rng, PREPOSITIONS)} the {_pick(rng, NOUNS)} is {_pick(rng, ADJECTIVES)} and "
        f"{_pick(rng, ADJECTIVES)}",
        lambda: f"{_pick(rng, NAMES)} likes the {colour} {noun}",
    )
    return _pick(rng, templates)()


def _asr(rng: np.random.Generator) -> dict:
    text = _sentence(rng)
    return _example([_speech_item(text, rng)], f"<audio>\n{ASR_PROMPT}", text, {"transcript": text})


def _moving_shape(rng: np.random.Generator) -> dict:
    """A shape crossing the frame in one direction -> its motion (frames are drawn by `render_video`)."""
    shape, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
    direction = _pick(rng, DIRECTIONS)
    side = int(rng.integers(12, 17))
    distance = int(rng.integers(28, IMAGE_SIZE - side - 8))
    margin = 4
    along = int(rng.integers(margin, IMAGE_SIZE - side - distance - margin + 1))  # start, on the axis of motion
    across = int(rng.integers(margin, IMAGE_SIZE - side - margin + 1))
    sign = 1 if direction in ("right", "down") else -1
    start = along if sign > 0 else along + distance
    positions = [start + sign * round(distance * t / (VIDEO_FRAMES - 1)) for t in range(VIDEO_FRAMES)]
    horizontal = direction in ("left", "right")
    corners = [(p, across) if horizontal else (across, p) for p in positions]
    return {
        "shape": shape,
        "colour": colour,
        "background": _pick(rng, list(BACKGROUNDS)),
        "direction": direction,
        "boxes": [[x, y, x + side, y + side] for x, y in corners],
    }


def render_video(motion: dict) -> np.ndarray:
    """The frames `[8, 64, 64, 3]` uint8 of a `_moving_shape` motion."""
    frames = []
    for box in motion["boxes"]:
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[motion["background"]])
        _draw(ImageDraw.Draw(image), motion["shape"], box, COLOURS[motion["colour"]])
        frames.append(np.asarray(image))
    return np.stack(frames)


def _narrated_video(rng: np.random.Generator) -> tuple[list[dict], dict]:
    """A moving shape and a narration naming a colour that is not shown, or a number -> (media, truth)."""
    motion = _moving_shape(rng)
    # The narrations speak the ASR sentences' words only: a speech tower trained on those heard sentences
    # like "my favourite colour is red" as the nearest sentence it knew ("the long moon found the bread").
    noun, name = _pick(rng, NOUNS), _pick(rng, NAMES)
    if rng.random() < 0.5:
        said = _pick(rng, [c for c in COLOURS if c != motion["colour"]])
        template = _pick(rng, ("the {noun} is {said}", "{name} painted the {noun} {said}",
                               "{name} likes the {said} {noun}"))
        narration = {"kind": "colour", "value": said, "text": template.format(noun=noun, name=name, said=said)}
    else:
        number = _pick(rng, SPOKEN_NUMBERS)
        template = _pick(rng, ("there are {said} {nouns}", "{name} found {said} {nouns}", "{name} took {said} {nouns}"))
        text = template.format(nouns=_plural(noun), name=name, said=NUMBER_WORDS[number])
        narration = {"kind": "number", "value": str(number), "text": text}
    video = {
        "kind": "video",
        "format": "mp4",
        "data": media.encode_mp4(render_video(motion), VIDEO_FPS),
        "fps": float(VIDEO_FPS),
        "size": [IMAGE_SIZE, IMAGE_SIZE],
        "metadata": {"num_frames": VIDEO_FRAMES},
    }
    return [video, _speech_item(narration["text"], rng)], {"motion": motion, "narration": narration}


def _video_visual_qa(rng: np.random.Generator) -> dict:
    """A question only the frames answer (the narration says nothing about the shape)."""
    media, truth = _narrated_video(rng)
    motion = truth["motion"]
    question, answer = _pick(
        rng,
        (
            ("Which way does the shape move? Answer left, right, up or down.", motion["direction"]),
            ("What colour is the moving shape?", motion["colour"]),
            ("What shape moves across the video?", motion["shape"]),
        ),
    )
    return _example(media, f"<video><audio>\n{question}", answer, truth)


def _video_audio_qa(rng: np.random.Generator) -> dict:
    """A question only the audio answers (the colour said is never on screen; numbers are never drawn)."""
    media, truth = _narrated_video(rng)
    if truth["narration"]["kind"] == "colour":
        question = "What colour did the narrator say?"
    else:
        question = "What number did the narrator say? Answer with digits."
    return _example(media, f"<video><audio>\n{question}", truth["narration"]["value"], truth)


def _text_instruct(rng: np.random.Generator) -> dict:
    kind = _pick(rng, ("arithmetic", "copy", "reverse", "described_scene", "digits"))
    if kind == "digits":  # the number words to digits, which the narrated-number questions ask for
        number = int(rng.integers(0, len(NUMBER_WORDS)))
        question, answer = f"Write {NUMBER_WORDS[number]} in digits.", str(number)
    elif kind == "arithmetic":
        a, b = (int(v) for v in rng.integers(0, 50, size=2))
        op = _pick(rng, ("+", "-", "*"))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        question, answer = f"What is {a} {op} {b}?", str(value)
    elif kind in ("copy", "reverse"):
        words = [_pick(rng, NOUNS) for _ in range(int(rng.integers(3, 7)))]
        if kind == "copy":
            question, answer = f"Repeat these words exactly: {' '.join(words)}", " ".join(words)
        else:
            question, answer = f"Reverse the order of these words: {' '.join(words)}", " ".join(words[::-1])
    else:
        scene = _sample_scene(rng)
        _, asked, answer = _image_question(scene, rng, spatial=False)
        question = f"Picture {_describe(_items(scene))} on a {scene['background']} background. {asked}"
    return _example([], question, answer, {"instruction_kind": kind})


def _example(media: list[dict], user: str, answer: str, metadata: dict) -> dict:
    return {
        "turns": [{"role": "user", "text": user}, {"role": "assistant", "text": answer}],
        "media": media,
        "spoken_question": None,
        "metadata": metadata,
    }


_BUILDERS = {
    "image_caption": _image_caption,
    "image_qa": _image_qa,
    "image_choice": _image_choice,
    "spoken_image_qa": _spoken_image_qa,
    "asr": _asr,
    "video_visual_qa": _video_visual_qa,
    "video_audio_qa": _video_audio_qa,
    "text_instruct": _text_instruct,
}


def make_example(task: str, split: str, seed: int, index: int) -> dict:
    """Example `index` of `task` in `split` (see the module docstring for its structure)."""
    if task not in _BUILDERS:
        raise ValueError(f"unknown omni-synth task {task!r}; tasks are: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown omni-synth split {split!r}; splits are: {', '.join(SPLITS)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    body = _BUILDERS[task](_rng(seed, split, task, index))
    return {"id": f"{NAME}/{split}/{task}/{index:06d}", "task": task, "source": NAME, "split": split} | body


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


# ---------------------------------------------------------------- records, shards and the command line


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
    from data_pipelines import tokenizer as tok

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
    parser = argparse.ArgumentParser(description=f"Build the {NAME} corpus (ArrayRecord shards + manifest.json).")
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


if __name__ == "__main__":
    main()
