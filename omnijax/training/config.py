"""A stage config's fields, their defaults, and the checks that run before anything compiles.

A stage file (``experiments/<recipe>/<stage>.py``) has ``get_config(arg)``, starts from
``base_config()`` and assigns what the stage is about; every field is listed here once::

    c.name              stage name (in errors and logs)
    c.model             task builder (``model.name``, ``omnijax.training.task``) and its fields
    c.objective         the loss terms by name, each a dict of its settings or None (``training.objective``):
                        next_token (default: dict(weight=1.0)), self_kd, ctc_audio, ctc_image, bow_audio,
                        bow_image; ``--config.objective.self_kd.alpha=0`` reaches one setting
    c.init_from         None | source | list of sources; a source is a path (HF or omnijax model
                        directory: the groups it holds replace the fresh init; a previous stage's
                        workdir: its final params) or (path, groups): only those top-level groups;
                        a group item 'a/b->c/d' puts the source's a/b at the model's c/d (Ola's dual
                        audio: (WHISPER_DIR, ('audio->audio/whisper',)), the rest of audio fresh).
                        A recipe (``omnijax.recipe``) resolves '@previous' and '@stage:NAME' paths
    c.trainable         [(regex, schedule | None), ...] over param paths (``omnijax.training.stages``)
    c.optimizer         AdamW b1, b2, eps, weight_decay; no_decay regexes; clip_norm (None: off)
    c.frozen_param_dtype  None | 'bfloat16' | ...: store frozen params in this dtype
    c.mesh              {'data', 'fsdp', 'tensor'} sizes, -1 = the remaining devices
    c.rules             logical-axis rules preset (``omnijax.sharding.RULES``)
    c.batch_size        global batch (rows); c.microbatches: gradient accumulation steps
    c.seq_len           tokens per row
    c.media             media slots per row: image_slots (views or tiles), video_slots (frames),
                        audio_slots (windows of the audio tower's length: 30 s for Whisper, 4 s in the
                        tiny preset, so audio_slots=8 is 4 min of audio per row; the slot sizes are the
                        model's: ``omnijax.batch.MediaBudget``), at most; a kind that no source of the
                        mixture holds gets none (``media_slots``) unless always=(kinds) keeps it. An
                        audio item's own limit is c.model.max_audio_windows (Ola: 25 windows). What the
                        stage dropped or cut for length is its last line, per source. A native-resolution
                        vision tower (OryxViT) also needs image_patches / video_patches: the patch slots
                        per row its views fill (``media_patches``)
    c.num_tasks         task ids in the batches (per-task losses); c.task_names: their names
    c.data              source: 'random' (in-memory random rows, ``data_source.RandomBatches``) or
                        'grain' (``data_pipelines.pipeline.Pipeline``); seed (both); for 'grain':
                        sources [dict(name, paths: shard glob(s), weight=1.0, spoken=False,
                        self_kd=False, media=None), ...] (spoken: read the spoken form of examples; self_kd:
                        read each example as a Self-KD teacher-student pair, with c.objective.self_kd set;
                        media: the kinds its examples hold, e.g. ('video', 'audio'), None: unknown),
                        tokenizer (HF tokenizer dir), workers (0: decode in the trainer process),
                        pipeline (dict of further ``PipelineConfig`` fields: video_frames, too_long, ...)
    c.num_steps, c.seed, c.log_every
    c.checkpoint        every (steps), keep (newest N), async_save
    c.max_nonfinite_in_a_row   K: that many skipped non-finite steps in a row stop the run

Paths may start at a named root instead of a folder of this machine: ``'@corpus/tasks/train/asr*'``,
``'@hf/Qwen2.5-7B-Instruct'``, ``'@data/librispeech/shards-*'`` (``ROOTS``). Whoever runs the stage
says where the roots are (``resolve_roots``: ``omnijax.experiment.run_recipe(corpus=..., hf_root=...,
data_root=...)``, the CLIs' ``--corpus``, ``--hf-root``, ``--data-root``), so a config file holds no
machine's folders and two runs in one process can read two corpora.
"""

from __future__ import annotations

import ast
import os
import re

import ml_collections as mlc

from omnijax import sharding
from omnijax.training import objective
from omnijax.training.checkpointing import final_step, is_stage_workdir
from omnijax.training.stages import DEFAULT_NO_DECAY, StageConfigError, check_rules


MEDIA_KINDS = ("image", "video", "audio")
MEDIA_SLOTS = tuple(f"{kind}_slots" for kind in MEDIA_KINDS)
MEDIA_PATCHES = ("image_patches", "video_patches")  # native resolution: patch slots per row
FROZEN_DTYPES = ("bfloat16", "float16", "float32")
DATA_SOURCES = ("random", "grain")
# Named roots a config path may start with ('@corpus/...'): the omni-synth corpus folder, the folder of
# HF checkpoints, the folder of the user's converted data. The defaults are the CLIs'.
ROOTS = {"corpus": "workdirs/omni-synth", "hf": "checkpoints/hf", "data": "data"}
ROOT_FLAGS = {"corpus": "corpus=... / --corpus", "hf": "hf_root=... / --hf-root", "data": "data_root=... / --data-root"}


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.name = "stage"
    c.model = mlc.ConfigDict({"name": "omni"})
    c.objective = mlc.ConfigDict(objective.DEFAULT)
    c.init_from = None
    c.trainable = [(".*", dict(lr=1e-4, warmup_fraction=0.05, decay="cosine"))]
    c.optimizer = mlc.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                      no_decay=DEFAULT_NO_DECAY, clip_norm=1.0))
    c.frozen_param_dtype = None
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.rules = "fsdp"
    c.batch_size = 8
    c.microbatches = 1
    c.seq_len = 256
    c.media = mlc.ConfigDict(dict(image_slots=0, video_slots=0, audio_slots=0, always=()))  # a stage sets its slots
    c.num_tasks = 0
    c.task_names = ()
    c.data = mlc.ConfigDict(dict(source="random", seed=0, sources=[], tokenizer="", workers=0, pipeline={}))
    c.num_steps = 100
    c.seed = 0
    c.log_every = 1
    c.checkpoint = mlc.ConfigDict(dict(every=50, keep=3, async_save=True))
    c.max_nonfinite_in_a_row = 5
    return c


def _root_of(value: str) -> str | None:
    if value.startswith("@") and not value.startswith(("@previous", "@stage:")):
        return value[1:].split("/", 1)[0]
    return None


def _resolve(value, roots: dict[str, str]):
    if isinstance(value, str):
        name = _root_of(value)
        if name is not None and name in roots:
            rest = value[1 + len(name):].lstrip("/")
            return os.path.join(os.path.abspath(roots[name]), rest) if rest else os.path.abspath(roots[name])
        return value
    if isinstance(value, mlc.ConfigDict):
        with value.ignore_type():
            for key in list(value.keys()):
                value[key] = _resolve(value[key], roots)
        return value
    if isinstance(value, dict):
        return {k: _resolve(v, roots) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_resolve(v, roots) for v in value)
    return value


def resolve_roots(c: mlc.ConfigDict, roots: dict[str, str] | None = None) -> mlc.ConfigDict:
    """``c`` (changed in place and returned) with every path that starts at a named root (``'@corpus/x'``)
    made absolute under that root's folder: ``roots`` maps names of ``ROOTS`` to folders, the others keep
    their defaults (relative to the working directory)."""
    unknown = sorted(set(roots or {}) - set(ROOTS))
    if unknown:
        raise StageConfigError(f"unknown roots {unknown}; roots are {', '.join(ROOTS)}")
    return _resolve(c, {**ROOTS, **{k: v for k, v in (roots or {}).items() if v is not None}})


def set_field(c: mlc.ConfigDict, key: str, value, where: str) -> None:
    """``c.<dotted key> = value`` (list entries by index: ``data.sources.0.weight``); an unknown field is a
    ``ValueError`` naming it and the fields there."""
    parts = key.split(".")
    target = c
    for depth, part in enumerate(parts):
        fields = (list(target.keys()) if isinstance(target, dict | mlc.ConfigDict)
                  else list(range(len(target))) if isinstance(target, list | tuple) else [])
        index = int(part) if part.isdigit() and isinstance(target, list | tuple) else part
        if index not in fields:
            shown = ", ".join(map(str, fields)) or "none (not a config group)"
            raise ValueError(f"{where}: {key!r}: {part!r} is not a field of the stage config here; fields: {shown}")
        if depth == len(parts) - 1:
            break
        target = target[index]
    if isinstance(target, mlc.ConfigDict):
        with target.ignore_type():
            target[index] = value
    elif isinstance(target, tuple):
        raise ValueError(f"{where}: {key!r} is inside a tuple; override the whole field")
    else:
        target[index] = value


# ``--config.KEY=[...]`` / ``--config.KEY={...}``: ml_collections' flags override numbers, strings, booleans and
# tuples; a list (c.trainable, c.data.sources, c.init_from) or a dict (c.data.pipeline) is read as a Python literal.
_LITERAL_FLAG = re.compile(r"--config\.([\w.]+)=(\s*[\[{].*)", re.DOTALL)


def literal_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``argv`` without its ``--config.KEY=[...]`` and ``--config.KEY={...}`` flags, and those as (KEY, text),
    in order, for ``override_literal`` once the config is loaded."""
    rest, literals = [], []
    for arg in argv:
        m = _LITERAL_FLAG.fullmatch(arg)
        if m:
            literals.append((m.group(1), m.group(2)))
        else:
            rest.append(arg)
    return rest, literals


def override_literal(c: mlc.ConfigDict, key: str, text: str) -> None:
    """``c.<key>`` = the Python literal ``text``, a list for a field holding a list, tuple or None, a dict for a
    field holding a dict; a ``ValueError`` naming the flag otherwise."""
    where = f"--config.{key}"
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"{where}: {text.strip()!r} is not a Python literal ({type(e).__name__}: {e}); write e.g. "
                         f"--config.trainable=\"[('vision_connector/.*', {{'lr': 1e-3}}), ('.*', None)]\"") from None
    current = c
    for part in key.split("."):
        try:
            current = current[int(part) if isinstance(current, list | tuple) else part]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            current = None  # set_field names the unknown field
            break
    kinds = (list, tuple) if isinstance(value, list | tuple) else (dict, mlc.ConfigDict)
    if current is not None and not isinstance(current, kinds):
        raise ValueError(f"{where}: a {type(value).__name__} for a field that holds {type(current).__name__} "
                         f"{current!r}; give it as {where}=VALUE")
    set_field(c, key, value, where)


def config_flag_error(error: Exception, argv: list[str]) -> str:
    """One line for an error of the ``--config`` flags in ``argv``; ml_collections reports a field that is not
    there as ``AttributeError(KeyError("'num_stepz'\\nDid you mean \\"num_steps\\" ..."))``."""
    cause = error.args[0] if error.args and isinstance(error.args[0], KeyError) else error
    if not isinstance(cause, KeyError):
        return f"{error} (see --help; a --config.* flag names a field of the stage config, with a value of its type)"
    text = str(cause.args[0]) if cause.args else ""
    name = text.split("\n")[0].strip("'\"")
    for arg in argv:
        parts = arg.split("=")[0].removeprefix("--config.").split(".")
        if arg.startswith("--config.") and name in parts:
            parts = parts[: parts.index(name)]
            break
    else:
        parts = []
    where = "c." + ".".join(parts) if parts else "the stage config"
    flag = ".".join(["--config", *parts, name])
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = f"; did you mean {'.'.join(['--config', *parts, suggestion.group(1)])}?" if suggestion else ""
    return f"{flag}: {where} has no field {name!r}{hint}"


def _unresolved(value, where: str = "c") -> tuple[str, str] | None:
    """The first (field, path) that still names a root."""
    if isinstance(value, str):
        return (where, value) if _root_of(value) is not None else None
    items = (value.items() if isinstance(value, dict | mlc.ConfigDict)
             else enumerate(value) if isinstance(value, list | tuple) else ())
    for key, v in items:
        found = _unresolved(v, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found:
            return found
    return None


def init_sources(c) -> list[tuple[str, tuple[str, ...] | None]]:
    """``c.init_from`` as (path, groups or None = all) pairs."""
    if not c.init_from:
        return []
    entries = [c.init_from] if isinstance(c.init_from, str) or _is_pair(c.init_from) else list(c.init_from)
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append((e, None))
        elif _is_pair(e):
            out.append((e[0], tuple(e[1])))
        else:
            raise StageConfigError(f"stage {c.name!r}: c.init_from entry {e!r} is neither a path nor (path, groups)")
    return out


def _is_pair(e) -> bool:
    return isinstance(e, tuple | list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], tuple | list)


def check_config(c, num_devices: int, process_count: int = 1) -> None:
    """Everything that can be wrong with a stage config without building the model; each error
    names the field and the fix. (Rules against the actual parameters: ``stages.assign_labels``.)"""
    stage = f"stage {c.name!r}"
    _check_roots(c, stage)
    _check_batch(c, stage, num_devices, process_count)
    if c.frozen_param_dtype not in (None, *FROZEN_DTYPES):
        raise StageConfigError(f"{stage}: c.frozen_param_dtype {c.frozen_param_dtype!r} is not one of "
                               f"{(None, *FROZEN_DTYPES)}")
    try:
        objective.terms_from_config(c.get("objective"))
    except ValueError as e:
        raise StageConfigError(f"{stage}: {e}") from None
    _check_data(c, stage)
    _check_media(c, stage)
    check_rules(c.trainable, c.name)
    _check_init_from(c, stage)


def _check_roots(c, stage: str) -> None:
    found = _unresolved(c)
    if found:
        name = _root_of(found[1])
        hint = (f"say where it is ({ROOT_FLAGS[name]})" if name in ROOTS
                else f"roots are {', '.join('@' + r for r in ROOTS)}")
        raise StageConfigError(f"{stage}: {found[0]} is {found[1]!r}, a path under the root '@{name}' that was not "
                               f"resolved; {hint}, or run the stage through omnijax.experiment / omnijax.recipe")


def _check_batch(c, stage: str, num_devices: int, process_count: int) -> None:
    """The mesh, the rules preset, and the batch, its steps and its checkpoints against them."""
    unknown = sorted(set(c.mesh) - set(sharding.MESH_AXES))
    if unknown:
        raise StageConfigError(f"{stage}: unknown mesh axis {unknown} in c.mesh; mesh axes are "
                               f"{', '.join(sharding.MESH_AXES)}")
    if c.rules not in sharding.RULES:
        raise StageConfigError(f"{stage}: c.rules {c.rules!r} is not a logical-axis rules preset; presets are: "
                               f"{', '.join(sharding.RULES)}")
    try:
        sizes = resolve_mesh(dict(c.mesh), num_devices)
    except ValueError as e:
        raise StageConfigError(f"{stage}: c.mesh: {e}") from None
    dp = data_parallel_size(sizes, c.rules)
    for name in ("batch_size", "microbatches", "seq_len", "num_steps", "log_every"):
        if int(c[name]) < 1:
            raise StageConfigError(f"{stage}: c.{name} is {c[name]}; it must be at least 1")
    if c.batch_size % (dp * c.microbatches):
        raise StageConfigError(
            f"{stage}: global batch {c.batch_size} is not divisible by the data-parallel size {dp} (mesh {sizes}, "
            f"batch over the {'/'.join(batch_axes(c.rules))} axes) times microbatches {c.microbatches}; make "
            f"c.batch_size a multiple of {dp * c.microbatches}")
    if c.batch_size % process_count:
        raise StageConfigError(f"{stage}: global batch {c.batch_size} does not split over {process_count} processes")
    if c.checkpoint.every < 1:
        raise StageConfigError(f"{stage}: c.checkpoint.every is {c.checkpoint.every}; it must be at least 1")
    if c.task_names and len(c.task_names) != c.num_tasks:
        raise StageConfigError(f"{stage}: c.task_names has {len(c.task_names)} names for c.num_tasks={c.num_tasks}")


def _check_data(c, stage: str) -> None:
    if c.data.source not in DATA_SOURCES:
        raise StageConfigError(f"{stage}: c.data.source {c.data.source!r} is not available; sources: "
                               f"{', '.join(map(repr, DATA_SOURCES))}")
    if c.data.source != "grain":
        return
    if not c.data.get("sources"):
        raise StageConfigError(f"{stage}: c.data.source is 'grain' but c.data.sources is empty; give "
                               "[dict(name=..., paths='shards-*', weight=1.0), ...]")
    if not c.data.get("tokenizer"):
        raise StageConfigError(f"{stage}: c.data.source is 'grain' but c.data.tokenizer is not set; point it "
                               "at the stage's HF tokenizer directory")
    if int(c.data.get("workers", 0)) < 0:
        raise StageConfigError(f"{stage}: c.data.workers is {c.data.workers}; it must be >= 0")
    for i, src in enumerate(c.data.sources):
        if not isinstance(src, dict | mlc.ConfigDict) or not src.get("name") or not src.get("paths"):
            raise StageConfigError(f"{stage}: c.data.sources[{i}] is {src!r}; each source is a dict with "
                                   "name and paths (a shard glob or a list of them), optional weight, spoken, "
                                   "self_kd")


def _check_media(c, stage: str) -> None:
    unknown = sorted(set(c.media) - set(MEDIA_SLOTS) - set(MEDIA_PATCHES) - {"always"})
    if unknown:
        raise StageConfigError(f"{stage}: c.media has {unknown}; it holds the slots per row: {', '.join(MEDIA_SLOTS)}, "
                               f"{', '.join(MEDIA_PATCHES)} (native resolution) and always (kinds that keep their "
                               "slots)")
    for where, kinds in [("c.media.always", c.media.get("always") or ())] + [
            (f"c.data.sources[{i}].media", src.get("media") or ()) for i, src in enumerate(c.data.get("sources") or ())
            if isinstance(src, dict | mlc.ConfigDict)]:
        bad = sorted(set(kinds) - set(MEDIA_KINDS)) if isinstance(kinds, list | tuple) else [kinds]
        if bad:
            raise StageConfigError(f"{stage}: {where} names {bad}; give a tuple of media kinds "
                                   f"({', '.join(MEDIA_KINDS)})")


def _check_init_from(c, stage: str) -> None:
    for src, _ in init_sources(c):
        if src.startswith("@"):
            raise StageConfigError(f"{stage}: c.init_from {src!r} names a recipe stage; run the stage through "
                                   "its recipe (python -m omnijax.recipe) or set --config.init_from=PATH")
        if not os.path.exists(src):
            raise StageConfigError(f"{stage}: c.init_from {src!r} does not exist; point it at a HF or omnijax model "
                                   "directory or at a previous stage's workdir")
        if is_stage_workdir(src):
            final_step(src)
            continue
        marks = ("config.json", "omnijax.json")
        if not any(os.path.exists(os.path.join(src, m)) for m in marks):
            raise StageConfigError(f"{stage}: c.init_from {src!r} is neither a model directory (config.json or "
                                   "omnijax.json) nor a stage workdir (checkpoints/); point it at one of those")


def media_slots(c) -> dict[str, int]:
    """The stage's media slots per row (``image_slots``, ``video_slots``, ``audio_slots``): ``c.media``'s, except
    that when every source of a 'grain' mixture says which media its examples hold (``media``; a spoken or
    Self-KD source also holds audio), a kind none of them holds gets no slots -- the step then runs no tower
    on slots that are always empty -- unless ``c.media.always`` names it."""
    slots = {k: int(c.media[k]) for k in MEDIA_SLOTS}
    sources = list(c.data.get("sources") or ()) if c.data.get("source") == "grain" else []
    if not sources or any(src.get("media") is None for src in sources):
        return slots
    # a spoken source (and a Self-KD one, whose student is spoken) adds the question's audio to its examples
    spoken = {"audio"} if any(src.get("spoken") or src.get("self_kd") for src in sources) else set()
    held = {kind for src in sources for kind in src["media"]} | spoken | set(c.media.get("always") or ())
    return {f"{kind}_slots": slots[f"{kind}_slots"] if kind in held else 0 for kind in MEDIA_KINDS}


def media_patches(c) -> dict[str, int]:
    """The stage's patch slots per row of native-resolution images and frames (``c.media.image_patches``,
    ``video_patches``; 0 when absent), and 0 for a kind that gets no slots (``media_slots``)."""
    slots = media_slots(c)
    return {k: int(c.media.get(k) or 0) if slots[k.replace("patches", "slots")] else 0 for k in MEDIA_PATCHES}


def resolve_mesh(shape: dict, num_devices: int) -> dict[str, int]:
    """Mesh axis sizes with -1 resolved (the checks of ``sharding.make_mesh``, without devices)."""
    sizes = {a: int(shape.get(a, 1)) for a in sharding.MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one axis may be -1, got {sizes}")
    known = 1
    for s in sizes.values():
        if s != -1:
            if s < 1:
                raise ValueError(f"axis sizes must be positive or -1, got {sizes}")
            known *= s
    if free:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices are not divisible by {known} ({sizes})")
        sizes[free[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(f"{sizes} needs {known} devices, {num_devices} are available; set one axis to -1")
    return sizes


def batch_axes(rules_preset: str) -> tuple[str, ...]:
    axes = dict(sharding.logical_rules(rules_preset)).get("activation_batch") or ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def data_parallel_size(sizes: dict[str, int], rules_preset: str) -> int:
    n = 1
    for a in batch_axes(rules_preset):
        n *= sizes[a]
    return n
