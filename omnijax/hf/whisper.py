"""Whisper and Qwen2-Audio encoders <-> the ``audio`` parameter group.

Registered architectures, each a tower-only model whose params are ``{'audio': ...}``
(``omnijax.models.audio.AudioTower``):

- ``WhisperModel`` / ``WhisperForConditionalGeneration``: import only. The encoder is read from
  ``encoder.*`` (what v5 saves for ``WhisperModel``) or ``model.encoder.*`` (``...ForConditionalGeneration``),
  either layout for either name; the decoder and ``proj_out`` are not part of an audio tower and are
  skipped by design (the importer logs them at INFO, not as a warning). Export is refused: an encoder
  alone cannot make a Whisper checkpoint that transformers loads without a randomly initialised
  decoder. Whisper towers leave omnijax inside the models that use them (Qwen2-Audio's
  ``audio_tower``), as a standalone ``Qwen2AudioEncoder``, or as a ``WhisperEncoder``.
- ``WhisperEncoder``: the encoder alone, import and export (unprefixed keys, ``model_type='whisper'``;
  transformers loads it with ``WhisperEncoder.from_pretrained``, no missing or unexpected keys). The
  tiny pretrained audio tower ships in this form (``checkpoints/tiny/audio``).
- ``Qwen2AudioEncoder``: import and export (unprefixed keys, ``model_type='qwen2_audio_encoder'``;
  transformers loads it with ``AutoModel``).

``audio_tower_table(cfg, hf_prefix)`` is the one key table, reused under ``audio_tower.`` by
``Qwen2AudioForConditionalGeneration``: the Whisper and Qwen2-Audio encoders share their keys
(``conv1``, ``conv2``, ``embed_positions``, ``layers.{i}.*``, ``layer_norm``; the AvgPool has none).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import BIAS_SPLIT, LINEAR, LINEAR_IN2, Entry, conv_permute, prefixed
from omnijax.models.audio import AudioConfig, AudioTower

CONV1D = conv_permute(1)

_EXPORT_NOTE = ("omnijax holds only the Whisper encoder, and a Whisper checkpoint without its decoder does not "
                "load cleanly in transformers; export the tower as WhisperEncoder (architectures "
                "['WhisperEncoder'] in its config.json), or the model that uses it (e.g. Qwen2-Audio)")


def audio_tower_table(cfg: AudioConfig, hf_prefix: str = "audio_tower.") -> list[Entry]:
    """Whisper-encoder keys under ``hf_prefix`` <-> paths under ``audio/``."""
    entries = [
        Entry("conv1.weight", "conv1/kernel", CONV1D),
        Entry("conv1.bias", "conv1/bias"),
        Entry("conv2.weight", "conv2/kernel", CONV1D),
        Entry("conv2.bias", "conv2/bias"),
        Entry("embed_positions.weight", "embed_positions/embedding"),
        Entry("layer_norm.weight", "layer_norm/scale"),
        Entry("layer_norm.bias", "layer_norm/bias"),
        Entry("layers.{i}.self_attn.out_proj.weight", "layers/self_attn/out_proj/kernel", LINEAR_IN2),
        Entry("layers.{i}.self_attn.out_proj.bias", "layers/self_attn/out_proj/bias"),
    ]
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        entries += [Entry(f"layers.{{i}}.{norm}.weight", f"layers/{norm}/scale"),
                    Entry(f"layers.{{i}}.{norm}.bias", f"layers/{norm}/bias")]
    for p in ("q", "k", "v"):
        entries.append(Entry(f"layers.{{i}}.self_attn.{p}_proj.weight", f"layers/self_attn/{p}_proj/kernel", LINEAR))
    for p in ("q", "v"):  # k_proj has no bias
        entries.append(Entry(f"layers.{{i}}.self_attn.{p}_proj.bias", f"layers/self_attn/{p}_proj/bias", BIAS_SPLIT))
    for fc in ("fc1", "fc2"):
        entries += [Entry(f"layers.{{i}}.{fc}.weight", f"layers/{fc}/kernel", LINEAR),
                    Entry(f"layers.{{i}}.{fc}.bias", f"layers/{fc}/bias")]
    return prefixed(entries, hf_prefix=hf_prefix, path_prefix="audio/")


def audio_forward(module, params, inputs: dict):
    """The HF encoder's ``last_hidden_state``: ``model.get_encoder()(input_features)`` for Whisper;
    for Qwen2-Audio the audio tower as ``Qwen2AudioModel.forward`` runs it, masked from the
    processor's ``feature_attention_mask [batch, frames]`` when given."""
    qwen2 = module.cfg.variant == "qwen2_audio"
    unknown = sorted(set(inputs) - {"input_features", *(["feature_attention_mask"] if qwen2 else [])})
    if unknown:
        raise ValueError(f"inputs {unknown} are not used by a {module.cfg.variant} audio tower; expected "
                         "input_features [batch, n_mels, frames]"
                         + (" and optionally feature_attention_mask [batch, frames]" if qwen2 else ""))
    features = jnp.asarray(np.asarray(inputs["input_features"], np.float32))
    mask = inputs.get("feature_attention_mask")
    valid = None if mask is None else jnp.asarray(np.asarray(mask).sum(-1), jnp.int32)
    return jax.jit(module.apply)({"params": params}, features, valid)


def _build(hf: dict, **overrides):
    cfg = AudioConfig.from_hf(hf, **overrides)
    return AudioTower(cfg), cfg


def _init_inputs(cfg: AudioConfig) -> tuple:
    return (jax.ShapeDtypeStruct((1, cfg.num_mel_bins, cfg.frames), jnp.float32),)


def _hf_config(name: str):
    return lambda cfg: {"architectures": [name], **cfg.to_hf()}


WHISPER_MODEL = register(Architecture(
    name="WhisperModel",
    build=_build,
    table=lambda cfg: audio_tower_table(cfg, "encoder."),
    hf_config=_hf_config("WhisperModel"),
    init_inputs=_init_inputs,
    hf_forward=audio_forward,
    aliases=(("encoder.", "model.encoder."),),
    expected_unused=("decoder.", "model.decoder.", "proj_out."),
    export_unsupported=_EXPORT_NOTE,
))

WHISPER_FOR_CONDITIONAL_GENERATION = register(Architecture(
    name="WhisperForConditionalGeneration",
    build=_build,
    table=lambda cfg: audio_tower_table(cfg, "model.encoder."),
    hf_config=_hf_config("WhisperForConditionalGeneration"),
    init_inputs=_init_inputs,
    hf_forward=audio_forward,
    aliases=(("model.encoder.", "encoder."),),
    expected_unused=("model.decoder.", "decoder.", "proj_out."),
    export_unsupported=_EXPORT_NOTE,
))

WHISPER_ENCODER = register(Architecture(
    name="WhisperEncoder",
    build=_build,
    table=lambda cfg: audio_tower_table(cfg, ""),
    hf_config=_hf_config("WhisperEncoder"),
    init_inputs=_init_inputs,
    hf_forward=audio_forward,
))

QWEN2_AUDIO_ENCODER = register(Architecture(
    name="Qwen2AudioEncoder",
    build=_build,
    table=lambda cfg: audio_tower_table(cfg, ""),
    hf_config=_hf_config("Qwen2AudioEncoder"),
    init_inputs=_init_inputs,
    hf_forward=audio_forward,
))
