"""LLaVA-OneVision (SigLIP + 2-layer MLP + Qwen2) as pure-functional Flax Linen, numerically equal
to transformers' ``LlavaOnevisionForConditionalGeneration`` for images (``models/llava_onevision``;
videos are not built).

    tiles [n_tiles, H, W, 3] -> SigLIP -> hidden_states[vision_feature_layer] -> linear_1 -> GELU ->
    linear_2 -> per image: AnyRes packing (base tile, unpadded grid rows each + image_newline) ->
    scattered into the token embeddings at ``image_token_index`` in batch order -> Qwen2 -> logits

Top-level parameter groups: ``vision`` (``omnijax.models.vision.VisionTower``), ``vision_connector``
(``MLPProjector``: ``linear_1``, ``linear_2``), ``mm_embed`` (``newline`` = HF ``image_newline``),
``llm`` (``omnijax.models.llm.LLM``).

Images and their tiles. Every image of a single-image example is tiled AnyRes (a base tile plus the
best-fit grid of ``image_grid_pinpoints``, ``omnijax.media_tokens.anyres_layout``); every image of a
multi-image example (``batch_num_images[i] > 1``, as HF's processor reports it) is one base tile plus
one newline. ``image_sizes`` (original ``(height, width)`` per image, batch order) and
``batch_num_images`` are static Python tuples: they fix each image's tile count, token count and
packing, so the packing is unrolled in Python with static shapes (one compilation per combination
of sizes). ``pixel_values`` are NHWC tiles in either layout:

- ``[num_images, max_tiles, H, W, 3]``: HF's padded layout (transposed from NCHW); image i uses its
  first ``image_num_tiles`` tiles, the padding tiles are never encoded;
- ``[total_tiles, H, W, 3]``: each image's tiles back to back (``media_tokens.anyres_pixel_tiles``).

Placeholders. Image i's features replace the next ``image_num_tokens`` placeholder tokens in batch
order (HF's ``masked_scatter`` over the flattened batch); ``check_image_tokens`` checks each
example's count on the host (``__call__`` runs it whenever ``input_ids`` are concrete).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnijax.media_tokens import LLAVA_ONEVISION_GRID_PINPOINTS, anyres_layout, anyres_num_tokens
from omnijax.models.connectors import MLPProjector, MMEmbed
from omnijax.models.image_layout import pack_anyres
from omnijax.models.llm import LLM, LLMConfig
from omnijax.models.splice import merge_embeddings
from omnijax.models.vision import ATTENTION_IMPLEMENTATIONS, VisionConfig, VisionTower

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
        """Keyword arguments of ``media_tokens.anyres_layout`` / ``pack_anyres`` for this model."""
        return dict(base_image_size=self.vision.image_size, patch_size=self.vision.patch_size,
                    pinpoints=self.image_grid_pinpoints, max_num_patches=self.max_num_patches)

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


def image_num_tiles(cfg: LlavaOnevisionConfig, image_sizes, batch_num_images=None) -> tuple[int, ...]:
    """Tiles each image is encoded from (HF's ``image_size_to_num_patches``; 1 in multi-image examples)."""
    sizes = static_sizes(image_sizes)
    return tuple(1 if multi else anyres_layout(size, **cfg.layout_kw).num_tiles
                 for size, multi in zip(sizes, multi_image_flags(len(sizes), batch_num_images)))


def image_num_tokens(cfg: LlavaOnevisionConfig, image_sizes, batch_num_images=None) -> tuple[int, ...]:
    """Placeholder tokens each image takes (``LlavaOnevisionProcessor``'s expansion)."""
    sizes = static_sizes(image_sizes)
    return tuple(anyres_num_tokens(size, multi_image=multi, **cfg.layout_kw)
                 for size, multi in zip(sizes, multi_image_flags(len(sizes), batch_num_images)))


def check_image_tokens(cfg: LlavaOnevisionConfig, input_ids, image_sizes=(), batch_num_images=None) -> None:
    """Each example's placeholder count must equal the tokens of its images (host-side, before tracing).

    Images belong to examples in batch order: by ``batch_num_images`` when given, else each example
    takes the next images until their tokens reach its placeholder count. Raises ValueError naming
    the first example that disagrees.
    """
    ids = np.asarray(input_ids)
    counts = (ids == cfg.image_token_index).sum(axis=-1).reshape(-1)
    sizes = static_sizes(image_sizes)
    tokens = image_num_tokens(cfg, sizes, batch_num_images)
    where = f"(token id {cfg.image_token_index}; image sizes {list(sizes)})"
    if batch_num_images is not None:
        if len(batch_num_images) != len(counts):
            raise ValueError(f"batch_num_images has {len(batch_num_images)} entries for {len(counts)} examples")
        bounds = np.cumsum([0, *batch_num_images])
        for i, count in enumerate(counts):
            want = sum(tokens[bounds[i]:bounds[i + 1]])
            if count != want:
                raise ValueError(f"example {i} has {count} image placeholder tokens, but its "
                                 f"{batch_num_images[i]} image(s) take {want} {where}")
        return
    k = 0
    for i, count in enumerate(counts):
        start, taken = k, 0
        while taken < count and k < len(tokens):
            taken, k = taken + tokens[k], k + 1
        if taken != count:
            got = (f"images {start}..{k - 1} take {taken} tokens" if k > start else "no images are left")
            raise ValueError(f"example {i} has {count} image placeholder tokens, but the next whole images in "
                             f"batch order do not fill them: {got} {where}")
    if k != len(tokens):
        raise ValueError(f"{len(tokens) - k} image(s) are left over: the batch has {int(counts.sum())} image "
                         f"placeholder tokens, its images take {sum(tokens)} {where}")


class LlavaOnevisionModel(nn.Module):
    """``LlavaOnevisionForConditionalGeneration`` for text and images.

    ``__call__(input_ids [b, t], pixel_values, image_sizes, attention_mask [b, t] or None,
    batch_num_images)`` -> logits float32 ``[b, t, vocab]`` (module docstring: layouts). Without
    ``pixel_values`` it is the text model. Positions are ``arange(t)`` and ``attention_mask`` masks
    padding keys, as transformers does when no ``position_ids`` are given.
    """

    cfg: LlavaOnevisionConfig

    def setup(self):
        cfg = self.cfg
        text = cfg.text
        self.vision = VisionTower(cfg.vision)
        self.vision_connector = MLPProjector(text.hidden_size,
                                             gelu_approximate=PROJECTOR_ACTIVATIONS[cfg.projector_hidden_act],
                                             dtype=text.compute_dtype, param_dtype=text.weight_dtype)
        self.mm_embed = MMEmbed(text.hidden_size, names=("newline",), dtype=text.compute_dtype,
                                param_dtype=text.weight_dtype)
        self.llm = LLM(text)

    def _tiles(self, pixel_values, num_tiles: tuple[int, ...]):
        """The tiles to encode, ``[sum(num_tiles), H, W, 3]``, from either pixel layout."""
        shape, s = tuple(pixel_values.shape), self.cfg.vision.image_size
        expected = (f"expected [{len(num_tiles)}, >= {max(num_tiles)}, {s}, {s}, 3] (HF's padded layout, NHWC) or "
                    f"[{sum(num_tiles)}, {s}, {s}, 3] (tiles back to back) for {len(num_tiles)} image(s) of "
                    f"{list(num_tiles)} tiles")
        if pixel_values.ndim == 5 and shape[0] == len(num_tiles) and shape[1] >= max(num_tiles):
            return jnp.concatenate([pixel_values[i, :n] for i, n in enumerate(num_tiles)])
        if pixel_values.ndim == 4 and shape[0] == sum(num_tiles):
            return pixel_values
        raise ValueError(f"pixel_values has shape {shape}; {expected}")

    def image_features(self, pixel_values, image_sizes, batch_num_images=None):
        """All images' packed features in batch order: ``[sum(image_num_tokens), embed]``."""
        cfg = self.cfg
        sizes = static_sizes(image_sizes)
        num_tiles = image_num_tiles(cfg, sizes, batch_num_images)
        feats = self.vision_connector(self.vision(self._tiles(pixel_values, num_tiles))["features"])
        newline = self.mm_embed()["newline"]
        packed, offset = [], 0
        for size, n, multi in zip(sizes, num_tiles, multi_image_flags(len(sizes), batch_num_images)):
            packed.append(pack_anyres(feats[offset:offset + n], size, newline, multi_image=multi, **cfg.layout_kw))
            offset += n
        return jnp.concatenate(packed)

    def __call__(self, input_ids, pixel_values=None, image_sizes=(), attention_mask=None, batch_num_images=None):
        cfg = self.cfg
        if (pixel_values is None) != (len(image_sizes) == 0):
            raise ValueError(f"pixel_values ({'None' if pixel_values is None else 'given'}) and image_sizes "
                             f"({len(image_sizes)} image(s)) must come together: one (height, width) per image")
        if not isinstance(input_ids, jax.core.Tracer):
            check_image_tokens(cfg, input_ids, image_sizes if pixel_values is not None else (), batch_num_images)
        embeds = self.llm.embed(input_ids)
        if pixel_values is not None:
            b, t, d = embeds.shape
            media = self.image_features(pixel_values, image_sizes, batch_num_images)
            # masked_scatter over the flattened batch: the k-th placeholder takes the k-th image token.
            embeds = merge_embeddings(embeds.reshape(1, b * t, d), media[None],
                                      (input_ids == cfg.image_token_index).reshape(1, b * t)).reshape(b, t, d)
        elif self.is_initializing():  # create every parameter group, also for text-only init inputs
            s = cfg.vision.image_size
            n = image_num_tiles(cfg, ((s, s),))[0]
            self.image_features(jnp.zeros((n, s, s, cfg.vision.num_channels), jnp.float32), ((s, s),))
        segment_ids = jnp.ones_like(input_ids) if attention_mask is None else attention_mask.astype(jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        hidden, _ = self.llm.decode(embeds, positions, segment_ids)
        return self.llm.logits(hidden)


def example_ids(batch: int = 1, length: int = 8) -> jax.ShapeDtypeStruct:
    """Abstract text input for ``init``/``eval_shape`` (``init`` creates every group from it)."""
    return jax.ShapeDtypeStruct((batch, length), jnp.int32)


def logical_specs(model: LlavaOnevisionModel):
    """Logical ``PartitionSpec`` tree of ``model``'s params, and their abstract shapes (no allocation)."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), example_ids())
    return nn.get_partition_spec(abstract)["params"], nn.meta.unbox(abstract)["params"]
