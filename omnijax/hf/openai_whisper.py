"""openai-whisper's naming of the Whisper encoder <-> the ``audio`` parameter group.

openai-whisper (``whisper/model.py``: ``AudioEncoder``, ``ResidualAttentionBlock``) names the encoder
``conv1``, ``conv2``, ``positional_embedding`` (a buffer), ``blocks.{i}.attn.{query,key,value,out}`` (no bias on
``key``), ``blocks.{i}.attn_ln``, ``blocks.{i}.mlp.0`` / ``mlp.2`` (Linear, GELU, Linear), ``blocks.{i}.mlp_ln``
and ``ln_post``; its full model puts them under ``encoder.``, Ola's model under
``model.speech_encoder.whisper_model.`` (Ola's loader rebuilds that encoder from openai-whisper's ``large-v3.pt``).
The computation is transformers' ``WhisperEncoder``'s (``omnijax.models.audio``, variant ``'whisper'``): the same
convolutions, exact GELU, pre-norm blocks, LayerNorm eps 1e-5, ``ffn = 4 * n_audio_state``.

Registered architecture ``OpenAIWhisperEncoder`` (import and export), a tower-only model whose params are
``{'audio': ...}`` (``omnijax.models.audio.AudioTower``). Its directory is ``model.safetensors`` holding
openai-whisper's ``model_state_dict`` (encoder keys under ``encoder.``, or under Ola's prefix; the decoder's keys
are skipped by design) and a ``config.json`` that is openai-whisper's ``dims`` dict (``n_mels``, ``n_audio_ctx``,
``n_audio_state``, ``n_audio_head``, ``n_audio_layer``; the text dims are ignored) plus
``"architectures": ["OpenAIWhisperEncoder"]``. Export writes the encoder under ``encoder.``: openai-whisper's
``AudioEncoder.load_state_dict`` takes those keys, prefix removed, strictly. openai-whisper publishes ``.pt``
pickles; ``load_openai_whisper`` refuses them with the one-line conversion.

``openai_whisper_table(cfg, hf_prefix)`` is the one key table, for any prefix.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from omnijax.hf import importer
from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import BIAS_SPLIT, LINEAR, LINEAR_IN2, Entry, prefixed
from omnijax.hf import safetensors_io
from omnijax.hf.safetensors_io import CheckpointError
from omnijax.hf.whisper import CONV1D, audio_forward
from omnijax.models.audio import AudioConfig, AudioTower

ENCODER_PREFIX = "encoder."  # openai-whisper's Whisper model
OLA_PREFIX = "model.speech_encoder.whisper_model."  # Ola's OlaQwenForCausalLM
MLP_RATIO = 4  # openai-whisper: n_mlp = n_state * 4


def openai_whisper_table(cfg: AudioConfig, hf_prefix: str = ENCODER_PREFIX) -> list[Entry]:
    """openai-whisper encoder keys under ``hf_prefix`` <-> paths under ``audio/``."""
    entries = [
        Entry("conv1.weight", "conv1/kernel", CONV1D),
        Entry("conv1.bias", "conv1/bias"),
        Entry("conv2.weight", "conv2/kernel", CONV1D),
        Entry("conv2.bias", "conv2/bias"),
        Entry("positional_embedding", "embed_positions/embedding"),
        Entry("ln_post.weight", "layer_norm/scale"),
        Entry("ln_post.bias", "layer_norm/bias"),
        Entry("blocks.{i}.attn.key.weight", "layers/self_attn/k_proj/kernel", LINEAR),
        Entry("blocks.{i}.attn.out.weight", "layers/self_attn/out_proj/kernel", LINEAR_IN2),
        Entry("blocks.{i}.attn.out.bias", "layers/self_attn/out_proj/bias"),
    ]
    for ours, theirs in (("q", "query"), ("v", "value")):
        entries += [Entry(f"blocks.{{i}}.attn.{theirs}.weight", f"layers/self_attn/{ours}_proj/kernel", LINEAR),
                    Entry(f"blocks.{{i}}.attn.{theirs}.bias", f"layers/self_attn/{ours}_proj/bias", BIAS_SPLIT)]
    for ours, theirs in (("self_attn_layer_norm", "attn_ln"), ("final_layer_norm", "mlp_ln")):
        entries += [Entry(f"blocks.{{i}}.{theirs}.weight", f"layers/{ours}/scale"),
                    Entry(f"blocks.{{i}}.{theirs}.bias", f"layers/{ours}/bias")]
    for ours, theirs in (("fc1", "mlp.0"), ("fc2", "mlp.2")):
        entries += [Entry(f"blocks.{{i}}.{theirs}.weight", f"layers/{ours}/kernel", LINEAR),
                    Entry(f"blocks.{{i}}.{theirs}.bias", f"layers/{ours}/bias")]
    return prefixed(entries, hf_prefix=hf_prefix, path_prefix="audio/")


def audio_config(dims: dict, **overrides) -> AudioConfig:
    """The encoder's ``AudioConfig`` from openai-whisper's ``dims`` (``ModelDimensions``) dict."""
    kw = dict(num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"], encoder_layers=dims["n_audio_layer"],
              encoder_attention_heads=dims["n_audio_head"], encoder_ffn_dim=MLP_RATIO * dims["n_audio_state"],
              max_source_positions=dims["n_audio_ctx"], variant="whisper")
    return AudioConfig(**{**kw, **overrides})


def dims(cfg: AudioConfig) -> dict:
    """openai-whisper's encoder ``dims`` of ``cfg`` (ValueError for a config openai-whisper cannot hold)."""
    if cfg.variant != "whisper" or cfg.encoder_ffn_dim != MLP_RATIO * cfg.d_model:
        raise ValueError(f"an openai-whisper encoder is variant 'whisper' with encoder_ffn_dim = {MLP_RATIO} * "
                         f"d_model; got variant {cfg.variant!r}, encoder_ffn_dim {cfg.encoder_ffn_dim}, "
                         f"d_model {cfg.d_model}: "
                         "export it as WhisperEncoder instead")
    return {"n_mels": cfg.num_mel_bins, "n_audio_ctx": cfg.max_source_positions, "n_audio_state": cfg.d_model,
            "n_audio_head": cfg.encoder_attention_heads, "n_audio_layer": cfg.encoder_layers}


def _build(hf: dict, **overrides):
    cfg = audio_config(hf, **overrides)
    return AudioTower(cfg), cfg


OPENAI_WHISPER_ENCODER = register(Architecture(
    name="OpenAIWhisperEncoder",
    build=_build,
    table=openai_whisper_table,
    hf_config=lambda cfg: {"architectures": ["OpenAIWhisperEncoder"], **dims(cfg)},
    init_inputs=lambda cfg: (jax.ShapeDtypeStruct((1, cfg.num_mel_bins, cfg.frames), jnp.float32),),
    hf_forward=audio_forward,
    aliases=((ENCODER_PREFIX, OLA_PREFIX),),
    expected_unused=("decoder.",),
))


def pickle_fix(pt_path: str, out_dir: str) -> str:
    """The one-line shell command that turns the openai-whisper's ``.pt`` into a directory this module loads."""
    return safetensors_io.pickle_fix(pt_path, out_dir, "model_state_dict", "dims", "OpenAIWhisperEncoder")


def load_openai_whisper(path: str, **overrides) -> importer.Loaded:
    """An openai-whisper directory (``config.json`` + ``model.safetensors``) -> ``Loaded`` with ``{'audio': ...}``
    params. ``overrides``: ``AudioConfig`` fields (``dtype``, ``param_dtype``, ``attention``, ``remat``)."""
    if os.path.isfile(path) and path.endswith(safetensors_io.PICKLE_SUFFIXES):
        out = os.path.splitext(path)[0] + "_safetensors"
        raise CheckpointError(f"{path} is a PyTorch pickle; omnijax reads openai-whisper weights from safetensors only "
                              f"(a pickle can run code when loaded); convert it once: {pickle_fix(path, out)}")
    names = importer.read_config(path).get("architectures") or []
    if names[:1] != [OPENAI_WHISPER_ENCODER.name]:
        raise CheckpointError(f"{path}/config.json names architectures {names}, not ['OpenAIWhisperEncoder']; point "
                              "at an openai-whisper directory (pickle_fix makes one from large-v3.pt)")
    return importer.load_hf(path, **overrides)
