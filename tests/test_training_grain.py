"""The trainer on the Grain pipeline (``c.data.source = 'grain'``): a tiny Ola-layout omni stage on the
tiny omni-synth corpus, 4 steps straight = 2 steps + restart (a new ``run`` on the same workdir) + 2
steps, per-step losses bitwise: the pipeline's iterator state goes through the trainer's checkpoint."""

import glob
import os
import re

import ml_collections as mlc
import numpy as np
import pytest
from training_fixtures import compile_once, corpus

from data_pipelines import schema, synth, tokenizer as tok
from omnijax import launch
from omnijax.training import trainer
from omnijax.training.config import base_config
from omnijax.training.stages import StageConfigError

pytestmark = pytest.mark.usefixtures("compile_once")

TASKS = ("image_caption", "asr")
IMAGE_ID, VIDEO_ID, AUDIO_ID = (tok.SYNTH_TOKEN_IDS[tok.PLACEHOLDER_TOKENS[m]] for m in ("image", "video", "audio"))


def grain_config(corpus: str, **data) -> mlc.ConfigDict:
    """Ola's architecture at toy sizes on the corpus's media: 32-pixel images (8-pixel patches, 2x2
    pooled grid), 1 s audio windows (100 mel frames -> 50 encoder outputs -> 5 tokens)."""
    c = base_config()
    c.name = "tiny_grain"
    c.model = mlc.ConfigDict(dict(
        name="omni",
        llm=dict(vocab_size=tok.DEFAULT_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                 num_kv_heads=2),
        vision=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    use_head=False),
        vision_connector="ola",
        audio=dict(num_mel_bins=80, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                   max_source_positions=50),
        audio_connector="frame_stack",
        frame_stack_hidden=32,
        layout="ola",
        image_token_id=IMAGE_ID, video_token_id=None, audio_token_id=AUDIO_ID,
    ))
    # A schedule of its own length: the 2-step first half and the 4-step run step with the same lr.
    c.trainable = [(".*", dict(lr=1e-2, warmup_steps=0, decay="cosine", steps=20))]
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.batch_size, c.seq_len = 8, 128
    c.media.update(image_slots=2, audio_slots=4)
    c.num_tasks, c.task_names = len(TASKS), TASKS
    c.data = mlc.ConfigDict(dict(
        source="grain", seed=3, workers=0, tokenizer=os.path.join(corpus, tok.SYNTH_TOKENIZER_DIR),
        sources=[dict(name=t, paths=synth.task_shards(corpus, "train")[t] + "*", weight=1.0) for t in TASKS],
        pipeline=dict(too_long="truncate")) | data)
    c.num_steps = 4
    c.log_every = 1
    c.checkpoint.update(every=2, keep=3, async_save=False)
    return c


def losses(result) -> list[float]:
    return [r["loss"] for r in result.metrics]


def length_report(capsys) -> str:
    """The line a stage on the pipeline ends with: records dropped for length per source."""
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("stage 'tiny_grain': data: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_grain_pipeline_resumes_through_the_trainer_checkpoint(corpus, tmp_path, capsys):
    c = grain_config(corpus)
    straight = launch.run(c, str(tmp_path / "straight"))
    report = length_report(capsys)
    assert re.fullmatch(r"stage 'tiny_grain': data: records dropped for length \(too_long='truncate'\) per source: "
                        r"image_caption 0 of \d+, asr 0 of \d+; a row holds 128 tokens, 2 views or tiles of image, "
                        r"4 s \(4 windows of 1 s\) of audio; an audio item at most 25 s "
                        r"\(model.max_audio_windows=25\)", report), report
    assert straight.status == "finished" and straight.step == 4
    want = losses(straight)
    assert len(want) == 4 and all(np.isfinite(want)), want

    split = str(tmp_path / "split")
    first = launch.run(_with_steps(c, 2), split)
    assert first.step == 2 and losses(first) == want[:2]
    length_report(capsys)
    second = launch.run(c, split)  # a new run on the same workdir: resumes params, optimizer and pipeline
    assert second.step == 4
    assert length_report(capsys) == report  # the counts of the whole stage, through the checkpoint
    got = losses(first) + losses(second)
    assert got == want, (got, want)  # bitwise

    # The data item of the checkpoint is the pipeline's JSON state (its position and counters).
    stage = trainer.setup(c)
    data = launch.build_data(stage)
    try:
        state = data.get_state()
        assert state["workers"] == 0 and state["totals"]["records"] == 0
    finally:
        data.close()


def _with_steps(c, n):
    c = c.copy_and_resolve_references()
    c.num_steps = n
    return c


def test_grain_config_errors(corpus):
    c = grain_config(corpus)
    c.data.sources = []
    with pytest.raises(StageConfigError, match="c.data.sources is empty"):
        trainer.setup(c)
    c = grain_config(corpus)
    c.data.tokenizer = ""
    with pytest.raises(StageConfigError, match="c.data.tokenizer"):
        trainer.setup(c)
    c = grain_config(corpus)
    c.data.sources = [dict(name="none", paths=os.path.join(corpus, "nothing-*"))]
    stage = trainer.setup(c)
    with pytest.raises(StageConfigError, match="no shard matches"):
        launch.build_data(stage)


def get_config(arg: str = "") -> mlc.ConfigDict:
    """For ``python -m omnijax.train --config tests/test_training_grain.py --corpus DIR --data-root DIR``: the
    stage above, one step, its captions read from ``@data/caption/shards*``."""
    c = grain_config("@corpus")
    c.data.sources[0]["paths"] = "@data/caption/shards*"
    c.num_steps = 1
    return c


def test_train_cli_stops_on_a_truncated_shard_or_leaves_it_out_when_allowed(corpus, tmp_path, capsys):
    """The captions as 4 shards, one cut short: ``omnijax.train`` stops with one line naming the shard (exit 2);
    with ``max_bad_fraction`` above the shard's share (``--config.data.pipeline={...}``) it says it leaves the
    shard out and trains."""
    from omnijax import train

    captions = list(schema.read_shards(glob.glob(synth.task_shards(corpus, "train")["image_caption"] + "*")))
    with schema.ShardWriter(str(tmp_path / "data" / "caption" / "shards"), 4) as writer:
        for example in captions:
            writer.write(example)
    cut = writer.paths[1]
    os.truncate(cut, os.path.getsize(cut) - 3000)
    argv = ["--config", os.path.abspath(__file__), "--workdir", str(tmp_path / "w"), "--corpus", corpus,
            "--data-root", str(tmp_path / "data")]
    assert train.main(argv) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert out == "" and len(lines) == 1 and lines[0] == err.splitlines()[-1], err
    readable = len(captions) - writer.counts[1]
    asr = sum(schema.num_records(p) for p in glob.glob(synth.task_shards(corpus, "train")["asr"] + "*"))
    share = readable / 3 / (readable + asr + readable / 3)  # the cut shard as its set's mean records a shard
    assert lines[0].startswith(f"error: {cut}: truncated: ") and lines[0].endswith(
        f"max_bad_fraction={share:.3g} or more in c.data.pipeline, now 0.01"), (lines, share)
    allow = "--config.data.pipeline={'too_long': 'truncate', 'max_bad_fraction': 0.3}"
    assert train.main([*argv, allow]) == 0
    out, err = capsys.readouterr()
    assert f"warning: {cut}: truncated: " in err and "; left out, counted as about " in err, err
    assert out.endswith(f"stage 'tiny_grain': finished at step 1 ({tmp_path / 'w'})\n"), out
