"""Whisper audio encoder (and its Qwen2-Audio variant) as pure-functional Flax Linen.

Numerically equal to transformers' ``WhisperEncoder`` (``models/whisper/modeling_whisper.py``,
``variant='whisper'``) and ``Qwen2AudioEncoder`` (``models/qwen2_audio/modeling_qwen2_audio.py``,
``variant='qwen2_audio'``). Both take log-mel features ``[batch, n_mels, frames]`` (HF layout) with
``frames == 2 * max_source_positions`` exactly: 3000 frames / 1500 positions for Whisper's 30 s window,
or any other window the config names (a 4 s window is 400 frames / 200 positions).

    conv1 (k3, pad 1) -> GELU -> conv2 (k3, stride 2, pad 1) -> GELU -> + embed_positions
    -> pre-norm layers (self-attention, fc1 -> GELU -> fc2)
    whisper:      -> layer_norm                                     [batch, P, d_model]
    qwen2_audio:  (keys past the valid length masked) -> AvgPool1d(2, 2) -> layer_norm   [batch, P // 2, d_model]

GELU is the exact (erf) GELU throughout. The Qwen2-Audio mask is transformers' key-padding mask: for
``L`` valid mel frames the first ``(L - 1) // 2 + 1`` steps are valid keys for every query
(``Qwen2AudioModel.forward`` builds it from ``feature_attention_mask``). Output positions past
``qwen2_audio_tokens(L)`` are padding and carry no meaning.

Param tree of the ``audio`` group (``L`` = layers, stacked by ``nn.scan``)::

    conv1/kernel [3, n_mels, d_model]          conv1/bias [d_model]
    conv2/kernel [3, d_model, d_model]         conv2/bias [d_model]
    embed_positions/embedding [max_source_positions, d_model]   (sinusoids at init; HF keeps it frozen)
    layers/self_attn_layer_norm/{scale,bias} [L, d_model]
    layers/self_attn/{q,k,v}_proj/kernel [L, d_model, heads, head_dim]   q/v bias [L, heads, head_dim]; k has none
    layers/self_attn/out_proj/kernel [L, heads, head_dim, d_model]      bias [L, d_model]
    layers/final_layer_norm/{scale,bias} [L, d_model]
    layers/fc1/kernel [L, d_model, ffn]  layers/fc2/kernel [L, ffn, d_model]  (+ biases)
    layer_norm/{scale,bias} [d_model]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnijax.media_tokens import whisper_conv_steps
from omnijax.models.attention import AUTO, attention, resolve_implementation
from omnijax.models.layers import DenseGeneral
from omnijax.models.llm import Numerics, scanned

VARIANTS = ("whisper", "qwen2_audio")
# Bidirectional encoders: splash attention in omnijax is causal-only.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
_MODEL_TYPE_VARIANT = {"whisper": "whisper", "qwen2_audio_encoder": "qwen2_audio"}


@dataclasses.dataclass(frozen=True)
class AudioConfig(Numerics):
    """Sizes and numerics of a Whisper-style audio encoder. ``from_hf`` reads a ``WhisperConfig`` or a
    ``Qwen2AudioEncoderConfig`` dict (the variant follows its ``model_type``)."""

    num_mel_bins: int = 80  # 80; 128 for Whisper large-v3 / Qwen2-Audio / Ola
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    max_source_positions: int = 1500  # the window: frames = 2 * max_source_positions (1500 = 30 s)
    variant: str = "whisper"  # whisper | qwen2_audio (padding mask, AvgPool1d(2, 2) before layer_norm)
    layer_norm_eps: float = 1e-5  # torch nn.LayerNorm default, fixed in both HF classes
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention: str = "xla"  # xla | cudnn | auto (cudnn on GPU, else xla)
    remat: str = "none"  # none | full | dots | dots_no_batch
    scan_unroll: int = 1  # layers unrolled per scan iteration (same param layout)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"audio variant {self.variant!r} is not one of {VARIANTS}")
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of encoder_attention_heads "
                             f"({self.encoder_attention_heads})")
        if self.attention == AUTO:
            object.__setattr__(self, "attention", resolve_implementation(AUTO, causal=False, dtype=self.dtype))
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"audio attention {self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}: the "
                             "encoder attends bidirectionally and splash attention is causal-only; use 'xla' on TPU")
        self.check_numerics()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads

    @property
    def frames(self) -> int:
        """Mel frames the encoder takes: conv2 halves them to ``max_source_positions``."""
        return 2 * self.max_source_positions

    @property
    def pool_stride(self) -> int:
        """AvgPool1d stride after the layers: 2 for Qwen2-Audio, 1 (no pooling) for Whisper."""
        return 2 if self.variant == "qwen2_audio" else 1

    @property
    def output_length(self) -> int:
        """Positions per window out of the encoder: 1500 (Whisper) / 750 (Qwen2-Audio) for 30 s."""
        return self.max_source_positions // self.pool_stride

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "AudioConfig":
        """From a ``WhisperConfig`` / ``Qwen2AudioEncoderConfig`` dict (``config.json`` or ``audio_config``)."""
        model_type = hf.get("model_type", "whisper")
        if model_type not in _MODEL_TYPE_VARIANT and "variant" not in overrides:
            raise ValueError(f"audio config model_type {model_type!r} is not one of {tuple(_MODEL_TYPE_VARIANT)}")
        act = hf.get("activation_function", "gelu")
        if act != "gelu":
            raise ValueError(f"activation_function {act!r} is not supported (Whisper and Qwen2-Audio use exact 'gelu')")
        kw = dict(
            num_mel_bins=hf.get("num_mel_bins", 80 if model_type == "whisper" else 128),
            d_model=hf["d_model"],
            encoder_layers=hf["encoder_layers"],
            encoder_attention_heads=hf["encoder_attention_heads"],
            encoder_ffn_dim=hf["encoder_ffn_dim"],
            max_source_positions=hf.get("max_source_positions", 1500),
            variant=_MODEL_TYPE_VARIANT.get(model_type, "whisper"),
            initializer_range=hf.get("init_std", hf.get("initializer_range", 0.02)),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """The encoder's transformers config dict: a ``Qwen2AudioEncoderConfig`` (usable as a
        ``Qwen2AudioConfig.audio_config``) or the encoder fields of a ``WhisperConfig``. Carries no
        ``architectures``: the caller names the model class."""
        common = {
            "num_mel_bins": self.num_mel_bins,
            "d_model": self.d_model,
            "encoder_layers": self.encoder_layers,
            "encoder_attention_heads": self.encoder_attention_heads,
            "encoder_ffn_dim": self.encoder_ffn_dim,
            "max_source_positions": self.max_source_positions,
            "activation_function": "gelu",
            "scale_embedding": False,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "encoder_layerdrop": 0.0,
            "torch_dtype": self.param_dtype,
        }
        if self.variant == "qwen2_audio":
            return {"model_type": "qwen2_audio_encoder", "initializer_range": self.initializer_range, **common}
        return {"model_type": "whisper", "init_std": self.initializer_range, **common}


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed positional table ``[length, channels]`` (``cat(sin, cos)``), HF's init of ``embed_positions``."""
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even width, got d_model={channels}")
    inc = math.log(max_timescale) / (channels // 2 - 1)
    t = np.arange(length)[:, None] * np.exp(-inc * np.arange(channels // 2))[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1)


def _part(init, names: tuple[str, ...]):
    return nn.with_logical_partitioning(init, names)


def _layer_norm(cfg: AudioConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        scale_init=_part(nn.initializers.ones, ("norm",)),
                        bias_init=_part(nn.initializers.zeros, ("norm",)), name=name)


def _gelu(x):
    return nn.gelu(x, approximate=False)


class SelfAttention(nn.Module):
    """WhisperAttention (encoder): bidirectional MHA, no bias on k_proj. ``[b, t, d] -> [b, t, d]``."""

    cfg: AudioConfig

    @nn.compact
    def __call__(self, x, q_segment_ids, kv_segment_ids):
        cfg = self.cfg

        def dense(features, axes, name, use_bias=True, n_in=1):
            return DenseGeneral(features, axes, n_in=n_in, use_bias=use_bias, dtype=cfg.compute_dtype,
                                param_dtype=cfg.weight_dtype, kernel_init=nn.initializers.normal(cfg.initializer_range),
                                name=name)

        heads, axes = (cfg.encoder_attention_heads, cfg.head_dim), ("audio_embed", "heads", "head_dim")
        q = dense(heads, axes, "q_proj")(x)
        k = dense(heads, axes, "k_proj", use_bias=False)(x)
        v = dense(heads, axes, "v_proj")(x)
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads",
                                           "activation_head_dim"))
        out = attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, causal=False,
                        implementation=cfg.attention, packed=False)
        return dense((cfg.d_model,), ("heads", "head_dim", "audio_embed"), "out_proj", n_in=2)(out)


class EncoderLayer(nn.Module):
    """WhisperEncoderLayer (pre-norm). Scanned: ``(x, None) -> (x, None)``, ``x [b, t, d]``."""

    cfg: AudioConfig

    @nn.compact
    def __call__(self, x, q_segment_ids, kv_segment_ids):
        cfg = self.cfg

        def dense(feats, names, name):
            return nn.Dense(feats, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                            kernel_init=_part(nn.initializers.normal(cfg.initializer_range), names),
                            bias_init=_part(nn.initializers.zeros, names[1:]), name=name)

        h = _layer_norm(cfg, "self_attn_layer_norm")(x)
        x = x + SelfAttention(cfg, name="self_attn")(h, q_segment_ids, kv_segment_ids)
        h = _layer_norm(cfg, "final_layer_norm")(x)
        h = nn.with_logical_constraint(_gelu(dense(cfg.encoder_ffn_dim, ("audio_embed", "mlp"), "fc1")(h)),
                                       ("activation_batch", "activation_length", "activation_mlp"))
        x = x + dense(cfg.d_model, ("mlp", "audio_embed"), "fc2")(h)
        if x.dtype == jnp.float16:  # as transformers: keep float16 activations finite
            bound = float(jnp.finfo(jnp.float16).max) - 1000
            x = jnp.clip(x, -bound, bound)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, None


class WhisperEncoder(nn.Module):
    """The ``audio`` parameter group: Whisper encoder, or the Qwen2-Audio encoder (``cfg.variant``).

    ``__call__(features [b, n_mels, frames], valid_frames [b] | None) -> [b, cfg.output_length, d_model]``;
    ``encode_chunks(features [b, chunks, n_mels, frames], valid_frames [b, chunks] | None)
    -> [b, chunks, cfg.output_length, d_model]`` (long audio: Ola keeps up to 25 chunks of 30 s).
    """

    cfg: AudioConfig

    def setup(self):
        cfg = self.cfg

        def conv(in_names, stride, name):
            return nn.Conv(cfg.d_model, kernel_size=(3,), strides=(stride,), padding=[(1, 1)],
                           dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                           kernel_init=_part(nn.initializers.lecun_normal(), ("conv_kernel", in_names, "audio_embed")),
                           bias_init=_part(nn.initializers.zeros, ("audio_embed",)), name=name)

        self.conv1 = conv("audio_mels", 1, "conv1")
        self.conv2 = conv("audio_conv_in", 2, "conv2")
        table = sinusoids(cfg.max_source_positions, cfg.d_model)
        self.embed_positions = nn.Embed(
            cfg.max_source_positions, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            embedding_init=_part(lambda key, shape, dtype: jnp.asarray(table, dtype),
                                 ("audio_positions", "audio_embed")))
        self.layers = scanned(EncoderLayer, cfg.remat, cfg.encoder_layers,
                              (nn.broadcast, nn.broadcast), cfg.scan_unroll)(cfg, name="layers")
        self.layer_norm = _layer_norm(cfg, "layer_norm")

    def _check(self, features, valid_frames, layout: str):
        cfg = self.cfg
        if features.ndim != len(layout.split(",")):
            raise ValueError(f"audio features must have shape [{layout}], got shape {features.shape}")
        n_mels, frames = features.shape[-2:]
        if n_mels != cfg.num_mel_bins:
            raise ValueError(f"audio features have {n_mels} mel bins, the encoder expects num_mel_bins="
                             f"{cfg.num_mel_bins} (features are [batch, n_mels, frames])")
        if frames != cfg.frames:
            raise ValueError(
                f"audio features have {frames} mel frames, the encoder expects exactly {cfg.frames} "
                f"(2 * max_source_positions = 2 * {cfg.max_source_positions}); pad or trim the log-mel window to "
                f"{cfg.frames} frames (whisper_log_mel(chunk_seconds={cfg.frames / 100:g})) "
                "or set max_source_positions")
        if valid_frames is not None:
            if cfg.variant != "qwen2_audio":
                raise ValueError("valid_frames (a padding mask) is only used by variant='qwen2_audio'; Whisper "
                                 "attends over the whole window: pass valid_frames=None")
            if tuple(valid_frames.shape) != tuple(features.shape[:-2]):
                raise ValueError(f"valid_frames has shape {tuple(valid_frames.shape)}, expected "
                                 f"{tuple(features.shape[:-2])} (one count per clip)")

    def _encode(self, features, valid_frames):
        cfg = self.cfg
        x = jnp.swapaxes(features, 1, 2).astype(cfg.compute_dtype)  # [b, frames, n_mels]
        x = _gelu(self.conv1(x))
        x = _gelu(self.conv2(x))  # [b, P, d]
        b, t, _ = x.shape
        x = x + self.embed_positions.embedding[:t].astype(x.dtype)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        q_segment_ids = jnp.ones((b, t), jnp.int32)
        if valid_frames is None:
            kv_segment_ids = q_segment_ids
        else:  # transformers' key-padding mask: every query sees the valid steps only
            steps = whisper_conv_steps(jnp.asarray(valid_frames, jnp.int32))
            kv_segment_ids = (jnp.arange(t)[None, :] < steps[:, None]).astype(jnp.int32)
        x, _ = self.layers(x, q_segment_ids, kv_segment_ids)
        if cfg.pool_stride > 1:  # AvgPool1d(s, s): a trailing odd step is dropped
            s = cfg.pool_stride
            x = x[:, : t // s * s].reshape(b, t // s, s, -1).mean(axis=2)
        x = self.layer_norm(x)
        return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    def __call__(self, features, valid_frames=None):
        """``features [b, n_mels, 2 * max_source_positions]`` log-mel; ``valid_frames [b]`` int (Qwen2-Audio
        only: valid mel frames per clip, HF's ``feature_attention_mask.sum(-1)``). -> ``[b, output_length, d]``."""
        self._check(features, valid_frames, "batch, n_mels, frames")
        return self._encode(features, valid_frames)

    def encode_chunks(self, features, valid_frames=None):
        """Long audio cut into windows: ``[b, chunks, n_mels, frames] -> [b, chunks, output_length, d]``.
        The chunks fold into the batch, so every chunk is encoded independently."""
        self._check(features, valid_frames, "batch, chunks, n_mels, frames")
        b, c = features.shape[:2]
        flat = features.reshape((b * c,) + features.shape[2:])
        out = self._encode(flat, None if valid_frames is None else valid_frames.reshape(b * c))
        return out.reshape((b, c) + out.shape[1:])


class AudioTower(nn.Module):
    """An audio encoder alone: params ``{'audio': ...}``, the same subtree an omni model holds."""

    cfg: AudioConfig

    def setup(self):
        self.audio = WhisperEncoder(self.cfg, name="audio")

    def __call__(self, features, valid_frames=None):
        return self.audio(features, valid_frames)

    def encode_chunks(self, features, valid_frames=None):
        return self.audio.encode_chunks(features, valid_frames)


def init_params(model: nn.Module, cfg: AudioConfig, rng: jax.Array, batch: int = 1):
    """Random params of ``model`` (``AudioTower`` or ``WhisperEncoder``), logical metadata stripped."""
    features = jnp.zeros((batch, cfg.num_mel_bins, cfg.frames), cfg.compute_dtype)
    return nn.meta.unbox(jax.jit(model.init)(rng, features))["params"]
