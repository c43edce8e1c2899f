"""Ola's released checkpoint layout (Ola-Omni/Ola's ``OlaQwenForCausalLM``, as THUdyh/Ola-7b ships it) <-> the omni
model with OryxViT at native resolution, Whisper + BEATs (or Whisper alone) and the ``'ola_native'`` layout.

Registered architecture ``OlaQwenForCausalLM`` (``model_type`` ``ola_qwen``), import and export. A release
directory::

    config.json         a Qwen2Config plus Ola's keys: mm_projector_type 'ola_mlp', mm_hidden_size,
                        speech_encoder_type 'dual' | 'whisper', speech_projector_type 'linear', speech_encoder_ds_rate,
                        speech_encoder_hidden_size, speech_encoder / music_encoder (the two files' paths)
    model*.safetensors  model.embed_tokens, model.layers.{i}.*, model.norm, lm_head  -> llm/      (hf.qwen2)
                        model.vision_tower.vision_tower.*                          -> vision/   (hf.oryx_vit)
                        model.mm_projector.{proj1, pooler.predictor.{0,2}, proj2}  -> vision_connector/
                        model.mm_projector.image_{begin,newline,sep,end}           -> mm_embed/{begin,newline,sep,end}
                        model.speech_projector.{linear1, linear2}                  -> audio_connector/
                        model.speech_projector.speech_{begin,newline,end}          -> mm_embed/speech_*
                        model.speech_encoder.whisper_model.* / .beats_model.*      copies of the two files' tensors
    large-v3_safetensors/                                       openai-whisper's large-v3.pt  -> audio/whisper/
    BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2_safetensors/   the BEATs .pt (dual only)     -> audio/beats/

Ola's loader (``ola/model/builder.py``) loads the safetensors, then rebuilds the speech encoder from the two ``.pt``
files the config names; the importer does the same: the encoders come from the files, the copies inside the
safetensors are checked for shape only (export writes both from the same params). omnijax reads no pickles: each file
is read from ``<stem>_safetensors/`` beside config.json, what ``omnijax.hf.openai_whisper.pickle_fix`` /
``omnijax.hf.beats.pickle_fix`` make of ``<stem>.pt``; a ``.pt`` alone is refused with that one-line command. Ola's
loader reads the ``.pt`` files only, so an exported directory's two subdirectories are turned back into ``.pt``
(``torch.save`` of their tensors and config) for Ola's own code. The files' configs are kept in config.json as
``speech_encoder_config`` / ``music_encoder_config`` (Ola reads neither). The Whisper decoder a ``large-v3.pt`` holds
is no part of Ola's model and is not carried; the AudioSet head of the fine-tuned BEATs Ola ships (``predictor.*``,
unused by Ola's forward) is (``BEATsConfig.predictor_class``).

Sizes Ola's code fixes instead of configuring: OryxViT's (``create_siglip_vit``: SigLIP-so400m widths at patch 16,
a 128 x 128 position table; ``OryxViTConfig``'s defaults) and the speech projector's hidden width (2048). A directory
may give others as config key ``ola_fixed_sizes`` (``{"vision_tower": OryxViTConfig.to_hf fields,
"speech_projector_hidden": n}``; Ola ignores the key); export writes it only where the sizes differ from Ola's.

Placeholders: Ola splices media in at ids -300 (image) and -200 (speech), which never reach the embedding; omnijax's
are vocabulary ids: Qwen2.5's ``<|image_pad|>``, ``<|video_pad|>``, ``<|AUDIO|>`` (``QWEN_PLACEHOLDERS``) when the
vocabulary holds them, else its last three ids (``load_hf(dir, image_token_id=...)`` overrides).
"""

from __future__ import annotations

import json
import math
import os

from omnijax.hf import beats, openai_whisper
from omnijax.hf.architectures import Architecture, register
from omnijax.hf.maps import LINEAR, Entry
from omnijax.hf.omni import omni_forward
from omnijax.hf.oryx_vit import oryx_vit_table
from omnijax.hf.qwen2 import llm_table
from omnijax.hf.safetensors_io import CheckpointError, SafetensorsDirs
from omnijax.media_layouts import SPEECH_EMBEDS, VISION_EMBEDS
from omnijax.models.beats import BEATsConfig
from omnijax.models.connector_configs import FrameStack, LocalGlobalPool
from omnijax.models.omni import OmniConfig, OmniModel, example_batch
from omnijax.models.oryx_vit import OryxViTConfig

NAME = "OlaQwenForCausalLM"
MODEL_TYPE = "ola_qwen"
QWEN_PLACEHOLDERS = {"image": 151655, "video": 151656, "audio": 151646}
PROJECTOR_HIDDEN = 2048  # EncoderProjectorConcat's nn.Linear(k * D, 2048)
MLP_RATIO = 3.7362  # SigLIP-so400m's, create_siglip_vit: timm's Mlp hidden int(width * ratio)
# The two files Ola's README has beside its code, as its config names them, and the subdirectory each is read from.
FILES = {"speech_encoder": ("./large-v3.pt", "Whisper-large-v3 encoder", openai_whisper.pickle_fix),
         "music_encoder": ("./BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt", "BEATs encoder", beats.pickle_fix)}
CONFIG_OF = {"speech_encoder": "speech_encoder_config", "music_encoder": "music_encoder_config"}
WHISPER_COPY = "model.speech_encoder.whisper_model."
BEATS_COPY = "model.speech_encoder.beats_model."


def subdir(path: str) -> str:
    """The directory beside config.json that holds the safetensors of the ``.pt`` file ``path``."""
    return os.path.splitext(os.path.basename(path))[0] + "_safetensors"


def _files(config: dict) -> list[str]:
    kind = str(config.get("speech_encoder_type", ""))
    if "dual" in kind.lower():
        return ["speech_encoder", "music_encoder"]
    if "whisper" in kind.lower():
        return ["speech_encoder"]
    raise ValueError(f"speech_encoder_type {kind!r}: omnijax reads Ola's 'dual' (Whisper + BEATs) and 'whisper' "
                     "speech encoders")


def open_release(hf_dir: str, config: dict):
    """(config.json with the two files' configs in it, a reader of the model's tensors and the files' under
    ``<subdir>/``). One-line errors for a missing file or one that is still a pickle."""
    dirs, config = {"": hf_dir}, dict(config)
    for key in _files(config):
        std, what, fix = FILES[key]
        name = config.get(key) or std
        found = os.path.join(hf_dir, subdir(name))
        if not os.path.isdir(found):
            pt = os.path.join(hf_dir, os.path.basename(name))
            if os.path.isfile(pt):
                raise CheckpointError(f"{pt} (Ola's {what}, config {key!r}) is a PyTorch pickle; omnijax reads "
                                      f"safetensors only (a pickle can run code when loaded); convert it once: "
                                      f"{fix(pt, found)}")
            raise CheckpointError(f"{hf_dir} lacks Ola's {what} (config {key!r} = {name!r}): put {subdir(name)}/ "
                                  f"beside config.json, made from {os.path.basename(name)} (Ola's release names where "
                                  f"to download it) by: {fix(os.path.basename(name), found)}")
        with open(os.path.join(found, "config.json")) as f:
            config[CONFIG_OF[key]] = {k: v for k, v in json.load(f).items() if k != "architectures"}
        dirs[subdir(std)] = found
    return config, SafetensorsDirs(dirs)


def _check_kinds(hf: dict) -> None:
    kinds = {"mm_projector_type": "ola_mlp", "speech_projector_type": "linear"}
    for key, want in kinds.items():
        if hf.get(key) != want:
            raise ValueError(f"config {key}={hf.get(key)!r}: omnijax reads Ola's release ({key}={want!r})")


def ola_config(hf: dict, **overrides) -> OmniConfig:
    """The omni model of an Ola config.json (with ``speech_encoder_config`` / ``music_encoder_config``, as
    ``open_release`` gives it). ``overrides``: ``OmniConfig.from_dict``'s."""
    _check_kinds(hf)
    fixed = hf.get("ola_fixed_sizes") or {}
    sizes = fixed.get("vision_tower", {})
    vision = OryxViTConfig.from_hf({"intermediate_size": int(sizes.get("hidden_size", 1152) * MLP_RATIO), **sizes})
    if hf.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
        raise ValueError(f"config mm_hidden_size={hf['mm_hidden_size']} differs from the OryxViT width "
                         f"{vision.hidden_size} (ola_fixed_sizes.vision_tower.hidden_size, default Ola's 1152)")
    audio = openai_whisper.audio_config(hf[CONFIG_OF["speech_encoder"]])
    music = hf.get(CONFIG_OF["music_encoder"]) if "music_encoder" in _files(hf) else None
    width = audio.d_model + (BEATsConfig.from_hf(music).encoder_embed_dim if music else 0)
    if hf.get("speech_encoder_hidden_size", width) != width:
        raise ValueError(f"config speech_encoder_hidden_size={hf['speech_encoder_hidden_size']} differs from the "
                         f"speech encoder's output width {width} (Whisper {audio.d_model} + BEATs)")
    vocab = hf["vocab_size"]
    ids = QWEN_PLACEHOLDERS if max(QWEN_PLACEHOLDERS.values()) < vocab else \
        dict(zip(("image", "video", "audio"), range(vocab - 3, vocab)))
    d = {"text_config": hf, "vision_config": vision.to_hf(), "audio_config": audio.to_hf(), "beats_config": music,
         "vision_connector": LocalGlobalPool.name, "audio_connector": FrameStack.name, "layout": "ola_native",
         "frame_stack_k": hf.get("speech_encoder_ds_rate", 10),
         "frame_stack_hidden": fixed.get("speech_projector_hidden", PROJECTOR_HIDDEN),
         **{f"{m}_token_id": i for m, i in ids.items()}}
    return OmniConfig.from_dict(d, **overrides)


# (omnijax connector layer, Ola's module name) of OlaMLP (model.mm_projector) and EncoderProjectorConcat
# (model.speech_projector); each a torch Linear with a bias
PROJECTOR_LAYERS = (("vision_connector/proj1", "model.mm_projector.proj1"),
                    ("vision_connector/pooler/predictor_0", "model.mm_projector.pooler.predictor.0"),
                    ("vision_connector/pooler/predictor_2", "model.mm_projector.pooler.predictor.2"),
                    ("vision_connector/proj2", "model.mm_projector.proj2"),
                    ("audio_connector/linear1", "model.speech_projector.linear1"),
                    ("audio_connector/linear2", "model.speech_projector.linear2"))


def projector_table() -> list[Entry]:
    """The two projectors and their layout vectors (``image_newline`` ... -> ``mm_embed/newline`` ...)."""
    entries = []
    for ours, theirs in PROJECTOR_LAYERS:
        entries += [Entry(f"{theirs}.weight", f"{ours}/kernel", LINEAR), Entry(f"{theirs}.bias", f"{ours}/bias")]
    entries += [Entry(f"model.mm_projector.image_{n}", f"mm_embed/{n}") for n in VISION_EMBEDS]
    return entries + [Entry(f"model.speech_projector.{n}", f"mm_embed/{n}") for n in SPEECH_EMBEDS]


def ola_table(cfg: OmniConfig) -> list[Entry]:
    """Every tensor of a release directory (module docstring) <-> every parameter of ``OmniModel(cfg)``."""
    check_ola(cfg)
    entries = llm_table(cfg.llm) + oryx_vit_table(cfg.vision) + projector_table()
    whisper_dir = subdir(FILES["speech_encoder"][0]) + "/"
    for e in openai_whisper.openai_whisper_table(cfg.audio, whisper_dir + openai_whisper.ENCODER_PREFIX):
        copy = WHISPER_COPY + e.hf[len(whisper_dir + openai_whisper.ENCODER_PREFIX):]
        path = e.path if cfg.beats is None else "audio/whisper/" + e.path[len("audio/"):]
        entries.append(Entry(e.hf, path, e.transform, tied=(copy,)))
    if cfg.beats is not None:
        beats_dir = subdir(FILES["music_encoder"][0]) + "/"
        for e in beats.beats_table(cfg.beats, beats_dir):
            copies = tuple(BEATS_COPY + k[len(beats_dir):] for k in (e.hf, *e.tied))
            entries.append(Entry(e.hf, "audio/" + e.path, e.transform, tied=e.tied + copies))
    return entries


# Ola's components, by the release's key prefixes (its module names), in the order Ola's paper lists them.
COMPONENTS = {"llm": ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head."),
              "vision_tower": ("model.vision_tower.",), "mm_projector": ("model.mm_projector.",),
              "whisper": (subdir(FILES["speech_encoder"][0]) + "/", WHISPER_COPY),
              "beats": (subdir(FILES["music_encoder"][0]) + "/", BEATS_COPY),
              "speech_projector": ("model.speech_projector.",)}


def component(key: str) -> str:
    """The component (``COMPONENTS``) a release key belongs to."""
    return next(name for name, prefixes in COMPONENTS.items() if key.startswith(prefixes))


def component_sizes(cfg: OmniConfig, params) -> dict[str, int]:
    """Parameters per Ola component (``COMPONENTS``) of ``params`` (arrays or ``ShapeDtypeStruct``s) of an
    Ola-form ``cfg``: each parameter counted once, under the component of its release key."""
    sizes: dict[str, int] = {}
    for e in ola_table(cfg):
        leaf = params
        for part in e.path.split("/"):
            leaf = leaf[part]
        sizes[component(e.hf)] = sizes.get(component(e.hf), 0) + math.prod(leaf.shape)
    return {name: sizes[name] for name in COMPONENTS if name in sizes}


def check_ola(cfg: OmniConfig) -> None:
    """``ValueError`` unless ``cfg`` has the form of Ola's release (what export can write)."""
    form = {"an OryxViT tower": cfg.native, "the 'ola' 2x2 pooling vision connector":
            isinstance(cfg.vision_connector, LocalGlobalPool), "a Whisper audio tower":
            cfg.audio is not None and cfg.audio.variant == "whisper" and cfg.speech_encoder,
            "the 'frame_stack' audio connector":
            isinstance(cfg.audio_connector, FrameStack), "layout 'ola_native'": cfg.media_layout.native,
            "an untied LM head": not cfg.llm.tie_word_embeddings}
    missing = [k for k, ok in form.items() if not ok]
    if missing:
        raise ValueError(f"Ola's release layout ({NAME}) needs {', '.join(missing)}; this model has not: export it "
                         "as --part full (OmnijaxOmniModel) instead")


def _fixed_sizes(cfg: OmniConfig) -> dict:
    """``ola_fixed_sizes``: the sizes that differ from those Ola's code fixes."""
    ours, ola = cfg.vision.to_hf(), OryxViTConfig().to_hf()
    vision = {k: v for k, v in ours.items() if v != ola[k] and k != "torch_dtype"}
    if vision and cfg.vision.intermediate_size == int(cfg.vision.hidden_size * MLP_RATIO):
        vision.pop("intermediate_size", None)
    out = {"vision_tower": vision} if vision else {}
    if cfg.audio_connector.hidden != PROJECTOR_HIDDEN:
        out["speech_projector_hidden"] = cfg.audio_connector.hidden
    return out


def ola_hf_config(cfg: OmniConfig) -> dict:
    """config.json of a release directory: the LLM's Qwen2Config, Ola's keys (the values Ola-7B's training script
    gives them, ``scripts/finetune_ola.sh``) and the two files' configs."""
    check_ola(cfg)
    files = ["speech_encoder"] + (["music_encoder"] if cfg.beats is not None else [])
    out = {**cfg.llm.to_hf(), "architectures": [NAME], "model_type": MODEL_TYPE,
           "rope_theta": cfg.llm.rope_theta,  # where Ola's transformers (4.43) reads it
           "mm_vision_tower": "oryx_vit", "mm_projector_type": "ola_mlp", "mm_hidden_size": cfg.vision.hidden_size,
           "mm_vision_select_layer": -1, "mm_vision_select_feature": "patch", "mm_resampler_type": None,
           "use_mm_proj": True, "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
           "speech_encoder_type": "dual" if cfg.beats is not None else "whisper", "speech_projector_type": "linear",
           "speech_encoder_ds_rate": cfg.audio_connector.k,
           "speech_encoder_hidden_size": cfg.audio.d_model + (cfg.beats.encoder_embed_dim if cfg.beats else 0),
           "tokenizer_padding_side": "right",
           **{key: FILES[key][0] for key in files}, **{CONFIG_OF[key]: c for key, c in _file_configs(cfg).items()}}
    if _fixed_sizes(cfg):
        out["ola_fixed_sizes"] = _fixed_sizes(cfg)
    return out


def _file_configs(cfg: OmniConfig) -> dict[str, dict]:
    out = {"speech_encoder": openai_whisper.dims(cfg.audio)}
    if cfg.beats is not None:
        out["music_encoder"] = {k: v for k, v in cfg.beats.to_hf().items() if k != "torch_dtype"}
    return out


def _extra_configs(cfg: OmniConfig) -> dict[str, dict]:
    arch = {"speech_encoder": openai_whisper.OPENAI_WHISPER_ENCODER.name, "music_encoder": beats.BEATS.name}
    return {f"{subdir(FILES[key][0])}/config.json": {**c, "architectures": [arch[key]]}
            for key, c in _file_configs(cfg).items()}


def _build(hf: dict, **overrides):
    cfg = ola_config(hf, **overrides)
    return OmniModel(cfg), cfg


OLA = register(Architecture(
    name=NAME,
    build=_build,
    table=ola_table,
    hf_config=ola_hf_config,
    init_inputs=lambda cfg: (example_batch(cfg),),
    init_method="forward",
    hf_forward=omni_forward,
    expected_unused=(f"{subdir(FILES['speech_encoder'][0])}/decoder.",),
    open_dir=open_release,
    extra_configs=_extra_configs,
))
