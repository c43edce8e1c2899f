"""What the recipes share: model presets (`tiny` for a CPU, `7b` for a pod) and the omni-synth data sources.

A stage file reads its argument with ``parse_arg`` (``'7b'``, ``'tiny,steps=300,freeze=llm'``: the preset and the
knobs an ablation sweeps), calls ``stage_config(preset, name=...)`` for the preset's model, mesh and numerics,
assigns what its stage is about from its recipe's table of the paper's numbers (``paper.py``: a ``PaperStage``
per stage -- learning rates per group, frozen groups, batch, samples, and the steps they make), and ends with
``finish(c, a, tiny)``: the tiny preset's own settings (``tiny(c)``), then the knobs. Paper sizes:

- LLM Qwen2.5-7B (28 layers, hidden 3584, GQA 28:4, vocab 152064), SigLIP-so400m-patch14-384 (27 layers,
  hidden 1152), Whisper-large-v3 encoder (32 layers, d_model 1280, 128 mels, 30 s windows).
- Attention is ``'auto'`` in both presets: the platform's (cuDNN flash attention on GPUs, splash in the LLM on
  TPUs, the XLA reference on CPUs; ``omnijax.models.attention.resolve_implementation``); a
  ``--config.model.{llm,vision,audio}.attention=...`` flag picks one (``benchmarks/RESULTS.md`` section 6).
- ``audio=dual`` (a knob, ``use_dual``): Ola's Whisper + BEATs dual audio encoder; BEATs_iter3+ at `7b` (12 layers,
  768 wide), imported from ``@hf/BEATs_iter3_plus_AS2M`` (safetensors: ``omnijax.hf.beats``); ``audio=beats``
  (``use_beats``): BEATs alone on the same windows.
- ``tiny``: the same architecture at toy sizes on omni-synth's 64-pixel images and 4 s audio windows,
  with the omni-synth BPE tokenizer (1024 ids; placeholders 3 image, 4 video, 5 audio).

Paths start at named roots (``omnijax.training.config.ROOTS``) that whoever runs the stage resolves:
the `7b` presets import HF checkpoints from ``@hf/`` (``Qwen2.5-7B-Instruct``,
``siglip-so400m-patch14-384``, ``whisper-large-v3``) and read the user's data, converted with
``python -m data_pipelines.build``, from ``@data/<source name>/shards-*``; the tiny presets read
omni-synth from ``@corpus/`` and start from the tiny pretrained checkpoints shipped in
``checkpoints/tiny`` (``TINY_CHECKPOINTS``; made by ``python -m experiments.pretrain_tiny.release``),
as the `7b` ones start from Qwen2.5, SigLIP and Whisper.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_collections as mlc

from data_pipelines import synth
from data_pipelines import tokenizer as tok
from omnijax.training.config import base_config

PRESETS = ("tiny", "7b")
SYNTH_IDS = {m: tok.SYNTH_TOKEN_IDS[tok.PLACEHOLDER_TOKENS[m]] for m in ("image", "video", "audio")}
QWEN_IDS = {"image": 151655, "video": 151656, "audio": 151646}  # Qwen2.5's <|image_pad|>, <|video_pad|>, <|AUDIO|>

LLM = {
    "tiny": dict(vocab_size=tok.DEFAULT_VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_layers=4,
                 num_heads=4, num_kv_heads=2, max_position_embeddings=2048, attention="auto"),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
               num_kv_heads=4, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
               tie_word_embeddings=False,
               dtype="bfloat16", param_dtype="float32", remat="full", attention="auto"),
}
VISION = {
    "tiny": dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 use_head=False, attention="auto"),
    "7b": dict(image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16,
               use_head=False, dtype="bfloat16", remat="full", attention="auto"),
}
AUDIO = {
    "tiny": dict(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                 max_source_positions=200, attention="auto"),
    "7b": dict(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
               max_source_positions=1500, dtype="bfloat16", remat="full", attention="auto"),
}
# OryxViT, Ola's native-resolution tower (the ``vision=oryx`` knob): Ola's sizes for `7b` (SigLIP-so400m widths at
# patch 16, a 128 x 128 position table); `tiny` at patch 8, so a 64-pixel omni-synth image is 8 x 8 patches.
ORYX = {
    "tiny": dict(native=True, patch_size=8, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 pos_grid=16, attention="auto"),
    "7b": dict(native=True, patch_size=16, hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16,
               pos_grid=128, dtype="bfloat16", remat="full", attention="auto"),
}
# Ola's MAXRES (ola/mm_utils.py line 36, 1536 in Ola's inference and training scripts): an image above this side
# squared (its own area) is scaled to it, a smaller one only padded to 32-pixel multiples; `tiny`: 96 pixels, 12 x 12
# of its 8-pixel patches as 1536 is 96 x 96 of 16.
ORYX_MAXRES = {"tiny": 96, "7b": 1536}
# Video frames as Ola's resize_video sizes them: above the first side squared scaled down, below the second scaled up,
# else padded to 32-pixel multiples. Ola's scripts set 448 and 288 (infer.py 480, 288): 324 to 784 patches, 91 to 211
# tokens a frame, 64 frames past a 4096-token row. `7b` (our choice): 160, no upscaling, so a frame of aspect ratio up
# to 2 takes at most 140 patches, 64 of them within video_patches; `tiny`: 64 and 40 (8 x 8 and 5 x 5 of its patches).
ORYX_VIDEO_RES = {"tiny": dict(native_video_maxres=64, native_video_minres=40),
                  "7b": dict(native_video_maxres=160, native_video_minres=0)}
# Its patch slots per row. `tiny`: 3 images (with their low-res views) or 8 frames of 64 x 64 pixels; any image of
# aspect ratio up to 4 (its Ola-sized views take at most 204 patches). `7b` (our choice): one image at Ola's largest
# and its low-res view (any aspect ratio up to 4: at most 10200 patches, e.g. 801 x 2945 pixels padded to 832 x 2976
# and its 192 x 736 view) or several smaller; 64 frames of at most 144 patches (ORYX_VIDEO_RES; 43 tokens each), so
# a video's tokens fit a 4096-token row. An image or video whose views take more is dropped as too long.
ORYX_PATCHES = {"tiny": dict(image_patches=256, video_patches=512),
                "7b": dict(image_patches=10240, video_patches=9216)}
# Each image's low-resolution view before it, as Ola's inference makes it (LOWRES_RESIZE='384x32': 384 x 384 pixels
# of area); `tiny`: 32 x 32 of a 64-pixel image.
ORYX_LOWRES = {"tiny": 32, "7b": 384}
# BEATs, Ola's music encoder beside Whisper (the ``audio=dual`` knob): `7b` is BEATs_iter3+ (``BEATsConfig``'s
# defaults: 768 wide, 12 layers), imported from ``@hf/`` (``BEATS_HF_DIR``, read by ``omnijax.hf.beats``); `tiny` as
# wide as the tiny Whisper, imported from the shipped tiny checkpoints (``checkpoints/tiny/beats``: stage 0c of the
# tiny pretraining taught it omni-synth's sounds). `7b` keeps the AudioSet head (527 classes) of the
# fine-tuned checkpoint Ola ships, unused by the forward, so the model is Ola-7B's parameter for parameter
# (``python -m experiments.ola.sizes``).
BEATS = {
    "tiny": dict(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                 encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=64),
    "7b": dict(predictor_class=527, dtype="bfloat16", remat="full"),
}
BEATS_HF_DIR = "BEATs_iter3_plus_AS2M"
FRAME_STACK = {"tiny": dict(frame_stack_k=4, frame_stack_hidden=256),  # Ola's speech projector at each preset
               "7b": dict(frame_stack_k=10, frame_stack_hidden=2048)}
GROUPS = ("llm", "vision", "vision_connector", "audio", "audio_connector", "mm_embed")  # the params' top level
TINY_VIDEO_FRAMES = 4  # of omni-synth's 8: enough to see which way a shape moves
HF_DIRS = {"llm": "Qwen2.5-7B-Instruct", "vision": "siglip-so400m-patch14-384", "audio": "whisper-large-v3",
           "beats": BEATS_HF_DIR}
CORPUS = "@corpus"  # the omni-synth folder (``omnijax.training.config.ROOTS``)
CORPUS_TOKENIZER = f"{CORPUS}/{tok.SYNTH_TOKENIZER_DIR}"  # trained on the corpus (the tiny pretraining's)
# The tiny pretrained LLM (with its tokenizer), vision tower and audio tower, in HF format, and what they were
# trained on (``PIN_FILE``). Rebuilt by REBUILD.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CHECKPOINTS = os.path.join(REPO, "checkpoints", "tiny")
TINY_DIRS = {"llm": "llm", "vision": "vision", "audio": "audio", "beats": "beats"}
PIN_FILE = "omni_synth.json"
REBUILD = "python -m experiments.pretrain_tiny.release"


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)} (e.g. --config FILE:tiny)")
    return preset


def hf_dir(group: str) -> str:
    return f"@hf/{HF_DIRS[group]}"


def tiny_dir(group: str) -> str:
    return os.path.join(TINY_CHECKPOINTS, TINY_DIRS[group])


def omni_model(preset: str, *, vision_connector: str | None = "ola", audio_connector: str | None = "frame_stack",
               audio_variant: str = "whisper", layout: str = "ola", **extra) -> mlc.ConfigDict:
    """The preset's omni model: LLM + SigLIP + Whisper with the given connectors (None: no such tower)."""
    ids = SYNTH_IDS if preset == "tiny" else QWEN_IDS
    model = dict(name="omni", llm=dict(LLM[preset]), layout=layout, vision=None, vision_connector=None, audio=None,
                 audio_connector=None, image_token_id=None, video_token_id=None, audio_token_id=None)
    if vision_connector is not None:
        model.update(vision=dict(VISION[preset]), vision_connector=vision_connector, image_token_id=ids["image"],
                     video_token_id=ids["video"])
    if audio_connector is not None:
        # An audio item takes at most Ola's 25 windows: 25 x 30 s = 12.5 min (`7b`), 25 x 4 s = 100 s (`tiny`).
        model.update(audio=dict(AUDIO[preset], variant=audio_variant), audio_connector=audio_connector,
                     audio_token_id=ids["audio"], max_audio_windows=25)
        if audio_connector == "frame_stack":
            model.update(FRAME_STACK[preset])
    model.update(extra)
    return mlc.ConfigDict(model)


def stage_config(preset: str, name: str, model: mlc.ConfigDict, tokenizer: str | None = None, *,
                 batch: int = 256) -> mlc.ConfigDict:
    """A stage's preset-wide fields: model, mesh, batch, sequence, media slots, checkpointing, data defaults.
    ``tokenizer``: default the pretrained LLM's (the shipped tiny one's; Qwen2.5's for `7b`). ``batch``: the `7b`
    global batch in rows (the paper's, ``PaperStage.batch``); the tiny preset's is 8 rows."""
    c = base_config()
    c.name = name
    c.model = model
    c.optimizer.weight_decay = 0.0
    if check_preset(preset) == "tiny":
        c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
        c.batch_size, c.seq_len = 8, 256
        c.media.update(image_slots=4, video_slots=8, audio_slots=4)
        c.data.update(source="grain", tokenizer=tokenizer or tiny_dir("llm"), workers=0,
                      pipeline=dict(too_long="truncate", video_frames=TINY_VIDEO_FRAMES))
        c.checkpoint.update(every=100, keep=1, async_save=False)
        c.log_every = 25
    else:
        c.mesh = mlc.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
        c.rules = "fsdp"
        # Rows of 4096 packed tokens: the papers cap an example's length instead (Ola: 16384, §4.1) and batch
        # examples; a row here packs several short ones, and `python -m omnijax.compile` sized memory at 4096.
        c.batch_size, c.seq_len = batch, 4096
        c.media.update(image_slots=8, video_slots=64, audio_slots=8)
        c.data.update(source="grain", tokenizer=tokenizer or hf_dir("llm"), workers=8,
                      pipeline=dict(too_long="truncate", video_frames=64))
        c.checkpoint.update(every=500, keep=2, async_save=True)
        c.log_every = 10
    return c


# The media the papers' data of a source holds (`7b`), where it differs from omni-synth's task of that name:
# the video-question sets of the visual stages (LLaVA-Video-178K, ShareGPT4Video) are read as frames, without
# an audio track, so those stages build no audio slots (``omnijax.training.config.media_slots``).
PAPER_MEDIA = {"video_visual_qa": ("video",)}


def sources(preset: str, weights: dict[str, float], *, spoken: tuple[str, ...] = ()) -> list[dict]:
    """The stage's data sources with their mixture weights and the media kinds their examples hold: omni-synth
    task shards (`tiny`), or the user's converted shards under ``@data/<name>/`` (`7b`). ``spoken``: sources
    whose examples are read as their spoken-question view (Self-KD students, Ola's audio questions)."""
    out = []
    for name, weight in weights.items():
        if name not in synth.TASKS:
            raise ValueError(f"{name!r} is not an omni-synth task; tasks: {', '.join(synth.TASKS)}")
        media = synth.TASK_MEDIA[name]
        if preset == "tiny":
            paths = synth.task_shards(CORPUS, "train")[name] + "*"
        else:
            paths, media = f"@data/{name}/shards-*", PAPER_MEDIA.get(name, media)
        out.append(dict(name=name, paths=paths, weight=float(weight), spoken=name in spoken, media=tuple(media)))
    return out


def set_data(c: mlc.ConfigDict, preset: str, weights: dict[str, float], **kw) -> None:
    """The stage's mixture; task ids (per-task losses in the logs) follow the sources' order."""
    c.data.sources = sources(preset, weights, **kw)
    c.task_names = tuple(weights)
    c.num_tasks = len(weights)


def schedule(lr: float, warmup_fraction: float = 0.03, decay: str = "cosine") -> dict:
    return dict(lr=lr, warmup_fraction=warmup_fraction, decay=decay)


def rule(groups: str) -> str:
    """A ``c.trainable`` regex from parameter groups: ``'vision'`` -> ``'vision/.*'``, ``'vision|audio'`` ->
    ``'(vision|audio)/.*'``, ``'*'`` -> ``'.*'`` (every parameter no rule before it matched)."""
    if groups == "*":
        return ".*"
    return f"({groups})/.*" if "|" in groups else f"{groups}/.*"


def trainable(lr: dict[str, float | None]) -> list:
    """``c.trainable`` from ``{groups: learning rate, or None: frozen}`` in order (a parameter follows the first
    rule it matches; ``rule`` reads the keys), each rate with ``schedule``'s warmup and cosine decay."""
    return [(rule(groups), None if rate is None else schedule(rate)) for groups, rate in lr.items()]


@dataclasses.dataclass(frozen=True)
class PaperStage:
    """One stage of a paper's training section: a row of its recipe's table (``experiments/<recipe>/paper.py``).

    ``lr``: ``{groups: learning rate, or None: frozen}`` (``trainable``), ``'*'`` every other parameter;
    ``batch``: the global batch, the `7b` preset's rows; ``samples``: the examples the stage trains on, read
    ``epochs`` times, ``per_row`` of them to a row -- 1 counts a row as one of the paper's examples (its batches
    count examples), which gives the paper's number of steps (a row packs several short examples, so a step
    sees at least the paper's batch); ``steps``: instead of ``samples``, where the paper gives no sample count."""

    lr: dict
    batch: int
    samples: int | None = None
    epochs: int = 1
    per_row: int = 1
    steps: int | None = None

    def __post_init__(self):
        if (self.samples is None) == (self.steps is None):
            raise ValueError(f"a PaperStage gives samples or steps, one of them: {self}")

    @property
    def num_steps(self) -> int:
        """``steps`` if given, else ``ceil(epochs * samples / (batch * per_row))``."""
        if self.steps is not None:
            return self.steps
        return math.ceil(self.epochs * self.samples / (self.batch * self.per_row))


KNOBS = ("steps", "freeze", "weight.TASK", "vision_connector", "audio_connector", "vision", "audio", "init",
         "frame_stack_k", "conv_gmlp_stride", "stride_pool_stride")
# An audio connector's encoder outputs per LLM token (its token rate), the connector it belongs to: at one value the
# three take audio at one rate (the tiny Whisper's 50 outputs a second, 4 of them a token: 12.5 tokens a second).
RATE_KNOBS = {"frame_stack_k": "frame_stack", "conv_gmlp_stride": "conv_gmlp", "stride_pool_stride": "stride_pool"}
VISION_TOWERS = ("siglip", "oryx")  # the vision knob: SigLIP at a fixed size, or OryxViT at each image's own
AUDIO_ENCODERS = ("whisper", "dual", "beats")  # the audio knob: Whisper alone, Ola's Whisper + BEATs, BEATs alone


def parse_arg(arg: str | None, **extra: str) -> mlc.ConfigDict:
    """``get_config``'s argument, read as big_vision's ``get_config(arg)`` reads it: ``'PRESET[,knob=value,...]'``,
    e.g. ``'tiny,steps=300,freeze=llm+vision,weight.asr=3,audio_connector=mlp'`` -> ``a.preset``, ``a.steps``, ...

    The knobs an ablation sweeps (``finish`` applies them): ``steps`` (``c.num_steps``), ``freeze`` (groups frozen
    on top of the stage's rules, ``+`` between them), ``weight.TASK`` (a source's mixture weight; 0 drops it, a
    task not in the mixture joins it), ``vision_connector`` / ``audio_connector`` (a connector by name), ``vision``
    (``oryx``: Ola's native-resolution tower, ``use_oryx``; ``siglip``, the default, leaves the stage as it is),
    ``audio`` (``dual``: Ola's Whisper + BEATs encoder, ``use_dual``; ``beats``: BEATs alone, ``use_beats``;
    ``whisper``, the default, Whisper alone);
    ``init`` (a model directory the stage starts from whole, with its model: ``start_from``; e.g. Ola's release);
    ``frame_stack_k`` / ``conv_gmlp_stride`` / ``stride_pool_stride`` (the audio connector's encoder outputs per
    token, ``RATE_KNOBS``: the knob of the stage's audio connector, e.g. ``audio_connector=stride_pool,
    stride_pool_stride=4``);
    ``extra``: the stage's own, ``name=default`` (Self-KD's ``vlm=PATH``). After ``get_config`` the same fields are set
    through the recipe runner's overrides: ``num_steps``, ``trainable``, ``data.sources.N.weight``,
    ``model.audio_connector``."""
    preset, *items = (arg or "tiny").split(",")
    a = dict(preset=check_preset(preset.strip()), steps=None, freeze=(), weights={}, vision_connector=None,
             audio_connector=None, vision="siglip", audio="whisper", init=None, rates={}, **extra)
    for item in items:
        key, _, value = (part.strip() for part in item.partition("="))
        if not value:
            raise ValueError(f"config argument {arg!r}: {item!r} is not knob=value")
        if key.startswith("weight.") and key != "weight.":
            a["weights"][key.removeprefix("weight.")] = float(value)
        elif key == "steps":
            a["steps"] = int(value)
        elif key in RATE_KNOBS:
            a["rates"][key] = int(value)
        elif key == "freeze":
            a["freeze"] = tuple(value.split("+"))
            unknown = sorted(set(a["freeze"]) - set(GROUPS))
            if unknown:
                raise ValueError(f"config argument {arg!r}: freeze names {unknown}; groups are: {', '.join(GROUPS)}")
        elif key in a and key not in ("preset", "weights", "freeze", "steps", "rates"):
            a[key] = value
            if key == "vision" and value not in VISION_TOWERS:
                raise ValueError(f"config argument {arg!r}: vision={value!r} is not one of {', '.join(VISION_TOWERS)}")
            if key == "audio" and value not in AUDIO_ENCODERS:
                raise ValueError(f"config argument {arg!r}: audio={value!r} is not one of {', '.join(AUDIO_ENCODERS)}")
        else:
            raise ValueError(f"config argument {arg!r}: unknown knob {key!r}; knobs: "
                             f"{', '.join((*KNOBS, *extra))} (e.g. {preset},steps=300,freeze=llm)")
    model_knobs = [k for k in ("vision_connector", "audio_connector", "vision", "audio")
                   if a[k] not in (None, "siglip", "whisper")] + list(a["rates"])
    if a["init"] is not None and model_knobs:
        raise ValueError(f"config argument {arg!r}: init= takes the model of its directory; drop {model_knobs}")
    return mlc.ConfigDict(a)


def finish(c: mlc.ConfigDict, a: mlc.ConfigDict, tiny=None) -> mlc.ConfigDict:
    """The stage's config: ``tiny(c)`` for the tiny preset (its own settings, kept apart from the paper's), then
    the knobs of ``a`` (``parse_arg``)."""
    if a.preset == "tiny" and tiny is not None:
        tiny(c)
    if a.steps is not None:
        c.num_steps = a.steps
    if a.freeze:
        c.trainable = [(rule("|".join(a.freeze)), None), *c.trainable]
    if a.weights:
        reweigh(c, a.preset, dict(a.weights))
    for field in ("vision_connector", "audio_connector"):
        if a[field] is not None:
            c.model[field] = a[field]
            if a[field] == "frame_stack":
                c.model.update(FRAME_STACK[a.preset])
    for knob, value in a.rates.items():
        if c.model.get("audio_connector") != RATE_KNOBS[knob]:
            raise ValueError(f"stage {c.name!r}: {knob}={value} sets the {RATE_KNOBS[knob]!r} audio connector, but "
                             f"the stage's is {c.model.get('audio_connector')!r}; add "
                             f"audio_connector={RATE_KNOBS[knob]}")
        c.model[knob] = value
    if a.vision == "oryx":
        use_oryx(c, a.preset)
    if a.audio == "dual":
        use_dual(c, a.preset)
    if a.audio == "beats":
        use_beats(c, a.preset)
    if a.init is not None:
        start_from(c, a.preset, a.init)
    return c


def use_oryx(c: mlc.ConfigDict, preset: str) -> None:
    """The stage with Ola's native-resolution tower, OryxViT, for SigLIP: images and frames at their own size and
    aspect ratio (up to the row's patch slots, ``ORYX_PATCHES``) in Ola's layout of them (``'ola_native'``), the
    2x2 local-global pooling connector; Ola's processor settings in ``c.model`` (``ORYX_LOWRES``, ``ORYX_MAXRES``,
    ``ORYX_VIDEO_RES``: exported with the model). No OryxViT checkpoint is shipped or imported yet: a first stage
    starts the tower fresh (its ``vision`` entry leaves ``c.init_from``)."""
    if c.model.get("vision") is None:
        raise ValueError(f"stage {c.name!r} has no vision tower for vision=oryx to replace")
    c.model.vision = dict(ORYX[preset])  # replaced, not merged (ConfigDict.update merges)
    c.model.update(vision_connector="ola", layout="ola_native", native_lowres=ORYX_LOWRES[preset],
                   native_maxres=ORYX_MAXRES[preset], **ORYX_VIDEO_RES[preset])
    c.media.update(ORYX_PATCHES[preset])
    if isinstance(c.get("init_from"), list | tuple):
        kept = [(src, tuple(g for g in groups if g != "vision")) for src, groups in c.init_from]
        c.init_from = [(src, groups) for src, groups in kept if groups]


def use_dual(c: mlc.ConfigDict, preset: str) -> None:
    """The stage with Ola's dual audio encoder: BEATs (``BEATS``) beside its Whisper on each window, their outputs
    concatenated on channels (the frame-stacking connector's input widens with them), params ``audio/whisper/...``
    and ``audio/beats/...``. A first stage's pretrained Whisper (its ``audio`` entry in ``c.init_from``) lands in
    ``audio/whisper`` and BEATs comes from its pretrained checkpoint beside it (``@hf/BEATS_HF_DIR`` at `7b`, the
    shipped tiny one at `tiny`); a stage whose ``init_from`` names no ``audio`` group starts BEATs fresh. Later
    stages start from the previous stage's dual params as they are."""
    if c.model.get("audio") is None:
        raise ValueError(f"stage {c.name!r} has no Whisper audio tower for audio=dual to pair BEATs with")
    with c.ignore_type():
        c.model.beats = dict(BEATS[preset])
    entries = c.get("init_from")
    if isinstance(entries, list | tuple) and any("audio" in groups for _, groups in entries):
        entries = [(src, tuple("audio->audio/whisper" if g == "audio" else g for g in groups))
                   for src, groups in entries]
        entries.append((hf_dir("beats") if preset == "7b" else tiny_dir("beats"), ("beats->audio/beats",)))
        c.init_from = entries


def use_beats(c: mlc.ConfigDict, preset: str) -> None:
    """The stage with BEATs alone as its audio encoder: ``use_dual`` without the Whisper (``speech_encoder=False``),
    which then only sets the windows; BEATs' params ``audio/beats/...``, from its pretrained checkpoint as
    ``use_dual`` imports it, and the batches carry BEATs' fbank and no log-mel. A first stage's pretrained Whisper
    (its ``audio`` entry in ``c.init_from``) is not imported."""
    use_dual(c, preset)
    c.model.speech_encoder = False
    entries = c.get("init_from")
    if isinstance(entries, list | tuple):
        entries = [(src, tuple(g for g in groups if g != "audio->audio/whisper")) for src, groups in entries]
        c.init_from = [(src, groups) for src, groups in entries if groups]


def start_from(c: mlc.ConfigDict, preset: str, path: str) -> None:
    """The stage starting from the model directory at ``path`` whole -- whatever ``load_model`` opens: an omnijax
    model directory, a HF one, Ola's release layout (``omnijax.hf.ola``) -- as a stage's ``c.init_from`` reads it,
    every group landing in the params: ``c.model`` is that directory's model (``stage_model`` of its config, read
    now, so ``path`` is a folder, not an ``@root`` path) with the preset's numerics (dtypes, attention, remat); a
    native-resolution tower gets the preset's patch slots and low-res view (``use_oryx``'s). The stage keeps its
    tokenizer, media slots and rules."""
    from omnijax.checkpoint import model_config
    from omnijax.models.omni import NUMERICS
    from omnijax.training.omni_task import stage_model

    if path.startswith("@") or not os.path.isdir(path):
        raise ValueError(f"stage {c.name!r}: init={path!r}: give the model directory as a folder (its config is "
                         "read when the stage is configured; @root paths are resolved later)")
    model = stage_model(model_config(path))
    presets = {"llm": LLM, "vision": ORYX if (model["vision"] or {}).get("native") else VISION, "audio": AUDIO,
               "beats": BEATS}
    for tower, table in presets.items():
        if model[tower] is not None:
            model[tower].update({k: v for k, v in table[preset].items() if k in NUMERICS})
    c.model = mlc.ConfigDict(model)
    if model["vision"] is not None and model["vision"].get("native"):
        c.media.update(ORYX_PATCHES[preset])
        c.model.update(native_lowres=ORYX_LOWRES[preset], native_maxres=ORYX_MAXRES[preset], **ORYX_VIDEO_RES[preset])
    c.init_from = path


def reweigh(c: mlc.ConfigDict, preset: str, weights: dict[str, float]) -> None:
    """The stage's mixture with ``weights`` (``{task: weight}``): 0 drops a source, a task not in the mixture
    joins it; task ids follow the sources' order, as in ``set_data``."""
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"stage {c.name!r}: mixture weights {weights} must be >= 0")
    kept = [dict(s, weight=float(weights.get(s["name"], s["weight"]))) for s in c.data.sources]
    names = {s["name"] for s in kept}
    added = sources(preset, {n: w for n, w in weights.items() if n not in names})
    chosen = [s for s in kept + added if s["weight"] > 0]
    if not chosen:
        raise ValueError(f"stage {c.name!r}: the weights {weights} leave no source in the mixture")
    c.data.sources = chosen
    c.task_names = tuple(s["name"] for s in chosen)
    c.num_tasks = len(chosen)


PREVIOUS = "@previous"  # the recipe's previous stage (``omnijax.recipe`` resolves it)


def stage_ref(name: str) -> str:
    """A recipe stage's workdir, by stage name (``omnijax.recipe`` resolves it)."""
    return f"@stage:{name}"


def pretrained(preset: str, groups: tuple[str, ...]) -> list:
    """A first stage's ``init_from``: each group from its pretrained HF checkpoint (lazy, sharded import) --
    Qwen2.5-7B, SigLIP-so400m and Whisper-large-v3 under ``@hf/`` for `7b`, the shipped tiny ones for `tiny`."""
    return [(hf_dir(g) if check_preset(preset) == "7b" else tiny_dir(g), (g,)) for g in groups]


def qwen2_audio_dir() -> str:
    """Capybara's audio tower source: a Qwen2-Audio checkpoint (its encoder)."""
    return "@hf/Qwen2-Audio-7B-Instruct"


class CorpusMismatchError(ValueError):
    pass


def check_tiny_checkpoints(corpus: str, checkpoints: str = TINY_CHECKPOINTS) -> dict:
    """The pin of the shipped tiny checkpoints (``checkpoints/PIN_FILE``, default ``TINY_CHECKPOINTS``), checked against
    the omni-synth
    corpus in ``corpus``: a corpus of another version (its examples, and so what the tokenizer and the
    towers were trained on, differ) is refused with both versions and the command that rebuilds the checkpoints."""
    try:
        with open(os.path.join(checkpoints, PIN_FILE)) as f:
            pin = json.load(f)
    except OSError:
        raise CorpusMismatchError(f"the tiny pretrained checkpoints are missing ({checkpoints}/{PIN_FILE} does "
                                  f"not exist); rebuild them with `{REBUILD}`") from None
    try:
        with open(os.path.join(corpus, synth.MANIFEST)) as f:
            version = json.load(f).get("version")
    except (OSError, ValueError):
        raise CorpusMismatchError(f"{corpus} holds no omni-synth corpus ({synth.MANIFEST}); build it with "
                                  f"`python -m data_pipelines.synth --out {corpus}`") from None
    if version != pin["omni_synth_version"]:
        raise CorpusMismatchError(
            f"the omni-synth corpus in {corpus} is version {version}, but the tiny pretrained checkpoints in "
            f"{checkpoints} were trained on omni-synth version {pin['omni_synth_version']} with its tokenizer; "
            f"rebuild the checkpoints for version {version} with `{REBUILD}` (about 20 minutes on 2 cores), or "
            f"use a corpus of version {pin['omni_synth_version']}")
    return pin


def prepare_synth(preset: str, roots: dict[str, str]) -> None:
    """A recipe's ``prepare``: omni-synth for the tiny preset in the ``corpus`` root, built once at the default
    size (a folder that already holds a prepared corpus of another size, the tests' tiny one, is used as it is),
    checked against the shipped tiny checkpoints it starts from."""
    if preset == "tiny":
        corpus = roots["corpus"]
        synth.prepare(corpus, size=synth.prepared_size(corpus) or "default")
        check_tiny_checkpoints(corpus)


def synth_eval_data(preset: str) -> str | None:
    """A recipe's ``eval_data``: the tiny preset's held-out omni-synth split."""
    return CORPUS if preset == "tiny" else None
