"""The Grain input pipeline on the omni-synth corpus: batch contract, placeholder counts, features against
transformers' processors, determinism and resume in a new process, mixture shares, per-host sharding,
bad records and over-long examples; and the omni-synth tokenizer."""

import collections
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import types

import av
import msgpack
import numpy as np
import pytest
import soundfile as sf
from array_record.python import array_record_module
from PIL import Image
from transformers import WhisperFeatureExtractor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from data_pipelines import schema, synth, tokenizer as tok
from data_pipelines.pipeline import (BAD_REASONS, BadRecordsError, Pipeline, PipelineConfig, Prepare, Records,
                                     Source, open_sources)
from omnijax import media_tokens
from omnijax.errors import DamagedFileError
from omnijax.batch import MediaBudget, check_batch
from omnijax.media_layouts import AnyResLayout, MediaLayout, OlaLayout, Qwen2AudioLayout
from training_fixtures import corpus

IMAGE_ID, VIDEO_ID, AUDIO_ID = (tok.SYNTH_TOKEN_IDS[tok.PLACEHOLDER_TOKENS[m]] for m in ("image", "video", "audio"))
# Tiny stage: 32-pixel views, 4 frames per video, 1 s audio windows (100 mel frames, 5 tokens each).
OLA = OlaLayout(IMAGE_ID, VIDEO_ID, AUDIO_ID, grid=(2, 2), chunk_tokens=5)
BUDGET = MediaBudget(image_slots=4, image_size=32, video_slots=8, video_size=32, audio_slots=8, n_mels=80,
                     audio_frames=100)
TESTS = os.path.dirname(os.path.abspath(__file__))


def task_shards(corpus: str, task: str) -> tuple[str, ...]:
    return tuple(schema.shard_paths(synth.task_shards(corpus, "train")[task], 1))


def omni_config(corpus: str, tasks=synth.TASKS, **kw) -> PipelineConfig:
    """A stage over the omni-synth tasks (one source each, equal weights) in the tiny Ola layout."""
    sources = tuple(Source(t, task_shards(corpus, t)) for t in tasks)
    base = dict(sources=sources, tokenizer=os.path.join(corpus, tok.SYNTH_TOKENIZER_DIR), batch_size=4,
                seq_len=256, budget=BUDGET, layout=OLA, video_frames=4, task_names=synth.TASKS,
                process_index=0, process_count=1)
    return PipelineConfig(**(base | kw))


def model_cfg(config: PipelineConfig):
    """What `check_batch` reads from an `OmniConfig`."""
    return types.SimpleNamespace(budget=config.budget, media_layout=config.layout, vocab_size=tok.DEFAULT_VOCAB_SIZE)


def text_example(i: int, task: str, question: str, answer: str, source: str = "text") -> schema.Example:
    return schema.Example(f"{source}/{i}", source, task,
                          [schema.Turn("user", question), schema.Turn("assistant", answer)])


def write_records(prefix: str, records) -> tuple[str, ...]:
    """Write `Example`s or raw bytes (records the schema would refuse) into one shard."""
    path = schema.shard_paths(prefix, 1)[0]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = array_record_module.ArrayRecordWriter(path, schema.ARRAY_RECORD_OPTIONS)
    for record in records:
        writer.write(record.to_bytes() if isinstance(record, schema.Example) else record)
    writer.close()
    return (path,)


def batches(pipeline, n):
    return [next(pipeline) for _ in range(n)]


def segments(batch):
    """(row, segment id, slice) of every packed example."""
    for b, row in enumerate(batch["segment_ids"]):
        for s in np.unique(row[row > 0]):
            where = np.flatnonzero(row == s)
            yield b, int(s), slice(int(where[0]), int(where[-1]) + 1)


def item_runs(ids, token_id):
    """Placeholder runs of one id in a row, as (start, length)."""
    where = np.flatnonzero(ids == token_id)
    if not len(where):
        return []
    breaks = np.flatnonzero(np.diff(where) > 1) + 1
    return [(int(r[0]), len(r)) for r in np.split(where, breaks)]


def prepare(config: PipelineConfig, source: Source):
    tokenizer = tok.load_tokenizer(config.tokenizer)
    records = Records(source.paths)
    return Prepare(config, source, records, tokenizer), records, tokenizer


# ---------------------------------------------------------------- tokenizer


def test_synth_tokenizer_is_deterministic_chatml_with_documented_ids(corpus, tmp_path):
    again = tok.build_synth_tokenizer(corpus, str(tmp_path / "again"))
    first, second = os.path.join(corpus, "tokenizer", "tokenizer.json"), tmp_path / "again" / "tokenizer.json"
    with open(first) as a, open(second) as b:
        assert a.read() == b.read()
    assert [again.convert_tokens_to_ids(t) for t in tok.SPECIAL_TOKENS] == [0, 1, 2, 3, 4, 5]
    assert again.eos_token == tok.IM_END and again.pad_token == tok.ENDOFTEXT
    assert 300 < len(again) <= tok.DEFAULT_VOCAB_SIZE
    # The pipeline's ChatML is the tokenizer's chat template, placeholders as their pad tokens.
    config = omni_config(corpus)
    prep, records, tokenizer = prepare(config, config.sources[5])  # video_visual_qa
    example = schema.Example.from_bytes(records[0][1])
    text, spans, _ = prep.chat.text(example)
    pads = {"<video>": "<|video_pad|>", "<audio>": "<|audio_pad|>"}
    messages = [{"role": t.role, "content": re.sub("<video>|<audio>", lambda m: pads[m.group()], t.text)}
                for t in example.turns]
    assert text == tokenizer.apply_chat_template(messages, tokenize=False)
    assert [text[lo:hi] for lo, hi in spans] == [example.turns[1].text + tok.IM_END]


# ---------------------------------------------------------------- features and placeholders


def test_example_features_match_transformers_processors_and_counts(corpus):
    config = omni_config(corpus)
    siglip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    whisper = WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    sources = {s.name: s for s in config.sources}

    prep, records, tokenizer = prepare(config, sources["image_qa"])
    example = schema.Example.from_bytes(records[0][1])
    out = prep(records[0])
    image = Image.open(io.BytesIO(example.media[0].data)).convert("RGB")
    want = siglip(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(out["images"][0], want, atol=1e-6)
    assert [n for _, n in item_runs(out["input_ids"], IMAGE_ID)] == [OLA.image_tokens(1)]
    learned = out["targets"][out["loss_weights"] > 0]
    assert tokenizer.decode(learned) == example.turns[1].text + tok.IM_END

    prep, records, _ = prepare(config, sources["video_audio_qa"])
    example = schema.Example.from_bytes(records[1][1])
    out = prep(records[1])
    with av.open(io.BytesIO(example.media[0].data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picked = np.linspace(0, len(frames) - 1, 4, dtype=int)
    want = np.stack([siglip(Image.fromarray(frames[i]), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
                     for i in picked])
    np.testing.assert_allclose(out["videos"], want, atol=1e-6)
    assert [n for _, n in item_runs(out["input_ids"], VIDEO_ID)] == [OLA.video_tokens(4)]

    prep, records, _ = prepare(config, sources["asr"])
    for i in range(3):
        example = schema.Example.from_bytes(records[i][1])
        out = prep(records[i])
        waveform, rate = sf.read(io.BytesIO(example.media[0].data), dtype="float32")
        assert rate == 16_000
        chunks = [waveform[s:s + 16_000] for s in range(0, len(waveform), 16_000)]
        assert len(chunks) >= 2  # the clips are 1-2 s: several 1 s windows
        for c, chunk in enumerate(chunks):
            hf = whisper(chunk, sampling_rate=16_000, return_attention_mask=True, return_tensors="np")
            np.testing.assert_allclose(out["audio"][c], hf["input_features"][0], atol=1e-4)
            assert out["audio_valid_frames"][c] == hf["attention_mask"][0].sum()
        assert out["audio_item"].tolist() == [0] * len(chunks)
        assert [n for _, n in item_runs(out["input_ids"], AUDIO_ID)] == [OLA.audio_tokens(len(chunks))]


LLAVA = AnyResLayout(image_token_id=IMAGE_ID, base_image_size=32, patch_size=8,
                     pinpoints=media_tokens.grid_pinpoints(32, 3), max_num_patches=9)
QWEN2_AUDIO = Qwen2AudioLayout(audio_token_id=AUDIO_ID)
IMAGE_TASKS = ("image_caption", "image_qa", "text_instruct")
LAYOUTS = {  # layout, budget, tasks, other config fields
    "ola": (OLA, BUDGET, synth.TASKS, {}),
    # 64 x 64 images on 32-pixel tiles: thumbnail + 2 x 2 tiles, five views each
    "ola_dynamic_tiles": (OLA, MediaBudget(image_slots=10, image_size=32), IMAGE_TASKS, {"image_tiling": "dynamic"}),
    "llava_onevision": (LLAVA, MediaBudget(image_slots=10, image_size=32), IMAGE_TASKS, {}),
    "qwen2_audio": (QWEN2_AUDIO, MediaBudget(audio_slots=8, n_mels=80, audio_frames=100), ("asr", "text_instruct"), {}),
}


def item_tokens(layout: MediaLayout, m: str, slots: int, valid=None, plan=None) -> int:
    """The shared count function for one item of `slots` slots."""
    if m == "image":
        if layout.image_plans:
            return int(media_tokens.anyres_plan_tokens(plan, layout.tile_side))
        return layout.image_tokens(slots)
    if m == "video":
        return layout.video_tokens(slots)
    return layout.audio_tokens(slots, valid_frames=valid)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_batches_follow_the_contract_and_placeholder_counts(corpus, name):
    layout, budget, tasks, extra = LAYOUTS[name]
    config = omni_config(corpus, tasks=tasks, layout=layout, budget=budget, **extra)
    tokenizer = tok.load_tokenizer(config.tokenizer)
    seen = collections.Counter()
    with Pipeline(config) as pipeline:
        for batch in batches(pipeline, 3):
            check_batch(batch, model_cfg(config))
            for m, field in (("image", "images"), ("video", "videos"), ("audio", "audio")):
                if not budget.slots(m):
                    continue
                for b in range(config.batch_size):
                    item = batch[f"{m}_item"][b]
                    where = np.flatnonzero(batch["input_ids"][b] == layout.token_id(m))
                    start = 0
                    for k in range(item.max(initial=-1) + 1):
                        s = np.flatnonzero(item == k)
                        valid = batch["audio_valid_frames"][b, s] if m == "audio" else None
                        plan = batch["image_plan"][b, s[0]] if "image_plan" in batch else None
                        n = item_tokens(layout, m, len(s), valid, plan)
                        run = where[start:start + n]  # item k's placeholder tokens: one run in one example
                        assert len(run) == n and run[-1] - run[0] == n - 1
                        assert len(np.unique(batch["segment_ids"][b, run])) == 1
                        start += n
                        if m == "video" or name == "ola_dynamic_tiles":
                            assert len(s) == (4 if m == "video" else 5)
                        if m == "audio":  # whole windows but the last
                            assert (valid[:-1] == 100).all() and 1 <= valid[-1] <= 100
                        else:
                            assert np.abs(batch[field][b, s]).max() <= 1.0
                        seen[m] += 1
                    assert start == len(where)
            for b, _, sl in segments(batch):
                learned = batch["targets"][b, sl][batch["loss_weights"][b, sl] > 0]
                assert tokenizer.decode(learned).endswith(tok.IM_END)
                assert batch["positions"][b, sl].tolist() == list(range(sl.stop - sl.start))
                assert batch["targets"][b, sl][:-1].tolist() == batch["input_ids"][b, sl][1:].tolist()
                assert batch["targets"][b, sl.stop - 1] == 0 and batch["loss_weights"][b, sl.stop - 1] == 0
        metrics = pipeline.metrics
    assert all(seen[m] for m in ("image", "video", "audio") if budget.slots(m)), seen
    assert metrics["examples"] > 0 and metrics["bad_fraction"] == 0


# ---------------------------------------------------------------- determinism and resume

RESUME_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_pipeline import omni_config
from data_pipelines.pipeline import Pipeline
config = omni_config({corpus!r}, workers=1)
out = {{}}
with Pipeline(config) as p:
    for i in range({k}):
        out.update({{f"fresh{{i}}/{{n}}": v for n, v in next(p).items()}})
with Pipeline(config) as p:
    p.set_state(json.load(open({state!r})))
    out.update({{f"resumed/{{n}}": v for n, v in next(p).items()}})
    metrics = p.metrics
np.savez({out!r}, **out)
json.dump(metrics, open({metrics!r}, "w"))
"""


def test_same_seed_same_batches_and_resume_in_a_new_process(corpus, tmp_path):
    k = 2
    config = omni_config(corpus, workers=1)
    with Pipeline(config) as pipeline:
        first = batches(pipeline, k)
        state = pipeline.get_state()
        with open(tmp_path / "state.json", "w") as f:
            json.dump(state, f)
        expected = next(pipeline)
        metrics = pipeline.metrics
    script = RESUME_SCRIPT.format(tests=TESTS, corpus=corpus, k=k, state=str(tmp_path / "state.json"),
                                  out=str(tmp_path / "out.npz"), metrics=str(tmp_path / "metrics.json"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for i, batch in enumerate(first):
        for name, value in batch.items():
            np.testing.assert_array_equal(got[f"fresh{i}/{name}"], value, err_msg=f"batch {i} {name}")
    for name, value in expected.items():
        np.testing.assert_array_equal(got[f"resumed/{name}"], value, err_msg=f"resumed batch {k} {name}")
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == metrics
    with Pipeline(omni_config(corpus, workers=0)) as other:
        with pytest.raises(ValueError, match="workers saved 1, now 0"):
            other.set_state(state)


def test_state_travels_through_an_orbax_checkpoint_as_the_trainer_saves_it(corpus, tmp_path):
    import orbax.checkpoint as ocp

    config = omni_config(corpus, tasks=("image_qa", "text_instruct"), batch_size=2)
    with Pipeline(config) as pipeline:
        batches(pipeline, 2)
        manager = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_handlers={"data": pipeline.checkpoint_handler()})
        manager.save(2, args=ocp.args.Composite(data=pipeline.save_args()))
        manager.wait_until_finished()
        expected = batches(pipeline, 2)
    with Pipeline(config) as pipeline:
        manager = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_handlers={"data": pipeline.checkpoint_handler()})
        pipeline.restored(manager.restore(2, args=ocp.args.Composite(data=pipeline.restore_args())).data)
        for want, got in zip(expected, batches(pipeline, 2), strict=True):
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ---------------------------------------------------------------- mixture and hosts


@pytest.fixture(scope="module")
def text_sources(corpus, tmp_path_factory):
    """Three text-only sources, one task each."""
    out = str(tmp_path_factory.mktemp("text"))
    sources = {}
    for name in ("a", "b", "c"):
        examples = [text_example(i, name, f"Say {name} {i}.", f"{name} {i}", source=name) for i in range(50)]
        sources[name] = write_records(os.path.join(out, name), examples)
    return sources


def task_shares(pipeline, at_least: int, names) -> tuple[np.ndarray, int]:
    counts = np.zeros(len(names))
    while counts.sum() < at_least:
        batch = next(pipeline)
        for b, _, sl in segments(batch):
            counts[batch["task_ids"][b, sl.start]] += 1
    return counts / counts.sum(), int(counts.sum())


def test_mixture_follows_weights_and_weights_may_change_on_resume(corpus, text_sources):
    names = ("a", "b", "c")

    def config(weights):
        sources = tuple(Source(n, text_sources[n], w) for n, w in zip(names, weights, strict=True))
        return omni_config(corpus, sources=sources, task_names=names, budget=MediaBudget(), batch_size=8, seq_len=512)

    with Pipeline(config((0.5, 0.3, 0.2))) as pipeline:
        shares, n = task_shares(pipeline, 2000, names)
        assert n >= 2000
        np.testing.assert_allclose(shares, [0.5, 0.3, 0.2], atol=0.02)
        metrics = pipeline.metrics
        per_source = np.array([metrics[f"records/{s}"] for s in names])
        np.testing.assert_allclose(per_source / per_source.sum(), [0.5, 0.3, 0.2], atol=0.02)
        state = pipeline.get_state()
    with Pipeline(config((0.1, 0.2, 0.7))) as pipeline:
        pipeline.set_state(state)
        shares, _ = task_shares(pipeline, 2000, names)
    np.testing.assert_allclose(shares, [0.1, 0.2, 0.7], atol=0.02)


def test_hosts_read_disjoint_examples_that_cover_the_single_host_stream(corpus, tmp_path):
    records = [text_example(i, "t", f"Repeat record {i}.", f"record {i}") for i in range(40)]
    paths = write_records(str(tmp_path / "records"), records)
    tokenizer = tok.load_tokenizer(os.path.join(corpus, "tokenizer"))

    def stream(index, count, rows):
        # One example per row keeps the rows in the order the examples arrive.
        config = omni_config(corpus, sources=(Source("t", paths),), budget=MediaBudget(), max_examples_per_row=1,
                             packing_bins=4, process_index=index, process_count=count)
        with Pipeline(config) as pipeline:
            ids = [row for batch in batches(pipeline, rows // 4) for row in batch["input_ids"]]
        return [int(re.search(r"Repeat record (\d+)", tokenizer.decode(row)).group(1)) for row in ids]

    single, host0, host1 = stream(0, 1, 40), stream(0, 2, 20), stream(1, 2, 20)
    assert sorted(single) == list(range(40))  # one shuffled epoch
    assert host0 == single[0::2] and host1 == single[1::2]
    assert not set(host0) & set(host1) and sorted(host0 + host1) == list(range(40))


# ---------------------------------------------------------------- bad and over-long records


def _empty_mp4() -> bytes:
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format="mp4")
    stream = container.add_stream("libx264", rate=4)
    stream.width = stream.height = 16
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    container.close()
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bad_shard(corpus, tmp_path_factory):
    """40 good text examples with 6 bad records at known indices: truncated FLAC, corrupt JPEG, a video
    with no frames, placeholders that do not match their media (2 kinds) and bytes that are not a record."""
    flac = next(e for e in schema.read_shards(task_shards(corpus, "asr"))).media[0].data
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    mismatch = {"schema_version": 1, "id": "bad/mismatch", "source": "bad", "task": "t", "media": [],
                "turns": [{"role": "user", "text": "<image> and <image>?", "media": []},
                          {"role": "assistant", "text": "no", "media": []}]}

    def media_example(i, kind, fmt, data):
        return schema.Example(f"bad/{i}", "bad", "t", [
            schema.Turn("user", f"{schema.PLACEHOLDERS[kind]}\nWhat is it?", [0]), schema.Turn("assistant", "x")],
            [schema.Media(kind, fmt, data)])

    bad = {
        3: ("corrupt_audio", media_example(3, "audio", "flac", flac[: len(flac) // 2])),
        9: ("corrupt_image", media_example(9, "image", "jpeg", jpeg)),
        15: ("corrupt_video", media_example(15, "video", "mp4", _empty_mp4())),
        21: ("placeholder_mismatch", msgpack.packb(mismatch, use_bin_type=True)),
        27: ("placeholder_mismatch", text_example(27, "t", "What is <|image_pad|>?", "a token")),
        33: ("bad_record", b"\x00 not a record"),
    }
    records, good = [], 0
    for i in range(46):
        if i in bad:
            records.append(bad[i][1])
        else:
            records.append(text_example(i, "t", f"Good question {good}?", f"good {good}"))
            good += 1
    paths = write_records(str(tmp_path_factory.mktemp("bad") / "bad"), records)
    return paths, {i: reason for i, (reason, _) in bad.items()}


def test_bad_records_are_skipped_and_counted(corpus, bad_shard):
    paths, bad = bad_shard
    config = omni_config(corpus, sources=(Source("bad", paths),), max_bad_fraction=0.2, bad_window=50)
    with Pipeline(config) as pipeline:
        while pipeline.metrics["records"] < 46:
            check_batch(next(pipeline), model_cfg(config))
        metrics = pipeline.metrics
    want = collections.Counter(bad.values())
    for reason in BAD_REASONS:
        assert want[reason] <= metrics[reason] <= 2 * want[reason], (reason, metrics)
    assert metrics["examples"] + sum(metrics[r] for r in BAD_REASONS) == metrics["records"]
    assert 0 < metrics["bad_fraction"] < 0.2


def test_too_many_bad_records_stop_the_run_naming_shard_and_record(corpus, bad_shard):
    paths, bad = bad_shard
    config = omni_config(corpus, sources=(Source("bad", paths),), max_bad_fraction=0.01, bad_window=100)
    with Pipeline(config) as pipeline, pytest.raises(BadRecordsError) as error:
        batches(pipeline, 20)
    message = str(error.value)
    named = {int(i) for i in re.findall(rf"shard {re.escape(paths[0])} record (\d+)", message)}
    assert len(named) == 2 and named <= set(bad), message
    assert "2 of the last 100 records were bad" in message


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    """40 text examples written round-robin into 4 shards (10 each), the third cut short as a copy that stopped."""
    prefix = str(tmp_path_factory.mktemp("damaged") / "text")
    with schema.ShardWriter(prefix, 4) as writer:
        for i in range(40):
            writer.write(text_example(i, "t", f"Good question {i}?", f"good {i}"))
    os.truncate(writer.paths[2], os.path.getsize(writer.paths[2]) - 3000)
    return tuple(writer.paths)


def test_a_damaged_shard_stops_the_pipeline_unless_max_bad_fraction_allows_it(corpus, four_shards, capsys):
    """The cut shard counts as its source's 10 records a shard, 25% of 40: the default max_bad_fraction (1%)
    stops with one line naming the shard, what is wrong and both fixes; 0.3 leaves it out, saying so."""
    config = omni_config(corpus, sources=(Source("text", four_shards),))
    with pytest.raises(DamagedFileError) as error:
        Pipeline(config)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{four_shards[2]}: truncated: ") and message.endswith(
        "; rebuild the shard (python -m data_pipelines.build, or data_pipelines.synth) or copy it again; or train "
        "without it (about 10 records of source 'text', with the other damaged shards 25.0% of the records): "
        "max_bad_fraction=0.25 or more in c.data.pipeline, now 0.01"), message
    allowed = dataclasses.replace(config, max_bad_fraction=0.3)
    records, damaged = open_sources(allowed, say=lambda line: None)
    assert records["text"].paths == four_shards[:2] + four_shards[3:] and len(records["text"]) == 30
    assert [e.path for e in damaged] == [four_shards[2]]
    capsys.readouterr()
    with Pipeline(allowed) as pipeline:
        check_batch(next(pipeline), model_cfg(allowed))
        assert pipeline.metrics["damaged_shards"] == 1
    warning = capsys.readouterr().err
    assert warning.startswith(f"warning: {four_shards[2]}: truncated: ") and warning.endswith(
        "; left out, counted as about 10 records of source 'text' bad (damaged shards hold 25.0% of the records, "
        "max_bad_fraction=0.3)\n") and warning.count("\n") == 1, warning


def test_a_record_that_does_not_read_is_a_bad_record(corpus, tmp_path):
    """A byte flipped inside a shard: the shard opens, the record whose chunk fails its hash is skipped as a
    bad record naming the shard and record, the others read."""
    paths = write_records(str(tmp_path / "flipped"), [text_example(i, "t", f"Question {i}?", f"answer {i}")
                                                      for i in range(20)])
    data = bytearray(open(paths[0], "rb").read())
    data[1000] ^= 0xFF
    open(paths[0], "wb").write(bytes(data))
    config = omni_config(corpus, sources=(Source("flipped", paths),))
    prep, records, _ = prepare(config, config.sources[0])
    out = [prep(records[i]) for i in range(len(records))]
    skipped = [o for o in out if "skip" in o]
    assert len(skipped) == 1 and len(out) == 20, skipped
    assert skipped[0]["skip"] == "bad_record" and skipped[0]["where"].startswith(f"shard {paths[0]} record ")
    assert skipped[0]["detail"].startswith("the record does not read (Corrupted Riegeli/records file: chunk ")


@pytest.fixture(scope="module")
def long_shard(tmp_path_factory):
    """Short examples, examples with a long answer (truncation keeps part of it) and examples with a
    long question (truncation leaves nothing to learn)."""
    records = []
    for i in range(30):
        if i % 3 == 1:
            records.append(text_example(i, "t", f"Count {i}.", " ".join(["LONGANSWER"] * 80)))
        elif i % 3 == 2:
            records.append(text_example(i, "t", " ".join(["LONGQUESTION"] * 80), "ok"))
        else:
            records.append(text_example(i, "t", f"Short {i}?", f"short {i}"))
    return write_records(str(tmp_path_factory.mktemp("long") / "long"), records)


@pytest.mark.parametrize("policy", ["drop", "truncate"])
def test_over_long_examples_follow_the_policy(corpus, long_shard, policy):
    config = omni_config(corpus, sources=(Source("long", long_shard),), seq_len=64, budget=MediaBudget(),
                         too_long=policy)
    tokenizer = tok.load_tokenizer(config.tokenizer)
    texts = []
    with Pipeline(config) as pipeline:
        for batch in batches(pipeline, 6):
            check_batch(batch, model_cfg(config))
            texts += [tokenizer.decode(batch["input_ids"][b, sl]) for b, _, sl in segments(batch)]
        metrics = pipeline.metrics
    assert not any("LONGQUESTION" in t for t in texts)  # nothing to learn left: dropped either way
    assert metrics["dropped_too_long"] > 0 and metrics["bad_fraction"] == 0
    assert metrics["dropped_too_long/long"] == metrics["dropped_too_long"]  # counted per source too
    assert metrics["truncated/long"] == metrics["truncated"] and metrics["records/long"] == metrics["records"]
    cut = f" (cut {metrics['truncated']})" if policy == "truncate" else ""
    assert pipeline.length_report() == (
        f"data: records dropped for length (too_long={policy!r}) per source: long {metrics['dropped_too_long']} of "
        f"{metrics['records']}{cut}; a row holds 64 tokens")
    if policy == "drop":
        assert metrics["truncated"] == 0 and not any("LONGANSWER" in t for t in texts)
        with Pipeline(dataclasses.replace(config, seq_len=8)) as pipeline, pytest.raises(ValueError, match="over-long"):
            next(pipeline)  # nothing fits: an error, not a silent hang
    else:
        cut = [t for t in texts if "LONGANSWER" in t]
        assert metrics["truncated"] == len(cut) > 0
        assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 64 for t in cut)


def test_over_long_audio_is_dropped_with_its_seconds_and_counted_per_source(corpus, tmp_path):
    """12 s of audio (1 s windows): over a row's 8 audio slots, over a model limit of 10 windows, over seq_len;
    each drop reason says the seconds, and the stage's report counts the drops per source."""
    t = np.arange(12 * 16000, dtype=np.float32) / 16000
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, format="WAV", subtype="FLOAT")
    long_clip = schema.Example("long/0", "long", "asr", [schema.Turn("user", "<audio>\nTranscribe.", [0]),
                                                         schema.Turn("assistant", "a tone")],
                               [schema.Media("audio", "wav", buffer.getvalue())])
    paths = write_records(str(tmp_path / "long_audio"), [long_clip])
    short = (Source("short", task_shards(corpus, "image_qa")),)

    def skip(**kw):
        config = omni_config(corpus, sources=(Source("long", paths),) + short, too_long="drop", **kw)
        out = prepare(config, config.sources[0])[0](prepare(config, config.sources[0])[1][0])
        assert out["skip"] == "dropped_too_long" and out["source"] == "long"
        return out["detail"]

    assert skip() == ("its audio up to item 0 (audio of 12.0 s) takes 12 s (12 windows of 1 s), more than a row "
                      "holds: 8 s (8 windows of 1 s) (audio_slots=8)")
    assert skip(budget=dataclasses.replace(BUDGET, max_audio_windows=10)) == (
        "media[0] (audio) is 12.0 s; this model takes at most 10 s (10 windows of 1 s): cut it or raise "
        "model.max_audio_windows")
    assert skip(budget=dataclasses.replace(BUDGET, audio_slots=16), seq_len=60) == (
        "107 tokens for seq_len 60: item 0 (audio of 12.0 s) takes tokens 14..88; 4 s of audio fit with the rest")
    config = omni_config(corpus, sources=(Source("long", paths, weight=0.2),) + short, too_long="drop")
    with Pipeline(config) as pipeline:
        batches(pipeline, 2)
        metrics = pipeline.metrics
        report = pipeline.length_report()
    assert metrics["dropped_too_long/long"] == metrics["records/long"] > 0 and metrics["dropped_too_long/short"] == 0
    assert report == (f"data: records dropped for length (too_long='drop') per source: long {metrics['records/long']} "
                      f"of {metrics['records/long']}, short 0 of {metrics['records/short']}; a row holds 256 tokens, "
                      "4 views or tiles of image, 8 frames of video, 8 s (8 windows of 1 s) of audio; an audio item "
                      "at most 25 s (model.max_audio_windows=25)")


def test_truncation_cuts_before_the_first_media_item_that_does_not_fit(corpus, tmp_path):
    png = next(e for e in schema.read_shards(task_shards(corpus, "image_qa"))).media[0].data
    image = schema.Media("image", "png", png)
    example = schema.Example("two-turns", "t", "t", [
        schema.Turn("user", "<image>\nWhat is it?", [0]), schema.Turn("assistant", "first"),
        schema.Turn("user", "<image><image>\nAnd these?", [1, 2]), schema.Turn("assistant", "second")],
        [image, image, image])
    paths = write_records(str(tmp_path / "media"), [example])
    budget = dataclasses.replace(BUDGET, image_slots=2)
    for policy in ("truncate", "drop"):
        config = omni_config(corpus, sources=(Source("media", paths),), budget=budget, too_long=policy)
        prep, records, tokenizer = prepare(config, config.sources[0])
        out = prep(records[0])
        if policy == "drop":
            assert out["skip"] == "dropped_too_long"
            continue
        assert out["truncated"] and out["images"].shape[0] == 2 and out["image_item"].tolist() == [0, 1]
        text = tokenizer.decode(out["input_ids"])
        assert text.endswith("<|im_start|>user\n" + "<|image_pad|>" * OLA.image_tokens(1))
        assert tokenizer.decode(out["targets"][out["loss_weights"] > 0]) == "first" + tok.IM_END
