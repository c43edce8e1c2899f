"""``omnijax.mixing``: a recipe's stages as one stage (Ola's Fig. 3 baselines, direct mixing and balanced sampling),
built from Ola's tiny recipe and run for two steps on the tiny corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_fixtures import compile_once, corpus  # noqa: F401

from omnijax import mixing
from omnijax import recipe as recipe_lib
from omnijax.training.config import media_slots

pytestmark = pytest.mark.usefixtures("compile_once")

OLA = "experiments/ola/recipe.py:tiny"
STEPS = {"1a": 30, "1b": 450, "2": 100, "3a": 150, "3b": 750}  # the tiny stage files'
SCHED = dict(warmup_fraction=0.03, decay="cosine")


def test_ola_recipe_as_one_directly_mixed_stage():
    recipe = mixing.one_stage(OLA)
    assert (recipe.name, recipe.names, recipe.eval_data) == (f"{OLA} as one stage (direct)", ["mix"], "@corpus")
    assert recipe.eval_tasks == ("image_qa", "image_choice", "video_visual_qa", "asr", "video_audio_qa",
                                 "spoken_image_qa", "sound_qa", "aspect_qa", "aspect_video_qa")
    (_, c), = recipe.stages
    assert (c.name, c.num_steps) == ("mix", 1480) and sum(STEPS.values()) == 1480
    assert c.init_from == recipe_lib.load_stage(recipe_lib.load_recipe(OLA), 0).init_from  # 1a's
    assert [(src.rsplit("/", 2)[-2:], groups) for src, groups in c.init_from] == [
        (["tiny", "llm"], ("llm",)), (["tiny", "vision"], ("vision",)), (["tiny", "audio"], ("audio",))]
    # each source's share of the recipe's examples: sum over stages of steps x its share of the stage's mixture
    # (stage weights sum to 1, 5.5, 6, 1.35 and 16.5), over the 1480 steps
    want = {"image_caption": 30 + 450 / 5.5 + 100 * 0.5 / 6 + 750 * 0.5 / 16.5,
            "image_qa": 450 * 2 / 5.5 + 100 / 6 + 750 * 2.5 / 16.5,
            "image_choice": 450 / 5.5 + 100 / 6 + 750 * 0.5 / 16.5,
            "text_instruct": 450 / 5.5 + 100 * 0.5 / 6 + 750 * 0.5 / 16.5,
            "aspect_qa": 450 * 0.5 / 5.5 + 100 * 0.5 / 6 + 750 * 0.5 / 16.5,
            "video_visual_qa": 100 * 2 / 6 + 750 * 2.5 / 16.5,
            "aspect_video_qa": 100 * 0.5 / 6 + 750 * 0.5 / 16.5,
            "asr": 150 / 1.35 + 750 * 6 / 16.5,
            "sound_qa": 150 * 0.35 / 1.35 + 750 / 16.5,
            "video_audio_qa": 750 * 2 / 16.5}
    got = {s["name"]: s["weight"] for s in c.data.sources}
    assert list(got) == list(want) == list(c.task_names) and c.num_tasks == 10
    assert got == pytest.approx({k: v / 1480 for k, v in want.items()}, rel=1e-12)
    assert round(got["asr"], 4) == 0.2594 and round(got["image_caption"], 4) == 0.0965
    assert [s["paths"] for s in c.data.sources][:2] == ["@corpus/tasks/train/image_caption*",
                                                        "@corpus/tasks/train/image_qa*"]
    # every group a stage trains, at the last such stage's rate: the vision tower only 1b's (2e-3), the audio
    # tower none (1b's '.*' covers it, but 1b's rows hold no audio), the speech projector 3b's (1e-2)
    assert [(r, s and s["lr"]) for r, s in c.trainable] == [
        ("audio/.*", None), ("audio_connector/.*", 1e-2), ("llm/.*", 1e-3), ("mm_embed/.*", 1e-3),
        ("vision/.*", 2e-3), ("vision_connector/.*", 1e-3)]
    assert all(s == dict(lr=s["lr"], **SCHED) for _, s in c.trainable if s)
    # slots: the most any stage gives (1a's 4 images, 8 frames, 4 audio windows; 3b's are 2, 4, 2)
    assert (dict(c.media), media_slots(c)) == (dict(always=(), image_slots=4, video_slots=8, audio_slots=4),
                                               dict(image_slots=4, video_slots=8, audio_slots=4))


def test_balanced_sampling_gives_every_source_an_equal_share_and_overrides_reach_the_stages():
    steps = {name: {"num_steps": round(n * 0.3)} for name, n in STEPS.items()}
    recipe = mixing.one_stage(OLA, balance=True, name="balanced", overrides=steps)
    (name, c), = recipe.stages
    assert (recipe.name, name, c.num_steps) == (f"{OLA} as one stage (balanced)", "balanced", 9 + 135 + 30 + 45 + 225)
    assert [s["weight"] for s in c.data.sources] == [0.1] * 10
    assert c.task_names[-3:] == ("asr", "sound_qa", "video_audio_qa")
    # every stage trains all but the vision tower: the audio tower too, in 3a and 3b, whose rows hold audio
    frozen = mixing.one_stage(OLA, overrides={"*": {"trainable": [("vision/.*", None), (".*", dict(lr=5e-4))]}})
    assert [(r, s and s["lr"]) for r, s in frozen.stages[0][1].trainable] == [
        ("audio/.*", 5e-4), ("audio_connector/.*", 5e-4), ("llm/.*", 5e-4), ("mm_embed/.*", 5e-4),
        ("vision/.*", None), ("vision_connector/.*", 5e-4)]
    # a group whose parameters disagree gets a rule per parameter: 1b (the only stage that trains the vision tower)
    # keeping its embeddings frozen
    rules = [("vision/embeddings/.*", None), (".*", dict(lr=2e-3))]
    part = mixing.one_stage(OLA, overrides={"1b": {"trainable": rules}})
    vision = [(r, s and s["lr"]) for r, s in part.stages[0][1].trainable if r.startswith("vision/")]
    assert vision[:4] == [(r"vision/embeddings/patch_embedding/bias", None),
                          (r"vision/embeddings/patch_embedding/kernel", None),
                          (r"vision/embeddings/position_embedding", None),
                          (r"vision/encoder/layers/layer_norm1/bias", 2e-3)] and len(vision) == 21
    assert vision[-1] == (r"vision/post_layernorm/scale", 2e-3)


def test_one_stage_refuses_stages_that_differ_beyond_what_it_merges():
    with pytest.raises(ValueError, match=r"stages '1a' and '3b' differ in c.seq_len \(128 vs 256\); one stage has "
                                         r"one seq_len: make them equal with overrides"):
        mixing.one_stage(OLA, overrides={"1a": {"seq_len": 128}})
    with pytest.raises(ValueError, match=r"source 'asr' differs between stages in \['paths'\] \('ola_3b': "
                                         r"\['elsewhere\*'\], before: \['@corpus/tasks/train/asr\*'\]\); rename one"):
        mixing.one_stage(OLA, overrides={"3b": {"data.sources.0.paths": "elsewhere*"}})
    with pytest.raises(ValueError, match=r"overrides name \['4'\], which are not stages of"):
        mixing.one_stage(OLA, overrides={"4": {"num_steps": 1}})


def test_one_stage_trains_two_steps_from_the_first_stages_init(corpus, tmp_path):  # noqa: F811
    recipe = mixing.one_stage(OLA)
    rows = recipe_lib.run(recipe, str(tmp_path), steps=2, evaluate=False, log=lambda _: None,
                          roots={"corpus": corpus})
    assert [(r["stage"], r["status"]) for r in rows] == [("mix", "trained")]
    logged = [json.loads(line) for line in open(tmp_path / "mix" / "metrics.jsonl") if '"loss": ' in line]
    assert logged[-1]["step"] == 2 and np.isfinite([r["loss"] for r in logged]).all()
    config = json.load(open(tmp_path / "mix" / "stage.json"))["config"]
    assert [tuple(g) for _, g in config["init_from"]] == [("llm",), ("vision",), ("audio",)]
    assert len(config["data"]["sources"]) == 10 and config["num_steps"] == 2
