"""Media layouts: how a model turns media items into placeholder tokens, one class per layout,
registered by name (``LAYOUTS``; a config says ``layout='ola'``).

Plain data, no JAX: the data pipeline counts placeholders with a layout, and the model follows the
same layout to place the encoder outputs (``omnijax.models.layouts.DECODERS``, keyed by these
classes), so both agree by construction. ``OmniConfig.media_layout`` builds the model's layout
(``of_model``). The protocol (``MediaLayout``):

- ``name`` (the registry key), ``takes`` (the modalities it can lay out), ``image_plans`` (its images
  carry an AnyRes plan: batch field ``image_plan``, ``media_tokens.anyres_plan``), ``native`` (its
  images and video frames keep their own sizes: packed patch slots, ``omnijax.batch``);
- the placeholder ids ``image_token_id`` / ``video_token_id`` / ``audio_token_id``, ``modalities``
  (those with an id), ``token_id(m)``;
- ``mm_embed_names`` (the learned ``mm_embed`` vectors it needs) and ``table_names(m)`` (those of
  one modality, in the order the model-side decoder's codes index them);
- per slot (an image view or tile, a video frame, an audio window; numpy or JAX int arrays, or
  ints): ``slot_tokens(m, first, last, plan, valid_frames, grid)``, the tokens a slot owns given its place
  in its item (``grid``: a native layout's view / frame patch grid);
- per item (the pipeline's placeholder counts, the sum over the item's slots): ``image_tokens``,
  ``video_tokens``, ``audio_tokens``;
- ``of_model(cfg)`` / ``check_model(cfg)``: the layout of an ``OmniConfig``, and what it asks of the
  model's towers and connectors.

Layouts:

- ``OlaLayout`` (``'ola'``, Ola-Omni/Ola): images (views), videos (frames) and audio (windows);
  ``grid`` = LLM tokens ``(rows, cols)`` per view or frame after the vision connector,
  ``chunk_tokens`` = LLM tokens per audio window after the audio connector.
- ``AnyResLayout`` (``'llava_onevision'``, LLaVA-OneVision): images only, AnyRes
  (``media_tokens.anyres_layout`` with ``base_image_size``, ``patch_size``, ``pinpoints``,
  ``max_num_patches``); the whole image's tokens go to its first tile's slot.
- ``OlaNativeLayout`` (``'ola_native'``): Ola's layout with images and frames at their own size and
  aspect ratio (OryxViT, Ola as published): each view's or frame's token grid is its patch grid pooled
  2x2 (``media_tokens.ola_native_image_tokens`` / ``ola_native_video_tokens``); audio as ``OlaLayout``.
- ``Qwen2AudioLayout`` (``'qwen2_audio'``): audio only, each window's ``qwen2_audio_tokens(valid mel
  frames)`` features and nothing else.

A new layout is a subclass here registered with ``@register``, its decoder in
``omnijax.models.layouts.DECODERS``, and its stock transformers class (if any) in ``omnijax.hf.omni``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from omnijax.media_tokens import (MODALITIES, anyres_num_tokens, anyres_plan_tokens, ola_audio_slot_tokens,
                                  ola_audio_tokens, ola_image_slot_tokens, ola_image_tokens, ola_native_image_tokens,
                                  ola_native_video_tokens, ola_pooled_grid, ola_video_slot_tokens, ola_video_tokens,
                                  qwen2_audio_tokens)

VISION_EMBEDS = ("begin", "newline", "sep", "end")
SPEECH_EMBEDS = ("speech_begin", "speech_newline", "speech_end")
ANYRES_EMBEDS = ("newline",)

LAYOUTS: dict[str, type[MediaLayout]] = {}


def register(cls: type[MediaLayout]) -> type[MediaLayout]:
    """Register a layout class under its ``name``."""
    LAYOUTS[cls.name] = cls
    return cls


def layout_class(name: str) -> type[MediaLayout]:
    """The layout class registered as ``name``."""
    if name not in LAYOUTS:
        raise ValueError(f"layout {name!r} is not one of {tuple(LAYOUTS)}")
    return LAYOUTS[name]


@dataclasses.dataclass(frozen=True)
class MediaLayout:
    """The layout protocol (module docstring): placeholder ids, ``mm_embed`` vectors and token counts."""

    name: ClassVar[str] = ""
    takes: ClassVar[tuple[str, ...]] = ()
    image_plans: ClassVar[bool] = False
    native: ClassVar[bool] = False

    image_token_id: int | None = None
    video_token_id: int | None = None
    audio_token_id: int | None = None

    def __post_init__(self):
        for m in MODALITIES:
            if getattr(self, f"{m}_token_id") is not None and m not in self.takes:
                raise ValueError(f"layout {self.name!r} lays out {' and '.join(self.takes)} only, not {m}s")

    @classmethod
    def of_model(cls, cfg) -> MediaLayout:
        """The layout of an ``OmniConfig`` (its placeholder ids and whatever the layout reads of its towers)."""
        return cls(cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id)

    @classmethod
    def check_model(cls, cfg) -> None:
        """``ValueError`` when the ``OmniConfig``'s towers or connectors cannot follow this layout."""

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this model takes (those with a placeholder id)."""
        return tuple(m for m in MODALITIES if getattr(self, f"{m}_token_id") is not None)

    def token_id(self, modality: str) -> int:
        tid = getattr(self, f"{modality}_token_id")
        if tid is None:
            raise self._takes_no(modality)
        return tid

    def _takes_no(self, modality: str) -> ValueError:
        return ValueError(f"this model ({self.name} layout) takes no {modality}s; it takes "
                          f"{', '.join(self.modalities) or 'text only'}")

    @property
    def mm_embed_names(self) -> tuple[str, ...]:
        """The ``mm_embed`` vectors this layout uses, given the modalities the model takes."""
        return ()

    def table_names(self, modality: str) -> tuple[str, ...]:
        """The ``mm_embed`` vectors of one modality's layout, in the order its codes index them."""
        return ()

    # -- per slot (the model's spans; numpy or jax int arrays, or ints) --

    def slot_tokens(self, modality: str, first, last, plan=None, valid_frames=None, grid=None):
        """Tokens of one slot of ``modality``: ``plan`` the item's AnyRes plan ``[..., 8]`` (images of a
        layout with ``image_plans``), ``valid_frames`` the window's valid mel frames (audio), ``grid`` the
        slot's patch grid ``(rows, cols)`` (ints or int arrays; images and frames of a ``native`` layout)."""
        self.token_id(modality)
        if modality == "image":
            return self.image_slot_tokens(first, last, plan, grid)
        if modality == "video":
            return self.video_slot_tokens(first, last, grid)
        return self.audio_slot_tokens(first, last, valid_frames)

    def image_slot_tokens(self, first, last, plan=None, grid=None):
        raise self._takes_no("image")

    def video_slot_tokens(self, first, last, grid=None):
        raise self._takes_no("video")

    def audio_slot_tokens(self, first, last, valid_frames):
        raise self._takes_no("audio")

    # -- per item (the pipeline's placeholder counts) --

    def image_tokens(self, views: int = 1, *, image_size: Sequence[int] | None = None,
                     multi_image: bool = False) -> int:
        """Placeholder tokens of one image of ``views`` views / tiles, or of ``image_size``."""
        raise self._takes_no("image")

    def video_tokens(self, frames: int, *, frame_size: Sequence[int] | None = None) -> int:
        """Placeholder tokens of one video of ``frames`` frames (of ``frame_size`` each, native layouts)."""
        raise self._takes_no("video")

    def audio_tokens(self, chunks: int = 1, *, valid_frames: Sequence[int] | None = None) -> int:
        """Placeholder tokens of one audio clip of ``chunks`` windows with ``valid_frames`` mel frames each."""
        raise self._takes_no("audio")

    def _need(self, field: str, modality: str):
        self.token_id(modality)
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"media layout {self.name!r} has no {field} for {modality}s")
        return value


@register
@dataclasses.dataclass(frozen=True)
class OlaLayout(MediaLayout):
    """Ola's layout: ``[begin, view rows + newline each, (sep, view ...), end]`` per image, ``[begin, per
    frame: rows + newline, sep, end]`` per video, ``[speech_begin, per window: tokens, speech_newline,
    speech_end]`` per audio clip (``media_tokens.ola_*_tokens``)."""

    name: ClassVar[str] = "ola"
    takes: ClassVar[tuple[str, ...]] = MODALITIES

    grid: tuple[int, int] | None = None
    chunk_tokens: int | None = None

    @classmethod
    def of_model(cls, cfg) -> OlaLayout:
        return cls(cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id, grid=cfg.image_grid,
                   chunk_tokens=cfg.audio_chunk_tokens)

    @property
    def mm_embed_names(self) -> tuple[str, ...]:
        vision = VISION_EMBEDS if {"image", "video"} & set(self.modalities) else ()
        return vision + (SPEECH_EMBEDS if "audio" in self.modalities else ())

    def table_names(self, modality: str) -> tuple[str, ...]:
        return SPEECH_EMBEDS if modality == "audio" else VISION_EMBEDS

    def image_slot_tokens(self, first, last, plan=None, grid=None):
        return ola_image_slot_tokens(self._need("grid", "image"), first, last)

    def video_slot_tokens(self, first, last, grid=None):
        return ola_video_slot_tokens(self._need("grid", "video"), first, last)

    def audio_slot_tokens(self, first, last, valid_frames):
        return ola_audio_slot_tokens(self._need("chunk_tokens", "audio"), first, last)

    def image_tokens(self, views: int = 1, *, image_size: Sequence[int] | None = None,
                     multi_image: bool = False) -> int:
        return ola_image_tokens(views, grid=self._need("grid", "image"))

    def video_tokens(self, frames: int, *, frame_size: Sequence[int] | None = None) -> int:
        return ola_video_tokens(frames, grid=self._need("grid", "video"))

    def audio_tokens(self, chunks: int = 1, *, valid_frames: Sequence[int] | None = None) -> int:
        """Whole windows (Ola masks nothing): ``valid_frames`` is not read."""
        return ola_audio_tokens(chunks, chunk_tokens=self._need("chunk_tokens", "audio"))


@register
@dataclasses.dataclass(frozen=True)
class OlaNativeLayout(OlaLayout):
    """Ola's layout of images and video frames kept at their own size (OryxViT, Ola as published): a view's
    or frame's rows and newlines follow its own patch grid pooled 2x2, so each slot's tokens depend on the
    slot's ``grid`` (batch field ``image_grid`` / ``video_grid``); begin / sep / end and the audio as
    ``OlaLayout``. ``patch_size``: the tower's."""

    name: ClassVar[str] = "ola_native"
    native: ClassVar[bool] = True

    patch_size: int | None = None

    @classmethod
    def of_model(cls, cfg) -> OlaNativeLayout:
        return cls(cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id, chunk_tokens=cfg.audio_chunk_tokens,
                   patch_size=cfg.vision.patch_size if cfg.vision is not None else None)

    @classmethod
    def check_model(cls, cfg) -> None:
        if cfg.vision is not None and not (getattr(cfg.vision, "native", False) and cfg.vision_connector.spatial):
            raise ValueError(f"layout {cls.name!r} lays out images at their own size: it needs a native-resolution "
                             f"tower (OryxViT: vision=dict(native=True, ...)) and the 2x2 pooling connector "
                             f"('ola'), not {type(cfg.vision).__name__} with {cfg.vision_connector!r}")

    def _grid(self, modality, grid):
        self.token_id(modality)
        if grid is None:
            raise ValueError(f"layout {self.name!r}: each {modality} slot's tokens need the slot's patch grid (grid=)")
        return ola_pooled_grid(grid)

    def image_slot_tokens(self, first, last, plan=None, grid=None):
        return ola_image_slot_tokens(self._grid("image", grid), first, last)

    def video_slot_tokens(self, first, last, grid=None):
        return ola_video_slot_tokens(self._grid("video", grid), first, last)

    def image_tokens(self, views: int = 1, *, image_size: Sequence[int] | None = None,
                     multi_image: bool = False, view_sizes: Sequence[Sequence[int]] | None = None) -> int:
        """The tokens of an image of ``views`` views of ``view_sizes`` (``(height, width)`` pixels each, as the
        pipeline gives them to the tower: Ola's lowres view then the image), or of one view of ``image_size``."""
        self.token_id("image")
        sizes = view_sizes if view_sizes is not None else None if image_size is None else [image_size]
        if sizes is None or len(sizes) != views:
            raise ValueError(f"layout {self.name!r} counts views of their own sizes: pass view_sizes=[(h, w), ...], "
                             f"one per view (views={views}), or image_size=(h, w) for one view")
        return ola_native_image_tokens(sizes, self._need("patch_size", "image"))

    def video_tokens(self, frames: int, *, frame_size: Sequence[int] | None = None) -> int:
        """The tokens of ``frames`` frames of ``frame_size`` (``(height, width)`` pixels) each."""
        self.token_id("video")
        if frame_size is None:
            raise ValueError(f"layout {self.name!r} counts frames of their own size: pass frame_size=(h, w)")
        return ola_native_video_tokens([frame_size] * int(frames), self._need("patch_size", "video"))


@register
@dataclasses.dataclass(frozen=True)
class AnyResLayout(MediaLayout):
    """LLaVA-OneVision's AnyRes layout of images: an image's tiles fill consecutive slots (base tile first),
    its ``anyres_num_tokens`` all on its first tile's slot, the other tiles' spans 0."""

    name: ClassVar[str] = "llava_onevision"
    takes: ClassVar[tuple[str, ...]] = ("image",)
    image_plans: ClassVar[bool] = True

    base_image_size: int | None = None
    patch_size: int | None = None
    pinpoints: tuple[tuple[int, int], ...] | None = None
    max_num_patches: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if None in (self.base_image_size, self.patch_size, self.pinpoints, self.max_num_patches):
            raise ValueError(f"layout {self.name!r} needs base_image_size, patch_size, pinpoints, max_num_patches")

    @classmethod
    def of_model(cls, cfg) -> AnyResLayout:
        v = cfg.vision
        return cls(cfg.image_token_id, cfg.video_token_id, cfg.audio_token_id,
                   base_image_size=v.image_size if v else None, patch_size=v.patch_size if v else None,
                   pinpoints=cfg.anyres_pinpoints if v else None,
                   max_num_patches=cfg.anyres_max_num_patches if v else None)

    @classmethod
    def check_model(cls, cfg) -> None:
        if cfg.vision is None:
            return
        if not cfg.vision_connector.keeps_length:
            raise ValueError(f"layout {cls.name!r} lays out per-patch features: the vision connector must keep one "
                             f"token per patch (MLP), not {cfg.vision_connector!r}")
        base = cfg.vision.image_size
        if not cfg.anyres_pinpoints or any(h % base or w % base or min(h, w) <= 0 for h, w in cfg.anyres_pinpoints):
            raise ValueError(f"anyres_pinpoints {list(cfg.anyres_pinpoints)}: every pinpoint must be a positive "
                             f"multiple of the vision image_size {base} (whole tiles)")

    @property
    def anyres_kw(self) -> dict:
        """Keyword arguments of ``anyres_layout`` / ``anyres_plan`` for this model."""
        return dict(base_image_size=self.base_image_size, patch_size=self.patch_size, pinpoints=self.pinpoints,
                    max_num_patches=self.max_num_patches)

    @property
    def tile_side(self) -> int:
        """AnyRes features per tile side."""
        return self.base_image_size // self.patch_size

    @property
    def mm_embed_names(self) -> tuple[str, ...]:
        return ANYRES_EMBEDS

    def table_names(self, modality: str) -> tuple[str, ...]:
        return ANYRES_EMBEDS

    def image_slot_tokens(self, first, last, plan=None, grid=None):
        self.token_id("image")
        return first * anyres_plan_tokens(plan, self.tile_side)

    def image_tokens(self, views: int = 1, *, image_size: Sequence[int] | None = None,
                     multi_image: bool = False) -> int:
        """The AnyRes tokens of an image of ``image_size`` (``views`` is not read)."""
        self.token_id("image")
        if image_size is None:
            raise ValueError("AnyRes token counts need the image's (height, width): pass image_size")
        return anyres_num_tokens(image_size, multi_image=multi_image, **self.anyres_kw)


@register
@dataclasses.dataclass(frozen=True)
class Qwen2AudioLayout(MediaLayout):
    """Qwen2-Audio's layout: each window's ``qwen2_audio_tokens(valid mel frames)`` features, nothing else."""

    name: ClassVar[str] = "qwen2_audio"
    takes: ClassVar[tuple[str, ...]] = ("audio",)

    @classmethod
    def check_model(cls, cfg) -> None:
        if cfg.audio is not None and (cfg.audio.variant != "qwen2_audio" or not cfg.audio_connector.keeps_length):
            raise ValueError(f"layout {cls.name!r} takes each window's valid-length tokens: it needs the "
                             "variant='qwen2_audio' encoder and a length-preserving connector (Linear or MLP)")

    def audio_slot_tokens(self, first, last, valid_frames):
        return qwen2_audio_tokens(valid_frames)

    def audio_tokens(self, chunks: int = 1, *, valid_frames: Sequence[int] | None = None) -> int:
        """The windows' tokens for their ``valid_frames`` valid mel frames each (``chunks`` is not read)."""
        self.token_id("audio")
        if valid_frames is None:
            raise ValueError("Qwen2-Audio token counts need each window's valid mel frames: pass valid_frames")
        return int(sum(int(qwen2_audio_tokens(int(n))) for n in valid_frames))
