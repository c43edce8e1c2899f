"""BEATs weights (the reference ``state_dict`` naming) <-> the ``beats`` parameter group.

Registered architecture ``BEATs`` (import and export), a tower-only model whose params are ``{'beats': ...}``
(``omnijax.models.beats.BEATsTower``). Its directory is ``model.safetensors`` holding the reference model's
``state_dict()`` keys unchanged (``patch_embedding``, ``layer_norm``, ``post_extract_proj``, ``encoder.*``; the
positional convolution as torch's weight-norm pair ``encoder.pos_conv.0.weight_g`` / ``weight_v``) and a
``config.json`` that is the reference's ``cfg`` dict plus ``"architectures": ["BEATs"]``. The relative
position table is read from layer 0 (the reference shares that module with every layer, so its
``state_dict`` repeats it under each layer: export writes every copy, so ``load_state_dict`` is strict-clean).
A fine-tuned checkpoint's supervised head (``predictor.*``; its cfg has ``finetuned_model``) maps to ``predictor/``
(``BEATsConfig.predictor_class``), so such a checkpoint exports back whole.

Microsoft and Ola publish BEATs as a pickled ``.pt`` (``{'cfg': ..., 'model': state_dict}``); omnijax reads
safetensors only (loading a pickle can run code), so ``load_beats`` refuses it with the one-line conversion.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.audio import beats_fbank
from omnijax.hf import importer
from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import BIAS_SPLIT, LINEAR, LINEAR_IN2, Entry, conv_permute, prefixed
from omnijax.hf import safetensors_io
from omnijax.hf.safetensors_io import CheckpointError
from omnijax.models.beats import BEATsConfig, BEATsTower



def beats_table(cfg: BEATsConfig, hf_prefix: str = "") -> list[Entry]:
    """Reference ``state_dict`` keys under ``hf_prefix`` <-> paths under ``beats/``."""
    entries = [
        Entry("patch_embedding.weight", "patch_embedding/kernel", conv_permute(2)),
        Entry("layer_norm.weight", "layer_norm/scale"),
        Entry("layer_norm.bias", "layer_norm/bias"),
        Entry("encoder.pos_conv.0.weight_v", "encoder/pos_conv/weight_v", conv_permute(1)),
        Entry("encoder.pos_conv.0.weight_g", "encoder/pos_conv/weight_g", conv_permute(1)),
        Entry("encoder.pos_conv.0.bias", "encoder/pos_conv/bias"),
        Entry("encoder.layer_norm.weight", "encoder/layer_norm/scale"),
        Entry("encoder.layer_norm.bias", "encoder/layer_norm/bias"),
        Entry("encoder.layers.0.self_attn.relative_attention_bias.weight",
              "encoder/relative_attention_bias/embedding",
              tied=tuple(f"encoder.layers.{i}.self_attn.relative_attention_bias.weight"
                         for i in range(1, cfg.encoder_layers))),
        Entry("encoder.layers.{i}.self_attn.out_proj.weight", "encoder/layers/self_attn/out_proj/kernel", LINEAR_IN2),
        Entry("encoder.layers.{i}.self_attn.out_proj.bias", "encoder/layers/self_attn/out_proj/bias"),
        Entry("encoder.layers.{i}.self_attn.grep_linear.weight", "encoder/layers/self_attn/grep_linear/kernel", LINEAR),
        Entry("encoder.layers.{i}.self_attn.grep_linear.bias", "encoder/layers/self_attn/grep_linear/bias"),
        Entry("encoder.layers.{i}.self_attn.grep_a", "encoder/layers/self_attn/grep_a"),
    ]
    if cfg.conv_bias:
        entries.append(Entry("patch_embedding.bias", "patch_embedding/bias"))
    if cfg.embed_dim != cfg.encoder_embed_dim:
        entries += [Entry("post_extract_proj.weight", "post_extract_proj/kernel", LINEAR),
                    Entry("post_extract_proj.bias", "post_extract_proj/bias")]
    for p in ("q", "k", "v"):
        key, path = f"encoder.layers.{{i}}.self_attn.{p}_proj", f"encoder/layers/self_attn/{p}_proj"
        entries += [Entry(f"{key}.weight", f"{path}/kernel", LINEAR), Entry(f"{key}.bias", f"{path}/bias", BIAS_SPLIT)]
    if cfg.predictor_class:
        entries += [Entry("predictor.weight", "predictor/kernel", LINEAR), Entry("predictor.bias", "predictor/bias")]
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        entries += [Entry(f"encoder.layers.{{i}}.{norm}.weight", f"encoder/layers/{norm}/scale"),
                    Entry(f"encoder.layers.{{i}}.{norm}.bias", f"encoder/layers/{norm}/bias")]
    for fc in ("fc1", "fc2"):
        entries += [Entry(f"encoder.layers.{{i}}.{fc}.weight", f"encoder/layers/{fc}/kernel", LINEAR),
                    Entry(f"encoder.layers.{{i}}.{fc}.bias", f"encoder/layers/{fc}/bias")]
    return prefixed(entries, hf_prefix=hf_prefix, path_prefix="beats/")


def beats_forward(module, params, inputs: dict):
    """The reference's ``BEATs.extract_features(source)[0]``: ``source [batch, samples]`` 16 kHz waveforms
    in [-1, 1] -> ``[batch, patches, encoder_embed_dim]``."""
    unknown = sorted(set(inputs) - {"source"})
    if unknown:
        raise ValueError(f"inputs {unknown} are not used by BEATs; expected source [batch, samples] (16 kHz)")
    fbank = np.stack([beats_fbank(np.asarray(clip, np.float32)) for clip in np.asarray(inputs["source"])])
    return jax.jit(module.apply)({"params": params}, jnp.asarray(fbank))


def _build(hf: dict, **overrides):
    cfg = BEATsConfig.from_hf(hf, **overrides)
    return BEATsTower(cfg), cfg


BEATS = register(Architecture(
    name="BEATs",
    build=_build,
    table=beats_table,
    hf_config=lambda cfg: {"architectures": ["BEATs"], **cfg.to_hf()},
    init_inputs=lambda cfg: (jax.ShapeDtypeStruct((1, cfg.input_patch_size, 128), jnp.float32),),
    hf_forward=beats_forward,
))


def pickle_fix(pt_path: str, out_dir: str) -> str:
    """The one-line shell command that turns the reference's ``.pt`` into a directory this module loads."""
    return safetensors_io.pickle_fix(pt_path, out_dir, "model", "cfg", "BEATs")


def load_beats(path: str, **overrides) -> importer.Loaded:
    """A BEATs directory (``config.json`` + ``model.safetensors``) -> ``Loaded`` with ``{'beats': ...}`` params.
    ``overrides``: ``BEATsConfig`` fields (``dtype``, ``param_dtype``, ``remat``)."""
    pickles = []
    if os.path.isfile(path) and path.endswith(safetensors_io.PICKLE_SUFFIXES):
        pickles = [path]
    elif os.path.isdir(path) and not os.path.exists(os.path.join(path, "model.safetensors")):
        pickles = [os.path.join(path, f) for f in sorted(os.listdir(path))
                   if f.endswith(safetensors_io.PICKLE_SUFFIXES)]
    if pickles:
        out = os.path.splitext(pickles[0])[0] + "_safetensors"
        raise CheckpointError(f"{pickles[0]} is a PyTorch pickle; omnijax reads BEATs from safetensors only (a pickle "
                              f"can run code when loaded); convert it once: {pickle_fix(pickles[0], out)}")
    names = importer.read_config(path).get("architectures") or []
    if names[:1] != [BEATS.name]:
        raise CheckpointError(f"{path}/config.json names architectures {names}, not ['BEATs']; point at a BEATs "
                              "directory")
    return importer.load_hf(path, **overrides)
