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
from omnijax.training.config import check_config, media_slots, resolve_roots
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
        objective = recipe_lib._module(stage_path, name).get_config("tiny").objective
        for m in [k.removeprefix("ctc_") for k in objective if k.startswith("ctc_") and objective[k] is not None]:
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
    assert [r["status"] for r in rows] == ["trained"] * 6, rows
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
    # the sound tower's stage: BEATs alone, on sound_qa's answers through the frozen LLM
    assert logs["0c_sound_tower"] and all(
        r["loss"] == r["task_loss/sound_qa"] and not any(k.startswith("bow/") for k in r)
        for r in logs["0c_sound_tower"]), logs
    config = json.load(open(tmp_path / "0a_vision" / "stage.json"))["config"]
    assert config["data"]["tokenizer"] == os.path.join(corpus, "tokenizer")

    from experiments.pretrain_tiny import release
    from omnijax.checkpoint import load_model
    from omnijax.experiment import RecipeResult
    from omnijax.hf.beats import load_beats

    pin = release.write_release(RecipeResult(str(tmp_path), recipe, rows), corpus, str(tmp_path / "out"))
    assert (pin["shipped_from"], pin["beats_from"]) == ("0b_speech", "0c_sound_tower")
    assert sorted(os.listdir(tmp_path / "out")) == ["README.md", "audio", "beats", "llm", "omni_synth.json", "vision"]
    speech, sounds = (load_model(str(tmp_path / n), progress=False).params for n in ("0b_speech", "0c_sound_tower"))
    # 0c has BEATs alone and leaves the LLM as 0b left it; the release's BEATs is 0c's, bit for bit
    assert list(sounds["audio"]) == ["beats"]
    for got, want in ((sounds["llm"], speech["llm"]),
                      (load_beats(str(tmp_path / "out" / "beats")).params["beats"], sounds["audio"]["beats"])):
        got, want = jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves_with_path(want)
        assert [p for p, _ in got] == [p for p, _ in want] and len(want) > 10
        for (path, g), (_, w) in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=jax.tree_util.keystr(path))

    # --beats-only: 0c again from the release's own parts; beats/, the pin's 0c entry and the README change, no more
    out = tmp_path / "out"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = release.rebuild_beats(str(tmp_path / "again"), corpus, str(out), steps=3, log=lambda _: None)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = sorted(str(p) for p in after if after[p] != before.get(p))
    assert sorted(after) == sorted(before) and changed == ["README.md", "beats/model.safetensors", "omni_synth.json"]
    assert again["stages"]["0c_sound_tower"]["steps"] == 3 and again["beats_rebuilt"]["made_with"].endswith(
        "--beats-only") and {k: v for k, v in again.items() if k not in ("stages", "beats_rebuilt")} == {
        k: v for k, v in pin.items() if k != "stages"}
    assert "BEATs was made again on" in (out / "README.md").read_text()


def test_beats_only_refuses_a_corpus_of_another_version(corpus, tmp_path):  # noqa: F811
    """``release --beats-only`` retrains BEATs on the given corpus beside parts pinned to theirs: another omni-synth
    version is refused before anything runs, naming both versions and the whole rebuild (``check_tiny_checkpoints``
    on the given checkpoints)."""
    from experiments import common
    from experiments.pretrain_tiny import release

    out = tmp_path / "out"
    out.mkdir()
    with open(os.path.join(common.TINY_CHECKPOINTS, common.PIN_FILE)) as f:
        pin = json.load(f)
    (out / common.PIN_FILE).write_text(json.dumps(dict(pin, omni_synth_version=99)))
    with pytest.raises(common.CorpusMismatchError, match=rf"is version \d+, but the tiny pretrained checkpoints in "
                       rf"{out} were trained on omni-synth version 99 .* with `python -m experiments.pretrain_tiny"):
        release.rebuild_beats(str(tmp_path / "work"), corpus, str(out))
    assert release.main(["--beats-only", "--out", str(out), "--corpus", corpus, "--workdir", str(tmp_path)]) == 2
    assert not (tmp_path / "work").exists() and sorted(os.listdir(out)) == [common.PIN_FILE]


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
    no_slots = dict(image_slots=0, video_slots=0, audio_slots=0)  # a stage's slots are its mixture's (media_slots)
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
        "3b": ("asr", "image_qa", "image_choice", "video_visual_qa", "video_audio_qa", "spoken_image_qa", "sound_qa",
               "aspect_qa", "aspect_video_qa")}
    capybara = recipe_lib.load_recipe("experiments/capybara/recipe.py:tiny")
    assert {n: capybara.tasks_after(n) for n in capybara.names} == {
        "1_visual": ("image_qa",), "2_audio": ("asr", "image_qa"), "3_instruct": ("asr", "image_qa", "video_audio_qa")}


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


def test_7b_stages_take_the_papers_numbers_from_their_table():
    """Every 7b stage of a paper's recipe takes its steps, batch and learning rates from the recipe's table
    (``paper.py``): steps = ceil(epochs * samples / (batch * per_row)) where the paper gives a sample count."""
    import importlib

    from experiments import common

    for path in PAPERS:
        recipe = recipe_lib.load_recipe(f"{path}:7b")
        table = importlib.import_module(f"experiments.{os.path.basename(os.path.dirname(path))}.paper").STAGES
        assert recipe.names == list(table), path
        for (name, stage_path), paper in zip(recipe.stages, table.values()):
            c = recipe_lib._module(stage_path, name).get_config("7b")
            assert (c.num_steps, c.batch_size, c.trainable) == (paper.num_steps, paper.batch,
                                                                common.trainable(paper.lr)), (path, name)
    ola = importlib.import_module("experiments.ola.paper").STAGES
    assert {n: s.num_steps for n, s in ola.items()} == {"1a": 3157, "1b": 57032, "2": 10547, "3a": 1446, "3b": 15180}


def test_stage_knobs_from_the_config_argument():
    """big_vision's ``get_config(arg)``: after the preset, the knobs an ablation sweeps (``common.parse_arg``)."""
    from experiments import common
    from experiments.ola import stage3b
    from experiments.self_kd import stage1_audio_align

    base = stage3b.get_config("tiny")
    c = stage3b.get_config("tiny,steps=12,freeze=llm+mm_embed,weight.asr=0,weight.spoken_image_qa=1,"
                           "audio_connector=mlp")
    assert (c.num_steps, base.num_steps) == (12, 750)
    assert c.trainable == [("(llm|mm_embed)/.*", None), *base.trainable]
    names = [s["name"] for s in c.data.sources]
    assert names == [s["name"] for s in base.data.sources if s["name"] != "asr"] + ["spoken_image_qa"]
    assert c.task_names == tuple(names) and c.num_tasks == len(names)
    assert c.model.audio_connector == "mlp" and omni_config(c).audio is not None
    assert stage1_audio_align.get_config("7b,vlm=/pod/my_vlm").init_from == "/pod/my_vlm"
    # the audio connectors at one token rate: 4 of the tiny Whisper's 200 outputs a 4 s window per token
    rates = {name: omni_config(stage3b.get_config(f"tiny,audio_connector={name},{knob}=4")).audio_connector
             for knob, name in common.RATE_KNOBS.items()}
    assert [(type(c).__name__, c.tokens(200)) for c in rates.values()] == [("FrameStack", 50), ("ConvGMLP", 50),
                                                                           ("StridePool", 50)]
    assert omni_config(stage3b.get_config("tiny,audio_connector=stride_pool")).audio_connector.stride == 2
    assert omni_config(stage3b.get_config("tiny,vision_connector=avg_pool")).image_grid == (4, 4)
    for arg, message in [("tiny,stepz=3", r"unknown knob 'stepz'; knobs: steps, freeze, weight.TASK"),
                         ("tiny,freeze=lm", r"freeze names \['lm'\]; groups are: llm, vision"),
                         ("tiny,stride_pool_stride=4", r"stride_pool_stride=4 sets the 'stride_pool' audio connector, "
                                                       r"but the stage's is 'frame_stack'; add "
                                                       r"audio_connector=stride_pool"),
                         ("tiny,init=/x,conv_gmlp_stride=2", r"drop \['conv_gmlp_stride'\]"),
                         ("huge", "unknown preset 'huge'"), ("tiny,steps", "'steps' is not knob=value"),
                         ("tiny,weight.asr=0,weight.image_qa=0,weight.video_audio_qa=0,weight.video_visual_qa=0,"
                          "weight.image_choice=0,weight.image_caption=0,weight.text_instruct=0,weight.sound_qa=0,"
                          "weight.aspect_qa=0,weight.aspect_video_qa=0", "leave no source")]:
        with pytest.raises(ValueError, match=message):
            stage3b.get_config(arg)


def test_stages_carry_only_the_media_of_their_mixture():
    """A stage's slots are the media its sources hold (``media_slots``); ``c.media.always`` widens them."""
    from experiments import common

    media = {}
    for spec in ("experiments/pretrain_tiny/recipe.py:tiny", "experiments/ola/recipe.py:tiny",
                 "experiments/ola/recipe.py:7b"):
        recipe = recipe_lib.load_recipe(spec)
        for name, path in recipe.stages:
            slots = media_slots(recipe_lib._module(path, name).get_config(recipe.preset))
            media[name, recipe.preset] = tuple(k for k in ("image", "video", "audio") if slots[f"{k}_slots"])
    image, audio, omni = ("image",), ("audio",), ("image", "video", "audio")
    assert media == {("0_vision_tower", "tiny"): image, ("0_speech_tower", "tiny"): audio,
                     ("0_vision_binding", "tiny"): image, ("0a_vision", "tiny"): image,
                     ("0b_speech", "tiny"): ("image", "audio"), ("0c_sound_tower", "tiny"): audio,
                     ("1a", "tiny"): image, ("1b", "tiny"): image,
                     ("2", "tiny"): omni, ("3a", "tiny"): audio, ("3b", "tiny"): omni,
                     # at 7b stage 2's video questions are read as frames (the papers' LLaVA-Video data)
                     ("1a", "7b"): image, ("1b", "7b"): image, ("2", "7b"): ("image", "video"),
                     ("3a", "7b"): audio, ("3b", "7b"): omni}
    c = recipe_lib._module(recipe.stages[2][1], "2").get_config("7b")
    assert media_slots(c) == dict(image_slots=8, video_slots=64, audio_slots=0)
    c.media.always = ("audio",)
    assert media_slots(c) == dict(image_slots=8, video_slots=64, audio_slots=8)
    c.data.sources[0]["media"] = None  # a source that does not say: every slot of c.media stays
    c.media.always = ()
    assert media_slots(c)["audio_slots"] == 8
    c.data.sources[0]["media"] = ("pictures",)
    with pytest.raises(StageConfigError, match=r"c.data.sources\[0\].media names \['pictures'\]; give a tuple of "
                                               r"media kinds \(image, video, audio\)"):
        check_config(resolve_roots(c, {}), 8, 1)
    c.data.sources = common.sources("7b", {"image_qa": 1.0}, spoken=("image_qa",))  # questions read as speech
    c.data.sources[0]["media"] = ("image",)
    assert media_slots(c) == dict(image_slots=8, video_slots=0, audio_slots=8)


def test_tiny_capybara_rows_hold_its_videos(corpus):  # noqa: F811
    """Capybara's MLP connector does not pool: a 4-frame omni-synth video takes 294 tokens, which the 256-token rows
    of the tiny preset could not hold (stage 3 dropped every video example, and evaluating video_audio_qa failed).
    Its stage 3 rows hold them: over 6 batches of its pipeline no video example is dropped for length."""
    from data_pipelines.pipeline import Pipeline
    from experiments.capybara import stage3_instruct
    from omnijax.launch import grain_pipeline_config

    c = resolve_roots(stage3_instruct.get_config("tiny"), {"corpus": corpus})
    with Pipeline(grain_pipeline_config(c)) as pipeline:
        for _ in range(6):
            next(pipeline)
        totals = pipeline.totals
    for task in ("video_visual_qa", "video_audio_qa"):
        assert totals[f"records/{task}"] > 0 and totals[f"dropped_too_long/{task}"] == 0, pipeline.length_report()

def test_7b_attention_follows_the_platform_or_the_command_line(monkeypatch):
    """The 7b presets say attention 'auto': the platform's implementation -- of the mesh's devices when the task
    is built on a mesh (a TPU slice compiled for on this CPU machine). Every tower's config has the field, so
    ``--config.model.<tower>.attention=cudnn`` parses and reaches the model."""
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
    c = _stage_configs("experiments/ola/recipe.py", "7b")[0]
    assert c.model.llm.attention == c.model.vision.attention == c.model.audio.attention == "auto"
    expected = {"cpu": ("xla", "xla", "xla"), "tpu": ("splash", "xla", "xla"), "gpu": ("cudnn", "cudnn", "cudnn")}
    for platform, want in expected.items():
        cfg = omni_config(c, platform)
        assert (cfg.llm.attention, cfg.vision.attention, cfg.audio.attention) == want, platform


def test_ola_tiny_recipe_runs_with_the_dual_audio_encoder(corpus, tmp_path):
    """``experiments/ola/recipe.py:tiny,audio=dual``: the knob reaches every stage; 1a imports the shipped Whisper
    into audio/whisper and the shipped BEATs into audio/beats, the later stages chain; a plain Whisper stage pointed
    at the dual stage, or the dual model at the plain Whisper checkpoint, is told the init_from item that imports
    it."""
    from experiments import common
    from omnijax import launch
    from omnijax.checkpoint import load_model

    recipe = recipe_lib.load_recipe("experiments/ola/recipe.py:tiny,audio=dual")
    assert (recipe.preset, recipe.arg, recipe.name) == ("tiny", "tiny,audio=dual", "experiments/ola/recipe.py:tiny,"
                                                                                   "audio=dual")
    rows = recipe_lib.run(recipe, str(tmp_path), steps=2, evaluate=False, log=lambda _: None,
                          roots={"corpus": corpus})
    assert [(r["stage"], r["status"]) for r in rows] == [(n, "trained") for n in recipe.names], rows
    shipped = load_model(common.tiny_dir("audio")).params["audio"]
    first = load_model(str(tmp_path / "1a")).params["audio"]
    assert sorted(first) == ["beats", "whisper"] and first["beats"]["encoder"]["layers"]["fc1"]["kernel"].shape == (
        2, 64, 128)
    for tower, source in (("whisper", shipped), ("beats", load_model(common.tiny_dir("beats")).params["beats"])):
        got, want = jax.tree_util.tree_leaves_with_path(first[tower]), jax.tree_util.tree_leaves_with_path(source)
        assert [p for p, _ in got] == [p for p, _ in want] and len(want) > 10
        for (path, g), (_, w) in zip(got, want):  # 1a freezes the audio group: the shipped weights, bit for bit
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"{tower}{jax.tree_util.keystr(path)}")
    last = load_model(str(tmp_path / "3b")).params["audio"]
    assert sorted(last) == ["beats", "whisper"]

    stage1b = recipe_lib._module(recipe.stages[1][1], "stage1b")
    plain = resolve_roots(stage1b.get_config("tiny"), {"corpus": corpus})
    plain.init_from = str(tmp_path / "1a")
    with pytest.raises(StageConfigError, match=r"'audio' does not match the model .* the model's audio is the "
                                               r"source's audio/whisper: import it with \('.*/1a', "
                                               r"\('audio/whisper->audio',\)\)"):
        launch.setup(plain).init_params()
    with plain.ignore_type():
        plain.init_from = [(str(tmp_path / "1a"), ("llm", "vision", "audio/whisper->audio"))]
    params = launch.setup(plain).init_params()
    np.testing.assert_array_equal(np.asarray(params["audio"]["conv1"]["kernel"]),
                                  np.asarray(shipped["conv1"]["kernel"]))
    dual = resolve_roots(stage1b.get_config("tiny,audio=dual"), {"corpus": corpus})
    with dual.ignore_type():
        dual.init_from = [(common.tiny_dir("audio"), ("audio",))]
    with pytest.raises(StageConfigError, match=r"the source's audio is the model's audio/whisper: import it with "
                                               r"\('.*checkpoints/tiny/audio', \('audio->audio/whisper',\)\)"):
        launch.setup(dual).init_params()
