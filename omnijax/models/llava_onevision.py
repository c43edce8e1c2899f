"""LLaVA-OneVision (SigLIP + 2-layer MLP + Qwen2): ``OmniModel`` in the configuration of transformers'
``LlavaOnevisionForConditionalGeneration`` for images (``models/llava_onevision``; videos are not built),
numerically equal to it.

This module is the configuration (``LlavaOnevisionConfig`` <-> ``config.json``, ``omni()`` -> the
``OmniConfig``: vision tower, ``'mlp'`` connector, layout ``'llava_onevision'``) and the translation of
transformers' forward inputs into the batch contract (``hf_batch``); the layout itself (AnyRes:
base tile, unpadded and shrunk grid rows each + ``image_newline``) is ``omnijax.models.layouts``.

    tiles -> SigLIP -> hidden_states[vision_feature_layer] -> linear_1 -> GELU -> linear_2
    -> per image: AnyRes tokens at its placeholders -> Qwen2 -> logits

Parameter groups: ``vision``, ``vision_connector`` (``linear_1``, ``linear_2``), ``mm_embed``
(``newline`` = HF ``image_newline``), ``llm``.

Images and their tiles. Every image of a single-image example is tiled AnyRes (a base tile plus the
best-fit grid of ``image_grid_pinpoints``, ``omnijax.media_tokens.anyres_layout``); every image of a
multi-image example (``batch_num_images[i] > 1``, as HF's processor reports it) is one base tile plus
one newline. ``image_sizes`` (original ``(height, width)`` per image, batch order) and
``batch_num_images`` fix each image's tile count and AnyRes plan on the host; the plans travel in the
batch (``image_plan``), so one compilation serves all image sizes of a slot budget. ``pixel_values``
are NHWC tiles in either layout:

- ``[num_images, max_tiles, H, W, 3]``: HF's padded layout (transposed from NCHW); image i uses its
  first ``image_num_tiles`` tiles, the padding tiles are never encoded;
- ``[total_tiles, H, W, 3]``: each image's tiles back to back (``image_tiles.anyres_pixel_tiles``).

Placeholders. Image i's features replace the next ``image_num_tokens`` placeholder tokens in batch
order (HF's ``masked_scatter`` over the flattened batch); ``check_image_tokens`` checks each
example's count on the host and assigns the images to examples.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omnijax.media_layouts import AnyResLayout
from omnijax.media_tokens import LLAVA_ONEVISION_GRID_PINPOINTS, anyres_plan
from omnijax.models.connector_configs import MLP
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel, logical_specs  # noqa: F401  (logical_specs: re-exported)
from omnijax.models.vision import ATTENTION_IMPLEMENTATIONS, VisionConfig

# LlavaOnevisionConfig's vision_config defaults (SigLIP so400m at 384/14, 26 layers, no head).
HF_VISION_DEFAULTS = dict(hidden_size=1152, intermediate_size=4304, patch_size=14, image_size=384,
                          num_hidden_layers=26, num_attention_heads=16, vision_use_head=False)
PROJECTOR_ACTIVATIONS = {"gelu": False, "gelu_pytorch_tanh": True, "gelu_new": True}  # -> approximate


@dataclasses.dataclass(frozen=True)
class LlavaOnevisionConfig:
    """A ``LlavaOnevisionConfig`` for images. ``from_hf`` reads transformers' ``config.json``."""

    vision: VisionConfig
    text: LLMConfig
    image_token_index: int = 151646
    video_token_index: int = 151647  # carried through config.json; videos are not built
    image_grid_pinpoints: tuple[tuple[int, int], ...] = LLAVA_ONEVISION_GRID_PINPOINTS
    vision_feature_layer: int = -1  # index into the tower's hidden_states: -1 = last layer, pre post_layernorm
    vision_feature_select_strategy: str = "full"
    vision_aspect_ratio: str = "anyres_max_9"
    projector_hidden_act: str = "gelu"

    def __post_init__(self):
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(f"vision_feature_layer {self.vision_feature_layer!r}: only one layer is supported "
                             "(a list concatenates several layers, which no LLaVA-OneVision checkpoint uses)")
        # The tower emits exactly the selected layer as its 'features'.
        object.__setattr__(self, "vision", self.vision.replace(feature_layer=self.vision_feature_layer))
        object.__setattr__(self, "image_grid_pinpoints",
                           tuple((int(h), int(w)) for h, w in self.image_grid_pinpoints))
        if self.vision_feature_select_strategy != "full":
            raise ValueError(
                f"vision_feature_select_strategy {self.vision_feature_select_strategy!r} is not supported: 'default' "
                "drops the first token of every tile (CLIP's CLS), which SigLIP does not have, and transformers' "
                "AnyRes packing rejects it; LLaVA-OneVision checkpoints use 'full'")
        if self.projector_hidden_act not in PROJECTOR_ACTIVATIONS:
            raise ValueError(f"projector_hidden_act {self.projector_hidden_act!r} is not one of "
                             f"{tuple(PROJECTOR_ACTIVATIONS)}")
        if not re.fullmatch(r"anyres_max_\d+", self.vision_aspect_ratio):
            raise ValueError(f"vision_aspect_ratio {self.vision_aspect_ratio!r} is not of the form 'anyres_max_N'")
        base = self.vision.image_size
        bad = [p for p in self.image_grid_pinpoints if p[0] % base or p[1] % base or min(p) <= 0]
        if bad or not self.image_grid_pinpoints:
            raise ValueError(f"image_grid_pinpoints {list(bad) or '[]'}: every pinpoint must be a positive multiple "
                             f"of the vision image_size {base} (whole tiles)")
        if not 0 <= self.image_token_index < self.text.vocab_size:
            raise ValueError(f"image_token_index {self.image_token_index} is outside the vocabulary "
                             f"[0, {self.text.vocab_size})")

    @property
    def max_num_patches(self) -> int:
        """N of ``anyres_max_N``: the grid map is shrunk above about N base tiles' worth of features."""
        return int(self.vision_aspect_ratio.removeprefix("anyres_max_"))

    @property
    def layout_kw(self) -> dict[str, Any]:
        """Keyword arguments of ``media_tokens.anyres_layout`` / ``anyres_plan`` for this model."""
        return self.media_layout.anyres_kw

    def omni(self) -> OmniConfig:
        """The ``OmniConfig`` of this model."""
        return OmniConfig(llm=self.text, vision=self.vision,
                          vision_connector=MLP(gelu_approximate=PROJECTOR_ACTIVATIONS[self.projector_hidden_act]),
                          layout=AnyResLayout.name, image_token_id=self.image_token_index,
                          anyres_pinpoints=self.image_grid_pinpoints, anyres_max_num_patches=self.max_num_patches)

    @property
    def media_layout(self) -> AnyResLayout:
        return self.omni().media_layout

    def replace(self, **kw) -> "LlavaOnevisionConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "LlavaOnevisionConfig":
        """From a ``LlavaOnevisionConfig`` dict. ``overrides`` name fields of this config or of the
        sub-configs: a field of both ``VisionConfig`` and ``LLMConfig`` (``dtype``, ``param_dtype``,
        ``attention``, ``remat``, ``scan_unroll``) applies to both; ``attention='splash'`` (causal only)
        leaves the bidirectional vision tower on ``'xla'``."""
        if "text_config" not in hf:
            raise ValueError("config has no 'text_config': not a LlavaOnevisionConfig")
        if not hf.get("multimodal_projector_bias", True):
            raise ValueError("multimodal_projector_bias=False is not supported "
                             "(LLaVA-OneVision's projector has biases)")
        own = {f.name for f in dataclasses.fields(cls)} - {"vision", "text"}
        vision_fields = {f.name for f in dataclasses.fields(VisionConfig)}
        text_fields = {f.name for f in dataclasses.fields(LLMConfig)}
        top, vision_kw, text_kw = {}, {}, {}
        for k, v in overrides.items():
            if k in own:
                top[k] = v
                continue
            if k not in vision_fields | text_fields:
                raise ValueError(f"override {k!r} is not a field of LlavaOnevisionConfig, VisionConfig or LLMConfig")
            if k in text_fields:
                text_kw[k] = v
            if k in vision_fields:
                vision_kw[k] = "xla" if k == "attention" and v not in ATTENTION_IMPLEMENTATIONS else v
        text = hf["text_config"]
        # transformers ties the LM head when either config says so (LlavaOnevisionConfig.__post_init__).
        tie = bool(hf.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
        kw = dict(
            vision=VisionConfig.from_hf({**HF_VISION_DEFAULTS, **hf.get("vision_config", {})}, **vision_kw),
            text=LLMConfig.from_hf({**text, "tie_word_embeddings": tie}, **text_kw),
            image_token_index=hf.get("image_token_index", hf.get("image_token_id", 151646)),
            video_token_index=hf.get("video_token_index", hf.get("video_token_id", 151647)),
            image_grid_pinpoints=hf.get("image_grid_pinpoints") or LLAVA_ONEVISION_GRID_PINPOINTS,
            vision_feature_layer=hf.get("vision_feature_layer", -1),
            vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "full"),
            vision_aspect_ratio=hf.get("vision_aspect_ratio", "anyres_max_9"),
            projector_hidden_act=hf.get("projector_hidden_act", "gelu"),
        )
        kw.update(top)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``LlavaOnevisionConfig`` dict for ``LlavaOnevisionForConditionalGeneration``."""
        vision = {k: v for k, v in self.vision.to_hf().items() if k != "architectures"}
        text = {k: v for k, v in self.text.to_hf().items() if k != "architectures"}
        return {
            "architectures": ["LlavaOnevisionForConditionalGeneration"],
            "model_type": "llava_onevision",
            "vision_config": vision,
            "text_config": text,
            "image_token_index": self.image_token_index,
            "video_token_index": self.video_token_index,
            "image_grid_pinpoints": [list(p) for p in self.image_grid_pinpoints],
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "vision_aspect_ratio": self.vision_aspect_ratio,
            "projector_hidden_act": self.projector_hidden_act,
            "multimodal_projector_bias": True,
            "tie_word_embeddings": self.text.tie_word_embeddings,
            "torch_dtype": self.text.param_dtype,
        }


def static_sizes(image_sizes) -> tuple[tuple[int, int], ...]:
    """``image_sizes`` (tuples, lists or an ``[n, 2]`` array) as a hashable tuple of ``(height, width)``."""
    arr = np.asarray(image_sizes, np.int64)
    if arr.size and (arr.ndim != 2 or arr.shape[1] != 2):
        raise ValueError(f"image_sizes must be (height, width) pairs, got {image_sizes!r}")
    return tuple((int(h), int(w)) for h, w in arr.reshape(-1, 2))


def multi_image_flags(num_images: int, batch_num_images: Sequence[int] | None) -> tuple[bool, ...]:
    """Per image: does it belong to a multi-image example (one base tile, no AnyRes grid)?"""
    if batch_num_images is None:
        return (False,) * num_images
    if sum(batch_num_images) != num_images:
        raise ValueError(f"batch_num_images {tuple(batch_num_images)} counts {sum(batch_num_images)} images, "
                         f"but there are {num_images} image sizes")
    return tuple(n > 1 for n in batch_num_images for _ in range(n))


def image_plans(cfg, image_sizes, batch_num_images=None) -> tuple[tuple[int, ...], ...]:
    """Each image's AnyRes plan (``media_tokens.anyres_plan``). ``cfg``: a ``LlavaOnevisionConfig`` or
    its ``OmniConfig`` (anything with a ``media_layout``)."""
    sizes = static_sizes(image_sizes)
    kw = cfg.media_layout.anyres_kw
    return tuple(anyres_plan(size, multi_image=multi, **kw)
                 for size, multi in zip(sizes, multi_image_flags(len(sizes), batch_num_images)))


def image_num_tiles(cfg, image_sizes, batch_num_images=None) -> tuple[int, ...]:
    """Tiles each image is encoded from (HF's ``image_size_to_num_patches``; 1 in multi-image examples)."""
    return tuple(1 + rows * cols for rows, cols, *_ in image_plans(cfg, image_sizes, batch_num_images))


def image_num_tokens(cfg, image_sizes, batch_num_images=None) -> tuple[int, ...]:
    """Placeholder tokens each image takes (``LlavaOnevisionProcessor``'s expansion)."""
    sizes = static_sizes(image_sizes)
    layout = cfg.media_layout
    return tuple(layout.image_tokens(image_size=size, multi_image=multi)
                 for size, multi in zip(sizes, multi_image_flags(len(sizes), batch_num_images)))


def check_image_tokens(cfg, input_ids, image_sizes=(), batch_num_images=None) -> list[list[int]]:
    """Each example's placeholder count must equal the tokens of its images (host-side, before tracing).

    Images belong to examples in batch order: by ``batch_num_images`` when given, else each example
    takes the next images until their tokens reach its placeholder count. Returns the image indices of
    each example; raises ValueError naming the first example that disagrees.
    """
    ids = np.asarray(input_ids)
    token_id = cfg.media_layout.image_token_id
    counts = (ids == token_id).sum(axis=-1).reshape(-1)
    sizes = static_sizes(image_sizes)
    tokens = image_num_tokens(cfg, sizes, batch_num_images)
    where = f"(token id {token_id}; image sizes {list(sizes)})"
    if batch_num_images is not None:
        if len(batch_num_images) != len(counts):
            raise ValueError(f"batch_num_images has {len(batch_num_images)} entries for {len(counts)} examples")
        bounds = np.cumsum([0, *batch_num_images])
        for i, count in enumerate(counts):
            want = sum(tokens[bounds[i]:bounds[i + 1]])
            if count != want:
                raise ValueError(f"example {i} has {count} image placeholder tokens, but its "
                                 f"{batch_num_images[i]} image(s) take {want} {where}")
        return [list(range(bounds[i], bounds[i + 1])) for i in range(len(counts))]
    k, assignment = 0, []
    for i, count in enumerate(counts):
        start, taken = k, 0
        while taken < count and k < len(tokens):
            taken, k = taken + tokens[k], k + 1
        if taken != count:
            got = (f"images {start}..{k - 1} take {taken} tokens" if k > start else "no images are left")
            raise ValueError(f"example {i} has {count} image placeholder tokens, but the next whole images in "
                             f"batch order do not fill them: {got} {where}")
        assignment.append(list(range(start, k)))
    if k != len(tokens):
        raise ValueError(f"{len(tokens) - k} image(s) are left over: the batch has {int(counts.sum())} image "
                         f"placeholder tokens, its images take {sum(tokens)} {where}")
    return assignment


def _tiles(pixel_values, num_tiles: tuple[int, ...], image_size: int):
    """Every image's tiles back to back, ``[sum(num_tiles), H, W, 3]``, from either pixel layout."""
    shape, s = tuple(pixel_values.shape), image_size
    expected = (f"expected [{len(num_tiles)}, >= {max(num_tiles)}, {s}, {s}, 3] (HF's padded layout, NHWC) or "
                f"[{sum(num_tiles)}, {s}, {s}, 3] (tiles back to back) for {len(num_tiles)} image(s) of "
                f"{list(num_tiles)} tiles")
    if pixel_values.ndim == 5 and shape[0] == len(num_tiles) and shape[1] >= max(num_tiles):
        return jnp.concatenate([pixel_values[i, :n] for i, n in enumerate(num_tiles)])
    if pixel_values.ndim == 4 and shape[0] == sum(num_tiles):
        return pixel_values
    raise ValueError(f"pixel_values has shape {shape}; {expected}")


def hf_batch(cfg, input_ids, pixel_values=None, image_sizes=(), attention_mask=None,
             batch_num_images=None) -> dict:
    """transformers' forward inputs as an ``OmniModel`` batch (``omnijax.batch``): each example's
    images (``check_image_tokens``) fill its row's slots tile by tile with their plans; positions are
    ``arange`` and ``attention_mask`` zeros are padding (segment 0), as transformers does without
    ``position_ids``. ``input_ids`` must be concrete; ``pixel_values`` may be traced."""
    if (pixel_values is None) != (len(image_sizes) == 0):
        raise ValueError(f"pixel_values ({'None' if pixel_values is None else 'given'}) and image_sizes "
                         f"({len(image_sizes)} image(s)) must come together: one (height, width) per image")
    sizes = static_sizes(image_sizes) if pixel_values is not None else ()
    plans = image_plans(cfg, sizes, batch_num_images)
    num_tiles = tuple(1 + rows * cols for rows, cols, *_ in plans)
    if pixel_values is not None:
        tiles = _tiles(pixel_values, num_tiles, cfg.media_layout.base_image_size)
    if isinstance(input_ids, jax.core.Tracer):
        raise ValueError("input_ids must be concrete: the images' places are worked out on the host; under jit, "
                         "build the batch with hf_batch first and apply OmniModel.forward to it")
    ids = np.asarray(input_ids)
    b, t = ids.shape
    mask = np.ones((b, t), np.int32) if attention_mask is None else attention_mask
    batch = {"input_ids": jnp.asarray(ids, jnp.int32), "segment_ids": jnp.asarray(mask, jnp.int32),
             "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}
    assignment = check_image_tokens(cfg, ids, sizes, batch_num_images)
    if pixel_values is None:
        return batch
    first_tile = np.cumsum((0,) + num_tiles)
    slots = max(1, max(sum(num_tiles[k] for k in images) for images in assignment))
    source = np.zeros((b, slots), np.int64)  # tile taken by each slot
    item = np.full((b, slots), -1, np.int32)
    plan = np.zeros((b, slots, len(plans[0])), np.int32)
    for row, images in enumerate(assignment):
        s = 0
        for j, k in enumerate(images):
            n = num_tiles[k]
            source[row, s:s + n] = np.arange(first_tile[k], first_tile[k] + n)
            item[row, s:s + n], plan[row, s:s + n] = j, plans[k]
            s += n
    batch["images"] = jnp.take(tiles, jnp.asarray(source.reshape(-1)), axis=0).reshape(b, slots, *tiles.shape[1:])
    batch["image_item"], batch["image_plan"] = jnp.asarray(item), jnp.asarray(plan)
    return batch


class LlavaOnevisionModel(OmniModel):
    """``OmniModel`` called like ``LlavaOnevisionForConditionalGeneration``: ``__call__(input_ids [b, t],
    pixel_values, image_sizes, attention_mask [b, t] or None, batch_num_images)`` -> logits float32
    ``[b, t, vocab]`` (module docstring: layouts). Without ``pixel_values`` it is the text model.
    ``input_ids`` must be concrete (the batch is built on the host); ``forward(batch)`` jits."""

    def __call__(self, input_ids, pixel_values=None, image_sizes=(), attention_mask=None, batch_num_images=None):
        return self.forward(hf_batch(self.cfg, input_ids, pixel_values, image_sizes, attention_mask,
                                     batch_num_images))
