"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) <-> the groups of ``OmniModel`` in its
LLaVA-OneVision configuration (``omnijax.models.llava_onevision``).

The table is the towers' tables under the keys transformers 5.23's ``save_pretrained`` writes for a
fresh model (the legacy Hub layout)::

    vision_tower.*                        SigLIP (``siglip_table``)                -> vision/
    multi_modal_projector.linear_{1,2}.*  the projector                             -> vision_connector/
    image_newline                                                                    -> mm_embed/newline
    language_model.model.*, language_model.lm_head.weight   Qwen2 (``llm_table``)  -> llm/

Other layouts load through ``aliases``: older Hub checkpoints with ``vision_tower.vision_model.*``, and
the v5-native module names (``model.vision_tower.*``, ``model.multi_modal_projector.*``,
``model.image_newline``, ``model.language_model.*``, ``lm_head.weight``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import LINEAR, Entry, prefixed
from omnijax.hf.qwen2 import llm_table
from omnijax.hf.siglip import siglip_table
from omnijax.models.llava_onevision import LlavaOnevisionConfig, LlavaOnevisionModel, hf_batch, static_sizes
from omnijax.models.omni import example_batch


def llava_onevision_table(cfg: LlavaOnevisionConfig) -> list[Entry]:
    projector = [Entry(f"multi_modal_projector.{name}.weight", f"vision_connector/{name}/kernel", LINEAR)
                 for name in ("linear_1", "linear_2")]
    projector += [Entry(f"multi_modal_projector.{name}.bias", f"vision_connector/{name}/bias")
                  for name in ("linear_1", "linear_2")]
    return [
        *prefixed(siglip_table(cfg.vision), hf_prefix="vision_tower."),
        *projector,
        Entry("image_newline", "mm_embed/newline"),
        *prefixed(llm_table(cfg.text), hf_prefix="language_model."),
    ]


FORWARD_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images")


def llava_onevision_forward(module, params, inputs: dict):
    """HF ``LlavaOnevisionForConditionalGeneration.forward(input_ids, attention_mask, pixel_values,
    image_sizes, batch_num_images)`` -> logits. ``pixel_values`` come NCHW as HF's image processor gives
    them, ``[num_images, max_tiles, 3, H, W]`` (or ``[total_tiles, 3, H, W]``), and are transposed to
    NHWC here; ``image_sizes [num_images, 2]``; ``batch_num_images [batch]`` (images per example)."""
    unknown = sorted(set(inputs) - set(FORWARD_INPUTS))
    if unknown:
        raise ValueError(f"inputs {unknown} are not used by LLaVA-OneVision for images; expected input_ids "
                         "[, attention_mask] [, pixel_values, image_sizes [, batch_num_images]]")
    ids = np.asarray(inputs["input_ids"], np.int32)
    mask = jnp.asarray(inputs.get("attention_mask", np.ones(ids.shape)), jnp.int32)
    pixels, sizes, per_example = None, (), None
    if "pixel_values" in inputs:
        if "image_sizes" not in inputs:
            raise ValueError("pixel_values come without image_sizes [num_images, 2] (each image's original "
                             "height, width, as the image processor returns them)")
        pixels = np.asarray(inputs["pixel_values"], np.float32)
        if pixels.ndim not in (4, 5):
            raise ValueError(f"pixel_values has shape {pixels.shape}; expected [num_images, tiles, 3, H, W] or "
                             "[tiles, 3, H, W] (NCHW, as HF processors give)")
        pixels = jnp.asarray(np.moveaxis(pixels, -3, -1))
        sizes = static_sizes(inputs["image_sizes"])
        if "batch_num_images" in inputs:
            per_example = tuple(int(n) for n in np.asarray(inputs["batch_num_images"]).reshape(-1))
    batch = hf_batch(module.cfg, ids, pixels, sizes, mask, per_example)
    return jax.jit(lambda p, b: module.apply({"params": p}, b, method="forward"))(params, batch)


def _build(hf: dict, **overrides):
    cfg = LlavaOnevisionConfig.from_hf(hf, **overrides)
    return LlavaOnevisionModel(cfg.omni()), cfg


# (table prefix, prefix found in other checkpoints): v5-native module names, then pre-v5 SigLIP keys.
ALIASES = (
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("image_newline", "model.image_newline"),
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "vision_tower.vision_model."),
    ("vision_tower.", "model.vision_tower.vision_model."),
)


LLAVA_ONEVISION = register(Architecture(
    name="LlavaOnevisionForConditionalGeneration",
    build=_build,
    table=llava_onevision_table,
    hf_config=LlavaOnevisionConfig.to_hf,
    init_inputs=lambda cfg: (example_batch(cfg.omni()),),
    init_method="forward",
    hf_forward=llava_onevision_forward,
    aliases=ALIASES,
))
