"""omni-synth's sounds (sound_qa) and non-square pictures and videos (aspect_qa, aspect_video_qa): determinism,
answers checked against what the decoded media measure (pitch tracks, onsets, spectra; pixel geometry), how a
squash to a square distorts them, both image paths accepting them, their scores and chance levels, and the Ola
recipe's stages reading them."""

import io

import av
import librosa
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from scipy import ndimage
from scipy.signal import find_peaks

from data_pipelines import synth
from data_pipelines.features import MediaFeatures
from data_pipelines.synth import aspect, sounds
from omnijax import evaluate
from omnijax import media_tokens as mt
from omnijax.eval import kinds, metrics

RATE = 16_000
SEED = 0
NEW_TASKS = ("sound_qa", "aspect_qa", "aspect_video_qa")
PER_KIND = 8  # examples of each question kind checked against the media


@pytest.fixture(scope="module")
def sound_examples():
    n = PER_KIND * len(synth.SOUND_QUESTIONS)
    return [synth.make_example("sound_qa", split, SEED, i) for split in synth.SPLITS for i in range(n)]


@pytest.fixture(scope="module")
def aspect_examples():
    n = PER_KIND * len(aspect.QUESTIONS)
    return [synth.make_example("aspect_qa", split, SEED, i) for split in synth.SPLITS for i in range(n)]


@pytest.fixture(scope="module")
def video_examples():
    n = 3 * PER_KIND
    return [synth.make_example("aspect_video_qa", split, SEED, i) for split in synth.SPLITS for i in range(n)]


def _audio(example):
    waveform, rate = sf.read(io.BytesIO(example["media"][0]["data"]), dtype="float32")
    assert rate == RATE
    return waveform


def _pixels(example):
    return np.asarray(Image.open(io.BytesIO(example["media"][0]["data"])).convert("RGB"))


def _question(example):
    return example["turns"][0]["text"].split("\n", 1)[1]


def _answer(example):
    return example["turns"][1]["text"]


# ---------------------------------------------------------------- determinism and the other tasks


def _record(task, split, seed, index):
    return synth.to_schema_example(synth.make_example(task, split, seed, index)).to_bytes()


def test_new_tasks_are_deterministic_and_leave_the_other_tasks_alone():
    for task in NEW_TASKS:
        first = [_record(task, "train", SEED, i) for i in range(4)]
        again = [_record(task, "train", SEED, i) for i in reversed(range(4))]
        assert first == again[::-1] and len(set(first)) == 4
        assert _record(task, "train", SEED + 1, 0) != first[0] and _record(task, "eval", SEED, 0) != first[0]
    # new tasks come last: the other tasks' random streams (keyed by their place in TASKS) are the same
    assert synth.TASKS[:8] == ("image_caption", "image_qa", "image_choice", "spoken_image_qa", "asr",
                               "video_visual_qa", "video_audio_qa", "text_instruct")
    assert synth.TASKS[8:] == NEW_TASKS and synth.VERSION == 6
    counts = synth.split_counts("default")
    assert counts["train"]["sound_qa"] == counts["train"]["aspect_video_qa"] == 3000
    assert counts["train"]["aspect_qa"] == 10_000 and [counts["eval"][t] for t in NEW_TASKS] == [100] * 3
    assert synth.split_counts("tiny")["train"]["sound_qa"] == 6


def test_question_kinds_cycle_with_the_index(sound_examples, aspect_examples, video_examples):
    kinds_ = [e["metadata"]["question_kind"] for e in sound_examples[:10]]
    assert kinds_ == list(synth.SOUND_QUESTIONS) * 2
    assert [e["metadata"]["question_kind"] for e in aspect_examples[:6]] == list(aspect.QUESTIONS) * 2
    assert [e["metadata"]["question_kind"] for e in video_examples[:6]] == ["layout", "form", "direction"] * 2
    with pytest.raises(ValueError, match="unknown clip kind 'hum'; kinds are: note, chord, melody, rhythm"):
        sounds.sample_clip(np.random.default_rng(0), "hum")
    with pytest.raises(ValueError, match="the drum has no pitch and plays rhythms only, not a melody"):
        sounds.sample_clip(np.random.default_rng(0), "melody", "drum")
    with pytest.raises(ValueError, match="unknown aspect question 'colour'; questions are: layout, form, count"):
        aspect.sample_aspect_scene(np.random.default_rng(0), "colour")


# ---------------------------------------------------------------- sounds, measured


def _segment(waveform, note, begin=0.02, length=0.25):
    start = int((note["start"] + begin) * RATE)
    return waveform[start : start + int(min(length, note["seconds"] - begin - 0.03) * RATE)]


def _spectrum(segment):
    spec = np.abs(np.fft.rfft(segment * np.hanning(segment.size), n=1 << 15))
    return spec, np.fft.rfftfreq(1 << 15, 1 / RATE)


def _pitch(segment) -> float:
    """The median YIN pitch (Hz) of a segment."""
    return float(np.median(librosa.yin(segment, fmin=60, fmax=2100, sr=RATE, frame_length=1024)))


def _is_chord(segment) -> bool:
    """A note's partials are multiples of its lowest: none lies strictly between it and its octave; a triad's
    third and fifth (1.19-1.5 times the root) do."""
    spec, freqs = _spectrum(segment)
    peaks = freqs[find_peaks(spec, height=0.05 * spec.max())[0]]
    return bool(np.any((peaks > 1.1 * peaks[0]) & (peaks < 1.9 * peaks[0])))


def _instrument(segment, envelope) -> str:
    """The instrument of one note by its timbre: noise (spectral flatness), the strength of the second and third
    harmonics against the first (sine 0/0, square 0/0.33, sawtooth 0.5/0.33), a decaying envelope (a pluck)."""
    if librosa.feature.spectral_flatness(y=segment, n_fft=512).mean() > 0.05:
        return "drum"
    spec, freqs = _spectrum(segment)
    f0 = _pitch(segment)
    h1, h2, h3 = (spec[(freqs > k * f0 * 0.97) & (freqs < k * f0 * 1.03)].max() for k in (1, 2, 3))
    r2, r3 = h2 / h1, h3 / h1
    if envelope > 0.95 and r2 < 0.05 and r3 < 0.05:
        return "flute"
    if envelope > 0.95 and r2 < 0.05 and 0.28 < r3 < 0.38:
        return "organ"
    if envelope > 0.93 and 0.45 < r2 < 0.55 and 0.28 < r3 < 0.38:
        return "violin"
    return "guitar"


def _envelope(waveform, note) -> float:
    """RMS near a note's end over RMS near its start (1: held; under 1: decaying)."""
    start, length = int(note["start"] * RATE), note["seconds"]
    rms = [np.sqrt(np.mean(waveform[start + int(a * RATE) : start + int((a + 0.04) * RATE)] ** 2))
           for a in (0.015, length - 0.07)]
    return float(rms[1] / rms[0])


def test_sound_answers_match_what_the_audio_measures(sound_examples):
    seen = {kind: set() for kind in synth.SOUND_QUESTIONS}
    for example in sound_examples:
        waveform, clip = _audio(example), example["metadata"]["clip"]
        kind, answer = example["metadata"]["question_kind"], _answer(example)
        assert example["turns"][0]["text"] == "<audio>\n" + synth.SOUND_QUESTIONS[kind][0]
        assert 1.0 <= waveform.size / RATE <= 4.0 and 0.25 < np.abs(waveform).max() <= 0.61
        notes = clip["notes"]
        if kind == "direction":
            pitches = [_pitch(_segment(waveform, n)) for n in notes]
            steps = np.diff(pitches)
            assert np.all(steps > 0) if answer == "rising" else np.all(steps < 0), (answer, pitches)
        elif kind == "beats":
            onsets = librosa.onset.onset_detect(y=waveform, sr=RATE, units="time", wait=5, delta=0.3)
            assert len(onsets) == int(answer), (answer, onsets)
        elif kind == "chord":
            assert _is_chord(_segment(waveform, notes[0])) == (answer == "chord")
        elif kind == "register":
            pitch = _pitch(_segment(waveform, notes[0], length=0.15))
            assert (pitch > 500) if answer == "high" else (pitch < 230), (answer, pitch)
        elif clip["kind"] != "chord":  # the instrument, from its first note's timbre
            segment = _segment(waveform, notes[0], begin=0.015, length=0.08)
            assert _instrument(segment, _envelope(waveform, notes[0])) == answer, clip
        seen[kind].add(answer)
    assert seen["direction"] == {"rising", "falling"} and seen["chord"] == {"chord", "one note"}
    assert seen["register"] == {"high", "low"} and len(seen["instrument"]) >= 4 and len(seen["beats"]) >= 3


def test_every_instrument_is_told_apart_by_its_timbre():
    rng = np.random.default_rng(7)
    for instrument in synth.INSTRUMENTS:
        for kind in ("note", "melody", "rhythm") if instrument != "drum" else ("rhythm",):
            for _ in range(4):
                clip = sounds.sample_clip(rng, kind, instrument)
                waveform, note = sounds.render_clip(clip), clip["notes"][0]
                assert waveform.dtype == np.float32 and waveform.size == round(clip["seconds"] * RATE)
                segment = _segment(waveform, note, begin=0.015, length=0.08)
                assert _instrument(segment, _envelope(waveform, note)) == instrument, clip


# ---------------------------------------------------------------- non-square pictures, measured

FILL = {"circle": np.pi / 4, "square": 1.0}


def _regions(pixels, background):
    """Per colour present: (bounding-box width / height, fill ratio of the box, connected components)."""
    out = {}
    for name, rgb in synth.COLOURS.items():
        mask = np.all(pixels == rgb, axis=-1)
        if mask.any() and rgb != background:
            ys, xs = np.nonzero(mask)
            w, h = np.ptp(xs) + 1, np.ptp(ys) + 1
            out[name] = (w / h, mask.sum() / (w * h), ndimage.label(mask)[1])
    return out


def _form(ratio, fill) -> str:
    round_ = abs(fill - FILL["circle"]) < abs(fill - FILL["square"])
    if abs(np.log(ratio)) < np.log(1.15):
        return "circle" if round_ else "square"
    return "oval" if round_ else "rectangle"


def test_aspect_answers_match_the_stored_picture(aspect_examples):
    seen = {kind: set() for kind in aspect.QUESTIONS}
    for example in aspect_examples:
        pixels, item = _pixels(example), example["media"][0]
        scene, kind, answer = example["metadata"]["scene"], example["metadata"]["question_kind"], _answer(example)
        height, width = pixels.shape[:2]
        assert [width, height] == item["size"] == list(synth.LAYOUTS[scene["layout"]])
        background = synth.BACKGROUNDS[scene["background"]]
        regions = _regions(pixels, background)
        if kind == "layout":
            assert answer == ("wide" if width > height else "tall" if height > width else "square")
        elif kind == "count":
            assert _question(example) == "How many shapes are there?" and len(regions) == 1
            assert next(iter(regions.values()))[2] == int(answer)  # connected blobs of the one colour
        else:
            colour = _question(example).split()[2]
            ratio, fill, blobs = regions[colour]
            assert blobs == 1 and _form(ratio, fill) == answer, (colour, ratio, fill, answer)
            if answer in ("oval", "rectangle"):  # stretched by the wide picture's ratio, along the long side
                assert abs(max(ratio, 1 / ratio) - 128 / 48) < 0.25
                assert scene["layout"] == "square" or (ratio > 1) == (width > height)
        seen[kind].add(answer)
    assert seen["layout"] == {"wide", "tall", "square"} and seen["form"] == {"circle", "oval", "square", "rectangle"}
    assert seen["count"] >= {"2", "4", "6"}


def _frames(example):
    with av.open(io.BytesIO(example["media"][0]["data"])) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_aspect_video_answers_match_the_decoded_frames(video_examples):
    seen = {"layout": set(), "form": set(), "direction": set()}
    for example in video_examples:
        frames, motion = _frames(example), example["metadata"]["motion"]
        kind, answer = example["metadata"]["question_kind"], _answer(example)
        assert example["turns"][0]["text"].startswith("<video>\n") and len(example["media"]) == 1
        height, width = frames.shape[1:3]
        assert frames.shape[0] == synth.VIDEO_FRAMES and [width, height] == example["media"][0]["size"]
        masks = np.abs(frames.astype(int) - synth.BACKGROUNDS[motion["background"]]).sum(-1) > 90  # lossy colours
        centroids = np.array([np.argwhere(m).mean(0) for m in masks])  # (y, x) per frame
        dy, dx = centroids[-1] - centroids[0]
        if kind == "layout":
            assert answer == ("wide" if width > height else "tall" if height > width else "square")
        elif kind == "direction":
            assert answer == (("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up"))
            assert max(abs(dx), abs(dy)) >= 15 and min(abs(dx), abs(dy)) < 1
            if width != height:  # along the long side
                assert (answer in ("left", "right")) == (width > height)
        else:
            ys, xs = np.nonzero(masks[0])
            w, h = np.ptp(xs) + 1, np.ptp(ys) + 1
            assert _form(w / h, masks[0].sum() / (w * h)) == answer, (w, h, answer)
        seen[kind].add(answer)
    assert seen["layout"] == {"wide", "tall", "square"} and len(seen["form"]) == 4 and len(seen["direction"]) == 4


def test_a_squash_to_a_square_swaps_circles_and_ovals():
    """What the fixed-resolution path does to a wide picture (resized to its square input): the circle turns into
    an upright oval, the wide oval into a circle -- only the native resolution keeps the answer in the pixels."""
    scene = {"layout": "wide", "size": [128, 48], "background": "white", "shapes": [
        {"shape": "circle", "colour": "red", "box": [8, 10, 32, 34]},
        {"shape": "oval", "colour": "blue", "box": [60, 14, 92, 26]}]}
    pixels = synth.render_aspect_scene(scene)
    squashed = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.NEAREST))
    native, flat = _regions(pixels, (255, 255, 255)), _regions(squashed, (255, 255, 255))
    assert _form(*native["red"][:2]) == "circle" and _form(*native["blue"][:2]) == "oval"
    assert _form(*flat["red"][:2]) == "oval" and _form(*flat["blue"][:2]) == "circle"
    assert flat["red"][0] == pytest.approx(12 / 33, abs=0.05) and flat["blue"][0] == pytest.approx(1.0, abs=0.1)
    # ... and looks like a square picture's upright oval, which the native view tells apart
    square = {"layout": "square", "size": [64, 64], "background": "white", "shapes": [
        {"shape": "oval", "colour": "red", "box": [20, 10, 32, 42]}]}
    oval = _regions(synth.render_aspect_scene(square), (255, 255, 255))["red"]
    assert _form(*oval[:2]) == "oval" and oval[0] == pytest.approx(flat["red"][0], abs=0.05)


def _features(cfg, **kwargs):
    """The pipeline's features for a stage's model: its budget, layout and native-resolution settings."""
    return MediaFeatures(budget=cfg.budget, layout=cfg.media_layout, native_lowres=cfg.native_lowres,
                         native_maxres=cfg.native_maxres, native_video_maxres=cfg.native_video_maxres,
                         native_video_minres=cfg.native_video_minres, **kwargs)


def test_both_image_paths_accept_the_pictures(aspect_examples):
    """The fixed-resolution tower's stage resizes each picture to its square input; ``vision=oryx`` keeps its
    size: the view's grid, token count and newlines are the shared layout functions' (no distortion)."""
    from experiments.ola import stage1b
    from omnijax.training.omni_task import omni_config

    fixed_c, native_c = stage1b.get_config("tiny"), stage1b.get_config("tiny,vision=oryx")
    fixed, native = (_features(omni_config(c)) for c in (fixed_c, native_c))
    sizes = set()
    for example in aspect_examples[:12]:
        media = synth.to_schema_example(example).media[0]
        width, height = media.size
        f = fixed.item(media)
        assert f.data.shape == (1, 64, 64, 3)
        n = native.item(media)
        views = [(int(r) * 8, int(c) * 8) for r, c in n.grids]
        assert views[-1] == (height, width)  # the picture itself, after Ola's low-resolution view
        assert views[0][0] * views[0][1] <= 32 * 32 and abs(views[0][1] / views[0][0] - width / height) < 1.5
        assert n.tokens == mt.ola_native_image_tokens(views, patch_size=8)
        rows, cols = mt.ola_native_grid((height, width), patch_size=8)  # 2x2 pooled: one token per 16 pixels
        assert (rows, cols) == (height // 16, width // 16)
        sizes.add((width, height))
    assert sizes == set(synth.LAYOUTS.values())


def test_both_video_paths_accept_the_frames(video_examples):
    """Stage 2's frames: resized to the fixed tower's square, or (``vision=oryx``) sized by Ola's video rule
    (``media_tokens.ola_frame_size``), aspect ratio kept."""
    from experiments.ola import stage2
    from omnijax.training.omni_task import omni_config

    fixed_c, native_c = stage2.get_config("tiny"), stage2.get_config("tiny,vision=oryx")
    fixed, native = (_features(omni_config(c), video_frames=c.data.pipeline.video_frames)
                     for c in (fixed_c, native_c))
    for example in video_examples[:6]:
        media = synth.to_schema_example(example).media[0]
        width, height = media.size
        assert fixed.item(media).data.shape == (4, 64, 64, 3)
        n = native.item(media)
        cfg = omni_config(native_c)
        frame = mt.ola_frame_size((height, width), maxres=cfg.native_video_maxres, minres=cfg.native_video_minres,
                                  patch_size=8)[:2]
        assert [tuple(int(v) * 8 for v in g) for g in n.grids] == [frame] * 4
        assert abs(frame[1] / frame[0] - width / height) < 0.5 * width / height  # the frame's shape, not a square
        assert n.tokens == mt.ola_native_video_tokens([frame] * 4, patch_size=8)


# ---------------------------------------------------------------- evaluation and the recipe


def test_evaluator_scores_the_new_tasks_with_their_chance(tmp_path_factory):
    corpus = str(tmp_path_factory.mktemp("synth_new_tasks"))
    synth.prepare(corpus, size="tiny", progress=False)
    for task in NEW_TASKS:
        examples = evaluate.read_task(corpus, task)
        assert len(examples) == 3 and kinds.task_kind(examples) == "exact"
        assert kinds.evaluated_by_default(examples) and task in evaluate.default_tasks(corpus)
        refs = [kinds.answer_of(e) for e in examples]
        assert metrics.score("exact", refs, refs) == {"accuracy": 1.0, "n": 3}
        wrong = ["violin" if r != "violin" else "flute" for r in refs]
        assert metrics.score("exact", refs, [refs[0].upper() + ".", *wrong[1:]])["accuracy"] == pytest.approx(1 / 3)
    # three held-out examples ask three different questions: each its own template, so the blind answerer is right
    # on all of them; on the default size's 100 it is the most frequent answer per question
    chance = evaluate.chance_levels(NEW_TASKS, corpus)
    assert chance == {f"{task}/accuracy": 1.0 for task in NEW_TASKS}
    held_out = [synth.to_schema_example(synth.make_example("sound_qa", "eval", SEED, i)) for i in range(100)]
    blind = evaluate.blind_accuracy(held_out)
    assert 0.3 < blind < 0.55, blind  # five questions: one of 5 instruments, 2 directions, 5 counts, 2, 2
    wide = [synth.to_schema_example(synth.make_example("aspect_qa", "eval", SEED, i)) for i in range(100)]
    assert 0.3 < evaluate.blind_accuracy(wide) < 0.6
    videos = [synth.to_schema_example(synth.make_example("aspect_video_qa", "eval", SEED, i)) for i in range(30)]
    assert 0.3 < evaluate.blind_accuracy(videos) < 0.7
    templates = evaluate.accuracy_by_template(wide, [True] * 100)
    assert set(templates) == {"is the picture wide, tall or _?", "how many shapes are there?",
                              "is the _ shape a _ or an oval?", "is the _ shape a _ or a rectangle?"}


def test_ola_stages_train_and_evaluate_the_new_tasks():
    from omnijax import recipe as recipe_lib

    recipe = recipe_lib.load_recipe("experiments/ola/recipe.py:tiny,audio=dual")
    configs = {name: recipe_lib._module(path, name).get_config(recipe.arg) for name, path in recipe.stages}
    mixture = {name: {s["name"]: s["weight"] for s in c.data.sources} for name, c in configs.items()}
    assert not set(NEW_TASKS) & set(mixture["1a"])
    assert mixture["1b"]["aspect_qa"] == mixture["2"]["aspect_qa"] == mixture["3b"]["aspect_qa"] == 0.5
    assert mixture["2"]["aspect_video_qa"] == mixture["3b"]["aspect_video_qa"] == 0.5
    assert mixture["3a"] == {"asr": 1.0, "sound_qa": 0.35} and mixture["3b"]["sound_qa"] == 1.0
    assert configs["3a"].task_names == ("asr", "sound_qa") and configs["3a"].num_tasks == 2
    assert recipe.tasks_after("3b")[-3:] == NEW_TASKS
    assert not set(NEW_TASKS) & set(recipe.tasks_after("3a"))  # the demo's table keeps its columns, new ones last
    # the 7b mixtures are the paper's data: no omni-synth-only task joins them
    big = recipe_lib.load_recipe("experiments/ola/recipe.py:7b")
    for name, path in big.stages:
        names = {s["name"] for s in recipe_lib._module(path, name).get_config("7b").data.sources}
        assert names and not names & set(NEW_TASKS), (name, names)
