"""Qwen2 / Qwen2.5 decoder as pure-functional Flax Linen, numerically equal to transformers'
``Qwen2ForCausalLM`` (``models/qwen2/modeling_qwen2.py``).

Param tree of the ``llm`` group (``L`` = layers, stacked by ``nn.scan``)::

    embed_tokens/embedding            [vocab, embed]
    layers/input_layernorm/scale      [L, embed]
    layers/attn/{q,k,v}_proj/kernel   [L, embed, heads|kv_heads, head_dim]   (+ bias [L, heads, head_dim])
    layers/attn/o_proj/kernel         [L, heads, head_dim, embed]
    layers/post_attention_layernorm/scale
    layers/mlp/{gate,up}_proj/kernel  [L, embed, mlp];  layers/mlp/down_proj/kernel [L, mlp, embed]
    norm/scale                        [embed]
    lm_head/kernel                    [embed, vocab]   (absent when embeddings are tied)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnijax.models.attention import AUTO, IMPLEMENTATIONS, attention, resolve_implementation
from omnijax.models.layers import DenseGeneral

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def scanned(layer: type[nn.Module], remat: str, length: int, in_axes, unroll: int = 1):
    """``layer`` stacked ``length`` times under ``nn.scan`` (params on a leading ``layers`` axis),
    rematerialised with the named policy: the layer stack of the LLM and of both towers."""
    if remat != "none":
        layer = nn.remat(layer, policy=REMAT_POLICIES[remat], prevent_cse=False)
    return nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
                   length=length, unroll=unroll, metadata_params={nn.PARTITION_NAME: "layers"})


class Numerics:
    """Shared by the frozen config dataclasses of the LLM and the towers (fields ``dtype``,
    ``param_dtype``, ``remat``): their checks, the jnp dtypes, and ``replace``."""

    def check_numerics(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} is not one of {tuple(REMAT_POLICIES)}")
        for f in ("dtype", "param_dtype"):
            if getattr(self, f) not in DTYPES:
                raise ValueError(f"{f} {getattr(self, f)!r} is not one of {tuple(DTYPES)}")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class LLMConfig(Numerics):
    """Sizes and numerics of a Qwen2-family decoder. ``from_hf`` reads a transformers config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention: str = "xla"  # xla | cudnn | splash | auto (the platform's: models.attention.resolve_implementation)
    cudnn_max_segments: int = 16  # cudnn: packed rows with more segments than this take the explicit mask
    remat: str = "none"  # none | full | dots | dots_no_batch
    scan_unroll: int = 1  # layers unrolled per scan iteration (same param layout)

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.attention == AUTO:
            object.__setattr__(self, "attention", resolve_implementation(AUTO, dtype=self.dtype))
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"attention {self.attention!r} is not one of {IMPLEMENTATIONS + (AUTO,)}")
        self.check_numerics()

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "LLMConfig":
        """From a Qwen2 ``config.json`` dict (v5 ``rope_parameters`` or legacy ``rope_theta``)."""
        rope = hf.get("rope_parameters") or {}
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", (hf.get("rope_scaling") or {}).get("rope_type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"rope_type {rope_type!r} is not supported (only the default RoPE of Qwen2/Qwen2.5)")
        if hf.get("use_sliding_window"):
            raise ValueError("use_sliding_window=True is not supported (Qwen2/Qwen2.5 checkpoints ship it off)")
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rope_theta=float(theta),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos := hf.get("eos_token_id"), list) else eos,
            pad_token_id=hf.get("pad_token_id"),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``Qwen2Config`` dict (v5 layout: theta under ``rope_parameters``)."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }


def _init(cfg: LLMConfig, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), names)


class RMSNorm(nn.Module):
    """Qwen2RMSNorm: f32 ``x * rsqrt(mean(x^2) + eps)``, cast back, times ``scale``. ``[..., d] -> [..., d]``."""

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * y.astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, halves layout (``rotate_half = cat(-x2, x1)``).

    x ``[batch, len, heads, head_dim]``, positions int ``[batch, len]``.
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class Attention(nn.Module):
    """Qwen2Attention: GQA with q/k/v bias, RoPE, no o_proj bias. ``[b, t, embed] -> [b, t, embed]``."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, kv_cache, cache_slots):
        cfg = self.cfg
        dense = lambda feats, names, bias, name: DenseGeneral(  # noqa: E731
            feats, ("embed",) + names, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)
        q = dense((cfg.num_heads, cfg.head_dim), ("heads", "head_dim"), True, "q_proj")(x)
        k = dense((cfg.num_kv_heads, cfg.head_dim), ("kv_heads", "head_dim"), True, "k_proj")(x)
        v = dense((cfg.num_kv_heads, cfg.head_dim), ("kv_heads", "head_dim"), True, "v_proj")(x)
        q = nn.with_logical_constraint(
            rope(q, positions, cfg.rope_theta),
            ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
        k = rope(k, positions, cfg.rope_theta)

        if kv_cache is None:
            out = attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                            implementation=cfg.attention, max_segments=cfg.cudnn_max_segments)
            new_cache = None
        else:
            # Decode against a static-shape cache: write this step's k/v at cache_slots[0] onward.
            start = cache_slots[0, 0]
            ck = jax.lax.dynamic_update_slice_in_dim(kv_cache["k"], k.astype(kv_cache["k"].dtype), start, axis=1)
            cv = jax.lax.dynamic_update_slice_in_dim(kv_cache["v"], v.astype(kv_cache["v"].dtype), start, axis=1)
            kv_seg = kv_cache["segment_ids"]
            out = attention(q, ck.astype(q.dtype), cv.astype(q.dtype), q_segment_ids=segment_ids,
                            kv_segment_ids=kv_seg, q_slots=cache_slots,
                            kv_slots=jnp.broadcast_to(jnp.arange(ck.shape[1]), kv_seg.shape),
                            implementation="xla" if cfg.attention == "splash" else cfg.attention)
            new_cache = {"k": ck, "v": cv}
        o = DenseGeneral((cfg.hidden_size,), ("heads", "head_dim", "embed"), n_in=2, use_bias=False,
                         dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                         kernel_init=nn.initializers.normal(cfg.initializer_range), name="o_proj")(out)
        return o, new_cache


class MLP(nn.Module):
    """Qwen2MLP: ``down(silu(gate(x)) * up(x))``. ``[b, t, embed] -> [b, t, embed]``."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dense = lambda feats, names, name: DenseGeneral(  # noqa: E731
            (feats,), names, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            kernel_init=nn.initializers.normal(cfg.initializer_range), name=name)
        gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x)
        up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x)
        h = nn.with_logical_constraint(nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(h)


class DecoderLayer(nn.Module):
    """Qwen2DecoderLayer (pre-norm). Scanned: ``(x, layer_cache) -> (x, new_layer_cache)``."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, kv_cache, positions, segment_ids, cache_segment_ids, cache_slots):
        cfg = self.cfg
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.compute_dtype, cfg.weight_dtype, name=name)  # noqa: E731
        layer_cache = None if kv_cache is None else {**kv_cache, "segment_ids": cache_segment_ids}
        h, new_cache = Attention(cfg, name="attn")(norm("input_layernorm")(x), positions, segment_ids,
                                                    layer_cache, cache_slots)
        x = x + h
        x = x + MLP(cfg, name="mlp")(norm("post_attention_layernorm")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, new_cache


class LLM(nn.Module):
    """Qwen2Model + LM head. The ``llm`` parameter group of every omnijax model.

    Methods (all pure, usable with ``apply(..., method=...)``):
      ``embed(ids) -> [b, t, embed]``; ``decode(embeds, ...) -> (hidden [b, t, embed], cache)``;
      ``logits(hidden) -> [b, t, vocab]`` (float32); ``__call__(ids, ...)`` chains the three.
    """

    cfg: LLMConfig

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
                                     param_dtype=cfg.weight_dtype, embedding_init=_init(cfg, ("vocab", "embed")))
        self.layers = scanned(DecoderLayer, cfg.remat, cfg.num_layers,
                              (0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                              cfg.scan_unroll)(cfg, name="layers")
        self.norm = RMSNorm(cfg.rms_norm_eps, cfg.compute_dtype, cfg.weight_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), use_bias=False, dtype=cfg.compute_dtype,
                                        param_dtype=cfg.weight_dtype,
                                        kernel_init=nn.initializers.normal(cfg.initializer_range))

    def embed(self, input_ids):
        return self.embed_tokens(input_ids)

    def decode(self, embeds, positions, segment_ids, cache=None, cache_index=None):
        """Decoder stack. ``cache`` (from ``init_cache``) switches to KV-cache decoding, where the
        new tokens occupy cache slots ``cache_index .. cache_index + len - 1``.

        Returns (hidden ``[b, t, embed]`` after the final norm, updated cache or None).
        """
        x = nn.with_logical_constraint(embeds.astype(self.cfg.compute_dtype),
                                       ("activation_batch", "activation_length", "activation_embed"))
        if cache is None:
            x, _ = self.layers(x, None, positions, segment_ids, None, None)
            return self.norm(x), None
        b, t = segment_ids.shape
        cache_segment_ids = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids, cache_index, axis=1)
        slots = cache_index + jnp.broadcast_to(jnp.arange(t), (b, t))
        x, kv = self.layers(x, {"k": cache["k"], "v": cache["v"]}, positions, segment_ids, cache_segment_ids, slots)
        return self.norm(x), {"k": kv["k"], "v": kv["v"], "segment_ids": cache_segment_ids}

    def logits(self, hidden):
        if self.cfg.tie_word_embeddings:
            w = self.embed_tokens.embedding.astype(self.cfg.compute_dtype)
            out = jnp.einsum("btd,vd->btv", hidden, w, preferred_element_type=jnp.float32)
        else:
            out = self.lm_head(hidden).astype(jnp.float32)
        return nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_vocab"))

    def __call__(self, input_ids, positions=None, segment_ids=None, cache=None, cache_index=None):
        """``input_ids [b, t]`` -> (logits f32 ``[b, t, vocab]``, cache). Defaults: one unpadded
        sequence per row (``positions = arange``, ``segment_ids = 1``)."""
        if segment_ids is None:
            segment_ids = jnp.ones_like(input_ids)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        hidden, cache = self.decode(self.embed(input_ids), positions, segment_ids, cache, cache_index)
        return self.logits(hidden), cache


def init_cache(cfg: LLMConfig, batch: int, max_len: int, dtype=None) -> dict[str, jax.Array]:
    """Empty static-shape KV cache: k/v ``[layers, batch, max_len, kv_heads, head_dim]``,
    segment_ids ``[batch, max_len]`` (0 = empty slot)."""
    dtype = dtype or cfg.compute_dtype
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, max_len), jnp.int32)}


class CausalLM(nn.Module):
    """A text-only language model: params ``{'llm': ...}``, the same tree an omni model holds."""

    cfg: LLMConfig

    def setup(self):
        self.llm = LLM(self.cfg)

    def __call__(self, input_ids, positions=None, segment_ids=None, cache=None, cache_index=None):
        return self.llm(input_ids, positions, segment_ids, cache, cache_index)


def init_params(model: nn.Module, rng: jax.Array, batch: int = 1, length: int = 8):
    """Random params (plain pytree, logical metadata stripped)."""
    ids = jnp.zeros((batch, length), jnp.int32)
    return nn.meta.unbox(model.init(rng, ids))["params"]


def logical_specs(model: nn.Module, batch: int = 1, length: int = 8):
    """Logical ``PartitionSpec`` tree of ``model``'s params, and their abstract shapes (no allocation)."""
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
    return nn.get_partition_spec(abstract)["params"], nn.meta.unbox(abstract)["params"]
