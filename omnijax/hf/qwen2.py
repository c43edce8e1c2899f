"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``) <-> the ``llm`` parameter group."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import BIAS_SPLIT, LINEAR, LINEAR_IN2, Entry, prefixed
from omnijax.models.llm import CausalLM, LLMConfig


def llm_table(cfg: LLMConfig) -> list[Entry]:
    """``model.*`` / ``lm_head.*`` keys <-> paths under ``llm/`` (reusable inside multimodal models)."""
    entries = [
        Entry("model.embed_tokens.weight", "embed_tokens/embedding"),
        Entry("model.norm.weight", "norm/scale"),
        Entry("model.layers.{i}.input_layernorm.weight", "layers/input_layernorm/scale"),
        Entry("model.layers.{i}.post_attention_layernorm.weight", "layers/post_attention_layernorm/scale"),
        Entry("model.layers.{i}.self_attn.o_proj.weight", "layers/attn/o_proj/kernel", LINEAR_IN2),
    ]
    for p in ("q", "k", "v"):
        entries += [
            Entry(f"model.layers.{{i}}.self_attn.{p}_proj.weight", f"layers/attn/{p}_proj/kernel", LINEAR),
            Entry(f"model.layers.{{i}}.self_attn.{p}_proj.bias", f"layers/attn/{p}_proj/bias", BIAS_SPLIT),
        ]
    for p in ("gate", "up", "down"):
        entries.append(Entry(f"model.layers.{{i}}.mlp.{p}_proj.weight", f"layers/mlp/{p}_proj/kernel", LINEAR))
    if not cfg.tie_word_embeddings:
        entries.append(Entry("lm_head.weight", "lm_head/kernel", LINEAR))
    return prefixed(entries, path_prefix="llm/")


def causal_lm_forward(module, params, inputs: dict):
    """HF ``Qwen2ForCausalLM.forward(input_ids, attention_mask)``: positions ``arange`` (as HF uses
    when no ``position_ids`` are given), padding keys masked."""
    unknown = sorted(set(inputs) - {"input_ids", "attention_mask"})
    if unknown:
        raise ValueError(f"inputs {unknown} are not used by a causal LM; expected input_ids [, attention_mask]")
    ids = jnp.asarray(inputs["input_ids"], jnp.int32)
    mask = jnp.asarray(inputs.get("attention_mask", np.ones(ids.shape)), jnp.int32)
    return jax.jit(module.apply)({"params": params}, ids, None, mask)[0]


def _build(hf: dict, **overrides):
    cfg = LLMConfig.from_hf(hf, **overrides)
    return CausalLM(cfg), cfg


QWEN2 = register(Architecture(
    name="Qwen2ForCausalLM",
    build=_build,
    table=llm_table,
    hf_config=LLMConfig.to_hf,
    init_inputs=lambda cfg: (jax.ShapeDtypeStruct((1, 8), jnp.int32),),
    hf_forward=causal_lm_forward,
))
