"""The omni model (``OmniModel``: any towers, connectors and layout) as one self-describing HF-style
directory, architecture ``OmnijaxOmniModel`` (``model_type`` ``omnijax_omni``), and the parts of it
that stock transformers classes load (``part``).

``config.json``: ``OmniConfig.to_dict()`` -- ``text_config`` (a ``Qwen2Config`` dict),
``vision_config`` (``SiglipVisionConfig``) or null, ``audio_config`` (Whisper's encoder fields,
``model_type`` ``whisper``, or a ``Qwen2AudioEncoderConfig``, ``model_type`` ``qwen2_audio_encoder``,
for the Qwen2-Audio encoder variant) or null, and the omni fields (connectors, layout, placeholder
token ids, media slots, the connectors' flat settings (``frame_stack_k``, ``conv_gmlp_stride``, ...), AnyRes
settings, ``vision_feature_layer``) -- plus,
for readers, ``mm_embed_names`` (the learned layout vectors) and ``processor``: keyword arguments of
the stock processors that make the towers' inputs (``image``: ``SiglipImageProcessor``, ``audio``:
``WhisperFeatureExtractor``).

Tensor keys (sharded safetensors, legacy Hub layout, torch layouts)::

    language_model.*     Qwen2ForCausalLM keys: model.embed_tokens.weight, model.layers.{i}.*,
                         model.norm.weight, lm_head.weight (absent when tied)              -> llm/
    vision_tower.*       SiglipVisionModel keys: embeddings.*, encoder.layers.{i}.*,
                         post_layernorm.*, head.* (vision_use_head only)                   -> vision/
                         or, native resolution (``vision_config`` of ``model_type``
                         ``oryx_vit``), OryxViT's timm keys as Ola names them
                         (``hf.oryx_vit``): patch_embed.proj.*, pos_embed, blocks.{i}.*     -> vision/
    audio_tower.*        WhisperEncoder / Qwen2AudioEncoder keys: conv1.*, conv2.*,
                         embed_positions.weight, layers.{i}.*, layer_norm.*                -> audio/
                         (-> audio/whisper/ for a model with BEATs)
    beats_tower.*        BEATs reference state_dict keys (``omnijax.hf.beats``), with BEATs only -> audio/beats/
    vision_connector.*   omnijax-native (no stock transformers class)                      -> vision_connector/
    audio_connector.*    omnijax-native                                                    -> audio_connector/
    mm_embed.<name>      omnijax-native: one [hidden] vector per layout vector             -> mm_embed/<name>

With its prefix stripped, a tower's tensors load with no missing or unexpected keys into the stock class
built from its sub-config: ``Qwen2ForCausalLM(Qwen2Config(**text_config))``,
``SiglipVisionModel(SiglipVisionConfig(**vision_config))``, ``WhisperEncoder(WhisperConfig(**audio_config))``
or ``Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**audio_config))``.

Connector keys are the omnijax parameter paths, ``/`` written ``.``, in torch layouts: a Dense kernel
``[in, out]`` is ``<name>.weight [out, in]``, a LayerNorm scale ``<name>.weight``, a bias ``<name>.bias``::

    vision 'mlp'         vision_connector.linear_{1,2}   (LLaVA-OneVision's multi_modal_projector.linear_{1,2})
    vision 'ola'         vision_connector.proj1, .pooler.predictor_0, .pooler.predictor_2, .proj2
    vision 'avg_pool'    vision_connector.projector.linear_{1,2} (the pooling has no parameters)
    audio 'linear'       audio_connector.linear          (Qwen2-Audio's multi_modal_projector.linear)
    audio 'mlp'          audio_connector.linear_{1,2}
    audio 'frame_stack'  audio_connector.linear1, .linear2
    audio 'conv_gmlp'    audio_connector.{gate,up,down}_proj.weight (no bias; gate/up as Linear over the
                         stride's frames stacked time-major), .layer_norm, .out_proj (when the LLM width
                         differs from stride * d_model)
    audio 'stride_pool'  audio_connector.linear

``load_model`` / ``convert import`` read the directory back bit for bit; its forward for
``omnijax.tools.dump_logits`` takes a batch of the batch contract (``omnijax.batch``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from omnijax.batch import TEXT_FIELDS, check_batch
from omnijax.hf import llava_onevision, qwen2, qwen2_audio
from omnijax.hf.architectures import Architecture, register
from omnijax.hf.beats import beats_table
from omnijax.hf.importer import Loaded
from omnijax.hf.maps import LINEAR, Entry, prefixed
from omnijax.hf.oryx_vit import oryx_vit_table
from omnijax.hf.qwen2 import llm_table
from omnijax.hf.siglip import siglip_table
from omnijax.hf.whisper import audio_tower_table
from omnijax.media_layouts import AnyResLayout, Qwen2AudioLayout
from omnijax.models.connector_configs import (MLP, AvgPool, ConvGMLP, FrameStack, Linear, LocalGlobalPool,
                                              StridePool)
from omnijax.models.llava_onevision import LlavaOnevisionConfig
from omnijax.models.llm import CausalLM
from omnijax.models.omni import NATIVE_PROCESSOR, OmniConfig, OmniModel, example_batch
from omnijax.models.qwen2_audio import Qwen2AudioConfig

NAME = "OmnijaxOmniModel"
MODEL_TYPE = "omnijax_omni"
PARTS = ("full", "llm", "stock")
_HINT = "use --part full or --part llm"
_LOSS_FIELDS = ("targets", "loss_weights", "task_ids")  # batch fields the loss reads and the forward does not

# Each connector class's Dense layers: (path under its group, has a bias).
_CONNECTOR_LAYERS = {MLP: (("linear_1", True), ("linear_2", True)),
                     LocalGlobalPool: (("proj1", True), ("pooler/predictor_0", True), ("pooler/predictor_2", True),
                                       ("proj2", True)),
                     AvgPool: (("projector/linear_1", True), ("projector/linear_2", True)),
                     Linear: (("linear", True),), FrameStack: (("linear1", True), ("linear2", True)),
                     ConvGMLP: (("gate_proj", False), ("up_proj", False), ("down_proj", False)),
                     StridePool: (("linear", True),)}
_CONNECTOR_WORDS = {MLP: "MLP", LocalGlobalPool: "Local-Global attention pooling", AvgPool: "2x2 average-pooling",
                    Linear: "linear", FrameStack: "frame-stacking", ConvGMLP: "Conv-GMLP", StridePool: "stride-pooling"}


def _connector_words(cfg: OmniConfig, tower: str) -> str:
    return f"the {_CONNECTOR_WORDS[type(getattr(cfg, f'{tower}_connector'))]} {tower} connector"


def _linears(group: str, layers) -> list[Entry]:
    """``group.<name>.weight`` (torch ``[out, in]``) and ``.bias`` for Dense layers at ``group/<name>``."""
    out = []
    for path, bias in layers:
        key = f"{group}.{path.replace('/', '.')}"
        out.append(Entry(f"{key}.weight", f"{group}/{path}/kernel", LINEAR))
        if bias:
            out.append(Entry(f"{key}.bias", f"{group}/{path}/bias"))
    return out


def connector_table(cfg: OmniConfig) -> list[Entry]:
    """The connectors' and ``mm_embed``'s omnijax-native keys (module docstring)."""
    entries = []
    if cfg.vision is not None:
        entries += _linears("vision_connector", _CONNECTOR_LAYERS[type(cfg.vision_connector)])
    if cfg.audio is not None:
        entries += _linears("audio_connector", _CONNECTOR_LAYERS[type(cfg.audio_connector)])
        if isinstance(cfg.audio_connector, ConvGMLP):
            entries += [Entry("audio_connector.layer_norm.weight", "audio_connector/layer_norm/scale"),
                        Entry("audio_connector.layer_norm.bias", "audio_connector/layer_norm/bias")]
            if cfg.llm.hidden_size != cfg.audio_connector.stride * cfg.audio.d_model:
                entries += _linears("audio_connector", (("out_proj", True),))
    return entries + [Entry(f"mm_embed.{name}", f"mm_embed/{name}") for name in cfg.mm_embed_names]


def omni_table(cfg: OmniConfig) -> list[Entry]:
    """Every tensor of the directory (module docstring) <-> every parameter of ``OmniModel(cfg)``."""
    entries = prefixed(llm_table(cfg.llm), hf_prefix="language_model.")
    if cfg.native:  # OryxViT: its timm keys (Ola's names without Ola's prefix)
        entries += oryx_vit_table(cfg.vision, hf_prefix="vision_tower.")
    elif cfg.vision is not None:
        entries += prefixed(siglip_table(cfg.vision), hf_prefix="vision_tower.")
    if cfg.audio is not None and cfg.beats is None:
        entries += audio_tower_table(cfg.audio, "audio_tower.")
    if cfg.beats is not None and cfg.speech_encoder:  # Ola's dual encoder: the audio group holds whisper/, beats/
        entries += [dataclasses.replace(e, path="audio/whisper/" + e.path[len("audio/"):])
                    for e in audio_tower_table(cfg.audio, "audio_tower.")]
    if cfg.beats is not None:  # with the speech encoder or alone
        entries += prefixed(beats_table(cfg.beats, "beats_tower."), path_prefix="audio/")
    return entries + connector_table(cfg)


def processor_settings(cfg: OmniConfig) -> dict:
    """Keyword arguments of the stock processors that make the towers' inputs as the data pipeline does
    (``data_pipelines.features``): SigLIP's per view / tile / frame, Whisper's log-mel per window."""
    out = {}
    if cfg.native:  # Ola's processor: each image at its own size (data_pipelines.image_tiles.native_view), its
        # low-res view first when native_lowres (Ola's LOWRES_RESIZE side), scaled above native_maxres (Ola's MAXRES);
        # frames within native_video_minres .. native_video_maxres (VIDEO_MINRES, VIDEO_MAXRES)
        out["image"] = {"image_processor_type": "OlaNative", "patch_size": cfg.vision.patch_size,
                        "image_patches": cfg.image_patches, "video_patches": cfg.video_patches,
                        **{k: getattr(cfg, k) for k in NATIVE_PROCESSOR},
                        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    elif cfg.vision is not None:
        size = cfg.vision.image_size
        out["image"] = {"image_processor_type": "SiglipImageProcessor", "size": {"height": size, "width": size},
                        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    if cfg.audio is not None:
        seconds = cfg.audio.frames / 100  # 100 mel frames per second (hop 160 at 16 kHz)
        out["audio"] = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": cfg.audio.num_mel_bins,
                        "sampling_rate": 16000, "hop_length": 160, "n_fft": 400, "padding_value": 0.0,
                        "chunk_length": int(seconds) if seconds.is_integer() else seconds,
                        "return_attention_mask": cfg.audio.variant == "qwen2_audio"}
    return out


def omni_hf_config(cfg: OmniConfig) -> dict:
    """``config.json`` of the directory (module docstring)."""
    return {"architectures": [NAME], "model_type": MODEL_TYPE, **cfg.to_dict(),
            "mm_embed_names": list(cfg.mm_embed_names), "processor": processor_settings(cfg),
            "torch_dtype": cfg.llm.param_dtype}


@functools.partial(jax.jit, static_argnums=0)
def _forward(module, params, batch):
    return module.apply({"params": params}, batch, method="forward")


def omni_forward(module, params, inputs: dict):
    """``OmniModel.forward`` on a batch of the batch contract (``omnijax.batch``, the model's media
    budget; checked on the host first; the loss fields ``targets``, ``loss_weights``, ``task_ids`` may be
    left out) -> logits float32 ``[B, T, vocab]``. Compiled once per model config and batch shape."""
    batch = {k: np.asarray(v) for k, v in inputs.items()}
    shape = np.shape(batch.get("input_ids"))
    for name in _LOSS_FIELDS:
        batch.setdefault(name, np.zeros(shape, TEXT_FIELDS[name]))
    check_batch(batch, module.cfg)
    return _forward(module, params, {k: v for k, v in batch.items() if k not in _LOSS_FIELDS})


def _build(hf: dict, **overrides):
    cfg = OmniConfig.from_dict(hf, **overrides)
    return OmniModel(cfg), cfg


OMNI = register(Architecture(
    name=NAME,
    build=_build,
    table=omni_table,
    hf_config=omni_hf_config,
    init_inputs=lambda cfg: (example_batch(cfg),),
    init_method="forward",
    hf_forward=omni_forward,
))


def omni_config_of(loaded: Loaded) -> OmniConfig:
    """The ``OmniConfig`` of a loaded omni-family model (omnijax omni, LLaVA-OneVision, Qwen2-Audio)."""
    if isinstance(loaded.cfg, OmniConfig):
        return loaded.cfg
    if hasattr(loaded.cfg, "omni"):
        return loaded.cfg.omni()
    raise ValueError(f"the model is a {loaded.arch.name}, not an omni model (towers + connectors + LLM): export it "
                     "whole (--part full)")


def _no_stock_reason(cfg: OmniConfig) -> str:
    parts = [_connector_words(cfg, t) for t in ("vision", "audio") if getattr(cfg, t) is not None]
    words = f" with {' and '.join(parts)}" if parts else ""
    return f"layout {cfg.layout!r}{words} has no stock transformers class"


def _llava_onevision_stock(cfg: OmniConfig) -> LlavaOnevisionConfig:
    return LlavaOnevisionConfig(
        vision=cfg.vision, text=cfg.llm, image_token_index=cfg.image_token_id,
        image_grid_pinpoints=cfg.anyres_pinpoints, vision_feature_layer=cfg.vision.feature_layer,
        vision_aspect_ratio=f"anyres_max_{cfg.anyres_max_num_patches}",
        projector_hidden_act="gelu_pytorch_tanh" if cfg.vision_connector.gelu_approximate else "gelu")


def _qwen2_audio_stock(cfg: OmniConfig) -> Qwen2AudioConfig:
    if cfg.audio is None:
        raise ValueError("the model has no audio tower")
    if not isinstance(cfg.audio_connector, Linear):
        raise ValueError(f"its projector is one Linear layer, this model has {_connector_words(cfg, 'audio')}")
    return Qwen2AudioConfig(audio=cfg.audio, llm=cfg.llm, audio_token_index=cfg.audio_token_id)


# The stock transformers class of each layout that has one: layout class -> (architecture, its config of an
# OmniConfig; ValueError naming why the model is not of that form).
STOCK = {AnyResLayout: (llava_onevision.LLAVA_ONEVISION, _llava_onevision_stock),
         Qwen2AudioLayout: (qwen2_audio.QWEN2_AUDIO, _qwen2_audio_stock)}


def stock_config(cfg: OmniConfig) -> tuple[Architecture, LlavaOnevisionConfig | Qwen2AudioConfig]:
    """The stock transformers architecture and config that are exactly this omni model (``STOCK``):
    ``LlavaOnevisionForConditionalGeneration`` (layout ``llava_onevision``, SigLIP + MLP connector) or
    ``Qwen2AudioForConditionalGeneration`` (layout ``qwen2_audio``, linear connector, untied LM head).
    ``OmniConfig`` already holds these layouts to the rest of their stock form (a vision tower, images
    only, an MLP connector; the Qwen2-Audio encoder, no images). ``ValueError`` naming why when there is none."""
    layout = type(cfg.media_layout)
    if layout not in STOCK:
        raise ValueError(f"{_no_stock_reason(cfg)}; {_HINT}")
    arch, stock = STOCK[layout]
    try:
        return arch, stock(cfg)
    except ValueError as e:
        raise ValueError(f"layout {cfg.layout!r}: no stock {arch.name}: {e}; {_HINT}") from None


def part(loaded: Loaded, which: str) -> Loaded:
    """What ``export --part`` writes: ``full`` the model as it is (an omni model as ``OmnijaxOmniModel``);
    ``llm`` its LLM as ``Qwen2ForCausalLM``; ``stock`` the whole model as the stock transformers class it
    is exactly (``stock_config``). Params are shared, not copied."""
    if which not in PARTS:
        raise ValueError(f"part {which!r} is not one of {PARTS}")
    if which == "full":
        return loaded
    cfg = omni_config_of(loaded)
    if which == "llm":
        arch = qwen2.QWEN2
        return Loaded(arch, CausalLM(cfg.llm), cfg.llm, {"llm": loaded.params["llm"]}, arch.hf_config(cfg.llm))
    arch, stock = stock_config(cfg)
    hf = arch.hf_config(stock)
    return Loaded(arch, arch.build(hf)[0], stock, loaded.params, hf)
