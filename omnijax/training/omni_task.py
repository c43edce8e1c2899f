"""The omni model (``omnijax.models.omni``) with its objective (``omnijax.training.objective``) as a
trainer ``Task``: ``c.model.name = 'omni'``.

``c.model`` holds the fields of ``OmniConfig``, with the sub-configs as dicts::

    c.model.llm = dict(vocab_size=..., hidden_size=..., ...)        # LLMConfig fields
    c.model.vision = dict(image_size=..., patch_size=..., ...)      # VisionConfig fields, or None; with
                                                                     # native=True OryxViTConfig fields
                                                                     # (layout 'ola_native', c.media's
                                                                     # image_patches / video_patches)
    c.model.vision_connector = 'mlp'                                 # or 'ola', 'avg_pool', or None
    c.model.audio = dict(num_mel_bins=..., d_model=..., ...)         # AudioConfig fields, or None
    c.model.beats = dict(encoder_embed_dim=..., ...)                 # BEATsConfig fields, or None: with
                                                                     # audio, Ola's Whisper + BEATs encoder
    c.model.audio_connector = 'linear'                               # 'mlp', 'frame_stack', 'conv_gmlp',
                                                                     # 'stride_pool', None
    c.model.frame_stack_k = 10                                       # the connector's settings, flat
                                                                     # (models.connector_configs)
    c.model.layout = 'ola'                                           # 'llava_onevision', 'qwen2_audio'
    c.model.image_token_id = ...                                     # and video_/audio_token_id
    c.model.max_audio_windows = 25                                   # an audio item's most windows (Ola:
                                                                     # 25 x 30 s = 12.5 min); longer ones
                                                                     # are cut or dropped (too_long)

and ``c.objective`` its loss terms (``omnijax.training.objective``), bound here to the stage's tasks, towers
and tokenizer; with a Self-KD term the stage's batches carry ``kd_part`` and its Self-KD sources
(``c.data.sources[i].self_kd``) give the pairs.

The media slots per row come from ``c.media`` and the mixture (``training.config.media_slots``), their sizes
from the towers. Attention ``'auto'`` in ``c.model.llm`` / ``vision`` / ``audio`` is the platform's
implementation (``models.attention.resolve_implementation``): of the mesh's devices when there is one.
"""

from __future__ import annotations

import dataclasses

from omnijax.batch import batch_spec, check_batch
from omnijax.models.attention import resolve_implementation
from omnijax.models import connector_configs
from omnijax.models.audio import AudioConfig
from omnijax.models.beats import BEATsConfig
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel, example_batch
from omnijax.models.oryx_vit import OryxViTConfig
from omnijax.models.vision import VisionConfig
from omnijax.training import objective
from omnijax.training.config import MEDIA_PATCHES, MEDIA_SLOTS, media_patches, media_slots
from omnijax.training.next_token import SelfKD
from omnijax.training.stages import StageConfigError
from omnijax.training.task import Task, from_module
from omnijax.training.term import Stage

_OWN = ("name",)
_SUB = {"llm": LLMConfig, "vision": VisionConfig, "audio": AudioConfig, "beats": BEATsConfig}


def omni_config(c, platform: str | None = None) -> OmniConfig:
    """The ``OmniConfig`` of a stage config (``StageConfigError`` naming the field if it is wrong); attention
    ``'auto'`` resolved for ``platform`` (default: JAX's default backend)."""
    fields = {k: v for k, v in c.model.to_dict().items() if k not in _OWN}
    flat = {k: fields.pop(k) for k in connector_configs.field_names() if k in fields}
    try:
        for tower in connector_configs.TOWERS:
            fields[f"{tower}_connector"] = connector_configs.from_fields(tower, flat)
        for name, cls in _SUB.items():
            if fields.get(name) is not None:
                sub = dict(fields[name])
                if name == "vision" and sub.pop("native", False):
                    cls = OryxViTConfig
                if "attention" in sub:
                    sub["attention"] = resolve_implementation(sub["attention"], platform, causal=name == "llm",
                                                              dtype=sub.get("dtype", "float32"))
                fields[name] = cls(**sub)
        return OmniConfig(**fields, **media_slots(c), **media_patches(c))
    except (TypeError, ValueError) as e:
        raise StageConfigError(f"stage {c.name!r}: c.model: {e}") from None


def stage_model(cfg: OmniConfig) -> dict:
    """``c.model`` of a stage that trains ``cfg``: ``omni_config``'s inverse (the media slots and patch slots per row
    are the stage's, ``c.media``)."""
    towers = {name: None if getattr(cfg, name) is None else dataclasses.asdict(getattr(cfg, name)) for name in _SUB}
    if cfg.native:
        towers["vision"]["native"] = True
    skip = (*_SUB, *(f"{t}_connector" for t in connector_configs.TOWERS), *MEDIA_SLOTS, *MEDIA_PATCHES)
    own = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in skip}
    for t in connector_configs.TOWERS:
        conn = getattr(cfg, f"{t}_connector")
        own.update(conn.to_fields(t) if conn is not None else {f"{t}_connector": None})
    return {"name": "omni", **own, **towers}


def objective_terms(c, cfg: OmniConfig) -> tuple:
    """The stage's loss terms (``c.objective``) bound to its tasks, towers and tokenizer; ``StageConfigError``
    naming the term when one is wrong."""
    towers = frozenset(m for m, tower in (("audio", cfg.audio), ("image", cfg.vision)) if tower is not None)
    try:
        terms = objective.terms_from_config(c.get("objective"))
        return objective.bind(terms, Stage(tuple(c.get("task_names") or ()), towers, lambda: _pair_tokenizer(c)))
    except ValueError as e:
        raise StageConfigError(f"stage {c.name!r}: {e}") from None


def _pair_tokenizer(c):
    """The stage's tokenizer (``c.data.tokenizer``), which turns a bag-of-words term's pair words into ids."""
    from transformers import AutoTokenizer  # only a bag-of-words term with pairs reads it

    path = (c.get("data") or {}).get("tokenizer")
    if not path:
        raise ValueError("pairs names words, which need the stage's tokenizer: set c.data.tokenizer")
    return AutoTokenizer.from_pretrained(path)


def build(c, mesh) -> Task:
    cfg = omni_config(c, mesh.devices.flat[0].platform if mesh is not None else None)
    model = OmniModel(cfg)
    terms = objective_terms(c, cfg)
    self_kd = any(isinstance(t, SelfKD) for t in terms)

    def loss(params, batch, rng):
        del rng  # the omni model has no dropout
        return objective.loss_fn(model, params, batch, terms, mesh=mesh, num_tasks=c.num_tasks)

    lay = cfg.media_layout
    media = {}
    if cfg.native and (cfg.image_slots or cfg.video_slots) and c.data.get("source") != "grain":
        raise StageConfigError(f"stage {c.name!r}: native-resolution images (OryxViT) come from the Grain pipeline "
                               "only: set c.data.source='grain' (the random-batch source makes S x S views)")
    if cfg.image_slots and not cfg.native:  # the random-batch source's views (none at native resolution)
        media["image"] = ("images", lay.image_token_id, lay.image_tokens(1))
    if cfg.video_slots and not cfg.native:
        media["video"] = ("videos", lay.video_token_id, lay.video_tokens(1))
    if cfg.audio_slots:
        media["audio"] = ("audio", lay.audio_token_id, lay.audio_tokens(1, valid_frames=[cfg.audio.frames]))
    # random text avoids every placeholder id, those of media without slots in this stage too
    placeholders = [t for t in (cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id) if t is not None]
    return from_module(model, [example_batch(cfg)], loss,
                       batch_spec=batch_spec(c.batch_size, c.seq_len, cfg.budget, lay, self_kd),
                       vocab_size=cfg.vocab_size, num_tasks=c.num_tasks, media_tokens=media, reserved_ids=placeholders,
                       check_batch=lambda batch: check_batch(batch, cfg, self_kd), model_config=cfg)
