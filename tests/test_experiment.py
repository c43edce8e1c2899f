"""``omnijax.experiment``: a recipe built in a notebook runs in-process, with overrides and seeds, and gives
its tables and curves back (equal to what the run wrote); arms compare and plot; a trained model answers
questions asked with media in memory exactly as the generate CLI answers the same media from files; no
module reads data or checkpoint locations from the environment."""

import io
import json
import os
import re
import subprocess

import av
import matplotlib
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from training_fixtures import compile_once, corpus  # noqa: F401

from data_pipelines import media, synth
from experiments import common
from omnijax import evaluate as evaluator
from omnijax import experiment
from omnijax.inference.chat import question_example
from omnijax.tools import generate

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("compile_once")

QUIET = dict(log=lambda _: None, progress=False)


def two_stages():
    """Stage 'align' (the vision connector alone, on captions, from the shipped checkpoints) and stage 'sft'
    (everything but the towers, on image questions and text), built in Python as a notebook would."""
    align = common.stage_config("tiny", "nb_align", common.omni_model("tiny"))
    align.init_from = common.pretrained("tiny", ("llm", "vision", "audio"))
    common.set_data(align, "tiny", {"image_caption": 1.0})
    align.trainable = [("vision_connector/.*", common.schedule(3e-3)), (".*", None)]
    sft = common.stage_config("tiny", "nb_sft", common.omni_model("tiny"))
    sft.init_from = common.PREVIOUS
    common.set_data(sft, "tiny", {"image_qa": 2.0, "text_instruct": 1.0})
    sft.trainable = [("(vision|audio)/.*", None), (".*", common.schedule(1e-3))]
    for c in (align, sft):
        c.log_every = 1
    return [("align", align), ("sft", sft)]


@pytest.fixture(scope="module")
def run_two(corpus, tmp_path_factory):  # noqa: F811
    """The in-memory recipe, 3 steps a stage (``overrides``), evaluated on 2 held-out image questions."""
    work = str(tmp_path_factory.mktemp("two_stages"))
    overrides = {"*": {"num_steps": 3, "checkpoint.every": 3}, "sft": {"data.sources.0.weight": 3.0}}
    result = experiment.run_recipe(two_stages(), work, corpus=corpus, overrides=overrides, eval_limit=2, **QUIET)
    return result, overrides


def _logged(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_in_memory_recipe_tables_and_curves(run_two):
    result, _ = run_two
    assert result.stages == ["align", "sft"] and [r["status"] for r in result.rows] == ["trained", "trained"]
    for name in result.stages:
        with open(os.path.join(result.stage_dir(name), "stage.json")) as f:
            assert json.load(f)["num_steps"] == 3  # the '*' override
    with open(os.path.join(result.stage_dir("sft"), "stage.json")) as f:
        assert json.load(f)["config"]["data"]["sources"][0]["weight"] == 3.0  # the stage's own override
    table = result.eval_table()
    assert list(table.index) == ["align", "sft", "chance"]
    assert list(table.columns) == ["image_qa/accuracy"]  # the evaluable task the stages train on
    with open(os.path.join(result.workdir, "eval.json")) as f:
        stored = json.load(f)
    assert table.loc["sft", "image_qa/accuracy"] == stored["stages"][1]["metrics"]["image_qa/accuracy"]
    assert table.loc["chance", "image_qa/accuracy"] == stored["chance"]["image_qa/accuracy"]
    curves = result.curves()
    assert list(curves.columns) == ["stage", "step", "metric", "value"]
    for name in result.stages:
        logged = _logged(os.path.join(result.stage_dir(name), "metrics.jsonl"))
        assert [r["step"] for r in logged] == [1, 2, 3]
        part = curves[curves.stage == name]
        assert sorted(set(part.step)) == [1, 2, 3]
        for row in logged:  # every numeric value of every logged row, once
            numeric = {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)
                       and not isinstance(v, bool)}
            got = part[part.step == row["step"]].set_index("metric").value.to_dict()
            assert got == numeric, (name, row["step"])
    assert list(result.curves(["loss"]).metric.unique()) == ["loss"]


def test_rerun_skips_and_another_seed_differs(run_two, corpus, tmp_path):  # noqa: F811
    result, overrides = run_two
    again = experiment.run_recipe(two_stages(), result.workdir, corpus=corpus, overrides=overrides, eval_limit=2,
                                  **QUIET)
    assert [r["status"] for r in again.rows] == ["done before", "done before"]
    with pytest.raises(ValueError, match=r"other settings \(seed: None there, 1 now\); run each arm and seed"):
        experiment.run_recipe(two_stages(), result.workdir, corpus=corpus, overrides=overrides, seed=1, **QUIET)
    other = experiment.run_recipe(two_stages(), str(tmp_path / "seed1"), corpus=corpus, overrides=overrides, seed=1,
                                  evaluate=False, **QUIET)
    assert other.complete
    for name in result.stages:
        a, b = (c[c.stage == name].value.to_numpy() for c in (r.curves(["loss"]) for r in (result, other)))
        assert a.shape == b.shape == (3,) and not np.allclose(a, b), (name, a, b)
    with open(os.path.join(other.stage_dir("align"), "stage.json")) as f:
        config = json.load(f)["config"]
    assert config["seed"] == 1 and config["data"]["seed"] == 1


def test_bad_overrides_are_named(corpus, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"overrides\['align'\]: 'optimizer.clip_nrm': 'clip_nrm' is not a field.*"
                                         r"clip_norm"):
        experiment.run_recipe(two_stages(), str(tmp_path / "a"), corpus=corpus,
                              overrides={"align": {"optimizer.clip_nrm": 1.0}}, **QUIET)
    with pytest.raises(ValueError, match=r"overrides name \['3b'\], which are not stages.*align, sft"):
        experiment.run_recipe(two_stages(), str(tmp_path / "b"), corpus=corpus, overrides={"3b": {"num_steps": 1}},
                              **QUIET)
    assert not os.path.exists(tmp_path / "b" / "align")


def test_compare_and_plots(run_two, tmp_path):
    result, _ = run_two
    single = experiment.compare({"a": result, "b": result})
    assert list(single.index) == ["a", "b"] and list(single.columns) == ["image_qa/accuracy"]
    assert single.loc["a", "image_qa/accuracy"] == result.eval_table().loc["sft", "image_qa/accuracy"]
    seeds = experiment.compare({"a": [result, result], "b": result}, stage="align")
    assert seeds.loc["a", ("image_qa/accuracy", "n")] == 2 and seeds.loc["a", ("image_qa/accuracy", "std")] == 0
    assert seeds.loc["b", ("image_qa/accuracy", "mean")] == result.eval_table().loc["align", "image_qa/accuracy"]
    fig = experiment.plot_stages({"a": result, "b": [result, result]})
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 4  # two stages x two arms
    fig = experiment.plot_curves({"a": result}, metric="loss")
    (line,) = fig.axes[0].lines[:1]
    np.testing.assert_allclose(line.get_ydata(), result.curves(["loss"]).value.to_numpy())
    fig.savefig(tmp_path / "curves.png")
    with pytest.raises(ValueError, match="stage 'nope'.*was not evaluated"):
        experiment.compare({"a": result}, stage="nope")


def test_evaluate_returns_a_frame(run_two, corpus):  # noqa: F811
    result, _ = run_two
    frame = experiment.evaluate(result.stage_dir("sft"), corpus, tasks=["image_qa"], limit=2, log=lambda _: None)
    assert list(frame.index) == ["sft", "chance"]
    assert frame.loc["sft", "image_qa/accuracy"] == result.eval_table().loc["sft", "image_qa/accuracy"]


def test_eval_tasks_per_stage(corpus, tmp_path):  # noqa: F811
    """``eval_tasks={stage: tasks}``: the stages named are evaluated on their tasks, the others not at all."""
    result = experiment.run_recipe(two_stages(), str(tmp_path / "run"), corpus=corpus, eval_limit=2,
                                   eval_tasks={"sft": ["image_choice"]}, overrides={"*": {"num_steps": 1}}, **QUIET)
    table = result.eval_table(chance=False)
    assert list(table.index) == ["sft"] and list(table.columns) == ["image_choice/accuracy"]
    with pytest.raises(ValueError, match=r"eval_tasks names stages \['3b'\] that in-memory recipe does not have; "
                                         "stages: align, sft"):
        experiment.run_recipe(two_stages(), str(tmp_path / "other"), corpus=corpus, eval_tasks={"3b": ["asr"]}, **QUIET)


def test_two_corpora_in_one_process(corpus, tmp_path):  # noqa: F811
    """The corpus is an argument: two runs in one process read two corpora (their stages' data, their
    evaluations), and nothing under omnijax/ or experiments/ reads a location from the environment."""
    other = str(tmp_path / "other_corpus")
    synth.prepare(other, seed=7, size="tiny", progress=False)
    stages = two_stages()[:1]
    runs = {c: experiment.run_recipe(stages, str(tmp_path / f"run{i}"), corpus=c, eval_limit=2, eval_tasks=["image_qa"],
                                     overrides={"*": {"num_steps": 1}}, **QUIET) for i, c in enumerate((corpus, other))}
    for c, result in runs.items():
        with open(os.path.join(result.stage_dir("align"), "stage.json")) as f:
            config = json.load(f)["config"]
        assert config["data"]["sources"][0]["paths"] == os.path.join(c, "tasks", "train", "image_caption*")
        assert result.eval_table().loc["chance", "image_qa/accuracy"] == pytest.approx(
            evaluator.chance_levels(("image_qa",), c, 2)["image_qa/accuracy"])
    losses = [r.curves(["loss"]).value.iloc[0] for r in runs.values()]
    assert losses[0] != losses[1]  # different examples, same seed
    readers = subprocess.run(["grep", "-rnE", r"os\.environ|getenv", "omnijax", "experiments", "--include=*.py"],
                             capture_output=True, text=True).stdout.splitlines()
    clis = ("omnijax/demo.py", "omnijax/recipe.py", "omnijax/train.py", "experiments/pretrain_tiny/release.py")
    for line in readers:
        path = line.split(":")[0]
        if path == "omnijax/sharding.py":  # jax.distributed's coordinator, not a data location
            assert "JAX_" in line, line
        elif path in ("omnijax/compile.py", "omnijax/tpu_slices.py"):  # libtpu's and JAX's platform settings
            assert "LIBTPU" in line or "JAX_PLATFORMS" in line, line
        elif path == "omnijax/errors.py":  # the CLIs' traceback switch
            assert "DEBUG_ENV" in line, line
        else:
            assert path in clis, f"{line}: only the CLIs' defaults may read the environment"


def test_a_stage_trains_with_the_average_pooling_vision_connector(corpus, tmp_path):  # noqa: F811
    """``vision_connector=avg_pool`` (plain 2x2 averaging + MLP, the baseline of Ola's pooling) trains in Ola's stage
    1a: the pipeline lays out each image in the pooled grid's 22 tokens (74 with the MLP alone), as the model
    places its 4x4 tokens a view; the stage evaluates and its model directory reads back with the connector."""
    from experiments.ola import stage1a
    from omnijax.training.omni_task import omni_config

    arg = "tiny,vision_connector=avg_pool"
    layouts = {v: omni_config(stage1a.get_config(f"tiny,vision_connector={v}")).media_layout for v in ("mlp", "ola")}
    assert omni_config(stage1a.get_config(arg)).media_layout == layouts["ola"]
    assert (layouts["ola"].image_tokens(1), layouts["mlp"].image_tokens(1)) == (22, 74)
    c = stage1a.get_config(arg)
    c.log_every = 1
    result = experiment.run_recipe([("align", c)], str(tmp_path / "run"), corpus=corpus, steps=2, eval_limit=2,
                                   eval_tasks=["image_qa"], **QUIET)
    losses = result.curves(["loss"]).value.to_numpy()
    assert len(losses) == 2 and np.isfinite(losses).all() and 1.0 < losses[0] < 20.0
    assert list(result.eval_table(chance=False).columns) == ["image_qa/accuracy"]
    model = result.model("align")
    assert model.loaded.cfg.vision_connector.name == "avg_pool"
    params = model.loaded.params["vision_connector"]["projector"]
    assert params["linear_1"]["kernel"].shape == (64, 128) and params["linear_2"]["kernel"].shape == (128, 128)


def test_other_corpus_version_is_refused(tmp_path, monkeypatch):
    """The shipped checkpoints are pinned to the omni-synth version they were trained on."""
    pin = common.check_tiny_checkpoints  # reads TINY_CHECKPOINTS/omni_synth.json
    with open(os.path.join(common.TINY_CHECKPOINTS, common.PIN_FILE)) as f:
        shipped = json.load(f)["omni_synth_version"]
    assert shipped == synth.VERSION
    monkeypatch.setattr(synth.building, "VERSION", shipped + 1)  # an edited corpus generator
    corpus = str(tmp_path / "corpus")
    synth.prepare(corpus, size="tiny", progress=False)  # the recipe uses a prepared corpus of any size as it is
    message = (rf"omni-synth corpus in {re.escape(corpus)} is version {shipped + 1}, but the tiny pretrained "
               rf"checkpoints in .*checkpoints/tiny were trained on omni-synth version {shipped} with its tokenizer; "
               rf"rebuild the checkpoints for version {shipped + 1} with `python -m experiments.pretrain_tiny.release`")
    with pytest.raises(common.CorpusMismatchError, match=message):
        experiment.run_recipe("experiments/ola/recipe.py:tiny", str(tmp_path / "run"), corpus=corpus, **QUIET)
    assert not os.path.exists(tmp_path / "run" / "1a")  # refused before anything trained
    with pytest.raises(common.CorpusMismatchError, match=message):
        pin(corpus)


# -- asking a trained model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def omni_stage(corpus, tmp_path_factory):  # noqa: F811
    """A finished stage with every modality (Ola's 3b config, 2 steps from the shipped checkpoints)."""
    from experiments.ola import stage3b

    c = stage3b.get_config("tiny")
    with c.ignore_type():  # '@previous' -> the shipped checkpoints
        c.init_from = common.pretrained("tiny", ("llm", "vision", "audio"))
    result = experiment.run_recipe([("omni", c)], str(tmp_path_factory.mktemp("omni")), corpus=corpus, steps=2,
                                   evaluate=False, **QUIET)
    return result.stage_dir("omni")


def _cli(capsys, *args) -> str:
    capsys.readouterr()
    assert generate.main(list(args)) == 0
    return capsys.readouterr().out.strip()


def test_ask_equals_the_generate_cli(omni_stage, corpus, tmp_path, capsys):  # noqa: F811
    model = experiment.load_model(omni_stage)
    examples = {t: evaluator.read_task(corpus, t, 1)[0] for t in ("image_qa", "video_visual_qa")}
    flags = ["--model", omni_stage, "--max-new-tokens", "8"]
    # a PIL image
    image = Image.open(io.BytesIO(examples["image_qa"].media[0].data)).convert("RGB")
    image.save(tmp_path / "q.png")
    question = evaluator.question_of(examples["image_qa"])
    answer = model.ask(question, image=image, max_new_tokens=8)
    assert answer and answer == _cli(capsys, *flags, "--image", str(tmp_path / "q.png"), "--prompt", question)
    # a numpy waveform at 44.1 kHz, stereo: a narration, resampled and mixed down by the pipeline
    speech, rate = sf.read(io.BytesIO(examples["video_visual_qa"].media[1].data), dtype="float32")
    t = np.arange(int(len(speech) * 44100 / rate)) / 44100
    wave = np.interp(t, np.arange(len(speech)) / rate, speech).astype(np.float32)
    stereo = np.stack([wave, 0.5 * wave], axis=1)
    sf.write(tmp_path / "a.wav", stereo, 44100, subtype="FLOAT")
    prompt = synth.ASR_PROMPT
    answer = model.ask(prompt, audio=(stereo, 44100), max_new_tokens=8)
    assert answer and answer == _cli(capsys, *flags, "--audio", str(tmp_path / "a.wav"), "--prompt", prompt)
    # a list of video frames with its audio track
    with av.open(io.BytesIO(examples["video_visual_qa"].media[0].data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with open(tmp_path / "v.mp4", "wb") as f:
        f.write(media.encode_mp4(np.stack(frames), 4.0))
    question = evaluator.question_of(examples["video_visual_qa"])
    answer = model.ask(question, video=(frames, (stereo, 44100)), max_new_tokens=8)
    # (a model of 2 steps may end this answer at once: '' both ways)
    assert answer == _cli(capsys, *flags, "--video", str(tmp_path / "v.mp4"), "--audio", str(tmp_path / "a.wav"),
                          "--prompt", question)
    # batched, the same answers
    many = model.ask_many([dict(prompt=evaluator.question_of(examples["image_qa"]), image=image),
                           dict(prompt=prompt, audio=(stereo, 44100))], max_new_tokens=8)
    assert many == [model.ask(evaluator.question_of(examples["image_qa"]), image=image, max_new_tokens=8),
                    model.ask(prompt, audio=(stereo, 44100), max_new_tokens=8)]


def test_ask_errors_name_the_argument(omni_stage):
    model = experiment.load_model(omni_stage)
    with pytest.raises(ValueError, match=r"audio=: give audio as \(waveform, sampling_rate\)"):
        model.ask("q", audio=np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match=r"samples come first \(\[samples, channels\]\)"):
        model.ask("q", audio=(np.zeros((2, 16000), np.float32), 16000))
    with pytest.raises(ValueError, match=r"image=: give a PIL image or a uint8 array"):
        model.ask("q", image=np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="H.264 needs an even width"):
        model.ask("q", video=[np.zeros((7, 8, 3), np.uint8)] * 2)


def test_the_demo_model_answers_long_audio_and_refuses_it_in_seconds(omni_stage):
    """The issue's case: 40 s of speech to Ola's stage 3b (tiny preset: 4 s windows, audio_slots=4, seq_len 256)
    is answered, its slots grown to 16 and its prompt past the stage's seq_len; 3 min is over the model's 25
    windows of 4 s, refused in seconds."""
    model = experiment.load_model(omni_stage)
    t = np.arange(40 * 16000, dtype=np.float32) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert isinstance(model.ask(synth.ASR_PROMPT, audio=(tone, 16000), max_new_tokens=4), str)
    gen = model.generator(1, 4)
    ids, items = gen.prepare(question_example(synth.ASR_PROMPT, audio=(tone, 16000)))
    assert items[0].slots == 10 and len(ids) > 510 and gen.batch([(ids, items)], 1)["audio"].shape[1] == 16
    with pytest.raises(ValueError, match=r"^the audio is 180\.0 s; this model takes at most 100 s \(25 windows of "
                                         r"4 s\): cut it or raise model\.max_audio_windows$"):
        model.ask(synth.ASR_PROMPT, audio=(np.tile(tone, 9)[:180 * 16000], 16000), max_new_tokens=4)
