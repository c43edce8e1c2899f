"""The omni model: any subset of {vision tower, audio tower}, their connectors and a Qwen2 LLM,
configured by ``OmniConfig``; it reads the batch contract of ``omnijax.batch``.

    images / videos [B, slots, S, S, 3] -> vision (SigLIP, slots folded into the batch)
        -> vision_connector (``omnijax.models.connector_configs``: MLP, LLaVA's 2-layer GELU MLP;
                            LocalGlobalPool, Ola's 2x2 local-global pooling; AvgPool, 2x2 averaging + MLP)
    or, native resolution (``vision`` an ``OryxViTConfig``, layout 'ola_native'): image / video patches
       [B, P, p, p, 3] packed per row (``omnijax.batch``) -> vision (OryxViT, each view its own segment and
       grid) -> the pooling connector on each placeholder's 2x2 group of patches
    audio [B, slots, n_mels, frames] -> audio (Whisper / Qwen2-Audio encoder, slots folded into the batch;
                                        with ``beats`` set, Ola's Whisper + BEATs dual encoder, which also
                                        reads audio_fbank [B, slots, fbank_frames, 128]: ``models.dual_audio``;
                                        BEATs alone with ``speech_encoder=False``: the batches' log-mel windows
                                        then have 0 mel bins, BEATs reads audio_fbank)
        -> audio_connector (Linear: Qwen2-Audio; MLP: Capybara-OMNI; FrameStack: Ola, k stacked frames;
                            ConvGMLP: Baichuan-Omni-1.5; StridePool: average pooling + Linear)
    -> per row and modality, placeholder tokens take layout vectors (mm_embed) or encoder outputs
       (``omnijax.media_layouts.LAYOUTS``: 'ola', 'llava_onevision' or 'qwen2_audio'; their decoders
       ``omnijax.models.layouts.DECODERS``)
    -> llm (Qwen2; packed rows: segment ids and per-segment positions) -> hidden -> logits

Top-level parameter groups: ``llm``, ``vision``, ``vision_connector``, ``audio``, ``audio_connector``,
``mm_embed``; a group the configuration does not use is absent. With BEATs the ``audio`` group holds
``whisper/...`` and ``beats/...``, which stage rules freeze or train each on its own (BEATs alone: ``beats/...``).

Connectors. The audio ``MLP`` is Capybara-OMNI's adapter read from its paper (arXiv 2504.12315): "a
1-layer MLP adapter" (one hidden layer: ``linear_1``, GELU, ``linear_2``, as ``MLPProjector``) on the
Qwen2-Audio encoder, whose ``AvgPool1d(2, 2)`` is the paper's stride-2 pooling; its tokens are
Qwen2-Audio's. ``FrameStack``, ``ConvGMLP`` and ``StridePool`` see whole windows (Ola pads every chunk
to 30 s and masks nothing).

Images in the Ola layout are one view each unless the pipeline gives several views (tiles) of an
image, e.g. Ola's lowres + highres pair: views are separated by ``sep`` (``media_tokens.ola_image_tokens``).
Each layout lays out the modalities it ``takes``: the llava_onevision layout images only, qwen2_audio audio only.

Methods (pure; ``apply(..., method=...)``): ``embed(batch) -> [B, T, embed]``, ``hidden(batch) ->
[B, T, embed]`` (the LLM's final-norm output, what the losses take), ``logits(hidden) -> f32 [B, T,
vocab]``, ``forward(batch)`` = ``__call__(batch)`` = logits; for KV-cache generation
(``omnijax.inference.omni``) ``prefill(batch, cache, cache_index)`` and ``decode_step(ids, ...)``.
Check a batch on the host with ``omnijax.batch.check_batch(batch, cfg)`` before tracing.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnijax.batch import NATIVE_MODALITIES, SLOT_FIELDS, MediaBudget, batch_spec
from omnijax.media_layouts import MediaLayout, layout_class
from omnijax.media_tokens import (LLAVA_ONEVISION_GRID_PINPOINTS, MODALITIES, OLA_MAXRES, OLA_VIDEO_MAXRES,
                                  OLA_VIDEO_MINRES, beats_fbank_frames)
from omnijax.models import connector_configs, layouts
from omnijax.models.audio import AudioConfig, WhisperEncoder
from omnijax.models.beats import BEATsConfig
from omnijax.models.dual_audio import DualAudioEncoder, aligned_length
from omnijax.models.connector_configs import Connector
from omnijax.models.connectors import MMEmbed
from omnijax.models.llm import LLM, LLMConfig
from omnijax.models.oryx_vit import OryxViT, OryxViTConfig
from omnijax.models.vision import VisionConfig, VisionTower

# Fields of the LLM / tower configs that are load-time choices, not part of a model's description.
NUMERICS = ("dtype", "param_dtype", "attention", "remat", "scan_unroll")
_TOWERS = ("llm", "vision", "audio", "beats")  # the sub-config fields of OmniConfig
# Ola's processor settings of a native-resolution tower: fields to_dict writes under processor.image, and the data
# pipeline's (PipelineConfig) fields of the same names
NATIVE_PROCESSOR = ("native_lowres", "native_maxres", "native_video_maxres", "native_video_minres")
_NOT_FLAT = _TOWERS + ("vision_connector", "audio_connector") + NATIVE_PROCESSOR  # fields to_dict writes otherwise


@dataclasses.dataclass(frozen=True)
class OmniConfig:
    """An omni model: the LLM, optional towers and connectors, the media layout, placeholder token ids
    and the media budget (slots per row; sizes come from the towers). ``media_layout`` and ``budget``
    are what the data pipeline needs."""

    llm: LLMConfig
    vision: VisionConfig | OryxViTConfig | None = None  # OryxViT: native resolution (layout 'ola_native')
    vision_connector: Connector | None = None  # MLP | LocalGlobalPool | AvgPool (connector_configs)
    audio: AudioConfig | None = None
    audio_connector: Connector | None = None  # Linear | MLP | FrameStack | ConvGMLP | StridePool
    beats: BEATsConfig | None = None  # set: Ola's dual audio encoder, Whisper (audio) + BEATs on each window
    speech_encoder: bool = True  # False (with beats): BEATs alone; ``audio`` then only sets the windows (frames)
    layout: str = "ola"  # ola | llava_onevision | qwen2_audio
    image_token_id: int | None = None
    video_token_id: int | None = None
    audio_token_id: int | None = None
    image_slots: int = 0
    video_slots: int = 0
    audio_slots: int = 0
    max_audio_windows: int = 25  # most windows one audio item takes (Ola: 25 of 30 s = 12.5 min)
    anyres_pinpoints: tuple[tuple[int, int], ...] = LLAVA_ONEVISION_GRID_PINPOINTS
    anyres_max_num_patches: int = 9  # N of 'anyres_max_N'
    image_patches: int = 0  # native resolution: patch slots per row for the images' views (OryxViT)
    video_patches: int = 0  # and for the video frames
    native_lowres: int = 0  # native resolution: side of Ola's low-res view before each image (its area; Ola: 384)
    native_maxres: int = OLA_MAXRES  # native resolution: images above this side squared scaled to it (Ola's MAXRES)
    native_video_maxres: int = OLA_VIDEO_MAXRES  # and video frames above it (Ola's VIDEO_MAXRES)
    native_video_minres: int = OLA_VIDEO_MINRES  # and video frames below it, scaled up (Ola's VIDEO_MINRES)

    def __post_init__(self):
        object.__setattr__(self, "anyres_pinpoints", tuple((int(h), int(w)) for h, w in self.anyres_pinpoints))
        for tower in connector_configs.TOWERS:
            conn = f"{tower}_connector"
            has, connector = getattr(self, tower) is not None, getattr(self, conn)
            connector_configs.check_connector(tower, connector)
            if has != (connector is not None):
                raise ValueError(f"{tower} and {conn} come together: got {tower} "
                                 f"{'set' if has else 'None'} and {conn}={connector!r}")
        for m in MODALITIES:
            tid = getattr(self, f"{m}_token_id")
            tower = "audio" if m == "audio" else "vision"
            if tid is not None and getattr(self, tower) is None:
                raise ValueError(f"{m}_token_id={tid} needs a{'n' if tower == 'audio' else ''} {tower} tower")
            if tid is not None and not 0 <= tid < self.llm.vocab_size:
                raise ValueError(f"{m}_token_id {tid} is outside the vocabulary [0, {self.llm.vocab_size})")
            if getattr(self, f"{m}_slots") < 0 or (getattr(self, f"{m}_slots") and tid is None):
                raise ValueError(f"{m}_slots={getattr(self, f'{m}_slots')}: slots need a {m}_token_id (and >= 0)")
        if self.max_audio_windows < 1:
            raise ValueError(f"max_audio_windows={self.max_audio_windows}: an audio item takes at least one window")
        ids = [t for t in (self.image_token_id, self.video_token_id, self.audio_token_id) if t is not None]
        if len(set(ids)) != len(ids):
            raise ValueError(f"placeholder token ids {ids} must differ per modality")
        if self.vision is not None and self.image_token_id is None and self.video_token_id is None:
            raise ValueError("a vision tower needs image_token_id and/or video_token_id")
        if self.audio is not None and self.audio_token_id is None:
            raise ValueError("an audio tower needs audio_token_id")
        native = self.native
        if native and not layout_class(self.layout).native:
            raise ValueError(f"layout {self.layout!r} lays out fixed-size views; an OryxViT tower's images keep their "
                             "own sizes: layout='ola_native'")
        for m in NATIVE_MODALITIES:
            slots, patches = getattr(self, f"{m}_slots"), getattr(self, f"{m}_patches")
            if native and slots and patches < 1:
                raise ValueError(f"{m}_slots={slots} of a native-resolution tower need {m}_patches > 0: the patch "
                                 f"slots per row its {m}s' views fill (e.g. {m}_patches={64 * slots})")
            if patches and not native:
                raise ValueError(f"{m}_patches={patches} needs a native-resolution vision tower (OryxViT)")
        if self.native_lowres < 0 or self.native_lowres and not native or \
                not 0 <= self.native_video_minres <= self.native_video_maxres or min(self.native_maxres,
                                                                                     self.native_video_maxres) < 1:
            raise ValueError(f"native_lowres={self.native_lowres}, native_maxres={self.native_maxres}, "
                             f"native_video_maxres={self.native_video_maxres}, native_video_minres="
                             f"{self.native_video_minres}: Ola's processor settings of a native-resolution tower "
                             "(OryxViT); lowres >= 0, maxres >= 1, 0 <= video minres <= video maxres")
        if self.vision is not None and not native:
            self.vision_connector.grid(self.vision.grid_side, self.vision.grid_side)
        if self.beats is not None and (self.audio is None or self.audio.variant != "whisper"):
            raise ValueError("beats (Ola's music encoder) takes the windows of a Whisper audio config (variant "
                             "'whisper'): set audio too (with speech_encoder=False for BEATs alone)")
        if not self.speech_encoder and self.beats is None:
            raise ValueError("speech_encoder=False leaves no audio encoder: set beats (BEATs alone), or keep the "
                             "speech encoder")
        if self.audio is not None:
            self.audio_connector.check(self.audio_length)
        layout_class(self.layout).check_model(self)
        self.media_layout  # noqa: B018  (validates the layout against the modalities)

    @property
    def vocab_size(self) -> int:
        return self.llm.vocab_size

    @property
    def native(self) -> bool:
        """Whether images and frames keep their own size (an OryxViT tower)."""
        return getattr(self.vision, "native", False)

    @property
    def image_grid(self) -> tuple[int, int] | None:
        """LLM tokens ``(rows, cols)`` per image view / video frame after the vision connector (None with a
        native-resolution tower: each view has its own)."""
        if self.vision is None or self.native:
            return None
        return self.vision_connector.grid(self.vision.grid_side, self.vision.grid_side)

    @property
    def audio_encoders(self) -> tuple[str, ...]:
        """The audio path: ``('whisper',)`` (or Qwen2-Audio's), ``('whisper', 'beats')`` (Ola's dual encoder),
        ``('beats',)`` (BEATs alone: ``speech_encoder=False``)."""
        if self.audio is None:
            return ()
        return ((self.audio.variant,) if self.speech_encoder else ()) + (("beats",) if self.beats is not None else ())

    @property
    def audio_length(self) -> int | None:
        """Encoder outputs per audio window (the connector's input rows): the audio tower's, or with BEATs (beside
        Whisper or alone) the longer of Whisper's outputs and BEATs' patches (Ola pads the shorter)."""
        if self.audio is None:
            return None
        return self.audio.output_length if self.beats is None else aligned_length(self.audio, self.beats)

    @property
    def audio_chunk_tokens(self) -> int | None:
        """LLM tokens per audio window (whole window) after the audio connector."""
        if self.audio is None:
            return None
        return self.audio_connector.tokens(self.audio_length)

    @property
    def media_layout(self) -> MediaLayout:
        """The layout object of ``layout`` (``omnijax.media_layouts``) for this model."""
        return layout_class(self.layout).of_model(self)

    @property
    def budget(self) -> MediaBudget:
        v, a = self.vision, self.audio
        size = v.image_size if v and not self.native else 0
        return MediaBudget(image_slots=self.image_slots, image_size=size, video_slots=self.video_slots,
                           video_size=size, audio_slots=self.audio_slots,
                           n_mels=a.num_mel_bins if a and self.speech_encoder else 0,
                           audio_frames=a.frames if a else 0, max_audio_windows=self.max_audio_windows,
                           audio_fbank_frames=beats_fbank_frames(a.frames) if self.beats is not None else 0,
                           image_patches=self.image_patches, video_patches=self.video_patches,
                           patch_size=v.patch_size if v else 16)

    @property
    def mm_embed_names(self) -> tuple[str, ...]:
        return self.media_layout.mm_embed_names

    def replace(self, **kw) -> "OmniConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        """A JSON-able description that ``from_dict`` rebuilds this config from, numerics aside
        (``NUMERICS`` are load-time choices). The towers as transformers config dicts, each None when
        absent: ``text_config`` (``Qwen2Config``), ``vision_config`` (``SiglipVisionConfig``),
        ``audio_config`` (Whisper's encoder fields, or a ``Qwen2AudioEncoderConfig`` for the
        ``qwen2_audio`` variant), ``beats_config`` (BEATs' cfg dict, the dual audio encoder); the vision
        fields transformers keeps outside its vision config
        (``vision_feature_layer``, ``vision_interpolate_pos_encoding``); the connectors by name with their
        flat settings (``connector_configs``: ``audio_connector='frame_stack'``, ``frame_stack_k``, ...);
        with a native-resolution tower, Ola's processor settings (``NATIVE_PROCESSOR``) under
        ``processor.image``, where ``omnijax.hf.omni.processor_settings`` writes them too; every other field by
        name."""
        def hf(sub):
            return None if sub is None else {k: v for k, v in sub.to_hf().items() if k != "architectures"}

        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_FLAT}
        own["anyres_pinpoints"] = [list(p) for p in self.anyres_pinpoints]
        for t in connector_configs.TOWERS:
            conn = getattr(self, f"{t}_connector")
            own.update(conn.to_fields(t) if conn is not None else {f"{t}_connector": None})
        processor = {"processor": {"image": {k: getattr(self, k) for k in NATIVE_PROCESSOR}}} if self.native else {}
        return {"text_config": hf(self.llm), "vision_config": hf(self.vision), "audio_config": hf(self.audio),
                "beats_config": hf(self.beats), **processor,
                "vision_feature_layer": getattr(self.vision, "feature_layer", -1),
                "vision_interpolate_pos_encoding": bool(getattr(self.vision, "interpolate_pos_encoding", False)),
                **own}

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "OmniConfig":
        """The config ``to_dict`` described (other keys are ignored). ``overrides``: fields of this
        config, or ``NUMERICS`` fields, applied to the LLM and each tower that has them
        (``attention='splash'``, causal-only, leaves the bidirectional towers on ``'xla'``)."""
        own = {f.name for f in dataclasses.fields(cls)} - set(_TOWERS)
        unknown = sorted(set(overrides) - own - set(NUMERICS))
        if unknown:
            raise ValueError(f"unknown omni config overrides {unknown}: expected fields of OmniConfig or {NUMERICS}")

        def tower(key: str, config_cls, **extra):
            if d.get(key) is None:
                return None
            fields = {f.name for f in dataclasses.fields(config_cls)}
            kw = {k: v for k, v in overrides.items() if k in NUMERICS and k in fields}
            if config_cls is not LLMConfig and kw.get("attention") == "splash":
                kw["attention"] = "xla"
            return config_cls.from_hf(d[key], **extra, **kw)

        kw = {k: d[k] for k in own - set(_NOT_FLAT) if k in d}
        image = (d.get("processor") or {}).get("image") or {}
        kw.update({k: image[k] for k in NATIVE_PROCESSOR if k in image})
        kw.update({f"{t}_connector": connector_configs.from_fields(t, d) for t in connector_configs.TOWERS})
        kw.update({k: v for k, v in overrides.items() if k in own})
        if (d.get("vision_config") or {}).get("model_type") == "oryx_vit":
            vision = tower("vision_config", OryxViTConfig)
        else:
            vision = tower("vision_config", VisionConfig, feature_layer=d.get("vision_feature_layer", -1),
                           interpolate_pos_encoding=bool(d.get("vision_interpolate_pos_encoding", False)))
        return cls(llm=tower("text_config", LLMConfig), vision=vision, audio=tower("audio_config", AudioConfig),
                   beats=tower("beats_config", BEATsConfig), **kw)


class OmniModel(nn.Module):
    """Towers + connectors + LLM on the batch contract (module docstring)."""

    cfg: OmniConfig

    def setup(self):
        cfg, text = self.cfg, self.cfg.llm
        kw = dict(dtype=text.compute_dtype, param_dtype=text.weight_dtype)
        d = text.hidden_size
        self.llm = LLM(text)
        if cfg.vision is not None:
            self.vision = OryxViT(cfg.vision) if cfg.native else VisionTower(cfg.vision)
            self.vision_connector = cfg.vision_connector.build(d, in_axis="vision_embed", **kw)
        if cfg.audio is not None:
            self.audio = WhisperEncoder(cfg.audio) if cfg.beats is None else DualAudioEncoder(
                cfg.audio, cfg.beats, speech=cfg.speech_encoder)
            self.audio_connector = cfg.audio_connector.build(d, in_axis="audio_embed", **kw)
        if cfg.mm_embed_names:
            self.mm_embed = MMEmbed(d, names=cfg.mm_embed_names, **kw)

    def encode_vision(self, pixels):
        """Image views or video frames ``[B, S, H, W, 3]`` -> ``[B, S * tokens_per_slot, embed]``."""
        b, s = pixels.shape[:2]
        feats = self.vision(pixels)["features"]  # [B, S, n, D]
        feats = feats.reshape(b * s, *feats.shape[2:])
        if self.cfg.vision_connector.spatial:  # the connector takes each view's [g, g] patch map
            g = self.cfg.vision.grid_side
            feats = feats.reshape(b * s, g, g, feats.shape[-1])
        out = self.vision_connector(feats)
        return out.reshape(b, -1, out.shape[-1])

    def encode_native(self, batch, m: str):
        """A native-resolution modality's packed patches through OryxViT: ``[B, P, vision_dim]`` (each view its
        own segment, ``{m}_patch_slot + 1``, and grid, ``{m}_grid``)."""
        return self.vision(batch[f"{m}_patches"], batch[f"{m}_patch_slot"] + 1, batch[f"{m}_grid"])

    def embed_native(self, x, batch, m: str, table):
        """``x [B, T, embed]`` with modality ``m``'s views laid out at its placeholders (layout 'ola_native'):
        each placeholder's code, or its 2x2 group of patches pooled by the connector. Static shapes: the
        pooling runs at every position of the row (``[B, T, 4]`` groups) and keeps the placeholders'."""
        layout, item, grid = self.cfg.media_layout, batch[f"{m}_item"], batch[f"{m}_grid"]
        patches = self.encode_native(batch, m)
        _, first, last = layouts.slot_flags(item)
        spans = layouts.slot_spans(layout, m, item, grid=grid)
        is_placeholder = batch["input_ids"] == layout.token_id(m)
        code, groups, _ = layouts.decode_rows(is_placeholder, spans, layouts.decoder(layout, m, 0), first=first,
                                              last=last, plan=layouts.native_plan(grid))
        media = self.vision_connector(patches, groups)  # per token, not per slot: nothing sown for connector terms
        return layouts.place(x, is_placeholder, code, media, table)

    def encode_audio(self, audio, valid_frames, fbank=None):
        """Windows ``[B, S, n_mels, frames]`` (valid mel frames ``[B, S]``, which only the Qwen2-Audio
        encoder reads: its padding mask; ``fbank [B, S, fbank_frames, 128]``, which only the dual encoder's
        BEATs reads) -> ``[B, S * tokens_per_slot, embed]``."""
        if self.cfg.beats is not None:
            enc = self.audio.encode_chunks(audio, fbank)  # [B, S, L, Dw + Db]
        else:
            enc = self.audio.encode_chunks(audio, valid_frames if self.cfg.audio.variant == "qwen2_audio" else None)
        b, s = enc.shape[:2]
        out = self.audio_connector(enc.reshape(b * s, *enc.shape[2:]))
        return out.reshape(b, -1, out.shape[-1])

    def embed(self, batch):
        """Token embeddings with every media item laid out at its placeholders. -> ``[B, T, embed]``."""
        cfg, layout = self.cfg, self.cfg.media_layout
        ids = batch["input_ids"]
        x = self.llm.embed(ids)
        mm = self.mm_embed() if cfg.mm_embed_names else {}
        for m in MODALITIES:
            field = SLOT_FIELDS[m]
            if f"{m}_patches" in batch:
                x = self.embed_native(x, batch, m, jnp.stack([mm[n] for n in layout.table_names(m)]))
                continue
            if field not in batch:
                continue
            tid = layout.token_id(m)
            item = batch[f"{m}_item"]
            plan = valid_frames = None
            if m == "audio":
                valid_frames = batch["audio_valid_frames"]
                feats = self.encode_audio(batch[field], valid_frames, batch.get("audio_fbank"))
            else:
                feats = self.encode_vision(batch[field])
            self.sow("aux", f"{m}_features", feats)  # for a loss on the connector output (training.connector_ctc)
            if m == "image" and layout.image_plans:
                if "image_plan" not in batch:
                    raise ValueError(f"layout {layout.name!r} needs the images' AnyRes plans: batch field "
                                     "'image_plan' [B, slots, 8] (media_tokens.anyres_plan)")
                plan = batch["image_plan"]
            _, first, last = layouts.slot_flags(item)
            spans = layouts.slot_spans(layout, m, item, plan, valid_frames)
            decode = layouts.decoder(layout, m, feats.shape[1] // item.shape[1])
            names = layout.table_names(m)
            table = jnp.stack([mm[n] for n in names]) if names else None
            x = layouts.splice(x, ids == tid, spans, feats, decode, table, first=first, last=last, plan=plan)
        return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    def hidden(self, batch):
        """The LLM's final hidden states ``[B, T, embed]`` (segment ids isolate packed examples)."""
        hidden, _ = self.llm.decode(self.embed(batch), batch["positions"], batch["segment_ids"])
        return hidden

    def logits(self, hidden):
        return self.llm.logits(hidden)

    def forward(self, batch):
        """Logits float32 ``[B, T, vocab]``."""
        return self.logits(self.hidden(batch))

    def __call__(self, batch):
        return self.forward(batch)

    def prefill(self, batch, cache, cache_index):
        """KV-cache prefill of generation prompts: ``embed(batch)`` (media spliced in) through the LLM
        into ``cache`` (``llm.init_cache``) at slots ``cache_index ..``. Reads ``input_ids``,
        ``positions``, ``segment_ids`` and the media fields. Returns (logits float32 ``[B, vocab]`` of
        the last position, cache)."""
        hidden, cache = self.llm.decode(self.embed(batch), batch["positions"], batch["segment_ids"], cache,
                                        cache_index)
        return self.logits(hidden[:, -1:])[:, 0], cache

    def decode_step(self, ids, positions, segment_ids, cache, cache_index):
        """Text tokens after a ``prefill``: ``ids [B, t]`` at cache slots ``cache_index ..`` -> (logits
        float32 ``[B, t, vocab]``, cache)."""
        return self.llm(ids, positions, segment_ids, cache, cache_index)


def example_batch(cfg: OmniConfig, batch: int = 1, length: int = 8) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract batch for ``init`` / ``eval_shape``: at least one slot of every modality the model
    takes, so that every parameter group is created."""
    most = {f"{m}_slots": max(1, getattr(cfg, f"{m}_slots")) for m in cfg.media_layout.modalities}
    if cfg.native:  # a view of at least 2 x 2 patches
        most.update({f"{m}_patches": max(4, getattr(cfg, f"{m}_patches")) for m in NATIVE_MODALITIES
                     if m in cfg.media_layout.modalities})
    budget = dataclasses.replace(cfg.budget, **most)
    return batch_spec(batch, length, budget, cfg.media_layout)


def init_params(model: OmniModel, rng: jax.Array):
    """Random params (plain pytree, logical metadata stripped)."""
    zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in example_batch(model.cfg).items()}
    return nn.meta.unbox(jax.jit(lambda r, b: model.init(r, b, method="forward"))(rng, zeros))["params"]


def logical_specs(model: OmniModel):
    """Logical ``PartitionSpec`` tree of ``model``'s params, and their abstract shapes (no allocation)."""
    abstract = jax.eval_shape(lambda r, b: model.init(r, b, method="forward"), jax.random.key(0),
                              example_batch(model.cfg))
    return nn.get_partition_spec(abstract)["params"], nn.meta.unbox(abstract)["params"]

