"""SigLIP vision (``SiglipVisionModel``) <-> the ``vision`` parameter group.

transformers v5 saves ``SiglipVisionModel`` keys without a prefix (``embeddings.*``, ``encoder.*``,
``post_layernorm.*``, ``head.*``); older checkpoints carry ``vision_model.`` in front, accepted through
``aliases``. Inside multimodal checkpoints the same table sits under another prefix
(``prefixed(siglip_table(cfg), hf_prefix='vision_tower.')`` for LLaVA-OneVision).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import BIAS_SPLIT, LINEAR, LINEAR_IN2, Entry, conv_permute, prefixed
from omnijax.models.vision import VisionConfig, VisionModel, example_pixels


def _layer_norm(hf: str, path: str) -> list[Entry]:
    return [Entry(f"{hf}.weight", f"{path}/scale"), Entry(f"{hf}.bias", f"{path}/bias")]


def _mlp(hf: str, path: str) -> list[Entry]:
    return [Entry(f"{hf}.fc1.weight", f"{path}/fc1/kernel", LINEAR), Entry(f"{hf}.fc1.bias", f"{path}/fc1/bias"),
            Entry(f"{hf}.fc2.weight", f"{path}/fc2/kernel", LINEAR), Entry(f"{hf}.fc2.bias", f"{path}/fc2/bias")]


def siglip_table(cfg: VisionConfig) -> list[Entry]:
    """Unprefixed ``SiglipVisionModel`` keys <-> paths under ``vision/``."""
    layer, path = "encoder.layers.{i}", "encoder/layers"
    entries = [
        Entry("embeddings.patch_embedding.weight", "embeddings/patch_embedding/kernel", conv_permute(2)),
        Entry("embeddings.patch_embedding.bias", "embeddings/patch_embedding/bias"),
        Entry("embeddings.position_embedding.weight", "embeddings/position_embedding"),
        *_layer_norm(f"{layer}.layer_norm1", f"{path}/layer_norm1"),
        *_layer_norm(f"{layer}.layer_norm2", f"{path}/layer_norm2"),
        Entry(f"{layer}.self_attn.out_proj.weight", f"{path}/self_attn/out_proj/kernel", LINEAR_IN2),
        Entry(f"{layer}.self_attn.out_proj.bias", f"{path}/self_attn/out_proj/bias"),
        *_mlp(f"{layer}.mlp", f"{path}/mlp"),
        *_layer_norm("post_layernorm", "post_layernorm"),
    ]
    for p in "qkv":
        entries += [
            Entry(f"{layer}.self_attn.{p}_proj.weight", f"{path}/self_attn/{p}_proj/kernel", LINEAR),
            Entry(f"{layer}.self_attn.{p}_proj.bias", f"{path}/self_attn/{p}_proj/bias", BIAS_SPLIT),
        ]
    if cfg.use_head:
        entries += [
            Entry("head.probe", "head/probe"),
            # torch packs [q; k; v] on the output axis: [3D, D] <-> kernel [D, 3, heads, head_dim].
            Entry("head.attention.in_proj_weight", "head/attention/in_proj/kernel", LINEAR),
            Entry("head.attention.in_proj_bias", "head/attention/in_proj/bias", BIAS_SPLIT),
            Entry("head.attention.out_proj.weight", "head/attention/out_proj/kernel", LINEAR_IN2),
            Entry("head.attention.out_proj.bias", "head/attention/out_proj/bias"),
            *_layer_norm("head.layernorm", "head/layernorm"),
            *_mlp("head.mlp", "head/mlp"),
        ]
    return prefixed(entries, path_prefix="vision/")


def vision_forward(module, params, inputs: dict):
    """HF ``SiglipVisionModel.forward(pixel_values)`` -> ``last_hidden_state``. ``pixel_values`` come
    NCHW from HF processors and are transposed to omnijax's NHWC here."""
    unknown = sorted(set(inputs) - {"pixel_values"})
    if unknown:
        raise ValueError(f"inputs {unknown} are not used by a vision tower; expected pixel_values [batch, 3, H, W]")
    pixels = np.asarray(inputs["pixel_values"], np.float32)
    if pixels.ndim != 4:
        raise ValueError(f"pixel_values has shape {pixels.shape}; expected [batch, 3, H, W] "
                         "(NCHW, as HF processors give)")
    return jax.jit(module.apply)({"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)))[0]


def _build(hf: dict, **overrides):
    cfg = VisionConfig.from_hf(hf, **overrides)
    return VisionModel(cfg), cfg


SIGLIP_VISION = register(Architecture(
    name="SiglipVisionModel",
    build=_build,
    table=siglip_table,
    hf_config=VisionConfig.to_hf,
    init_inputs=lambda cfg: (example_pixels(cfg),),
    hf_forward=vision_forward,
    aliases=(("", "vision_model."),),
))
