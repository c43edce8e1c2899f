"""OryxViT, Ola's native-resolution vision tower, as pure-functional Flax Linen, numerically equal to
Ola's ``VisionTransformer`` (``ola/model/multimodal_encoder/oryx_vit.py`` in Ola-Omni/Ola, built by
``create_siglip_vit`` with ``FORCE_NO_DOWNSAMPLE`` set, as Ola's training and inference scripts run it).

Every image keeps its size and aspect ratio: an ``H x W`` image (zero-padded at the bottom and right to
multiples of the patch, as the reference pads) is a ``ceil(H/p) x ceil(W/p)`` grid of patches, and the
learned ``G x G`` position table (``G = 128`` in Ola: ``pos_embed`` of ``(1, 128*128, 1152)``) is
rescaled to that grid bilinearly (torch ``F.interpolate(mode='bilinear', align_corners=False)``, no
antialiasing, also when shrinking). Then a timm ViT: pre-norm blocks (LayerNorm eps 1e-6, fused
``qkv`` with bias, exact GELU MLP), no class token, no final norm; the feature is the last block's
output (``select_layer=-1`` keeps all layers).

Packing. The reference concatenates the images of a batch into one sequence and runs flash-attn's
varlen kernel (``cu_seqlens``: attention within each image only). Here the same idea has static
shapes: each row of the batch is a fixed number of patch slots holding several images and video frames
one after another, each a contiguous run of its own segment id (1, 2, ... from the row's start; 0 =
empty slot, at the end), its patches row-major; ``grids[b, s - 1]`` is the ``(rows, cols)`` patch grid
of segment ``s``. Attention goes through ``omnijax.models.attention`` with those segment ids, so one
compilation serves every mix of sizes that fits the slots. ``data_pipelines.image_tiles.pack_native``
cuts and packs the pixels; ``omnijax.media_tokens.native_patch_grid`` is the grid of an image size.

Param tree of the ``vision`` group (L = layers, stacked by ``nn.scan``; D = hidden_size, p = patch)::

    patch_embed/kernel [p, p, C, D]   bias [D]           (Ola: patch_embed.proj, a Conv2d)
    pos_embed [G*G, D]
    blocks/norm{1,2}/{scale,bias} [L, D]
    blocks/attn/qkv/kernel  [L, D, 3, heads, head_dim]   bias [L, 3, heads, head_dim]
    blocks/attn/proj/kernel [L, heads, head_dim, D]      bias [L, D]
    blocks/mlp/fc1/kernel [L, D, mlp]  bias [L, mlp];  blocks/mlp/fc2/kernel [L, mlp, D]  bias [L, D]
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnijax.models.attention import AUTO, attention, resolve_implementation
from omnijax.models.layers import DenseGeneral
from omnijax.models.llm import Numerics, scanned

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")  # bidirectional: splash here is causal-only


@dataclasses.dataclass(frozen=True)
class OryxViTConfig(Numerics):
    """Sizes and numerics of an OryxViT tower (defaults: Ola's, SigLIP-so400m widths at patch 16). ``native``:
    images keep their own size (an ``OmniConfig`` reads it to lay them out in patch slots)."""

    native: ClassVar[bool] = True
    patch_size: int = 16
    hidden_size: int = 1152
    intermediate_size: int = 4304  # int(1152 * 3.7362), timm's Mlp hidden width
    num_layers: int = 27
    num_heads: int = 16
    num_channels: int = 3
    pos_grid: int = 128  # side of the learned position table (the reference's img_size 2048 / patch 16)
    layer_norm_eps: float = 1e-6
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention: str = "xla"  # xla | cudnn | auto (cudnn on GPU, else xla)
    remat: str = "none"  # none | full | dots | dots_no_batch
    scan_unroll: int = 1

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.attention == AUTO:
            object.__setattr__(self, "attention", resolve_implementation(AUTO, causal=False, dtype=self.dtype))
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"OryxViT attention {self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}: the "
                             "encoder attends bidirectionally and splash attention is causal-only; use 'xla' on TPU")
        self.check_numerics()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "OryxViTConfig":
        """From the ``config.json`` dict ``to_hf`` writes (absent keys: Ola's sizes)."""
        patch = hf.get("patch_size", 16)
        kw = dict(
            patch_size=patch,
            hidden_size=hf.get("hidden_size", 1152),
            intermediate_size=hf.get("intermediate_size", 4304),
            num_layers=hf.get("num_hidden_layers", 27),
            num_heads=hf.get("num_attention_heads", 16),
            num_channels=hf.get("num_channels", 3),
            pos_grid=hf.get("image_size", 2048) // patch,
            layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict naming the reference's sizes (``image_size``: its ``img_size``, the
        position table's side in pixels)."""
        return {
            "architectures": ["OryxViT"],
            "model_type": "oryx_vit",
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_channels": self.num_channels,
            "image_size": self.pos_grid * self.patch_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": "gelu",
            "torch_dtype": self.param_dtype,
        }


def _layer_norm(cfg: OryxViTConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        use_fast_variance=False, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def _dense(cfg: OryxViTConfig, features, axes, name: str, n_in: int = 1) -> DenseGeneral:
    return DenseGeneral(features, axes, n_in=n_in, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                        kernel_init=nn.initializers.lecun_normal(), name=name)


class Attention(nn.Module):
    """timm ``Attention`` with a fused ``qkv``, each query attending to its own segment (image) only.
    ``x [b, n, D], segment_ids [b, n] -> [b, n, D]``."""

    cfg: OryxViTConfig

    @nn.compact
    def __call__(self, x, segment_ids):
        cfg = self.cfg
        qkv = _dense(cfg, (3, cfg.num_heads, cfg.head_dim), ("vision_embed", "qkv", "heads", "head_dim"), "qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = nn.with_logical_constraint(
            q, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
        out = attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids, causal=False,
                        implementation=cfg.attention, packed=True)
        return _dense(cfg, (cfg.hidden_size,), ("heads", "head_dim", "vision_embed"), "proj", n_in=2)(out)


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc2(gelu(fc1(x)))``, exact GELU. ``[..., D] -> [..., D]``."""

    cfg: OryxViTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        h = nn.gelu(_dense(cfg, (cfg.intermediate_size,), ("vision_embed", "mlp"), "fc1")(x), approximate=False)
        h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        return _dense(cfg, (cfg.hidden_size,), ("mlp", "vision_embed"), "fc2")(h)


class Block(nn.Module):
    """timm ``Block`` (pre-norm, no layer scale). Scanned: ``(x, segment_ids) -> (x, None)``."""

    cfg: OryxViTConfig

    @nn.compact
    def __call__(self, x, segment_ids):
        x = x + Attention(self.cfg, name="attn")(_layer_norm(self.cfg, "norm1")(x), segment_ids)
        x = x + Mlp(self.cfg, name="mlp")(_layer_norm(self.cfg, "norm2")(x))
        return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed")), None


def _bilinear_taps(index, out_size, in_size: int):
    """torch's 1-D bilinear source taps (``align_corners=False``): for output ``index`` of ``out_size``
    (int arrays), the two input indices and their weights."""
    scale = in_size / out_size.astype(jnp.float32)
    src = jnp.maximum(scale * (index.astype(jnp.float32) + 0.5) - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
    i1 = jnp.minimum(i0 + 1, in_size - 1)
    frac = jnp.clip(src - i0, 0.0, 1.0)
    return i0, i1, 1.0 - frac, frac


def patch_coordinates(segment_ids: jax.Array, grids: jax.Array):
    """Each slot's ``(row, col)`` in its image's patch grid and that grid ``(rows, cols)``, from the packed
    layout (contiguous segments, patches row-major). ``[b, n], [b, m, 2] -> 4 x [b, n]`` int32; empty
    slots get row 0, col 0 of a 1 x 1 grid."""
    n = segment_ids.shape[1]
    slot = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    first = jax.lax.cummax(jnp.where(starts, slot, 0), axis=1)
    index = slot - first
    image = jnp.maximum(segment_ids - 1, 0)
    grid = jnp.take_along_axis(grids.astype(jnp.int32), image[..., None], axis=1)
    valid = segment_ids > 0
    rows = jnp.where(valid, jnp.maximum(grid[..., 0], 1), 1)
    cols = jnp.where(valid, jnp.maximum(grid[..., 1], 1), 1)
    return index // cols * valid, index % cols * valid, rows, cols


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed``: a ``p x p`` stride-``p`` conv, here a contraction over each patch slot.
    ``patches [b, n, p, p, C]`` (NHWC pixels of each patch) -> ``[b, n, D]``."""

    cfg: OryxViTConfig

    @nn.compact
    def __call__(self, patches):
        cfg = self.cfg
        p, c, d = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
            ("patch_height", "patch_width", "channels", "vision_embed")), (p, p, c, d), cfg.weight_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vision_embed",)), (d,),
                          cfg.weight_dtype)
        x = jnp.einsum("bnhwc,hwcd->bnd", patches.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype))
        return x + bias.astype(cfg.compute_dtype)


class OryxViT(nn.Module):
    """The ``vision`` parameter group of a native-resolution model (Ola's ``VisionTransformer``).

    ``patches [b, n, p, p, C]`` NHWC float pixels of each patch slot (SigLIP-normalised: ``(x/255 -
    0.5) / 0.5``), ``segment_ids [b, n]`` int (0 = empty slot), ``grids [b, m, 2]`` int (rows, cols of
    segment ``s`` at ``grids[:, s - 1]``) -> features ``[b, n, D]``: the last block's output per slot,
    zero on empty slots. The slots of one image, read row-major, are its ``rows x cols`` feature map.
    """

    cfg: OryxViTConfig

    def setup(self):
        cfg = self.cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = self.param("pos_embed", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vision_positions", "vision_embed")),
            (cfg.pos_grid * cfg.pos_grid, cfg.hidden_size), cfg.weight_dtype)
        self.blocks = scanned(Block, cfg.remat, cfg.num_layers, (nn.broadcast,), cfg.scan_unroll)(cfg)

    def _check(self, patches, segment_ids, grids):
        cfg = self.cfg
        p, c = cfg.patch_size, cfg.num_channels
        if patches.ndim != 5 or patches.shape[2:] != (p, p, c):
            raise ValueError(f"patches has shape {tuple(patches.shape)}; expected [batch, slots, {p}, {p}, {c}] "
                             "(data_pipelines.image_tiles.pack_native cuts them)")
        b, n = patches.shape[:2]
        if tuple(segment_ids.shape) != (b, n):
            raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}; expected [{b}, {n}], one per slot")
        if grids.ndim != 3 or grids.shape[0] != b or grids.shape[2] != 2:
            raise ValueError(f"grids has shape {tuple(grids.shape)}; expected [{b}, max_images, 2] (rows, cols)")

    def positions(self, segment_ids, grids):
        """The position table rescaled to each slot's image grid and read at the slot. ``[b, n, D]`` f32."""
        g = self.cfg.pos_grid
        row, col, rows, cols = patch_coordinates(segment_ids, grids)
        r0, r1, wr0, wr1 = _bilinear_taps(row, rows, g)
        c0, c1, wc0, wc1 = _bilinear_taps(col, cols, g)
        table = self.pos_embed.astype(jnp.float32)
        out = 0.0
        for r, wr in ((r0, wr0), (r1, wr1)):
            for c, wc in ((c0, wc0), (c1, wc1)):
                out = out + (wr * wc)[..., None] * jnp.take(table, r * g + c, axis=0)
        return out

    def __call__(self, patches, segment_ids, grids) -> jax.Array:
        self._check(patches, segment_ids, grids)
        cfg = self.cfg
        segment_ids = segment_ids.astype(jnp.int32)
        x = self.patch_embed(patches)
        x = x + self.positions(segment_ids, grids).astype(cfg.compute_dtype)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        x, _ = self.blocks(x, segment_ids)
        return jnp.where((segment_ids > 0)[..., None], x, 0).astype(cfg.compute_dtype)


def example_inputs(cfg: OryxViTConfig, batch: int = 1, slots: int = 4, max_images: int = 1) -> tuple:
    """Abstract ``(patches, segment_ids, grids)`` for ``init``/``eval_shape``."""
    p = cfg.patch_size
    return (jax.ShapeDtypeStruct((batch, slots, p, p, cfg.num_channels), jnp.float32),
            jax.ShapeDtypeStruct((batch, slots), jnp.int32), jax.ShapeDtypeStruct((batch, max_images, 2), jnp.int32))


class OryxViTModel(nn.Module):
    """A tower-only model: params ``{'vision': ...}``, the tree an omni model holds. Same call as ``OryxViT``."""

    cfg: OryxViTConfig

    def setup(self):
        self.vision = OryxViT(self.cfg)

    def __call__(self, patches, segment_ids, grids):
        return self.vision(patches, segment_ids, grids)
