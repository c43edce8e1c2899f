"""Qwen2-Audio (Whisper-style audio encoder + linear projector + Qwen2): ``OmniModel`` in the
configuration of transformers' ``Qwen2AudioForConditionalGeneration``, numerically equal to its
``forward`` (``models/qwen2_audio/modeling_qwen2_audio.py``) on processor-expanded inputs::

    input_features [n_clips, n_mels, frames], feature_attention_mask [n_clips, frames]
      -> audio (WhisperEncoder, variant 'qwen2_audio': key-padding mask from L = mask.sum(-1),
         AvgPool1d(2, 2), layer_norm)                         [n_clips, max_source_positions // 2, d_audio]
      -> audio_connector (LinearProjector 'linear')           [n_clips, max_source_positions // 2, hidden]
      -> the first qwen2_audio_tokens(L) outputs of each clip, clips in order, take the places of the
         audio placeholder tokens (``audio_token_index``) of the batch in row-major order
         (HF's ``masked_scatter`` over the flattened batch)
      -> llm (Qwen2) -> logits f32 [batch, seq, vocab]

This module is the configuration (``Qwen2AudioConfig`` <-> ``config.json``, ``omni()`` -> the
``OmniConfig``: audio tower, ``'linear'`` connector, layout ``'qwen2_audio'``) and the translation of
transformers' forward inputs into the batch contract (``hf_batch``: each example's clips fill its
row's audio slots); the layout is ``omnijax.models.layouts``.

The data pipeline (``Qwen2AudioProcessor`` in HF) expands each ``<|AUDIO|>`` into exactly
``qwen2_audio_tokens(L)`` placeholders, so the clips of example 0 come first, then those of example 1,
and so on. ``check_audio_placeholders`` checks that on concrete arrays before anything is traced.

Parameter groups: ``audio`` (the encoder), ``audio_connector`` (``linear/{kernel,bias}``), ``llm``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.media_layouts import Qwen2AudioLayout
from omnijax.media_tokens import qwen2_audio_tokens
from omnijax.models.audio import AudioConfig
from omnijax.models.connector_configs import Linear
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel

# transformers' defaults for the fields a Qwen2-Audio config.json may leave out (Qwen/Qwen2-Audio-7B's
# text_config names neither hidden_size nor the layer counts): Qwen2Config and the audio_config
# defaults of Qwen2AudioConfig.
_TEXT_DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
                  "num_hidden_layers": 32, "num_attention_heads": 32}
_AUDIO_DEFAULTS = {"model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "d_model": 1280, "encoder_layers": 32,
                   "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "max_source_positions": 1500}
_AUDIO_TOKEN_INDEX = 151646  # <|AUDIO|> in the Qwen2-Audio tokenizer


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class Qwen2AudioConfig:
    """A Qwen2-Audio model: the audio encoder's config, the LLM's config and the placeholder token id."""

    audio: AudioConfig
    llm: LLMConfig
    audio_token_index: int = _AUDIO_TOKEN_INDEX

    def __post_init__(self):
        if self.audio.variant != "qwen2_audio":
            raise ValueError(f"Qwen2-Audio needs an audio config with variant='qwen2_audio', "
                             f"got {self.audio.variant!r}")
        if self.llm.tie_word_embeddings:
            raise ValueError("Qwen2AudioForConditionalGeneration always has its own lm_head (transformers never ties "
                             "it to the embeddings): set tie_word_embeddings=False")
        if not 0 <= self.audio_token_index < self.llm.vocab_size:
            raise ValueError(f"audio_token_index {self.audio_token_index} is outside the vocabulary "
                             f"(vocab_size {self.llm.vocab_size})")

    def replace(self, **kw) -> "Qwen2AudioConfig":
        return dataclasses.replace(self, **kw)

    def omni(self) -> OmniConfig:
        """The ``OmniConfig`` of this model."""
        return OmniConfig(llm=self.llm, audio=self.audio, audio_connector=Linear(), layout=Qwen2AudioLayout.name,
                          audio_token_id=self.audio_token_index)

    @property
    def media_layout(self) -> Qwen2AudioLayout:
        return self.omni().media_layout

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "Qwen2AudioConfig":
        """From a ``Qwen2AudioConfig`` ``config.json`` dict.

        ``overrides``: ``audio_token_index``, or fields of ``LLMConfig`` / ``AudioConfig``; a field both
        have (``dtype``, ``param_dtype``, ``attention``, ``remat``) applies to both, except that
        ``attention='splash'`` (causal-only) leaves the bidirectional encoder on ``'xla'``.
        """
        llm_fields, audio_fields = _field_names(LLMConfig), _field_names(AudioConfig)
        unknown = sorted(set(overrides) - llm_fields - audio_fields - {"audio_token_index"})
        if unknown:
            raise ValueError(f"unknown Qwen2-Audio config overrides {unknown}: expected audio_token_index or fields "
                             "of LLMConfig / AudioConfig")
        llm_kw = {k: v for k, v in overrides.items() if k in llm_fields}
        audio_kw = {k: v for k, v in overrides.items() if k in audio_fields}
        if audio_kw.get("attention") == "splash":
            audio_kw["attention"] = "xla"
        text = {**_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
        audio = {**_AUDIO_DEFAULTS, **(hf.get("audio_config") or {})}
        token = hf.get("audio_token_index", hf.get("audio_token_id", _AUDIO_TOKEN_INDEX))
        token = overrides.get("audio_token_index", token)
        return cls(audio=AudioConfig.from_hf(audio, **audio_kw),
                   llm=LLMConfig.from_hf(text, **{"tie_word_embeddings": False, **llm_kw}),
                   audio_token_index=int(token))

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``Qwen2AudioConfig`` dict for ``Qwen2AudioForConditionalGeneration``."""
        text = self.llm.to_hf()
        del text["architectures"]
        return {
            "architectures": ["Qwen2AudioForConditionalGeneration"],
            "model_type": "qwen2_audio",
            "audio_config": self.audio.to_hf(),
            "text_config": text,
            "audio_token_index": self.audio_token_index,
            "torch_dtype": self.llm.param_dtype,
        }


def check_audio_placeholders(input_ids, feature_attention_mask, audio_token_index: int) -> list[list[int]]:
    """Which clips fill which example's placeholders (concrete arrays, before tracing).

    ``input_ids [b, t]``, ``feature_attention_mask [n_clips, frames]`` (or None: no audio). Clips are
    taken in order: example 0's placeholders take the first clips, example 1's the next, ... Returns
    the clip indices of each example; raises ``ValueError`` naming the example whose placeholder count
    is not the sum of its clips' ``qwen2_audio_tokens(L)``.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, seq], got {ids.shape}")
    lengths = np.zeros((0,), np.int64) if feature_attention_mask is None else \
        np.asarray(feature_attention_mask).astype(np.int64).sum(-1)
    tokens = [int(n) for n in qwen2_audio_tokens(lengths)]
    fix = ("expand each <|AUDIO|> into qwen2_audio_tokens(L) placeholder tokens for its clip of L valid mel frames, "
           "as Qwen2AudioProcessor does, and list the clips in the order their placeholders appear in the batch")
    assignment, k = [], 0
    for i, need in enumerate((ids == audio_token_index).sum(-1).tolist()):
        clips, got = [], 0
        while got < need and k < len(tokens):
            clips.append(k)
            got += tokens[k]
            k += 1
        if got != need:
            given = ", ".join(f"clip {c}: {tokens[c]}" for c in clips) or "no clips left"
            raise ValueError(f"example {i} has {need} audio placeholder tokens (id {audio_token_index}) but the clips "
                             f"that fall to it give {got} ({given}); {fix}")
        assignment.append(clips)
    if k < len(tokens):
        raise ValueError(f"the batch's audio placeholder tokens take only the first {k} of {len(tokens)} clips "
                         f"(clips {k}.. give {sum(tokens[k:])} tokens more than there are placeholders); {fix}")
    return assignment


def hf_batch(cfg, input_ids, input_features=None, feature_attention_mask=None, attention_mask=None) -> dict:
    """transformers' forward inputs as an ``OmniModel`` batch (``omnijax.batch``): each example's clips
    (``check_audio_placeholders``) fill its row's audio slots, one clip per item; positions are
    ``arange`` and ``attention_mask`` zeros are padding (segment 0), as transformers does without
    ``position_ids``. ``input_ids`` and ``feature_attention_mask`` must be concrete; ``input_features``
    may be traced. ``cfg``: a ``Qwen2AudioConfig`` or its ``OmniConfig``."""
    if any(isinstance(x, jax.core.Tracer) for x in (input_ids, feature_attention_mask)):
        raise ValueError("input_ids and feature_attention_mask must be concrete: the clips' places are worked out "
                         "on the host; under jit, build the batch with hf_batch first and apply OmniModel.forward")
    no_audio = input_features is None or input_features.shape[0] == 0
    if not no_audio and feature_attention_mask is None:
        raise ValueError("feature_attention_mask [n_clips, frames] is required with input_features "
                         "(Qwen2AudioProcessor returns it; 1 on each clip's valid mel frames)")
    ids = np.asarray(input_ids)
    assignment = check_audio_placeholders(ids, None if no_audio else feature_attention_mask,
                                          cfg.media_layout.audio_token_id)
    b, t = ids.shape
    mask = np.ones((b, t), np.int32) if attention_mask is None else attention_mask
    batch = {"input_ids": jnp.asarray(ids, jnp.int32), "segment_ids": jnp.asarray(mask, jnp.int32),
             "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}
    if no_audio:
        return batch
    valid = np.asarray(feature_attention_mask).astype(np.int64).sum(-1)
    slots = max(1, max(map(len, assignment)))
    source = np.zeros((b, slots), np.int64)
    item = np.full((b, slots), -1, np.int32)
    frames = np.zeros((b, slots), np.int32)
    for row, clips in enumerate(assignment):
        source[row, :len(clips)], item[row, :len(clips)], frames[row, :len(clips)] = clips, range(len(clips)), \
            valid[clips]
    features = jnp.asarray(input_features)
    batch["audio"] = jnp.take(features, jnp.asarray(source.reshape(-1)), axis=0).reshape(b, slots,
                                                                                         *features.shape[1:])
    batch["audio_item"], batch["audio_valid_frames"] = jnp.asarray(item), jnp.asarray(frames)
    return batch


class Qwen2AudioModel(OmniModel):
    """``OmniModel`` called like ``Qwen2AudioForConditionalGeneration``: ``__call__(input_ids [b, t],
    input_features [n_clips, n_mels, frames] | None, feature_attention_mask [n_clips, frames] | None,
    attention_mask [b, t] | None)`` -> logits f32 ``[b, t, vocab]``. The placeholder counts are checked
    on the host (``check_audio_placeholders``), so ``input_ids`` must be concrete; ``forward(batch)`` jits."""

    def __call__(self, input_ids, input_features=None, feature_attention_mask=None, attention_mask=None):
        return self.forward(hf_batch(self.cfg, input_ids, input_features, feature_attention_mask, attention_mask))
