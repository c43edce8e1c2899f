"""The omni model (``omnijax.models.omni``) with its objective (``omnijax.training.objective``) as a
trainer ``Task``: ``c.model.name = 'omni'``.

``c.model`` holds the fields of ``OmniConfig``, with the sub-configs as dicts::

    c.model.llm = dict(vocab_size=..., hidden_size=..., ...)        # LLMConfig fields
    c.model.vision = dict(image_size=..., patch_size=..., ...)      # VisionConfig fields, or None
    c.model.vision_connector = 'mlp'                                 # or 'ola', or None
    c.model.audio = dict(num_mel_bins=..., d_model=..., ...)         # AudioConfig fields, or None
    c.model.audio_connector = 'linear'                               # 'mlp', 'frame_stack', 'conv_gmlp',
                                                                     # 'stride_pool', None
    c.model.frame_stack_k = 10                                       # the connector's settings, flat
                                                                     # (models.connector_configs)
    c.model.layout = 'ola'                                           # 'llava_onevision', 'qwen2_audio'
    c.model.image_token_id = ...                                     # and video_/audio_token_id
    c.model.vocab_parallel = False   # CE on vocabulary shards under shard_map: no full-vocabulary logits
    c.model.self_kd = None           # or dict(alpha=0.5, max_response_tokens=64): the Self-KD loss
                                     # (objective.SelfKD); the stage's batches then carry kd_part and
                                     # its Self-KD sources (c.data.sources[i].self_kd) give the pairs
    c.model.ctc = None               # or {'audio': dict(weight=0.2, tasks=('asr',)), 'image': dict(...)}: CTC
                                     # on connector outputs against the LLM's token embeddings
                                     # (training.connector_ctc), for towers trained from scratch
    c.model.bow = None               # likewise, a bag-of-words term on connector outputs (training.connector_bow)
    c.model.next_token_loss = True   # False: train on the ctc / bow terms alone (the LLM's layers are not run)

The media slots per row come from ``c.media`` and the mixture (``training.config.media_slots``), their sizes
from the towers. Attention ``'auto'`` in ``c.model.llm`` / ``vision`` / ``audio`` is the platform's
implementation (``models.attention.resolve_implementation``): of the mesh's devices when there is one.
"""

from __future__ import annotations

from omnijax.batch import batch_spec, check_batch
from omnijax.models.attention import resolve_implementation
from omnijax.models import connector_configs
from omnijax.models.audio import AudioConfig
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel, example_batch
from omnijax.models.vision import VisionConfig
from omnijax.training import objective
from omnijax.training.connector_bow import ConnectorBOW
from omnijax.training.config import media_slots
from omnijax.training.connector_ctc import ConnectorCTC
from omnijax.training.stages import StageConfigError
from omnijax.training.task import Task, from_module

_OWN = ("name", "vocab_parallel", "self_kd", "ctc", "bow", "next_token_loss")
_SUB = {"llm": LLMConfig, "vision": VisionConfig, "audio": AudioConfig}


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
                if "attention" in sub:
                    sub["attention"] = resolve_implementation(sub["attention"], platform, causal=name == "llm",
                                                              dtype=sub.get("dtype", "float32"))
                fields[name] = cls(**sub)
        return OmniConfig(**fields, **media_slots(c))
    except (TypeError, ValueError) as e:
        raise StageConfigError(f"stage {c.name!r}: c.model: {e}") from None


def self_kd_config(c) -> objective.SelfKD | None:
    """The stage's Self-KD loss (``c.model.self_kd``), or None (``StageConfigError`` if it is wrong)."""
    kd = c.model.get("self_kd")
    if kd is None:
        return None
    try:
        return objective.SelfKD(**dict(kd))
    except (TypeError, ValueError) as e:
        raise StageConfigError(f"stage {c.name!r}: c.model.self_kd: {e}; give dict(alpha=..., "
                               "max_response_tokens=...) or None") from None


def ctc_config(c, cfg: OmniConfig, field: str = "ctc") -> tuple[tuple, ...]:
    """The stage's CTC terms (``c.model.ctc``), or with ``field='bow'`` its bag-of-words terms
    (``c.model.bow``), with their tasks' ids; ``StageConfigError`` naming the field if one is wrong."""
    cls, fields_hint = {"ctc": (ConnectorCTC, "max_label_tokens=..., max_slots=..."),
                        "bow": (ConnectorBOW, "max_label_tokens=...")}[field]
    terms = c.model.get(field) or {}
    out = []
    for modality, fields in dict(terms).items():
        try:
            tower = {"audio": cfg.audio, "image": cfg.vision}.get(modality)
            term = cls(modality, **dict(fields))
            if tower is None:
                raise ValueError(f"it needs the model's {'audio' if modality == 'audio' else 'vision'} tower")
            if isinstance(term, ConnectorBOW) and term.pairs:
                term = term.with_pair_ids(_pair_tokenizer(c))
            out.append((term, term.task_ids(c.task_names)))
        except (TypeError, ValueError) as e:
            raise StageConfigError(f"stage {c.name!r}: c.model.{field}[{modality!r}]: {e}; give "
                                   f"{{'audio' or 'image': dict(weight=..., tasks=(...), {fields_hint})}}") from None
    return tuple(out)


def _pair_tokenizer(c):
    """The stage's tokenizer (``c.data.tokenizer``), which turns a bag-of-words term's pair words into ids."""
    from transformers import AutoTokenizer  # only a bag-of-words term with pairs reads it

    path = (c.get("data") or {}).get("tokenizer")
    if not path:
        raise ValueError("pairs names words, which need the stage's tokenizer: set c.data.tokenizer")
    return AutoTokenizer.from_pretrained(path)


def objective_terms(c, cfg: OmniConfig) -> tuple[tuple, tuple, bool]:
    """The stage's CTC terms, bag-of-words terms and whether it trains on the next-token loss
    (``c.model.next_token_loss``, default True); ``StageConfigError`` when a term is wrong, nothing is
    left to train on, or Self-KD is asked for without the next-token loss."""
    ctc, bow = ctc_config(c, cfg), ctc_config(c, cfg, "bow")
    next_token_loss = bool(c.model.get("next_token_loss", True))
    if not next_token_loss and not (ctc or bow):
        raise StageConfigError(f"stage {c.name!r}: c.model.next_token_loss=False leaves nothing to train on; give "
                               "the stage c.model.bow or c.model.ctc terms, or keep the next-token loss")
    if not next_token_loss and c.model.get("self_kd") is not None:
        raise StageConfigError(f"stage {c.name!r}: c.model.self_kd needs the next-token loss; leave "
                               "c.model.next_token_loss True or c.model.self_kd None")
    return ctc, bow, next_token_loss


def build(c, mesh) -> Task:
    cfg = omni_config(c, mesh.devices.flat[0].platform if mesh is not None else None)
    model = OmniModel(cfg)
    vocab_parallel = bool(c.model.get("vocab_parallel", False))
    self_kd = self_kd_config(c)
    ctc, bow, next_token_loss = objective_terms(c, cfg)

    def loss(params, batch, rng):
        del rng  # the omni model has no dropout
        return objective.loss_fn(model, params, batch, mesh=mesh, vocab_parallel=vocab_parallel,
                                 num_tasks=c.num_tasks, self_kd=self_kd, ctc=ctc, bow=bow,
                                 next_token_loss=next_token_loss)

    lay = cfg.media_layout
    media = {}
    if cfg.image_slots:
        media["image"] = ("images", lay.image_token_id, lay.image_tokens(1))
    if cfg.video_slots:
        media["video"] = ("videos", lay.video_token_id, lay.video_tokens(1))
    if cfg.audio_slots:
        media["audio"] = ("audio", lay.audio_token_id, lay.audio_tokens(1, valid_frames=[cfg.audio.frames]))
    return from_module(model, [example_batch(cfg)], loss,
                       batch_spec=batch_spec(c.batch_size, c.seq_len, cfg.budget, lay, self_kd is not None),
                       vocab_size=cfg.vocab_size, num_tasks=c.num_tasks, media_tokens=media,
                       check_batch=lambda batch: check_batch(batch, cfg, self_kd is not None), model_config=cfg)
