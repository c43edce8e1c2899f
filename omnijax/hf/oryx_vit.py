"""OryxViT (Ola's native-resolution vision tower) <-> the ``vision`` parameter group.

Ola's release (Ola-Omni/Ola's ``OlaQwenForCausalLM`` safetensors) holds the tower under
``model.vision_tower.vision_tower.`` in timm's names::

    patch_embed.proj.{weight [D, C, p, p], bias}   pos_embed [1, G*G, D]
    blocks.{i}.norm1 / norm2 .{weight, bias}
    blocks.{i}.attn.qkv.{weight [3D, D], bias}     (q, k, v stacked on the output axis, heads inside each)
    blocks.{i}.attn.proj.{weight, bias}            blocks.{i}.mlp.fc1 / fc2 .{weight, bias}

``oryx_vit_table(cfg, hf_prefix)`` is that table under any prefix (Ola's model directory reuses it as
it is). Registered architecture ``OryxViT``: a tower-only directory, import and export, with the
release's key names and a ``config.json`` of ``OryxViTConfig.to_hf`` (Ola's release has no such file
for the tower alone; its sizes are fixed in ``create_siglip_vit``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import BIAS_SPLIT, LEADING_ONE, LINEAR, LINEAR_IN2, Entry, conv_permute, prefixed
from omnijax.models.oryx_vit import OryxViTConfig, OryxViTModel, example_inputs

OLA_PREFIX = "model.vision_tower.vision_tower."
INPUTS = ("patches", "segment_ids", "grids")


def oryx_vit_table(cfg: OryxViTConfig, hf_prefix: str = OLA_PREFIX) -> list[Entry]:
    """timm ``VisionTransformer`` keys under ``hf_prefix`` <-> paths under ``vision/``."""
    del cfg  # one layout for every size
    block, path = "blocks.{i}", "blocks"
    entries = [
        Entry("patch_embed.proj.weight", "patch_embed/kernel", conv_permute(2)),
        Entry("patch_embed.proj.bias", "patch_embed/bias"),
        Entry("pos_embed", "pos_embed", LEADING_ONE),
        Entry(f"{block}.attn.qkv.weight", f"{path}/attn/qkv/kernel", LINEAR),
        Entry(f"{block}.attn.qkv.bias", f"{path}/attn/qkv/bias", BIAS_SPLIT),
        Entry(f"{block}.attn.proj.weight", f"{path}/attn/proj/kernel", LINEAR_IN2),
        Entry(f"{block}.attn.proj.bias", f"{path}/attn/proj/bias"),
    ]
    for norm in ("norm1", "norm2"):
        entries += [Entry(f"{block}.{norm}.weight", f"{path}/{norm}/scale"),
                    Entry(f"{block}.{norm}.bias", f"{path}/{norm}/bias")]
    for fc in ("fc1", "fc2"):
        entries += [Entry(f"{block}.mlp.{fc}.weight", f"{path}/mlp/{fc}/kernel", LINEAR),
                    Entry(f"{block}.mlp.{fc}.bias", f"{path}/mlp/{fc}/bias")]
    return prefixed(entries, hf_prefix=hf_prefix, path_prefix="vision/")


def oryx_vit_forward(module, params, inputs: dict):
    """The tower's features ``[b, slots, D]`` for packed ``patches [b, slots, p, p, C]``, ``segment_ids
    [b, slots]``, ``grids [b, max_images, 2]`` (``data_pipelines.image_tiles.pack_native``, one row each)."""
    if sorted(inputs) != sorted(INPUTS):
        raise ValueError(f"OryxViT takes inputs {list(INPUTS)} (data_pipelines.image_tiles.pack_native), "
                         f"got {sorted(inputs)}")
    args = [jnp.asarray(np.asarray(inputs[k])) for k in INPUTS]
    return jax.jit(module.apply)({"params": params}, *args)


def _build(hf: dict, **overrides):
    cfg = OryxViTConfig.from_hf(hf, **overrides)
    return OryxViTModel(cfg), cfg


ORYX_VIT = register(Architecture(
    name="OryxViT",
    build=_build,
    table=oryx_vit_table,
    hf_config=OryxViTConfig.to_hf,
    init_inputs=example_inputs,
    hf_forward=oryx_vit_forward,
))
