"""omni-synth's tasks: one builder per task, each a function of its example's own random stream (keyed by
seed, split, task and index), so any example can be rebuilt alone. `make_example` gives example `index` of a
task in a split as the plain dict `data_pipelines.synth` describes.

    image_caption, image_qa, image_choice   a scene of shapes (`scenes`) with a caption, a question or four
                                            descriptions to choose from (`sentences.describe`)
    spoken_image_qa                         an image question also spoken (the Self-KD pair's student input)
    asr                                     a spoken `sentences.sentence`
    video_visual_qa, video_audio_qa         a moving shape narrated: a question for the frames or the audio
    text_instruct                           arithmetic, copying, digits, a scene described in words
    sound_qa                                a non-speech clip (`sounds`): which instrument, melody rising or
                                            falling, how many beats, one note or a chord, high or low
    aspect_qa                               a wide, tall or square picture (`aspect`): its shape, circle or
                                            oval, square or rectangle, how many small shapes
    aspect_video_qa                         a circle, oval, square or rectangle crossing a wide, tall or square
                                            video (no audio): the frames' shape, the form, which way it moves

The question kind of sound_qa, aspect_qa and aspect_video_qa cycles with the example's index, so every split
asks each kind as often (and two held-out examples ask two questions: the evaluator scores answers, not a
transcript).
"""

from __future__ import annotations

import numpy as np

from data_pipelines import media, speech
from data_pipelines.synth import sounds
from data_pipelines.synth.aspect import QUESTIONS as ASPECT_QUESTIONS
from data_pipelines.synth.aspect import moving_form, render_aspect_scene, render_aspect_video, sample_aspect_scene
from data_pipelines.synth.scenes import (COLOURS, IMAGE_SIZE, SHAPES, VIDEO_FPS, VIDEO_FRAMES, moving_shape, pick,
                                         render_scene, render_video, sample_scene)
from data_pipelines.synth.sentences import (NAMES, NOUNS, NUMBER_WORDS, SPOKEN_NUMBERS, article, describe, plural,
                                            scene_items, sentence)

NAME = "omni-synth"
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
    "sound_qa",  # new tasks go last: an example's random stream is keyed by its task's place here
    "aspect_qa",
    "aspect_video_qa",
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
    "sound_qa": ("audio",),
    "aspect_qa": ("image",),
    "aspect_video_qa": ("video",),
}
ASR_PROMPT = "Please give the ASR results of the given speech."  # Ola's ASR instruction
CAPTION_PROMPTS = ("Describe the image briefly.", "What is in the picture?", "Write a short caption for this image.")
AUDIO_RATE = 16_000


def _rng(seed: int, split: str, task: str, index: int) -> np.random.Generator:
    """The random stream of one example: keyed by everything that names it, so examples are independent."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), TASKS.index(task), index]))


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


def _image_question(scene: dict, rng: np.random.Generator, spatial: bool = True) -> tuple[str, str, str]:
    """A question about the scene with a short answer -> (kind, question, answer); `spatial=False` leaves
    out questions about positions (for scenes described in words, which do not give them)."""
    shapes = scene["shapes"]
    kinds = ["colour_of_shape", "shape_of_colour", "count", "exists"]
    centres = sorted((s["box"][0] + s["box"][2]) / 2 for s in shapes)
    if spatial and len(shapes) >= 2 and centres[1] - centres[0] >= 8:
        kinds.append("leftmost")
    kind = pick(rng, kinds)
    target = pick(rng, shapes)
    if kind == "colour_of_shape":
        return kind, f"What colour is the {target['shape']}?", target["colour"]
    if kind == "shape_of_colour":
        return kind, f"Which shape is {target['colour']}?", target["shape"]
    if kind == "count":
        return kind, "How many shapes are there?", str(len(shapes))
    if kind == "leftmost":
        return kind, "Which shape is furthest to the left?", shapes[0]["shape"]
    present = set(scene_items(scene))
    if rng.random() < 0.5:
        colour, shape = pick(rng, sorted(present))
        return kind, f"Is there {article(colour)} {colour} {shape}?", "yes"
    absent = sorted((c, s) for c in COLOURS for s in SHAPES if (c, s) not in present)
    colour, shape = pick(rng, absent)
    return kind, f"Is there {article(colour)} {colour} {shape}?", "no"


def _distractors(scene: dict, rng: np.random.Generator, count: int = 3) -> list[str]:
    """Wrong descriptions close to the right one: a colour or a shape changed, two colours swapped, or a
    shape left out (MMAlign-style attribute-binding distractors)."""
    items = scene_items(scene)
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
    keys = sorted(unique, key=lambda k: describe(unique[k]))
    return [describe(unique[keys[i]]) for i in rng.permutation(len(keys))[:count]]


def _image_media(scene: dict) -> dict:
    return {
        "kind": "image",
        "format": "png",
        "data": media.encode_png(render_scene(scene)),
        "size": [IMAGE_SIZE, IMAGE_SIZE],
        "metadata": {},
    }


def _image_caption(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    prompt = pick(rng, CAPTION_PROMPTS)
    return _example([_image_media(scene)], f"<image>\n{prompt}", describe(scene_items(scene)), {"scene": scene})


def _image_qa(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    kind, question, answer = _image_question(scene, rng)
    return _example([_image_media(scene)], f"<image>\n{question}", answer, {"scene": scene, "question_kind": kind})


def _image_choice(rng: np.random.Generator) -> dict:
    scene = sample_scene(rng)
    options = _distractors(scene, rng) + [describe(scene_items(scene))]
    options = [options[i] for i in rng.permutation(len(options))]
    letters = "ABCD"[: len(options)]
    answer = letters[options.index(describe(scene_items(scene)))]
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


def _asr(rng: np.random.Generator) -> dict:
    text = sentence(rng)
    return _example([_speech_item(text, rng)], f"<audio>\n{ASR_PROMPT}", text, {"transcript": text})


def _narrated_video(rng: np.random.Generator) -> tuple[list[dict], dict]:
    """A moving shape and a narration naming a colour that is not shown, or a number -> (media, truth)."""
    motion = moving_shape(rng)
    # The narrations speak the ASR sentences' words only: a speech tower trained on those heard sentences
    # like "my favourite colour is red" as the nearest sentence it knew ("the long moon found the bread").
    noun, name = pick(rng, NOUNS), pick(rng, NAMES)
    if rng.random() < 0.5:
        said = pick(rng, [c for c in COLOURS if c != motion["colour"]])
        template = pick(rng, ("the {noun} is {said}", "{name} painted the {noun} {said}",
                               "{name} likes the {said} {noun}"))
        narration = {"kind": "colour", "value": said, "text": template.format(noun=noun, name=name, said=said)}
    else:
        number = pick(rng, SPOKEN_NUMBERS)
        template = pick(rng, ("there are {said} {nouns}", "{name} found {said} {nouns}", "{name} took {said} {nouns}"))
        text = template.format(nouns=plural(noun), name=name, said=NUMBER_WORDS[number])
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
    question, answer = pick(
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
    kind = pick(rng, ("arithmetic", "copy", "reverse", "described_scene", "digits"))
    if kind == "digits":  # the number words to digits, which the narrated-number questions ask for
        number = int(rng.integers(0, len(NUMBER_WORDS)))
        question, answer = f"Write {NUMBER_WORDS[number]} in digits.", str(number)
    elif kind == "arithmetic":
        a, b = (int(v) for v in rng.integers(0, 50, size=2))
        op = pick(rng, ("+", "-", "*"))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        question, answer = f"What is {a} {op} {b}?", str(value)
    elif kind in ("copy", "reverse"):
        words = [pick(rng, NOUNS) for _ in range(int(rng.integers(3, 7)))]
        if kind == "copy":
            question, answer = f"Repeat these words exactly: {' '.join(words)}", " ".join(words)
        else:
            question, answer = f"Reverse the order of these words: {' '.join(words)}", " ".join(words[::-1])
    else:
        scene = sample_scene(rng)
        _, asked, answer = _image_question(scene, rng, spatial=False)
        question = f"Picture {describe(scene_items(scene))} on a {scene['background']} background. {asked}"
    return _example([], question, answer, {"instruction_kind": kind})


SOUND_QUESTIONS = {  # question kind -> (the question, the clip kinds it is asked of)
    "instrument": ("Which instrument plays?", sounds.CLIP_KINDS),
    "direction": ("Is the melody rising or falling?", ("melody",)),
    "beats": ("How many beats do you hear?", ("rhythm",)),
    "chord": ("Is it one note or a chord?", ("note", "chord")),
    "register": ("Is the note high or low?", ("note",)),
}


def _sound_qa(rng: np.random.Generator, kind: str) -> dict:
    """A question about a non-speech clip whose answer the audio alone gives (`sounds`)."""
    question, clip_kinds = SOUND_QUESTIONS[kind]
    instrument = pick(rng, sounds.INSTRUMENTS) if kind == "instrument" else None  # each instrument as often
    clip = sounds.sample_clip(rng, "rhythm" if instrument == "drum" else pick(rng, clip_kinds), instrument)
    answer = {"instrument": clip["instrument"], "direction": clip.get("direction"), "beats": str(clip.get("beats")),
              "chord": "chord" if clip["kind"] == "chord" else "one note", "register": clip.get("register")}[kind]
    waveform = sounds.render_clip(clip)
    item = {"kind": "audio", "format": "flac", "data": media.encode_flac(waveform, AUDIO_RATE),
            "sampling_rate": AUDIO_RATE, "metadata": {"num_samples": int(waveform.size)}}
    return _example([item], f"<audio>\n{question}", answer, {"clip": clip, "question_kind": kind})


def _aspect_qa(rng: np.random.Generator, kind: str) -> dict:
    """A question about a wide, tall or square picture that squashing it to a square would mislead (`aspect`)."""
    scene = sample_aspect_scene(rng, kind)
    if kind == "layout":
        question, answer = "Is the picture wide, tall or square?", scene["layout"]
    elif kind == "count":
        question, answer = "How many shapes are there?", str(len(scene["shapes"]))
    else:
        target = pick(rng, scene["shapes"])
        question, answer = f"Is the {target['colour']} shape {_form_choice(target['shape'])}?", target["shape"]
    image = {"kind": "image", "format": "png", "data": media.encode_png(render_aspect_scene(scene)),
             "size": list(scene["size"]), "metadata": {}}
    return _example([image], f"<image>\n{question}", answer, {"scene": scene, "question_kind": kind})


def _form_choice(shape: str) -> str:
    return "a circle or an oval" if shape in ("circle", "oval") else "a square or a rectangle"


ASPECT_VIDEO_QUESTIONS = ("layout", "form", "direction")


def _aspect_video_qa(rng: np.random.Generator, kind: str) -> dict:
    """A question about a form crossing a wide, tall or square video (`aspect.moving_form`), asked of its frames."""
    motion = moving_form(rng)
    question, answer = {
        "layout": ("Is the video wide, tall or square?", motion["layout"]),
        "form": (f"Is the moving shape {_form_choice(motion['shape'])}?", motion["shape"]),
        "direction": ("Which way does the shape move? Answer left, right, up or down.", motion["direction"]),
    }[kind]
    video = {"kind": "video", "format": "mp4", "data": media.encode_mp4(render_aspect_video(motion), VIDEO_FPS),
             "fps": float(VIDEO_FPS), "size": list(motion["size"]), "metadata": {"num_frames": VIDEO_FRAMES}}
    return _example([video], f"<video>\n{question}", answer, {"motion": motion, "question_kind": kind})


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
    "sound_qa": _sound_qa,
    "aspect_qa": _aspect_qa,
    "aspect_video_qa": _aspect_video_qa,
}
# The tasks whose question kind cycles with the index (module docstring): their builders take the kind.
_CYCLED = {"sound_qa": tuple(SOUND_QUESTIONS), "aspect_qa": ASPECT_QUESTIONS,
           "aspect_video_qa": ASPECT_VIDEO_QUESTIONS}


def make_example(task: str, split: str, seed: int, index: int) -> dict:
    """Example `index` of `task` in `split` (its structure: `data_pipelines.synth`)."""
    if task not in _BUILDERS:
        raise ValueError(f"unknown omni-synth task {task!r}; tasks are: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown omni-synth split {split!r}; splits are: {', '.join(SPLITS)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = _rng(seed, split, task, index)
    if task in _CYCLED:
        body = _BUILDERS[task](rng, _CYCLED[task][index % len(_CYCLED[task])])
    else:
        body = _BUILDERS[task](rng)
    return {"id": f"{NAME}/{split}/{task}/{index:06d}", "task": task, "source": NAME, "split": split} | body
