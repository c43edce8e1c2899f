"""SigLIP vision tower as pure-functional Flax Linen, numerically equal to transformers'
``SiglipVisionModel`` (``models/siglip/modeling_siglip.py``).

    pixels [b, H, W, 3] -> patch conv (p x p, stride p) -> + position embeddings (bicubic-interpolated
    when the grid differs from the trained one) -> pre-norm encoder layers (bidirectional attention,
    fc1 -> gelu_pytorch_tanh -> fc2) -> post_layernorm -> optional attention-pool head

Pixel layout: omnijax takes NHWC float pixels, already rescaled and normalised (SigLIP: ``x/255``, then
``(x - 0.5) / 0.5``). HF processors return NCHW: transpose with ``(0, 2, 3, 1)`` at the data/test
boundary (``omnijax.media_tokens`` produces NHWC tiles directly). Videos are frames through the same
tower: ``[b, frames, H, W, 3]`` is folded into the batch and unfolded on the way out.

Which hidden state feeds a connector is explicit: ``VisionTower`` returns
``features`` (``cfg.feature_layer``, an index into HF's ``hidden_states``: 0 = embeddings, i = output
of layer i, -1 = last layer *before* ``post_layernorm``, LLaVA-OneVision's ``vision_feature_layer=-1``;
``None`` = after ``post_layernorm``), ``last_hidden_state`` (after ``post_layernorm``) and, with the
head, ``pooler_output``. Outputs nobody uses are removed by XLA under ``jit``; the parameters always
exist, so a checkpoint round-trips whole.

Param tree of the ``vision`` group (``L`` = layers, stacked by ``nn.scan``; D = hidden_size)::

    embeddings/patch_embedding/kernel [p, p, 3, D]   bias [D]
    embeddings/position_embedding     [(image_size // p)^2, D]
    encoder/layers/layer_norm{1,2}/{scale,bias}               [L, D]
    encoder/layers/self_attn/{q,k,v}_proj/kernel [L, D, heads, head_dim]   bias [L, heads, head_dim]
    encoder/layers/self_attn/out_proj/kernel     [L, heads, head_dim, D]   bias [L, D]
    encoder/layers/mlp/fc1/kernel [L, D, mlp]  bias [L, mlp];  mlp/fc2/kernel [L, mlp, D]  bias [L, D]
    post_layernorm/{scale,bias} [D]
    head/probe [1, 1, D]                                     (use_head only: SiglipMultiheadAttentionPoolingHead)
    head/attention/in_proj/kernel [D, 3, heads, head_dim]    bias [3, heads, head_dim]   (q, k, v packed)
    head/attention/out_proj/kernel [heads, head_dim, D]      bias [D]
    head/layernorm/{scale,bias} [D];  head/mlp/fc{1,2} as in the layers
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnijax.models.attention import AUTO, attention, resolve_implementation
from omnijax.models.image_layout import resize_matrix
from omnijax.models.layers import DenseGeneral
from omnijax.models.llm import Numerics, scanned

# Bidirectional encoder: omnijax's splash attention is causal-only, so TPU runs use 'xla'.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
ACTIVATIONS = {
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
}


def _square(v, name: str) -> int:
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise ValueError(f"{name} {list(v)} is not square; only square {name}s are supported")
        v = v[0]
    return int(v)


@dataclasses.dataclass(frozen=True)
class VisionConfig(Numerics):
    """Sizes and numerics of a SigLIP vision tower (defaults: so400m-patch14-384).
    ``from_hf`` reads a ``SiglipVisionConfig`` dict."""

    image_size: int = 384
    patch_size: int = 14
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    use_head: bool = True  # HF `vision_use_head` (False in LLaVA-OneVision's tower)
    feature_layer: int | None = -1  # see module docstring; None = post_layernorm output
    interpolate_pos_encoding: bool = False  # accept other image sizes (HF's `interpolate_pos_encoding=True`)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention: str = "xla"  # xla | cudnn | auto (cudnn on GPU, else xla)
    remat: str = "none"  # none | full | dots | dots_no_batch
    scan_unroll: int = 1

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) is smaller than patch_size ({self.patch_size})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {tuple(ACTIVATIONS)}")
        if self.attention == AUTO:
            object.__setattr__(self, "attention", resolve_implementation(AUTO, causal=False, dtype=self.dtype))
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"vision attention {self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}: the "
                             "encoder attends bidirectionally and splash attention is causal-only; use 'xla' on TPU")
        self.check_numerics()
        if self.feature_layer is not None and not -(self.num_layers + 1) <= self.feature_layer <= self.num_layers:
            raise ValueError(f"feature_layer {self.feature_layer} is outside "
                             f"[-{self.num_layers + 1}, {self.num_layers}] "
                             f"(HF hidden_states has num_layers + 1 = {self.num_layers + 1} entries)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_side(self) -> int:
        """Patches per side at ``image_size``."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens per image at ``image_size`` (729 for 384/14)."""
        return self.grid_side ** 2

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "VisionConfig":
        """From a ``SiglipVisionConfig`` dict (a ``SiglipConfig``'s ``vision_config`` is taken from it);
        absent keys take transformers' defaults."""
        hf = hf.get("vision_config", hf)
        kw = dict(
            image_size=_square(hf.get("image_size", 224), "image_size"),
            patch_size=_square(hf.get("patch_size", 16), "patch_size"),
            hidden_size=hf.get("hidden_size", 768),
            intermediate_size=hf.get("intermediate_size", 3072),
            num_layers=hf.get("num_hidden_layers", 12),
            num_heads=hf.get("num_attention_heads", 12),
            num_channels=hf.get("num_channels", 3),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
            hidden_act=hf.get("hidden_act", "gelu_pytorch_tanh"),
            use_head=bool(hf.get("vision_use_head", True)),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``SiglipVisionConfig`` dict for ``SiglipVisionModel``."""
        return {
            "architectures": ["SiglipVisionModel"],
            "model_type": "siglip_vision_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_channels": self.num_channels,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": self.layer_norm_eps,
            "attention_dropout": 0.0,
            "vision_use_head": self.use_head,
            "torch_dtype": self.param_dtype,
        }


def _layer_norm(cfg: VisionConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        use_fast_variance=False, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def _dense(cfg: VisionConfig, features, axes, name: str, n_in: int = 1) -> DenseGeneral:
    return DenseGeneral(features, axes, n_in=n_in, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        kernel_init=nn.initializers.lecun_normal(), name=name)


class MLP(nn.Module):
    """SiglipMLP: ``fc2(act(fc1(x)))``. ``[..., D] -> [..., D]``."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        h = ACTIVATIONS[cfg.hidden_act](_dense(cfg, (cfg.intermediate_size,), ("vision_embed", "mlp"), "fc1")(x))
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return _dense(cfg, (cfg.hidden_size,), ("mlp", "vision_embed"), "fc2")(h)


class SelfAttention(nn.Module):
    """SiglipAttention: bidirectional multi-head attention with biases. ``[b, n, D] -> [b, n, D]``."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        shape, axes = (cfg.num_heads, cfg.head_dim), ("vision_embed", "heads", "head_dim")
        q, k, v = (_dense(cfg, shape, axes, f"{p}_proj")(x) for p in "qkv")
        q = nn.with_logical_constraint(
            q, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
        seg = jnp.ones(x.shape[:2], jnp.int32)
        out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False,
                        implementation=cfg.attention, packed=False)
        return _dense(cfg, (cfg.hidden_size,), ("heads", "head_dim", "vision_embed"), "out_proj", n_in=2)(out)


class EncoderLayer(nn.Module):
    """SiglipEncoderLayer (pre-norm). Scanned: ``((x, selected), index) -> ((x, selected), None)``;
    ``selected`` (None unless an inner layer's output is wanted) keeps the output of layer ``select``
    (1-based, HF's ``hidden_states`` index)."""

    cfg: VisionConfig
    select: int | None = None  # 1-based layer whose output to keep

    @nn.compact
    def __call__(self, carry, index):
        x, selected = carry
        x = x + SelfAttention(self.cfg, name="self_attn")(_layer_norm(self.cfg, "layer_norm1")(x))
        x = x + MLP(self.cfg, name="mlp")(_layer_norm(self.cfg, "layer_norm2")(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        if selected is not None:
            selected = jnp.where(index + 1 == self.select, x, selected)
        return (x, selected), None


def _selected_layer(cfg: VisionConfig) -> int | None:
    """``cfg.feature_layer`` as a non-negative index into HF's ``hidden_states`` (None: post_layernorm)."""
    return None if cfg.feature_layer is None else cfg.feature_layer % (cfg.num_layers + 1)


class Encoder(nn.Module):
    """SiglipEncoder: the layers under one ``nn.scan``. ``[b, n, D] -> ([b, n, D], selected or None)``,
    ``selected`` being the output of an inner layer when ``cfg.feature_layer`` names one."""

    cfg: VisionConfig

    def setup(self):
        cfg = self.cfg
        select = _selected_layer(cfg)
        self.inner = select if select not in (None, 0, cfg.num_layers) else None
        self.layers = scanned(EncoderLayer, cfg.remat, cfg.num_layers, 0, cfg.scan_unroll)(cfg, self.inner)

    def __call__(self, x):
        selected = None if self.inner is None else jnp.zeros_like(x)
        (x, selected), _ = self.layers((x, selected), jnp.arange(self.cfg.num_layers))
        return x, selected


class Embeddings(nn.Module):
    """SiglipVisionEmbeddings: patch conv + learned positions. ``[b, H, W, 3] -> [b, (H//p)*(W//p), D]``."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, pixels):
        cfg = self.cfg
        x = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size), strides=(cfg.patch_size, cfg.patch_size),
                    padding="VALID", dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), ("patch_height", "patch_width", "channels", "vision_embed")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vision_embed",)),
                    name="patch_embedding")(pixels.astype(cfg.compute_dtype))
        b, gh, gw, d = x.shape
        table = self.param("position_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.hidden_size ** -0.5), ("vision_positions", "vision_embed")),
            (cfg.num_patches, d), cfg.weight_dtype)
        pos = table.astype(cfg.compute_dtype)
        if (gh, gw) != (cfg.grid_side, cfg.grid_side):
            # transformers' interpolate_pos_encoding: bicubic, align_corners=False, on the square table.
            n = cfg.grid_side
            wh = jnp.asarray(resize_matrix(n, gh, "bicubic"), jnp.float32)
            ww = jnp.asarray(resize_matrix(n, gw, "bicubic"), jnp.float32)
            pos = jnp.einsum("ph,hwd,qw->pqd", wh, table.astype(jnp.float32).reshape(n, n, d), ww,
                             precision=jax.lax.Precision.HIGHEST).reshape(gh * gw, d).astype(cfg.compute_dtype)
        return x.reshape(b, gh * gw, d) + pos[None]


class VisionTower(nn.Module):
    """SiglipVisionTransformer: the ``vision`` parameter group of every omnijax model.

    ``pixel_values [b, H, W, 3]`` (or ``[b, frames, H, W, 3]``) NHWC float ->
    ``{'features', 'last_hidden_state': [b, (frames,) n, D], 'pooler_output': [b, (frames,) D] (use_head)}``
    with ``n = (H // p) * (W // p)``. ``H = W = image_size`` unless ``cfg.interpolate_pos_encoding``.
    """

    cfg: VisionConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.post_layernorm = _layer_norm(cfg, "post_layernorm")
        if cfg.use_head:
            self.head = AttentionPoolingHead(cfg)

    def _check(self, pixel_values):
        cfg = self.cfg
        s, c = cfg.image_size, cfg.num_channels
        shape = tuple(pixel_values.shape)
        ok = pixel_values.ndim in (4, 5) and shape[-1] == c
        if ok and not cfg.interpolate_pos_encoding:
            ok = shape[-3:-1] == (s, s)
        if ok and cfg.interpolate_pos_encoding:
            ok = min(shape[-3:-1]) >= cfg.patch_size
        if not ok:
            hw = f"{s}, {s}" if not cfg.interpolate_pos_encoding else f"H >= {cfg.patch_size}, W >= {cfg.patch_size}"
            raise ValueError(
                f"pixel_values has shape {shape}; expected [batch, {hw}, {c}] or [batch, frames, {hw}, {c}] "
                f"(NHWC; HF processors give NCHW: transpose(0, 2, 3, 1))")

    def __call__(self, pixel_values) -> dict[str, jax.Array]:
        self._check(pixel_values)
        if pixel_values.ndim == 5:  # video: frames through the same tower
            b, f = pixel_values.shape[:2]
            out = self(pixel_values.reshape(b * f, *pixel_values.shape[2:]))
            return {k: v.reshape(b, f, *v.shape[1:]) for k, v in out.items()}
        cfg = self.cfg
        x = nn.with_logical_constraint(self.embeddings(pixel_values),
                                       ("activation_batch", "activation_length", "activation_embed"))
        embedded = x
        x, selected = self.encoder(x)
        last = self.post_layernorm(x)
        select = _selected_layer(cfg)
        if select is None:
            features = last
        elif select == 0:
            features = embedded
        elif select == cfg.num_layers:
            features = x
        else:
            features = selected
        out = {"features": features, "last_hidden_state": last}
        if cfg.use_head:
            out["pooler_output"] = self.head(last)
        return out


class AttentionPoolingHead(nn.Module):
    """SiglipMultiheadAttentionPoolingHead: a learned probe attends over the tokens (torch
    ``nn.MultiheadAttention``, q/k/v packed), then ``y + mlp(layernorm(y))``. ``[b, n, D] -> [b, D]``."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        d = cfg.hidden_size
        probe = self.param("probe", nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), ("probe_batch", "probe_tokens", "vision_embed")), (1, 1, d),
            cfg.weight_dtype)
        att = PackedAttention(cfg, name="attention")
        y = att(jnp.broadcast_to(probe.astype(cfg.compute_dtype), (x.shape[0], 1, d)), x)
        y = y + MLP(cfg, name="mlp")(_layer_norm(cfg, "layernorm")(y))
        return y[:, 0]


class PackedInProj(nn.Module):
    """The packed ``in_proj`` of torch ``nn.MultiheadAttention``: kernel ``[D, 3, heads, head_dim]``,
    bias ``[3, heads, head_dim]`` (q, k, v on axis 1), one HF tensor each."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, query, kv):
        cfg = self.cfg
        d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("vision_embed", "qkv", "heads", "head_dim")), (d, 3, h, hd),
            cfg.weight_dtype).astype(cfg.compute_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros, ("qkv", "heads", "head_dim")), (3, h, hd),
            cfg.weight_dtype).astype(cfg.compute_dtype)
        q = jnp.einsum("bqd,dhk->bqhk", query.astype(cfg.compute_dtype), kernel[:, 0]) + bias[0]
        k = jnp.einsum("bnd,dhk->bnhk", kv.astype(cfg.compute_dtype), kernel[:, 1]) + bias[1]
        v = jnp.einsum("bnd,dhk->bnhk", kv.astype(cfg.compute_dtype), kernel[:, 2]) + bias[2]
        return q, k, v


class PackedAttention(nn.Module):
    """torch ``nn.MultiheadAttention`` (q from ``query``, k/v from ``kv``). ``[b, m, D], [b, n, D] -> [b, m, D]``."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, query, kv):
        cfg = self.cfg
        q, k, v = PackedInProj(cfg, name="in_proj")(query, kv)
        out = attention(q, k, v, q_segment_ids=jnp.ones(q.shape[:2], jnp.int32),
                        kv_segment_ids=jnp.ones(k.shape[:2], jnp.int32), causal=False, implementation="xla")
        return _dense(cfg, (cfg.hidden_size,), ("heads", "head_dim", "vision_embed"), "out_proj", n_in=2)(out)


class VisionModel(nn.Module):
    """A vision-tower-only model (HF ``SiglipVisionModel``): params ``{'vision': ...}``, the same tree
    an omni model holds. ``pixel_values [b, H, W, 3]`` -> ``(last_hidden_state [b, n, D], pooler_output
    [b, D] or None)``."""

    cfg: VisionConfig

    def setup(self):
        self.vision = VisionTower(self.cfg)

    def __call__(self, pixel_values):
        out = self.vision(pixel_values)
        return out["last_hidden_state"], out.get("pooler_output")


def example_pixels(cfg: VisionConfig, batch: int = 1) -> jax.ShapeDtypeStruct:
    """Abstract NHWC input for ``init``/``eval_shape``."""
    return jax.ShapeDtypeStruct((batch, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)


def init_params(model: nn.Module, rng: jax.Array, batch: int = 1):
    """Random params (plain pytree, logical metadata stripped)."""
    pixels = jnp.zeros(example_pixels(model.cfg, batch).shape, jnp.float32)
    return nn.meta.unbox(model.init(rng, pixels))["params"]


def logical_specs(model: nn.Module):
    """Logical ``PartitionSpec`` tree of ``model``'s params, and their abstract shapes (no allocation)."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), example_pixels(model.cfg))
    return nn.get_partition_spec(abstract)["params"], nn.meta.unbox(abstract)["params"]
