"""Qwen2-Audio (``Qwen2AudioForConditionalGeneration``) <-> ``{'audio', 'audio_connector', 'llm'}`` of
``OmniModel`` in its Qwen2-Audio configuration (``omnijax.models.qwen2_audio``).

Keys (the legacy Hub layout: what ``save_pretrained`` writes in transformers v5, and what export
writes)::

    audio_tower.*                            -> audio/...            (``audio_tower_table``)
    multi_modal_projector.linear.{weight,bias} -> audio_connector/linear/{kernel,bias}
    language_model.model.*                   -> llm/...              (``llm_table``)
    language_model.lm_head.weight            -> llm/lm_head/kernel   (never tied in this class)

The v5-native layout (``Qwen2AudioForConditionalGeneration.state_dict()``: ``model.audio_tower.*``,
``model.multi_modal_projector.*``, ``model.language_model.*`` without the inner ``model.``,
``lm_head.weight``) is read through ``aliases``.
"""

from __future__ import annotations

import jax
import numpy as np

from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import LINEAR, Entry, prefixed
from omnijax.hf.qwen2 import llm_table
from omnijax.hf.whisper import audio_tower_table
from omnijax.models.omni import example_batch
from omnijax.models.qwen2_audio import Qwen2AudioConfig, Qwen2AudioModel, hf_batch

HF_INPUTS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")


def qwen2_audio_table(cfg: Qwen2AudioConfig) -> list[Entry]:
    return (
        audio_tower_table(cfg.audio, "audio_tower.")
        + [Entry("multi_modal_projector.linear.weight", "audio_connector/linear/kernel", LINEAR),
           Entry("multi_modal_projector.linear.bias", "audio_connector/linear/bias")]
        + prefixed(llm_table(cfg.llm), hf_prefix="language_model.")
    )


def qwen2_audio_forward(module, params, inputs: dict):
    """HF ``Qwen2AudioForConditionalGeneration.forward(input_ids, attention_mask, input_features,
    feature_attention_mask).logits``; placeholder counts are checked before tracing."""
    unknown = sorted(set(inputs) - set(HF_INPUTS))
    if unknown or "input_ids" not in inputs:
        raise ValueError(f"Qwen2-Audio takes {', '.join(HF_INPUTS)} (input_ids required); got {sorted(inputs)}")
    ids = np.asarray(inputs["input_ids"]).astype(np.int32)
    mask = np.asarray(inputs.get("attention_mask", np.ones(ids.shape))).astype(np.int32)
    features, fmask = inputs.get("input_features"), inputs.get("feature_attention_mask")
    if features is not None and fmask is None:
        raise ValueError("input_features need feature_attention_mask [n_clips, frames] (1 on each clip's valid mel "
                         "frames; Qwen2AudioProcessor returns it)")
    if features is not None:
        features, fmask = np.asarray(features, np.float32), np.asarray(fmask).astype(np.int32)
    batch = hf_batch(module.cfg, ids, features, fmask, mask)
    return jax.jit(lambda p, b: module.apply({"params": p}, b, method="forward"))(params, batch)


def _build(hf: dict, **overrides):
    cfg = Qwen2AudioConfig.from_hf(hf, **overrides)
    return Qwen2AudioModel(cfg.omni()), cfg


QWEN2_AUDIO = register(Architecture(
    name="Qwen2AudioForConditionalGeneration",
    build=_build,
    table=qwen2_audio_table,
    hf_config=Qwen2AudioConfig.to_hf,
    init_inputs=lambda cfg: (example_batch(cfg.omni()),),
    init_method="forward",
    hf_forward=qwen2_audio_forward,
    aliases=(("audio_tower.", "model.audio_tower."),
             ("multi_modal_projector.", "model.multi_modal_projector."),
             ("language_model.model.", "model.language_model."),
             ("language_model.lm_head.", "lm_head.")),
))
