"""The papers' recipes: every `tiny` preset runs all its stages (a few steps, smoke), every `7b` preset
builds its configs and its abstract parameter shapes (``jax.eval_shape``, nothing allocated) with the
parameter counts of the HF models it starts from (counted by transformers on the meta device).
The Ola tiny recipe's smoke run is the demo's (tests/test_demo.py); the tiny pretraining
(``experiments/pretrain_tiny``) has a smoke test of its own here, and its product, the shipped checkpoints,
tests of what they load as."""

import glob
import json
import math
import os

import jax
import numpy as np
import pytest
import torch
from training_fixtures import compile_once, corpus

from omnijax import recipe as recipe_lib
from omnijax.models.omni import OmniModel, logical_specs
from omnijax.training.omni_task import omni_config
from omnijax.training.stages import StageConfigError

pytestmark = pytest.mark.usefixtures("compile_once")

RECIPES = sorted(glob.glob("experiments/*/recipe.py"))
PAPERS = [r for r in RECIPES if "/pretrain_tiny/" not in r]  # a tiny and a 7b preset each
# ola: test_demo; self_kd: test_self_kd; pretrain_tiny: its own test below
SMOKE = [r for r in PAPERS if "/ola/" not in r and "/self_kd/" not in r]


def test_every_paper_has_a_recipe():
    names = {os.path.basename(os.path.dirname(r)) for r in RECIPES}
    assert {"ola", "capybara", "baichuan_omni", "self_kd"} <= names, names


@pytest.mark.parametrize("path", SMOKE)
def test_tiny_preset_runs_every_stage(path, corpus, tmp_path):
    recipe = recipe_lib.load_recipe(f"{path}:tiny")
    run = dict(steps=2, evaluate=False, log=lambda _: None, roots={"corpus": corpus})
    rows = recipe_lib.run(recipe, str(tmp_path), **run)
    assert [r["stage"] for r in rows] == [n for n, _ in recipe.stages]
    assert all(r["status"] == "trained" for r in rows), rows
    for name, _ in recipe.stages:
        losses = [float(line.split('"loss": ')[1].split(",")[0])
                  for line in open(tmp_path / name / "metrics.jsonl") if '"loss": ' in line]
        assert losses and np.all(np.isfinite(losses)), (name, losses)
    for name, stage_path in recipe.stages:  # stages with CTC terms log them (omnijax.training.connector_ctc)
        for m in dict(recipe_lib._module(stage_path, name).get_config("tiny").model.get("ctc") or {}):
            rows_ = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl") if '"loss": ' in line]
            assert all(np.isfinite(r[f"ctc/{m}/loss"]) and r[f"ctc/{m}/items"] > 0 for r in rows_), (name, m, rows_)
    # Run again: every stage is complete, nothing trains.
    again = recipe_lib.run(recipe, str(tmp_path), **run)
    assert all(r["status"] == "done before" for r in again), again
    # the first stage starts from the shipped tiny checkpoints: its LLM and towers are theirs
    first = json.load(open(tmp_path / recipe.stages[0][0] / "stage.json"))["config"]
    assert {tuple(g) for _, g in first["init_from"]} >= {("llm",), ("vision",), ("audio",)}, first["init_from"]


def test_tiny_pretraining_runs_every_stage(corpus, tmp_path):
    """experiments/pretrain_tiny: the stand-in towers' terms (the bag of words, CTC) train without the LLM, then
    the LLM learns captions and speech; everything reads the corpus's own tokenizer."""
    recipe = recipe_lib.load_recipe("experiments/pretrain_tiny/recipe.py:tiny")
    rows = recipe_lib.run(recipe, str(tmp_path), steps=2, evaluate=False, log=lambda _: None,
                          roots={"corpus": corpus})
    assert [r["status"] for r in rows] == ["trained"] * 5, rows
    logs = {stage: [json.loads(line) for line in open(tmp_path / stage / "metrics.jsonl") if '"loss": ' in line]
            for stage, _ in recipe.stages}
    # stage 0_vision_tower trains on the bag of words alone (no LLM, no task loss), 0_vision_binding on the bag
    # with its (colour, shape) pairs
    assert logs["0_vision_tower"] and all(
        math.isfinite(r["bow/image/loss"]) and r["bow/image/items"] > 0 and r["loss"] == r["bow/image/loss"]
        and "bow/image/pairs" not in r and not any(k.startswith("task_loss") for k in r)
        for r in logs["0_vision_tower"]), logs
    assert logs["0_vision_binding"] and all(
        r["loss"] == r["bow/image/loss"] and 0 < r["bow/image/pairs"] < r["bow/image/loss"]
        and not any(k.startswith("task_loss") for k in r) for r in logs["0_vision_binding"]), logs
    # the speech tower's stage likewise trains on CTC alone
    assert logs["0_speech_tower"] and all(
        math.isfinite(r["ctc/audio/loss"]) and r["ctc/audio/items"] > 0 and r["loss"] == r["ctc/audio/loss"]
        and not any(k.startswith("task_loss") for k in r) for r in logs["0_speech_tower"]), logs
    assert logs["0b_speech"] and all(math.isfinite(r["ctc/audio/loss"]) for r in logs["0b_speech"]), logs
    config = json.load(open(tmp_path / "0a_vision" / "stage.json"))["config"]
    assert config["data"]["tokenizer"] == os.path.join(corpus, "tokenizer")


def _meta_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def hf_counts(cfg) -> dict[str, int]:
    """Parameter counts of the HF modules the 7b groups are imported from, built on the meta device."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel, WhisperConfig
    from transformers.models.qwen2_audio.configuration_qwen2_audio import Qwen2AudioEncoderConfig
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    t, v, a = cfg.llm, cfg.vision, cfg.audio
    out = {}
    with torch.device("meta"):
        out["llm"] = _meta_count(Qwen2ForCausalLM(Qwen2Config(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
            tie_word_embeddings=t.tie_word_embeddings)))
        if v is not None:
            out["vision"] = _meta_count(SiglipVisionModel(SiglipVisionConfig(
                image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.hidden_size,
                intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
                num_attention_heads=v.num_heads, vision_use_head=v.use_head)))
        if a is not None:
            sizes = dict(num_mel_bins=a.num_mel_bins, d_model=a.d_model, encoder_layers=a.encoder_layers,
                         encoder_attention_heads=a.encoder_attention_heads, encoder_ffn_dim=a.encoder_ffn_dim,
                         max_source_positions=a.max_source_positions)
            encoder = (Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**sizes)) if a.variant == "qwen2_audio"
                       else WhisperEncoder(WhisperConfig(**sizes)))
            out["audio"] = _meta_count(encoder)
    return out


def _stage_configs(path: str, preset: str):
    recipe = recipe_lib.load_recipe(f"{path}:{preset}")
    return [recipe_lib.stage_config(recipe, i, "/pod/workdir") for i in range(len(recipe.stages))]


@pytest.mark.parametrize("path", PAPERS)
def test_7b_preset_abstract_shapes(path):
    configs = _stage_configs(path, "7b")
    cfg = omni_config(configs[0])
    _, abstract = logical_specs(OmniModel(cfg))  # jax.eval_shape: no parameter is allocated
    counts = {g: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t)) for g, t in abstract.items()}
    want = hf_counts(cfg)
    for group, n in want.items():
        assert counts[group] == n, (path, group, counts[group], n)
    assert 7.6e9 < counts["llm"] < 7.7e9, counts  # Qwen2.5-7B: 7.62B
    assert sum(counts.values()) < 9.5e9, counts
    no_slots = dict(image_slots=0, video_slots=0, audio_slots=0)  # a stage's slots are its media's (use_media)
    for c in configs:  # every stage: the same architecture, rules that match, a pod mesh
        assert omni_config(c).replace(**no_slots) == cfg.replace(**no_slots), c.name
        assert c.mesh.fsdp == -1 and c.batch_size >= 128, c.name


def test_unresolved_stage_reference_is_a_clear_error(corpus):
    from omnijax.training import trainer
    from omnijax.training.config import resolve_roots

    c = recipe_lib.load_recipe("experiments/ola/recipe.py:tiny")
    stage = recipe_lib._module(c.stages[1][1], "stage").get_config("tiny")  # 1b: starts from '@previous'
    with pytest.raises(StageConfigError, match=r"c.data.sources\[0\].paths is '@corpus/tasks/train/image_caption\*', "
                                               r"a path under the root '@corpus' that was not resolved; say where it "
                                               r"is \(corpus=\.\.\. / --corpus\)"):
        trainer.setup(stage)
    with pytest.raises(StageConfigError, match="names a recipe stage"):
        trainer.setup(resolve_roots(stage, {"corpus": corpus}))


def test_ola_evaluates_each_stage_on_the_skills_it_has_trained():
    recipe = recipe_lib.load_recipe("experiments/ola/recipe.py:tiny")
    assert {n: recipe.tasks_after(n) for n in recipe.names} == {
        "1a": ("image_qa", "image_choice"), "1b": ("image_qa", "image_choice"),
        "2": ("image_qa", "image_choice", "video_visual_qa"), "3a": ("asr",),
        "3b": ("asr", "image_qa", "image_choice", "video_visual_qa", "video_audio_qa", "spoken_image_qa")}
    assert recipe_lib.load_recipe("experiments/capybara/recipe.py:tiny").tasks_after("2_audio") == (
        "asr", "image_qa", "video_audio_qa")


def test_recipe_errors(tmp_path):
    bad = tmp_path / "recipe.py"
    bad.write_text("STAGES = {'tiny': (('1a', 'stage1a.py'),)}\nEVAL = {'tiny': {'1z': ('asr',)}}\n")
    with pytest.raises(ValueError, match=r"EVAL\['tiny'\] names \['1z'\], which are not stages of the recipe"):
        recipe_lib.load_recipe(f"{bad}:tiny")
    with pytest.raises(ValueError, match="no preset 'huge'"):
        recipe_lib.load_recipe("experiments/ola/recipe.py:huge")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        recipe_lib.load_recipe("experiments/nope/recipe.py:tiny")
    recipe = recipe_lib.load_recipe("experiments/ola/recipe.py:tiny")
    with pytest.raises(ValueError, match="not stages of"):
        recipe_lib.run(recipe, "/tmp/unused", only=("9z",), evaluate=False)


def test_ola_stages_carry_only_their_own_media():
    """`common.use_media`: a stage's batches have slots only for the media its data has."""
    from experiments import common

    media = {}
    for spec in ("experiments/pretrain_tiny/recipe.py:tiny", "experiments/ola/recipe.py:tiny"):
        recipe = recipe_lib.load_recipe(spec)
        for name, path in recipe.stages:
            c = recipe_lib._module(path, name).get_config("tiny")
            media[name] = tuple(k for k in ("image", "video", "audio") if c.media[f"{k}_slots"])
    assert media == {"0_vision_tower": ("image",), "0_speech_tower": ("audio",), "0_vision_binding": ("image",),
                     "0a_vision": ("image",), "0b_speech": ("image", "audio"), "1a": ("image",), "1b": ("image",),
                     "2": ("image", "video", "audio"), "3a": ("audio",), "3b": ("image", "video", "audio")}
    c = recipe_lib._module(recipe.stages[-1][1], "3b").get_config("7b")
    common.use_media(c, "video")
    assert (c.media.image_slots, c.media.video_slots, c.media.audio_slots) == (0, 64, 0)
    with pytest.raises(ValueError, match=r"unknown media kinds \['pictures'\]"):
        common.use_media(c, "pictures")


def test_7b_attention_is_a_command_line_override(monkeypatch):
    """GPU runs of the 7b presets choose cuDNN from the command line (experiments/common.py): every tower's
    config has the field, so ``--config.model.<tower>.attention=cudnn`` parses and reaches the model."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["train", "--config=experiments/ola/stage2.py:7b"] + [
        f"--config.model.{tower}.attention=cudnn" for tower in ("llm", "vision", "audio")]
    monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "stage config", flag_values=fv)
    fv(argv)
    cfg = omni_config(fv.config)
    assert (cfg.llm.attention, cfg.vision.attention, cfg.audio.attention) == ("cudnn",) * 3
    assert omni_config(_stage_configs("experiments/ola/recipe.py", "7b")[0]).llm.attention == "xla"
