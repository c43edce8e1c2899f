"""BEATs audio encoder (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers") as Flax Linen.

Numerically equal to ``BEATs.extract_features`` of Microsoft's reference code (microsoft/unilm
``beats/BEATs.py`` with ``beats/backbone.py``; Ola vendors the same under ``ola/model/speech_encoder/beats/``)
called without a padding mask, as Ola calls it, on the features of ``data_pipelines.audio.beats_fbank``::

    fbank [b, T, 128] -> patch_embedding (Conv2d 16 x 16, stride 16: the last T % 16 frames are dropped)
    -> [b, P, embed_dim], P = T // 16 * 8 patches, time-major (patch t * 8 + f) -> layer_norm
    -> post_extract_proj (absent when embed_dim == encoder_embed_dim)
    -> x + GELU(pos_conv(x))        (grouped Conv1d, weight norm over all but the kernel axis, last step dropped)
    -> encoder.layer_norm -> post-norm layers with deep-norm residuals, alpha = (2 L) ** (1 / 4):
         x = LN(alpha * x + SelfAttention(x));  x = LN(alpha * x + fc2(GELU(fc1(x))))
    -> [b, P, encoder_embed_dim]

The attention adds BEATs' gated relative position bias. Key - query offsets fall in T5-style buckets
(bidirectional, ``num_buckets``, ``max_distance``); the bucket indexes one table ``[num_buckets, heads]``
shared by every layer (the reference builds it in layer 0 and hands it on). Each layer gates it per head
and query: ``(a, b) = sigmoid(sum of grep_linear(q) in two groups of 4)``, ``gate = a * (b * grep_a - 1) + 2``
(``q`` before scaling). The reference's rescaling of the scores by ``alpha = 32`` around their row maximum
shifts each row by a constant, to which softmax is blind: here ``softmax(q k / sqrt(head_dim) + gate * bias)``,
in float32. GELU is exact. Dropout, layer drop and the layer-wise gradient decay are training-time only in the
reference and are not part of this encoder. A fine-tuned checkpoint's supervised head (``predictor``, AudioSet's 527
classes in BEATs_iter3+ AS2M, the one Ola ships) is kept when ``predictor_class`` is set: its output, the reference's
``extract_features`` without ``feature_only`` (``sigmoid`` of the time-averaged logits), is sown as
``intermediates/audioset_probs [b, classes]``; the encoder's output does not pass through it.

Param tree of the ``beats`` group (``L`` = layers, stacked by ``nn.scan``; ``D`` = encoder_embed_dim)::

    patch_embedding/kernel [16, 16, 1, embed_dim]     (+ bias [embed_dim] when conv_bias)
    layer_norm/{scale,bias} [embed_dim]
    post_extract_proj/kernel [embed_dim, D]  bias [D]
    encoder/pos_conv/weight_v [conv_pos, D / conv_pos_groups, D]  weight_g [conv_pos, 1, 1]  bias [D]
    encoder/layer_norm/{scale,bias} [D]
    encoder/relative_attention_bias/embedding [num_buckets, heads]
    encoder/layers/self_attn/{q,k,v}_proj/kernel [L, D, heads, head_dim]  bias [L, heads, head_dim]
    encoder/layers/self_attn/out_proj/kernel [L, heads, head_dim, D]  bias [L, D]
    encoder/layers/self_attn/grep_linear/kernel [L, head_dim, 8]  bias [L, 8]
    encoder/layers/self_attn/grep_a [L, 1, heads, 1, 1]
    encoder/layers/{self_attn_layer_norm, final_layer_norm}/{scale,bias} [L, D]
    encoder/layers/fc1/kernel [L, D, ffn]  fc2/kernel [L, ffn, D]  (+ biases)
    predictor/kernel [D, predictor_class]  bias [predictor_class]   (fine-tuned checkpoints only)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnijax.models.layers import DenseGeneral
from omnijax.models.llm import Numerics, scanned

MEL_BINS = 128  # BEATs.preprocess: kaldi fbank with 128 bins
GATE_GROUPS = 2  # grep_linear's 8 outputs: 2 gates of 4 summed
GATE_WIDTH = 4
# Fields of the reference's BEATsConfig that shape the encoder, read from a checkpoint's cfg dict.
HF_FIELDS = ("input_patch_size", "embed_dim", "conv_bias", "encoder_layers", "encoder_embed_dim",
             "encoder_ffn_embed_dim", "encoder_attention_heads", "activation_fn", "layer_norm_first", "deep_norm",
             "conv_pos", "conv_pos_groups", "relative_position_embedding", "num_buckets", "max_distance",
             "gru_rel_pos")


@dataclasses.dataclass(frozen=True)
class BEATsConfig(Numerics):
    """Sizes and numerics of a BEATs encoder; the defaults are BEATs_iter3+ (the checkpoint Ola uses).
    ``from_hf`` reads the reference's ``cfg`` dict (a checkpoint's ``checkpoint['cfg']``)."""

    input_patch_size: int = 16
    embed_dim: int = 512  # patch embedding width
    conv_bias: bool = False  # bias on the patch embedding
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    deep_norm: bool = True  # residuals scaled by (2 L) ** (1 / 4)
    conv_pos: int = 128  # kernel of the convolutional position embedding
    conv_pos_groups: int = 16
    num_buckets: int = 320  # relative position buckets, both directions together
    max_distance: int = 800
    layer_norm_eps: float = 1e-5  # torch nn.LayerNorm default
    predictor_class: int = 0  # a fine-tuned checkpoint's AudioSet head (the reference's 527 classes); 0: none
    initializer_range: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots | dots_no_batch
    scan_unroll: int = 1

    def __post_init__(self):
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(f"encoder_embed_dim ({self.encoder_embed_dim}) must be a multiple of "
                             f"encoder_attention_heads ({self.encoder_attention_heads})")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(f"encoder_embed_dim ({self.encoder_embed_dim}) must be a multiple of conv_pos_groups "
                             f"({self.conv_pos_groups})")
        if MEL_BINS % self.input_patch_size:
            raise ValueError(f"input_patch_size {self.input_patch_size} must divide the {MEL_BINS} fbank bins")
        if self.num_buckets < 4:
            raise ValueError(f"num_buckets must be at least 4 (two directions, exact and log-spaced), "
                             f"got {self.num_buckets}")
        self.check_numerics()

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    @property
    def freq_patches(self) -> int:
        """Patches across the 128 fbank bins (8 for 16 x 16 patches)."""
        return MEL_BINS // self.input_patch_size

    @property
    def deep_norm_alpha(self) -> float:
        return math.pow(2 * self.encoder_layers, 1 / 4) if self.deep_norm else 1.0

    def num_patches(self, frames: int) -> int:
        """Encoder outputs for ``frames`` fbank frames: ``frames // 16 * 8`` (1496 for a 30 s clip)."""
        return frames // self.input_patch_size * self.freq_patches

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "BEATsConfig":
        """From the reference's ``BEATsConfig.__dict__`` (what a BEATs ``.pt`` keeps as ``cfg``; our
        ``config.json`` is that dict plus ``architectures``)."""
        missing = [k for k in HF_FIELDS if k not in hf]
        if missing:
            raise ValueError(f"BEATs config lacks {missing}; write the checkpoint's whole cfg dict "
                             "(checkpoint['cfg'] of the reference .pt) into config.json")
        unsupported = {"activation_fn": (hf["activation_fn"], "gelu"),
                       "layer_norm_first": (hf["layer_norm_first"], False),
                       "relative_position_embedding": (hf["relative_position_embedding"], True),
                       "gru_rel_pos": (hf["gru_rel_pos"], True)}
        for field, (got, want) in unsupported.items():
            if got != want:
                raise ValueError(f"BEATs config {field}={got!r} is not supported: omnijax builds the released "
                                 f"BEATs encoders ({field}={want!r})")
        kw = {k: hf[k] for k in HF_FIELDS if k not in unsupported}
        kw["predictor_class"] = int(hf.get("predictor_class", 527)) if hf.get("finetuned_model") else 0
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """The reference's cfg dict: ``BEATs(BEATsConfig(cfg))`` builds this encoder (and its head, if any)."""
        head = {"predictor_class": self.predictor_class} if self.predictor_class else {}
        return {**head,
            "input_patch_size": self.input_patch_size,
            "embed_dim": self.embed_dim,
            "conv_bias": self.conv_bias,
            "encoder_layers": self.encoder_layers,
            "encoder_embed_dim": self.encoder_embed_dim,
            "encoder_ffn_embed_dim": self.encoder_ffn_embed_dim,
            "encoder_attention_heads": self.encoder_attention_heads,
            "activation_fn": "gelu",
            "layer_norm_first": False,
            "deep_norm": self.deep_norm,
            "conv_pos": self.conv_pos,
            "conv_pos_groups": self.conv_pos_groups,
            "relative_position_embedding": True,
            "num_buckets": self.num_buckets,
            "max_distance": self.max_distance,
            "gru_rel_pos": True,
            "finetuned_model": bool(self.predictor_class),
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "activation_dropout": 0.0,
            "encoder_layerdrop": 0.0,
            "dropout_input": 0.0,
            "torch_dtype": self.param_dtype,
        }


def relative_position_buckets(relative: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of each key - query offset (``MultiheadAttention._relative_positions_bucket``, bidirectional):
    the upper half of the buckets for positive offsets; in each half, offsets below a quarter of
    ``num_buckets`` exactly, larger ones log-spaced up to ``max_distance`` (further ones share the last)."""
    half = num_buckets // 2
    max_exact = half // 2
    relative = np.asarray(relative, np.int64)
    distance = np.abs(relative)
    log_spaced = max_exact + (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
                              / np.float32(math.log(max_distance / max_exact))
                              * np.float32(half - max_exact)).astype(np.int64)
    log_spaced = np.minimum(log_spaced, half - 1)
    return (relative > 0) * half + np.where(distance < max_exact, distance, log_spaced)


def _part(init, names: tuple[str, ...]):
    return nn.with_logical_partitioning(init, names)


def _layer_norm(cfg: BEATsConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        scale_init=_part(nn.initializers.ones, ("norm",)),
                        bias_init=_part(nn.initializers.zeros, ("norm",)), name=name)


def _dense(cfg: BEATsConfig, features: int, names: tuple[str, str], name: str) -> nn.Dense:
    return nn.Dense(features, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                    kernel_init=_part(nn.initializers.normal(cfg.initializer_range), names),
                    bias_init=_part(nn.initializers.zeros, names[1:]), name=name)


def _gelu(x):
    return nn.gelu(x, approximate=False)


class GatedRelativeAttention(nn.Module):
    """BEATs' ``MultiheadAttention`` (self-attention, gated relative position bias).
    ``x [b, t, D], position_bias [heads, t, t] -> [b, t, D]``."""

    cfg: BEATsConfig

    @nn.compact
    def __call__(self, x, position_bias):
        cfg = self.cfg

        def dense(features, axes, name, n_in=1):
            return DenseGeneral(features, axes, n_in=n_in, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                                kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)

        heads, axes = (cfg.encoder_attention_heads, cfg.head_dim), ("audio_embed", "heads", "head_dim")
        q, k, v = (dense(heads, axes, f"{p}_proj")(x) for p in ("q", "k", "v"))  # [b, t, h, d]
        q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads",
                                           "activation_head_dim"))
        gates = DenseGeneral((GATE_GROUPS * GATE_WIDTH,), ("head_dim", "gates"), dtype=cfg.compute_dtype,
                             param_dtype=cfg.weight_dtype, kernel_init=nn.initializers.normal(cfg.initializer_range),
                             name="grep_linear")(q)
        gates = jax.nn.sigmoid(gates.astype(jnp.float32).reshape(q.shape[:3] + (GATE_GROUPS, GATE_WIDTH)).sum(-1))
        grep_a = self.param("grep_a", _part(nn.initializers.ones, (None, "heads", None, None)),
                            (1, cfg.encoder_attention_heads, 1, 1), cfg.weight_dtype)
        gate_a, gate_b = jnp.moveaxis(gates[..., 0], 2, 1), jnp.moveaxis(gates[..., 1], 2, 1)  # [b, h, t]
        gate = gate_a * (gate_b * grep_a[:, :, :, 0].astype(jnp.float32) - 1.0) + 2.0
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(cfg.head_dim)
        scores = scores + gate[..., None] * position_bias[None].astype(jnp.float32)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return dense((cfg.encoder_embed_dim,), ("heads", "head_dim", "audio_embed"), "out_proj", n_in=2)(out)


class EncoderLayer(nn.Module):
    """BEATs' ``TransformerSentenceEncoderLayer``, post-norm with deep-norm residuals.
    Scanned: ``(x [b, t, D], position_bias) -> (x, None)``."""

    cfg: BEATsConfig

    @nn.compact
    def __call__(self, x, position_bias):
        cfg = self.cfg
        alpha = cfg.deep_norm_alpha
        x = x * alpha + GatedRelativeAttention(cfg, name="self_attn")(x, position_bias)
        x = _layer_norm(cfg, "self_attn_layer_norm")(x)
        h = _gelu(_dense(cfg, cfg.encoder_ffn_embed_dim, ("audio_embed", "mlp"), "fc1")(x))
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        x = _layer_norm(cfg, "final_layer_norm")(x * alpha + _dense(cfg, cfg.encoder_embed_dim,
                                                                    ("mlp", "audio_embed"), "fc2")(h))
        return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed")), None


class PositionalConv(nn.Module):
    """BEATs' ``pos_conv``: grouped Conv1d (kernel ``conv_pos``, padding ``conv_pos // 2``) with torch's
    ``weight_norm(dim=2)`` -- ``weight = weight_g * weight_v / |weight_v|``, the norm taken per kernel step --
    then ``SamePad`` (the last step dropped for an even kernel) and GELU. ``[b, t, D] -> [b, t, D]``."""

    cfg: BEATsConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        k, d, groups = cfg.conv_pos, cfg.encoder_embed_dim, cfg.conv_pos_groups
        std = math.sqrt(4 / (k * d))  # the reference's init of the unnormalised weight
        v = self.param("weight_v", _part(nn.initializers.normal(std), ("conv_kernel", "audio_conv_in", "audio_embed")),
                       (k, d // groups, d), cfg.weight_dtype)
        g = self.param("weight_g", _part(nn.initializers.constant(std * math.sqrt(d * d // groups)),
                                         ("conv_kernel", None, None)), (k, 1, 1), cfg.weight_dtype)
        bias = self.param("bias", _part(nn.initializers.zeros, ("audio_embed",)), (d,), cfg.weight_dtype)
        v32 = v.astype(jnp.float32)
        kernel = (g.astype(jnp.float32) * v32 / jnp.sqrt(jnp.sum(v32 * v32, axis=(1, 2), keepdims=True)))
        y = jax.lax.conv_general_dilated(x, kernel.astype(cfg.compute_dtype), window_strides=(1,),
                                         padding=[(k // 2, k // 2)], dimension_numbers=("NWC", "WIO", "NWC"),
                                         feature_group_count=groups)
        y = y + bias.astype(cfg.compute_dtype)
        if k % 2 == 0:
            y = y[:, :-1]
        return _gelu(y)


class TransformerEncoder(nn.Module):
    """BEATs' ``TransformerEncoder`` (post-norm): ``x [b, t, D] -> [b, t, D]``."""

    cfg: BEATsConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        x = x + PositionalConv(cfg, name="pos_conv")(x)
        x = _layer_norm(cfg, "layer_norm")(x)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        t = x.shape[1]
        offsets = np.arange(t)[None, :] - np.arange(t)[:, None]  # key - query
        buckets = relative_position_buckets(offsets, cfg.num_buckets, cfg.max_distance)
        table = nn.Embed(cfg.num_buckets, cfg.encoder_attention_heads, dtype=jnp.float32,
                         param_dtype=cfg.weight_dtype,
                         embedding_init=_part(nn.initializers.normal(cfg.initializer_range), ("buckets", "heads")),
                         name="relative_attention_bias")
        position_bias = jnp.moveaxis(table(jnp.asarray(buckets, jnp.int32)), 2, 0)  # [heads, t, t]
        layers = scanned(EncoderLayer, cfg.remat, cfg.encoder_layers, (nn.broadcast,), cfg.scan_unroll)
        x, _ = layers(cfg, name="layers")(x, position_bias)
        return x


class BEATsEncoder(nn.Module):
    """The ``beats`` parameter group: ``__call__(fbank [b, frames, 128]) -> [b, frames // 16 * 8, D]``
    (``BEATs.extract_features(source)[0]`` of the reference, with ``fbank = beats_fbank(source)``)."""

    cfg: BEATsConfig

    @nn.compact
    def __call__(self, fbank):
        cfg = self.cfg
        if fbank.ndim != 3 or fbank.shape[-1] != MEL_BINS:
            raise ValueError(f"BEATs features must have shape [batch, frames, {MEL_BINS}] "
                             f"(data_pipelines.audio.beats_fbank per clip), got shape {fbank.shape}")
        if fbank.shape[1] < cfg.input_patch_size:
            raise ValueError(f"BEATs features have {fbank.shape[1]} frames, fewer than one {cfg.input_patch_size}-"
                             f"frame patch; pad the clip to at least {400 + 160 * (cfg.input_patch_size - 1)} samples "
                             "(25 ms frames every 10 ms at 16 kHz)")
        p = cfg.input_patch_size
        x = nn.Conv(cfg.embed_dim, kernel_size=(p, p), strides=(p, p), padding="VALID", use_bias=cfg.conv_bias,
                    dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                    kernel_init=_part(nn.initializers.lecun_normal(),
                                      ("patch_height", "patch_width", "channels", "audio_embed")),
                    bias_init=_part(nn.initializers.zeros, ("audio_embed",)),
                    name="patch_embedding")(fbank[..., None].astype(cfg.compute_dtype))  # [b, T/16, 8, C]
        b = x.shape[0]
        x = _layer_norm(cfg, "layer_norm")(x.reshape(b, -1, cfg.embed_dim))
        if cfg.embed_dim != cfg.encoder_embed_dim:
            x = _dense(cfg, cfg.encoder_embed_dim, ("audio_conv_in", "audio_embed"), "post_extract_proj")(x)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        x = TransformerEncoder(cfg, name="encoder")(x)
        if cfg.predictor_class:  # the fine-tuned head, beside the output (module docstring)
            logits = _dense(cfg, cfg.predictor_class, ("audio_embed", None), "predictor")(x)
            self.sow("intermediates", "audioset_probs", jax.nn.sigmoid(logits.astype(jnp.float32).mean(axis=1)))
        return x


class BEATsTower(nn.Module):
    """A BEATs encoder alone: params ``{'beats': ...}``."""

    cfg: BEATsConfig

    def setup(self):
        self.beats = BEATsEncoder(self.cfg, name="beats")

    def __call__(self, fbank):
        return self.beats(fbank)


def init_params(model: nn.Module, cfg: BEATsConfig, rng: jax.Array, frames: int = 98, batch: int = 1):
    """Random params of ``model`` (``BEATsTower`` or ``BEATsEncoder``), logical metadata stripped; the shapes do
    not depend on ``frames``."""
    fbank = jnp.zeros((batch, frames, MEL_BINS), cfg.compute_dtype)
    return nn.meta.unbox(jax.jit(model.init)(rng, fbank))["params"]
