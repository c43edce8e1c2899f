"""omni-synth: a small synthetic omni-modal corpus, deterministic from a seed, built on a CPU in about two minutes.

Every task of the recipes has a thousand or more training examples a tiny model can learn (`split_counts`),
with answers that are checkable from the media: coloured shapes on a plain background (captions, questions, multiple
choice), real speech from eSpeak NG (ASR over a closed vocabulary of about 150 words; the image
questions spoken, for Self-KD), short videos of a moving shape with a narrated audio track whose
questions need either the frames or the audio, text-only instructions, non-speech sounds (instruments,
melodies, rhythms) with questions about them, and wide and tall pictures and videos whose answers need their
geometry.

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

Images are 64x64 PNG (exact colours; aspect_qa's also 128x48 and 48x128), videos 8 frames of 64x64
(aspect_video_qa's also 128x48 and 48x128) at 4 fps in MP4 (H.264), audio is 16 kHz mono FLAC (speech, or
sound_qa's synthetic instruments). Each example is drawn from its own random stream keyed by (seed, split,
task, index), so any example can be rebuilt alone and the eval split (its own streams) never shares an id
with train. `python -m data_pipelines.synth --out DIR` writes the corpus (see `build`).

The package, one job a module, each importing only those above it:

    scenes     shapes on a background and a moving shape: sampling and drawing (`render_scene`, `render_video`)
    sentences  the closed vocabulary, the grammar of the ASR sentences, scenes described in words
    sounds     non-speech clips: notes, chords, melodies, rhythms of five synthetic instruments (`render_clip`)
    aspect     wide, tall and square pictures and videos whose answers a squash to a square distorts
    tasks      one example builder per task and `make_example`, keyed by (seed, split, task, index)
    building   `generate`, `build` (shards + manifest), `prepare` (tokenizer + per-task shards), the CLI

Everything a caller needs is importable from here (`from data_pipelines import synth; synth.prepare(...)`).
"""

from __future__ import annotations

from data_pipelines.synth.building import (DEFAULT_TRAIN, MANIFEST, NUM_SHARDS, PREPARED, SIZES, TASK_DIR, VERSION,
                                           build, generate, is_complete, main, prepare, prepared_size, split_counts,
                                           summary, task_shards, to_schema_example)
from data_pipelines.synth.aspect import (FORMS, LAYOUTS, moving_form, render_aspect_scene, render_aspect_video,
                                         sample_aspect_scene)
from data_pipelines.synth.scenes import (BACKGROUNDS, COLOURS, DIRECTIONS, IMAGE_SIZE, SHAPES, VIDEO_FPS, VIDEO_FRAMES,
                                         render_scene, render_video)
from data_pipelines.synth.sentences import (ADJECTIVES, NAMES, NOUNS, NUMBER_WORDS, PLACES, PREPOSITIONS,
                                            SPOKEN_NUMBERS, VERBS_BASE, VERBS_PAST)
from data_pipelines.synth.sounds import CLIP_KINDS, INSTRUMENTS, render_clip, sample_clip
from data_pipelines.synth.tasks import (ASR_PROMPT, AUDIO_RATE, CAPTION_PROMPTS, NAME, SOUND_QUESTIONS, SPLITS,
                                        TASK_MEDIA, TASKS, make_example)

__all__ = [
    "ADJECTIVES", "ASR_PROMPT", "AUDIO_RATE", "BACKGROUNDS", "CAPTION_PROMPTS", "CLIP_KINDS", "COLOURS",
    "DEFAULT_TRAIN", "DIRECTIONS", "FORMS", "IMAGE_SIZE", "INSTRUMENTS", "LAYOUTS", "MANIFEST", "NAME", "NAMES",
    "NOUNS", "NUMBER_WORDS", "NUM_SHARDS", "PLACES", "PREPARED", "PREPOSITIONS", "SHAPES", "SIZES", "SOUND_QUESTIONS",
    "SPLITS", "SPOKEN_NUMBERS", "TASKS", "TASK_DIR", "TASK_MEDIA", "VERBS_BASE", "VERBS_PAST", "VERSION", "VIDEO_FPS",
    "VIDEO_FRAMES", "build", "generate", "is_complete", "main", "make_example", "moving_form", "prepare",
    "prepared_size", "render_aspect_scene", "render_aspect_video", "render_clip", "render_scene", "render_video",
    "sample_aspect_scene", "sample_clip", "split_counts", "summary", "task_shards", "to_schema_example",
]
