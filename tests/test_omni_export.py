"""Export of trained omni models (``omnijax.hf.omni``, ``python -m omnijax.hf.convert export --part
full|llm|stock``) and stage workdirs as model directories, float32: a tiny Ola-layout stage (both towers,
Local-Global pooling, frame stacking, mm_embed) and a tiny Qwen2-Audio-layout stage, each trained one
step by the trainer; every exported part checked against transformers or bit for bit against omnijax."""

import contextlib
import gc
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
import torch
from hf_fixtures import rel_err
from PIL import Image
from safetensors.numpy import load_file
from test_hf_convert import _save_tokenizer
from test_qwen2_audio import batch as qwen2_audio_batch
from test_qwen2_audio import masked_err, torch_logits
from transformers import (Qwen2AudioForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig,
                          SiglipVisionModel, WhisperConfig, WhisperFeatureExtractor)
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder, Qwen2AudioEncoderConfig
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from data_pipelines.audio import whisper_log_mel
from data_pipelines import image_tiles
from omnijax.checkpoint import load_model, save_model_dir
from omnijax.hf import convert
from omnijax.hf import omni as hf_omni
from omnijax.hf.importer import Loaded, abstract_model, check_table
from omnijax.hf.omni import OMNI
from omnijax.hf.safetensors_io import CheckpointError
from omnijax.models.audio import AudioConfig
from omnijax.models.connector_configs import MLP, AvgPool, ConvGMLP, FrameStack, Linear, LocalGlobalPool, StridePool
from omnijax.models.llava_onevision import LlavaOnevisionConfig
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel
from omnijax.models.qwen2_audio import Qwen2AudioConfig, hf_batch
from omnijax.models.vision import VisionConfig
from omnijax import experiment, launch
from omnijax.training import checkpointing, trainer
from omnijax.training.config import base_config
from omnijax.training.omni_task import omni_config

TOL = 1e-4  # max |diff| <= TOL * max |value|
IMAGE, AUDIO = 120, 100  # placeholder ids in a 128-word vocabulary (100: test_qwen2_audio's <|AUDIO|>)
LLM = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
           rope_theta=1e6)
AUDIO_TOWER = dict(num_mel_bins=80, d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                   max_source_positions=50)  # 1 s windows: 100 mel frames


def stage_config(name, model, tokenizer, init_dir, **media):
    """A one-step stage of the omni task on random rows that trains the LLM (the rest frozen) from random
    params saved as an omnijax model directory at ``init_dir`` (``init_from``: as a stage that starts from
    a model does; norm scales near 1, the rest N(0, 0.2))."""
    c = base_config()
    c.name = name
    c.model = mlc.ConfigDict(dict(name="omni", **model))
    c.trainable = [("llm/.*", dict(lr=1e-2, warmup_steps=0, decay="constant")), (".*", None)]
    c.batch_size, c.seq_len = 8, 64
    c.media.update(media)
    c.data.tokenizer = tokenizer
    c.num_steps = 1
    c.checkpoint.update(every=1, keep=1, async_save=False)
    cfg = omni_config(c)
    module = OmniModel(cfg)
    rng = np.random.default_rng(0)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_model(OMNI, module, cfg)[1])
    params = jax.tree_util.tree_unflatten(treedef, [
        (1 + 0.1 * rng.normal(size=s.shape) if p[-1].key == "scale" else 0.2 * rng.normal(size=s.shape)).astype(s.dtype)
        for p, s in leaves])
    save_model_dir(init_dir, Loaded(OMNI, module, cfg, params, OMNI.hf_config(cfg)))
    c.init_from = init_dir
    return c


def ola_config(tokenizer, init_dir):
    """Ola's architecture at toy sizes: 16-pixel images in 4-pixel patches (4x4 grid, pooled 2x2), 1 s
    audio windows (50 encoder outputs, stacked by 10: 5 tokens); frozen groups stored in bfloat16."""
    c = stage_config("tiny_ola", dict(
        llm=LLM, vision=dict(image_size=16, patch_size=4, hidden_size=16, intermediate_size=32, num_layers=2,
                             num_heads=2, use_head=False),
        vision_connector="ola", audio=AUDIO_TOWER, audio_connector="frame_stack", frame_stack_hidden=32,
        layout="ola", image_token_id=IMAGE, audio_token_id=AUDIO + 1),
        tokenizer, init_dir, image_slots=1, audio_slots=1)
    c.frozen_param_dtype = "bfloat16"
    return c


def qwen2_audio_config(tokenizer, init_dir):
    return stage_config("tiny_qwen2_audio", dict(
        llm=LLM, audio=dict(AUDIO_TOWER, variant="qwen2_audio"), audio_connector="linear", layout="qwen2_audio",
        audio_token_id=AUDIO), tokenizer, init_dir, audio_slots=1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The stages' c.data.tokenizer, whose files export carries along."""
    path = str(tmp_path_factory.mktemp("tokenizer"))
    _save_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def ola(tmp_path_factory, tokenizer):
    """(the trainer's final params, finished workdir, its Loaded model, a batch of the stage)."""
    stages = tmp_path_factory.mktemp("stages")
    c = ola_config(tokenizer, str(stages / "init"))
    workdir = str(stages / "ola")
    result = launch.run(c, workdir)
    assert result.status == "finished" and result.step == 1
    return result.state.params, workdir, load_model(workdir), trainer.setup(c).random_batches().batch_at(0)


@pytest.fixture(scope="module")
def ola_full(ola, tmp_path_factory):
    """The full export of the Ola stage (small shards) and its config.json."""
    out = str(tmp_path_factory.mktemp("exports") / "ola_full")
    assert convert.main(["export", "--ckpt", ola[1], "--out", out, "--max-shard-size", "40KB"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        return out, json.load(f)


def _leaves(params) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _assert_bit_identical(a, b):
    a, b = _leaves(a), _leaves(b)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def _tower(hf_dir: str, prefix: str) -> dict[str, torch.Tensor]:
    """The directory's tensors under ``prefix``, prefix stripped."""
    tensors = {}
    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(hf_dir, name)))
    return {k[len(prefix):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(prefix)}


def _load_strict(model, state):
    result = model.load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    return model.eval()


def _assert_nothing_written(out):
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".partial-" in f]


def test_stage_workdir_is_a_model_directory(ola, tokenizer):
    trained, workdir, loaded, _ = ola
    with open(os.path.join(workdir, "omnijax.json")) as f:
        desc = json.load(f)
    assert desc["architecture"] == "OmnijaxOmniModel" and desc["stage"] == "tiny_ola"
    assert desc["assets_dir"] == os.path.abspath(tokenizer)
    assert loaded.arch.name == "OmnijaxOmniModel" and isinstance(loaded.cfg, OmniConfig)
    assert loaded.cfg.vision_connector == LocalGlobalPool() and loaded.cfg.audio_connector == FrameStack(hidden=32)
    assert sorted(loaded.params) == ["audio", "audio_connector", "llm", "mm_embed", "vision", "vision_connector"]
    # the finished stage's params; its frozen groups, stored in bfloat16, come back as float32 (exactly)
    assert trained["vision"]["post_layernorm"]["scale"].dtype == jnp.bfloat16
    _assert_bit_identical(loaded.params, jax.tree.map(lambda x: x.astype(jnp.float32), trained))


def test_full_export_imports_back_bit_exactly(ola, ola_full, tmp_path):
    _, _, loaded, batch = ola
    out, config = ola_full
    files = os.listdir(out)
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert name in files
    assert config["architectures"] == ["OmnijaxOmniModel"] and config["model_type"] == "omnijax_omni"
    assert [config[f"{t}_config"]["model_type"] for t in ("text", "vision", "audio")] == \
        ["qwen2", "siglip_vision_model", "whisper"]
    assert config["layout"] == "ola" and config["mm_embed_names"] == \
        ["begin", "newline", "sep", "end", "speech_begin", "speech_newline", "speech_end"]
    back = load_model(out, progress=False)
    assert back.cfg == loaded.cfg
    _assert_bit_identical(back.params, loaded.params)
    want = np.asarray(loaded.arch.hf_forward(loaded.module, loaded.params, batch))
    inputs = {k: v for k, v in batch.items() if k not in ("targets", "loss_weights", "task_ids")}
    np.testing.assert_array_equal(np.asarray(back.arch.hf_forward(back.module, back.params, inputs)), want)
    # ... and through `convert import` into an omnijax model directory
    ckpt = str(tmp_path / "ckpt")
    assert convert.main(["import", "--hf", out, "--out", ckpt]) == 0
    _assert_bit_identical(load_model(ckpt).params, loaded.params)


@pytest.fixture(scope="module")
def text_logits(ola):
    """(text ids [2, 11], omnijax's logits on them: the omni model's LLM)."""
    llm = hf_omni.part(ola[2], "llm")
    ids = np.random.RandomState(0).randint(0, 128, (2, 11))
    return ids, np.asarray(llm.arch.hf_forward(llm.module, llm.params, {"input_ids": ids}))


def _apply(loaded, fn, x):
    return jax.jit(lambda p, x: loaded.module.apply({"params": p}, x, method=fn))(loaded.params, x)


def test_towers_load_in_transformers(ola, ola_full, text_logits):
    _, _, loaded, batch = ola
    out, config = ola_full
    # LLM: Qwen2ForCausalLM, logits on text ids
    llm = _load_strict(Qwen2ForCausalLM(Qwen2Config(**config["text_config"])), _tower(out, "language_model."))
    ids, ours = text_logits
    with torch.no_grad():
        assert rel_err(ours, llm(input_ids=torch.from_numpy(ids)).logits.numpy()) <= TOL
    # vision: SiglipVisionModel (no head): last_hidden_state, and the pre-post_layernorm features the connector takes
    vision = _load_strict(SiglipVisionModel(SiglipVisionConfig(**config["vision_config"])),
                          _tower(out, "vision_tower."))
    pixels = np.asarray(batch["images"][:, 0])
    with torch.no_grad():
        hf = vision(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
    ours = _apply(loaded, lambda m, x: m.vision(x), pixels)
    assert rel_err(ours["last_hidden_state"], hf.last_hidden_state.numpy()) <= TOL
    assert rel_err(ours["features"], hf.hidden_states[-1].numpy()) <= TOL
    # audio: WhisperEncoder
    audio = _load_strict(WhisperEncoder(WhisperConfig(**config["audio_config"])), _tower(out, "audio_tower."))
    features = np.asarray(batch["audio"][:, 0])
    with torch.no_grad():
        want = audio(torch.from_numpy(features)).last_hidden_state.numpy()
    assert rel_err(_apply(loaded, lambda m, x: m.audio(x), features), want) <= TOL


def test_processor_settings_reproduce_the_pipeline_features(ola_full):
    settings = ola_full[1]["processor"]
    image = Image.fromarray(np.random.RandomState(1).randint(0, 256, (23, 37, 3), dtype=np.uint8))
    kw = {k: v for k, v in settings["image"].items() if k != "image_processor_type"}
    hf = SiglipImageProcessorPil(**kw)(image, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(hf, image_tiles.dynamic_pixel_tiles(image, base_size=16, max_tiles=1), atol=1e-5)
    wave = np.random.RandomState(2).randn(11200).astype(np.float32) * 0.1  # 0.7 s
    kw = {k: v for k, v in settings["audio"].items() if k != "feature_extractor_type"}
    hf = WhisperFeatureExtractor(**kw)(wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
    assert hf.shape == (80, 100)
    np.testing.assert_allclose(hf, whisper_log_mel(wave, 16000, n_mels=80, chunk_seconds=1.0), atol=1e-4)


def test_llm_part_loads_as_qwen2(ola, text_logits, tmp_path, tokenizer):
    out = str(tmp_path / "llm")
    assert convert.main(["export", "--ckpt", ola[1], "--out", out, "--part", "llm"]) == 0
    assert open(os.path.join(out, "tokenizer.json"), "rb").read() == \
        open(os.path.join(tokenizer, "tokenizer.json"), "rb").read()
    model, info = Qwen2ForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids, ours = text_logits
    with torch.no_grad():
        assert rel_err(ours, model.eval()(input_ids=torch.from_numpy(ids)).logits.numpy()) <= TOL


def test_stock_part_of_an_ola_model_is_refused(ola, tmp_path, capsys):
    out = str(tmp_path / "stock")
    assert convert.main(["export", "--ckpt", ola[1], "--out", out, "--part", "stock"]) == 2
    assert ("layout 'ola' with the Local-Global attention pooling vision connector and the frame-stacking audio "
            "connector has no stock transformers class; use --part full or --part llm") in capsys.readouterr().err
    _assert_nothing_written(out)


def test_stock_part_of_a_qwen2_audio_stage(tmp_path, tokenizer):
    c = qwen2_audio_config(tokenizer, str(tmp_path / "init"))
    workdir, out = str(tmp_path / "stage"), str(tmp_path / "stock")
    assert launch.run(c, workdir).status == "finished"
    assert convert.main(["export", "--ckpt", workdir, "--out", out, "--part", "stock"]) == 0
    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    inputs = qwen2_audio_batch()
    want = torch_logits(model.eval(), inputs)
    loaded = load_model(workdir)
    b = hf_batch(loaded.cfg, inputs["input_ids"], inputs["input_features"], inputs["feature_attention_mask"],
                 inputs["attention_mask"])
    assert masked_err(_apply(loaded, "forward", b), want, inputs["attention_mask"]) <= TOL
    # the full export's audio_tower.* are a Qwen2AudioEncoder's: the stock model's audio tower, tensor for tensor
    full = str(tmp_path / "full")
    assert convert.main(["export", "--ckpt", workdir, "--out", full]) == 0
    with open(os.path.join(full, "config.json")) as f:
        audio_config = json.load(f)["audio_config"]
    encoder = _load_strict(Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**audio_config)), _tower(full, "audio_tower."))
    stock = model.model.audio_tower.state_dict()
    assert all(torch.equal(v, stock[k]) for k, v in encoder.state_dict().items())


def test_unfinished_stage_is_a_clear_error(ola, tmp_path, capsys):
    stopped = str(tmp_path / "stopped")
    shutil.copytree(ola[1], stopped)
    with open(os.path.join(stopped, "stage.json")) as f:
        stage = json.load(f)
    with open(os.path.join(stopped, "stage.json"), "w") as f:
        json.dump(dict(stage, num_steps=3), f)  # a stage of 3 steps that stopped (preempted) after step 1
    with pytest.raises(CheckpointError, match=r"workdir of stage 'tiny_ola', which is not finished, so it holds no "
                                              r"final params to load: .*stopped at step 1 of 3"):
        load_model(stopped)
    out = str(tmp_path / "out")
    assert convert.main(["export", "--ckpt", stopped, "--out", out]) == 2
    assert "not finished" in capsys.readouterr().err
    _assert_nothing_written(out)
    empty = str(tmp_path / "empty")  # described, never saved a step
    os.makedirs(os.path.join(empty, "checkpoints"))
    for name in ("omnijax.json", "stage.json"):
        shutil.copy(os.path.join(ola[1], name), empty)
    with pytest.raises(CheckpointError, match="not finished.*no complete checkpoint"):
        load_model(empty)



@contextlib.contextmanager
def _asyncio_errors():
    """The messages asyncio logs at ERROR or above while the block runs (e.g. "Task exception was never
    retrieved", which once surfaced in another test's clean-log check after a damaged read here)."""
    records = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_a_damaged_final_step_loads_the_newest_readable_one(ola, tmp_path, capsys):
    """A stage of 2 steps whose final step cannot be read: the model loads step 1, saying in one line on stderr
    which step it loaded and which it skipped and why, and step 2 is moved aside (kept); loading again says the
    same of the step moved before. No step readable: one error, and the CLIs exit 2."""
    work = tmp_path / "two"
    shutil.copytree(ola[1], work)
    ckpts = work / "checkpoints"
    shutil.copytree(ckpts / "1", ckpts / "2")  # a stage of 2 steps (its step 2 a copy of step 1)
    with open(work / "stage.json") as f:
        stage = json.load(f)
    with open(work / "stage.json", "w") as f:
        json.dump(dict(stage, num_steps=2), f)
    capsys.readouterr()
    _assert_bit_identical(load_model(str(work)).params, ola[2].params)  # undamaged: the final step, silently
    assert capsys.readouterr().err == ""
    files = [p for p in (ckpts / "2" / "params").rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    with _asyncio_errors() as errors:
        model = experiment.load_model(str(work))  # what a notebook calls
        gc.collect()  # orbax's abandoned reads of the damaged step, were they left for later, log errors here
    assert errors == [], errors[:1]
    _assert_bit_identical(model.loaded.params, ola[2].params)
    aside = work / checkpointing.DAMAGED_DIR
    (moved,) = os.listdir(aside)
    assert moved.startswith("2-") and sorted(os.listdir(ckpts)) == ["1"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{work}: loaded checkpoint step 1, not the stage's final step: step 2 "
                                               "cannot be read (OUT_OF_RANGE: Error reading "), err
    assert f'in OCDBT database at local file "{ckpts / "2" / "params"}/": ' in err[0], err[0]
    assert err[0].endswith(f"), moved it to {aside / moved}"), err[0]
    _assert_bit_identical(load_model(str(work)).params, ola[2].params)
    assert capsys.readouterr().err.splitlines() == [f"{work}: loaded checkpoint step 1, not the stage's final step: "
                                                    f"step 2 was moved to {aside / moved} before, unreadable"]

    with open(work / "stage.json", "w") as f:  # a stage of 3 steps: step 2 was not its final one
        json.dump(dict(stage, num_steps=3), f)
    with pytest.raises(CheckpointError, match=r"not finished.*stopped at step 1 of 3"):
        load_model(str(work))
    with open(work / "stage.json", "w") as f:
        json.dump(dict(stage, num_steps=2), f)

    for p in (ckpts / "1" / "params").rglob("*"):
        if p.is_file():
            p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"none of the checkpoints of .*two \(steps \[2, 1\]\) can be read; they "
                                              r"are in .*damaged_checkpoints: delete the workdir's checkpoints"):
        load_model(str(work))
    assert sorted(n.split("-")[0] for n in os.listdir(aside)) == ["1", "2"]
    shutil.copytree(aside / next(n for n in os.listdir(aside) if n.startswith("1-")), ckpts / "1")
    assert convert.main(["export", "--ckpt", str(work), "--out", str(tmp_path / "out")]) == 2
    assert "none of the checkpoints of" in capsys.readouterr().err
    _assert_nothing_written(str(tmp_path / "out"))

# ---- configurations (no training) ----

TINY_LLM = LLMConfig(**LLM)
TINY_VISION = VisionConfig(image_size=16, patch_size=4, hidden_size=16, intermediate_size=32, num_layers=1,
                           num_heads=2, use_head=False)


@pytest.mark.parametrize("vision_connector,audio_connector,d_audio", [
    (LocalGlobalPool(), FrameStack(k=5, hidden=24), 16), (MLP(), ConvGMLP(), 16), (LocalGlobalPool(), ConvGMLP(), 8),
    (MLP(gelu_approximate=True), MLP(), 16), (LocalGlobalPool(), Linear(), 16), (MLP(), StridePool(stride=5), 16),
    (AvgPool(), StridePool(stride=4), 16)])
def test_every_connector_round_trips_through_config_and_table(vision_connector, audio_connector, d_audio):
    """``OmniConfig.from_dict(to_dict())`` is the config; the table covers every parameter (conv_gmlp with
    and without ``out_proj``: 4 * 8 equals the LLM width 32)."""
    audio = AudioConfig(**dict(AUDIO_TOWER, d_model=d_audio))
    cfg = OmniConfig(llm=TINY_LLM, vision=TINY_VISION.replace(feature_layer=-2), vision_connector=vision_connector,
                     audio=audio, audio_connector=audio_connector,
                     image_token_id=IMAGE, video_token_id=IMAGE + 1, audio_token_id=AUDIO, image_slots=2,
                     video_slots=3, audio_slots=1)
    config = json.loads(json.dumps(hf_omni.omni_hf_config(cfg)))
    assert OmniConfig.from_dict(config) == cfg
    module, built = hf_omni.OMNI.build(config)
    check_table(hf_omni.OMNI, hf_omni.omni_table(built), abstract_model(hf_omni.OMNI, module, built)[1])
    keys = {e.hf for e in hf_omni.omni_table(built)}
    assert ("audio_connector.out_proj.weight" in keys) == (isinstance(audio_connector, ConvGMLP) and d_audio != 8)
    fast = OmniConfig.from_dict(config, dtype="bfloat16", attention="splash")
    assert (fast.llm.attention, fast.vision.attention, fast.audio.attention, fast.audio.dtype) == \
        ("splash", "xla", "xla", "bfloat16")
    with pytest.raises(ValueError, match=r"unknown omni config overrides \['num_layers'\]"):
        OmniConfig.from_dict(config, num_layers=3)


def test_stock_configs():
    lov = LlavaOnevisionConfig(vision=TINY_VISION, text=TINY_LLM, image_token_index=IMAGE,
                               image_grid_pinpoints=((16, 16), (16, 32)), vision_aspect_ratio="anyres_max_2",
                               projector_hidden_act="gelu_pytorch_tanh")
    arch, stock = hf_omni.stock_config(lov.omni().replace(image_slots=5))
    assert arch.name == "LlavaOnevisionForConditionalGeneration" and stock == lov
    qa = Qwen2AudioConfig(audio=AudioConfig(**dict(AUDIO_TOWER, variant="qwen2_audio")), llm=TINY_LLM,
                          audio_token_index=AUDIO)
    arch, stock = hf_omni.stock_config(qa.omni())
    assert arch.name == "Qwen2AudioForConditionalGeneration" and stock == qa
    with pytest.raises(ValueError, match="no stock Qwen2AudioForConditionalGeneration: its projector is one Linear "
                                         "layer, this model has the MLP audio connector; use --part full"):
        hf_omni.stock_config(qa.omni().replace(audio_connector=MLP()))
    with pytest.raises(ValueError, match="never ties"):
        hf_omni.stock_config(qa.omni().replace(llm=TINY_LLM.replace(tie_word_embeddings=True)))
    with pytest.raises(ValueError, match="layout 'qwen2_audio': no stock Qwen2AudioForConditionalGeneration: the "
                                         "model has no audio tower"):
        hf_omni.stock_config(OmniConfig(llm=TINY_LLM, layout="qwen2_audio"))
