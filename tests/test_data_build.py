"""Record schema, shard writer and the three converters, on tiny inputs built in temporary folders.

Media written by the converters must be the source files' bytes, or (where re-encoded) decode to the
same pixels and samples as the source, with soundfile, PIL and PyAV as the oracle.
"""

import io
import json
import os
import re
import sys

import av
import msgpack
import numpy as np
import pytest
import soundfile
from array_record.python import array_record_module
from PIL import Image

from data_pipelines import build
from data_pipelines.schema import (
    SCHEMA_VERSION,
    Example,
    Media,
    SchemaError,
    ShardWriter,
    SpokenQuestion,
    Turn,
    num_records,
    read_shard,
    read_shards,
    shard_paths,
)
from omnijax.errors import DamagedFileError


def writer_options(path):
    """The options a shard was written with, as ArrayRecord reads them back (``group_size:1,...``)."""
    reader = array_record_module.ArrayRecordReader(path)
    try:
        return reader.writer_options_string()
    finally:
        reader.close()


# --- tiny media --------------------------------------------------------------------------------------


def _pixels(seed, size=(12, 8)):
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _image_bytes(array, fmt, **kwargs):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _samples(seed, n=1600):
    return np.random.default_rng(seed).integers(-8000, 8000, n, dtype=np.int16)


def _audio_bytes(samples, fmt, rate=16000):
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=fmt)
    return out.getvalue()


def _video_bytes(path, container_format, codec, frames=5, fps=10):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with open(path, "rb") as f:
        return f.read()


def _m4a_bytes(path, samples, rate=16000):
    """AAC in an MP4 container: audio that libsndfile cannot read, so the build decodes it with PyAV."""
    with av.open(path, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    with open(path, "rb") as f:
        return f.read()


def _av_samples(path):
    with av.open(path) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=container.streams.audio[0].rate)
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
        frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def _decoded_pixels(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def _decoded_samples(data, dtype="int16"):
    return soundfile.read(io.BytesIO(data), dtype=dtype)[0]


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


def _jpeg():
    return _image_bytes(_pixels(0), "JPEG")


def _flac():
    return _audio_bytes(_samples(0), "FLAC")


def _read_all(prefix, num_shards):
    paths = shard_paths(prefix, num_shards)
    return {example.id: example for example in read_shards(paths)}, paths


def _summary(prefix):
    with open(f"{prefix}.build_summary.json") as f:
        return json.load(f)


# --- schema ------------------------------------------------------------------------------------------


def _example(**overrides):
    fields = dict(
        id="ex1",
        source="unit",
        task="vqa",
        turns=[
            Turn("system", "You are terse."),
            Turn("user", "<audio> then <image>\nWhat colour is the square?", [1, 0]),
            Turn("assistant", "Red."),
        ],
        media=[Media("image", "jpeg", _jpeg(), size=(12, 8)), Media("audio", "flac", _flac(), sampling_rate=16000)],
        spoken_question=SpokenQuestion("flac", _flac(), "What colour is the square?", sampling_rate=16000),
    )
    fields.update(overrides)
    return Example(**fields)


def test_example_round_trips_through_bytes():
    example = _example()
    data = example.to_bytes()
    record = msgpack.unpackb(data)
    assert record["schema_version"] == SCHEMA_VERSION == 1
    assert sorted(record) == ["id", "media", "schema_version", "source", "spoken_question", "task", "turns"]
    assert Example.from_bytes(data) == example
    frames = Media("video", "jpeg_frames", [_jpeg(), _jpeg()], fps=2.0, size=(12, 8))
    video = Example("v", "unit", "caption", [Turn("user", "<video>", [0]), Turn("assistant", "x")], [frames])
    assert Example.from_bytes(video.to_bytes()) == video
    assert Example.from_bytes(video.to_bytes()).media[0].data == (_jpeg(), _jpeg())


def test_spoken_view_puts_the_recording_where_the_question_was():
    example = _example()
    spoken = example.spoken_view()
    assert spoken.turns[1].text == "<audio> then <image>\n<audio>"
    assert spoken.turns[1].media == (1, 0, 2)
    assert spoken.media[2] == Media("audio", "flac", example.spoken_question.data, sampling_rate=16000)
    assert spoken.spoken_question is None
    assert spoken.turns[0] == example.turns[0] and spoken.turns[2] == example.turns[2]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(media=[Media("picture", "jpeg", b"\xff\xd8\xff..."), Media("audio", "flac", b"fLaC...")]),
            "unknown kind 'picture'",
        ),
        (
            dict(media=[Media("image", "gif", b"GIF89a"), Media("audio", "flac", b"fLaC...")]),
            "format 'gif' is not allowed for kind 'image'",
        ),
        (
            dict(media=[Media("image", "png", b"\xff\xd8\xff..."), Media("audio", "flac", b"fLaC...")]),
            "bytes start like jpeg",
        ),
        (
            dict(turns=[Turn("user", "<audio> then <image>\nWhat colour is the square?", [1, 2])]),
            "media ref 2 is out of range",
        ),
        (
            dict(turns=[Turn("user", "<image>\nWhat colour is the square?", [1, 0])]),
            "1 <image> placeholder(s) vs 1 image ref(s), 0 <audio> placeholder(s) vs 1 audio ref(s)",
        ),
        (
            dict(turns=[Turn("user", "<image> <audio>\nWhat colour is the square?", [1, 0])]),
            "do not match the kinds of its media refs",
        ),
        (
            dict(turns=[Turn("user", "<audio><audio> <image>\nWhat colour is the square?", [1, 1, 0])]),
            "media[1] is referenced 2 times",
        ),
        (
            dict(turns=[Turn("user", "<audio> <image>\nWhat colour is the square?", [1, 0]), Turn("system", "x")]),
            "system turn may only be the first",
        ),
        (dict(turns=[Turn("robot", "<audio> <image>\nWhat colour is the square?", [1, 0])]), "unknown role 'robot'"),
        (dict(turns=[]), "has no turns"),
        (
            dict(spoken_question=SpokenQuestion("flac", b"fLaC...", "Which shape?")),
            "is not written in the first user turn",
        ),
        (dict(spoken_question=SpokenQuestion("flac", b"fLaC...", "then <image>")), "holds a placeholder"),
        (dict(spoken_question=SpokenQuestion("mp3", b"ID3...", "What colour")), "not an audio format"),
    ],
)
def test_example_validation_errors(overrides, message):
    with pytest.raises(SchemaError, match=None) as error:
        _example(**overrides)
    assert message in str(error.value)


def test_record_errors_name_the_problem():
    record = _example().to_dict()
    with pytest.raises(SchemaError, match=r"schema_version 2; this reader supports schema_version 1 only"):
        Example.from_bytes(msgpack.packb({**record, "schema_version": 2}))
    with pytest.raises(SchemaError, match="no schema_version"):
        Example.from_bytes(msgpack.packb({k: v for k, v in record.items() if k != "schema_version"}))
    with pytest.raises(SchemaError, match=r"unknown keys \['colour'\]"):
        Example.from_bytes(msgpack.packb({**record, "colour": "red"}))
    with pytest.raises(SchemaError, match="not valid msgpack"):
        Example.from_bytes(b"\xc1not msgpack")
    with pytest.raises(SchemaError, match="must be a map"):
        Example.from_bytes(msgpack.packb([1, 2]))


# --- shards ------------------------------------------------------------------------------------------


def _text_example(i):
    return Example(f"t{i}", "unit", "chat", [Turn("user", f"question {i}"), Turn("assistant", f"answer {i}")])


def test_shard_writer_round_robin_group_size_one_and_atomic(tmp_path):
    prefix = str(tmp_path / "out" / "chat")
    with ShardWriter(prefix, 3) as writer:
        for i in range(7):
            writer.write(_text_example(i))
        assert not any(os.path.exists(p) for p in writer.paths), "shards must appear only on close"
    paths = shard_paths(prefix, 3)
    assert [os.path.basename(p) for p in paths] == [f"chat.array_record-0000{i}-of-00003" for i in range(3)]
    assert writer.counts == [3, 2, 2] and [num_records(p) for p in paths] == [3, 2, 2]
    assert [e.id for e in read_shard(paths[0])] == ["t0", "t3", "t6"]
    assert [e.id for e in read_shard(paths[1])] == ["t1", "t4"]
    for path in paths:
        assert writer_options(path).split(",")[0] == "group_size:1"
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in paths)
    import grain  # the consumer: Grain's source reads the shards as they are

    source = grain.sources.ArrayRecordDataSource(paths)
    assert [Example.from_bytes(source[i]).id for i in range(len(source))] == [f"t{i}" for i in (0, 3, 6, 1, 4, 2, 5)]

    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(str(tmp_path / "failed" / "chat"), 2) as writer:
            writer.write(_text_example(0))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path / "failed") == []

    with pytest.raises(FileNotFoundError, match="no ArrayRecord shard"):
        list(read_shard(str(tmp_path / "nothing.array_record-00000-of-00001")))
    junk = str(tmp_path / "junk" / "bad")
    _write(junk, b"not an array record file")
    with pytest.raises(DamagedFileError, match=rf"^{re.escape(junk)}: wrong format: not an ArrayRecord file \(it does "
                                               r"not start with the Riegeli file signature\); rebuild the shard"):
        num_records(junk)


def test_damaged_shards_are_named_with_what_is_wrong(tmp_path):
    """A shard cut short (a copy that stopped) and one with a damaged record: the error names the file and says
    truncated or which records fail their hash."""
    with ShardWriter(str(tmp_path / "chat"), 1) as writer:
        for i in range(40):
            writer.write(_text_example(i))
    path = writer.paths[0]
    data = open(path, "rb").read()
    assert len(data) % (1 << 16) == 0  # ArrayRecord writes whole 64 KiB blocks
    cut = str(tmp_path / "cut")
    _write(cut, data[: len(data) - 5000])
    with pytest.raises(DamagedFileError, match=rf"^{re.escape(cut)}: truncated: {len(data) - 5000} bytes, not a whole "
                                               r"number of the 64 KiB blocks .*hash mismatch.*; rebuild the shard"):
        list(read_shard(cut))
    flipped = bytearray(data)
    flipped[1000] ^= 0xFF  # inside the records' chunks
    damaged = str(tmp_path / "damaged")
    _write(damaged, bytes(flipped))
    assert num_records(damaged) == 40  # its index still reads
    with pytest.raises(DamagedFileError, match=rf"^{re.escape(damaged)}: damaged: records 0 to 39 of 40 do not read "
                                               r"\(Corrupted Riegeli/records file: chunk (data|header) hash mismatch"):
        list(read_shard(damaged))


# --- llava-json --------------------------------------------------------------------------------------


def test_llava_json_skips_media_files_cut_short_naming_entry_and_file(tmp_path):
    """JPEG, PNG, WAV and MP4 files are kept as they are, so one cut short is skipped here, not found in training."""
    media = tmp_path / "media"
    whole = {"a.jpg": _jpeg(), "b.png": _image_bytes(_pixels(1), "PNG"), "c.wav": _audio_bytes(_samples(2), "WAV"),
             "d.mp4": _video_bytes(str(tmp_path / "v.mp4"), "mp4", "libx264")}
    for name, data in whole.items():
        _write(str(media / name), data[: len(data) // 2])
    _write(str(media / "ok.jpg"), _jpeg())
    kinds = {"jpg": "image", "png": "image", "wav": "audio", "mp4": "video"}
    entries = [{"id": name, kinds[name.rsplit(".")[1]]: name,
                "conversations": [{"from": "human", "value": f"<{kinds[name.rsplit('.')[1]]}>\nWhat?"},
                                  {"from": "gpt", "value": "x"}]} for name in [*whole, "ok.jpg"]]
    data = tmp_path / "cut.json"
    data.write_text(json.dumps(entries))
    prefix = str(tmp_path / "shards" / "cut")
    assert build.main(["llava-json", str(data), "--media-root", str(media), "--out", prefix]) == 0
    summary = _summary(prefix)
    assert summary["written"] == 1 and summary["skipped"] == {"unreadable media": 4}
    details = summary["skip_details"]["unreadable media"]
    assert [d.split(": ")[1].split(" (")[0] for d in details] == [
        "truncated", "truncated", "truncated", "truncated"], details
    assert details[0] == (f"cut.json[0] image 'a.jpg': truncated: the JPEG ends without its end-of-image marker "
                          f"({len(whole['a.jpg']) // 2} bytes)")
    assert details[2].startswith("cut.json[2] audio 'c.wav': truncated: ") and "RIFF header" in details[2]
    assert details[3].startswith("cut.json[3] video 'd.mp4': truncated: its ") and "box runs to byte" in details[3]


def test_llava_json_converts_media_and_counts_skips(tmp_path):
    media = tmp_path / "media"
    jpeg = _write(str(media / "img" / "a.jpg"), _jpeg())
    png = _write(str(media / "img" / "b.png"), _image_bytes(_pixels(1), "PNG"))
    gif_pixels = np.asarray(Image.fromarray(_pixels(2)).convert("P").convert("RGB"))
    _write(str(media / "img" / "c.gif"), _image_bytes(gif_pixels, "GIF"))
    wav = _write(str(media / "aud" / "a.wav"), _audio_bytes(_samples(1), "WAV"))
    flac = _write(str(media / "aud" / "q.flac"), _flac())
    mp3 = _write(str(media / "aud" / "m.mp3"), _audio_bytes(_samples(2, 4800).astype(np.float32) / 32768, "MP3", 16000))
    _m4a_bytes(str(media / "aud" / "c.m4a"), _samples(3, 4800))
    mp4 = _video_bytes(str(media / "vid" / "a.mp4"), "mp4", "libx264")
    _video_bytes(str(media / "vid" / "b.avi"), "avi", "mpeg4", frames=4, fps=5)
    for i in range(3):
        _write(str(media / "vid" / "frames" / f"frame_{[2, 10, 1][i]}.jpg"), _image_bytes(_pixels(10 + i), "JPEG"))
    _write(str(media / "img" / "garbage.jpg"), b"this is not an image")
    patch = jpeg + png
    _write(str(media / "patch_000000"), patch)

    entries = [
        {
            "id": "single",
            "image": "img/a.jpg",
            "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "Noise."}],
        },
        {
            "id": "two-images",
            "image": ["img/b.png", "img/a.jpg"],
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "<image> first"},
                {"from": "gpt", "value": "ok"},
                {"from": "human", "value": "and <image> second?"},
                {"from": "gpt", "value": "done"},
            ],
        },
        {
            "id": "ola-video",
            "video": "vid/a.mp4",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the video."},
                {"from": "gpt", "value": "It brightens."},
            ],
        },
        {
            "id": "video-audio",
            "video": "vid/b.avi",
            "audio": "aud/a.wav",
            "conversations": [
                {"from": "human", "value": "<speech><image>\nWhat is said?"},
                {"from": "gpt", "value": "Nothing."},
            ],
        },
        {
            "id": "compressed-audio",
            "audio": ["aud/m.mp3", "aud/c.m4a"],
            "conversations": [
                {"from": "human", "value": "<speech>\n<speech>\nPlease give the ASR results of the given speech."},
                {"from": "gpt", "value": "HELLO"},
            ],
        },
        {
            "id": "gif",
            "image": "img/c.gif",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a gif"}],
        },
        {
            "id": "audio-q-ola",
            "image": "img/a.jpg",
            "audio_q": "aud/q.flac",
            "text_q": "What colour is it?",
            "conversations": [
                {"from": "human", "value": "<image>\nUser's question in speech: <speech>"},
                {"from": "gpt", "value": "Grey."},
            ],
        },
        {
            "id": "audio-q-pattern",
            "image": "img/a.jpg",
            "audio_q": "aud/q.flac",
            "text_q": "<image>\n<speech>",
            "conversations": [
                {"from": "human", "value": "<image>\nHow many squares?"},
                {"from": "gpt", "value": "None."},
            ],
        },
        {
            "id": "frames",
            "video": "vid/frames",
            "conversations": [{"from": "human", "value": "<video> in frames"}, {"from": "gpt", "value": "three"}],
        },
        {
            "id": "patch",
            "image": {"patch": "patch_000000", "start_num": len(jpeg), "size": len(png)},
            "conversations": [{"from": "human", "value": "<image>\nFrom a patch."}, {"from": "gpt", "value": "yes"}],
        },
        # Skipped entries, one per reason.
        {
            "id": "missing",
            "image": "img/nope.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
        },
        {
            "id": "garbage",
            "image": "img/garbage.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
        },
        {
            "id": "mismatch",
            "image": "img/a.jpg",
            "conversations": [{"from": "human", "value": "<image> vs <image>"}, {"from": "gpt", "value": "x"}],
        },
        {"id": "empty", "conversations": []},
        {"id": "robot", "conversations": [{"from": "robot", "value": "beep"}]},
        {
            "id": "no-text-q",
            "audio_q": "aud/q.flac",
            "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "x"}],
        },
    ]
    data = tmp_path / "data" / "ola_mix.json"
    os.makedirs(data.parent)
    data.write_text(json.dumps(entries))
    prefix = str(tmp_path / "shards" / "mix")

    assert build.main(["llava-json", str(data), "--media-root", str(media), "--out", prefix, "--num-shards", "3"]) == 0

    examples, paths = _read_all(prefix, 3)
    summary = _summary(prefix)
    assert summary["written"] == 10 and list(summary["shards"].values()) == [4, 3, 3]
    assert summary["skipped"] == {
        "missing media file": 1,
        "unreadable media": 1,
        "placeholder mismatch": 1,
        "empty conversation": 1,
        "malformed entry": 1,
        "spoken question": 1,
    }
    missing = summary["skip_details"]["missing media file"][0]  # the entry, then the file
    assert missing.startswith("ola_mix.json[10] image 'img/nope.jpg': ") and missing.endswith(
        f"{media / 'img' / 'nope.jpg'} does not exist"), missing
    assert "1 video placeholder(s)" not in json.dumps(summary)  # the mismatch names the image count
    assert (
        "2 image placeholder(s) in the conversation but 1 file(s)" in summary["skip_details"]["placeholder mismatch"][0]
    )
    assert all(writer_options(p).startswith("group_size:1,") for p in paths)
    assert set(examples) == {e["id"] for e in entries[:10]}
    assert {e.source for e in examples.values()} == {"ola_mix"} and {e.task for e in examples.values()} == {"sft"}

    single = examples["single"]
    assert [(t.role, t.text, t.media) for t in single.turns] == [
        ("user", "<image>\nWhat is this?", (0,)),
        ("assistant", "Noise.", ()),
    ]
    assert single.media == (Media("image", "jpeg", jpeg, size=(12, 8)),)

    two = examples["two-images"]
    assert [t.role for t in two.turns] == ["system", "user", "assistant", "user", "assistant"]
    assert [t.text for t in two.turns] == ["Be brief.", "<image> first", "ok", "and <image> second?", "done"]
    assert [t.media for t in two.turns] == [(), (0,), (), (1,), ()]
    assert [(m.format, m.data) for m in two.media] == [("png", png), ("jpeg", jpeg)]

    video = examples["ola-video"]
    assert video.turns[0].text == "<video>\nDescribe the video."
    assert video.media == (Media("video", "mp4", mp4, fps=10.0, size=(32, 16)),)

    both = examples["video-audio"]
    assert both.turns[0].text == "<audio><video>\nWhat is said?" and both.turns[0].media == (0, 1)
    assert both.media[0] == Media("audio", "wav", wav, sampling_rate=16000)
    frames = both.media[1]
    assert (frames.kind, frames.format, frames.fps, frames.size, len(frames.data)) == (
        "video",
        "jpeg_frames",
        5.0,
        (32, 16),
        4,
    )
    with av.open(str(media / "vid" / "b.avi")) as container:
        source_frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for data_frame, source in zip(frames.data, source_frames, strict=True):
        assert np.abs(_decoded_pixels(data_frame).astype(int) - source).max() <= 8  # JPEG q95 of the same frame

    compressed = examples["compressed-audio"]
    assert compressed.turns[0].text == "<audio>\n<audio>\nPlease give the ASR results of the given speech."
    from_mp3, from_m4a = compressed.media
    assert {(m.format, m.sampling_rate) for m in compressed.media} == {("flac", 16000)}
    np.testing.assert_array_equal(_decoded_samples(from_mp3.data), _decoded_samples(mp3))
    np.testing.assert_array_equal(_decoded_samples(from_m4a.data), _av_samples(str(media / "aud" / "c.m4a")))

    (gif,) = examples["gif"].media
    assert gif.format == "png" and gif.size == (12, 8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(gif.data)).convert("RGB")), gif_pixels)

    ola_q = examples["audio-q-ola"]
    assert ola_q.turns[0].text == "<image>\nUser's question in speech: What colour is it?"
    assert ola_q.spoken_question == SpokenQuestion("flac", flac, "What colour is it?", sampling_rate=16000)
    assert ola_q.spoken_view().turns[0].text == "<image>\nUser's question in speech: <audio>"
    pattern_q = examples["audio-q-pattern"]
    assert pattern_q.turns[0].text == "<image>\nHow many squares?"
    assert pattern_q.spoken_question.text == "How many squares?"
    assert pattern_q.spoken_view().turns[0].text == "<image>\n<audio>"

    folder = examples["frames"].media[0]
    assert folder.format == "jpeg_frames"
    assert list(folder.data) == [_image_bytes(_pixels(10 + i), "JPEG") for i in (2, 0, 1)]  # frame_1, frame_2, frame_10

    assert examples["patch"].media == (Media("image", "png", png, size=(12, 8)),)


def test_llava_jsonl_and_all_skipped_exits_nonzero(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "a", "conversations": []}\n{not json\n')
    prefix = str(tmp_path / "bad")
    assert build.main(["llava-json", str(data), "--out", prefix]) == 1
    assert _summary(prefix)["skipped"] == {"empty conversation": 1, "malformed entry": 1}
    assert num_records(shard_paths(prefix, 1)[0]) == 0


# --- asr-dir -----------------------------------------------------------------------------------------


def test_asr_dir_librispeech_layout(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    transcripts = {
        ("84", "121123"): {"84-121123-0000": "GO DO YOU HEAR", "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES"},
        ("174", "50561"): {"174-50561-0000": "FORGOTTEN TOO THE NAME OF GILLIAN", "174-50561-0001": "LOST"},
    }
    audio = {}
    for (speaker, chapter), lines in transcripts.items():
        folder = root / speaker / chapter
        for n, utt in enumerate(sorted(lines)):
            if utt != "174-50561-0001":  # listed in the transcript, but its audio is missing
                audio[utt] = _write(str(folder / f"{utt}.flac"), _audio_bytes(_samples(n), "FLAC"))
        _write(
            str(folder / f"{speaker}-{chapter}.trans.txt"),
            "".join(f"{utt} {text}\n" for utt, text in sorted(lines.items())).encode(),
        )
    prefix = str(tmp_path / "asr")

    assert build.main(["asr-dir", str(root), "--out", prefix, "--num-shards", "2"]) == 0

    examples, _ = _read_all(prefix, 2)
    assert sorted(examples) == sorted(audio)
    for lines in transcripts.values():
        for utt, text in lines.items():
            if utt not in audio:
                continue
            example = examples[utt]
            assert (example.source, example.task) == ("dev-clean", "asr")
            assert [(t.role, t.text, t.media) for t in example.turns] == [
                ("user", "<audio>\nPlease give the ASR results of the given speech.", (0,)),
                ("assistant", text, ()),
            ]
            assert example.media == (Media("audio", "flac", audio[utt], sampling_rate=16000),)
    summary = _summary(prefix)
    assert summary["skipped"] == {"missing media file": 1}
    assert "174-50561-0001.flac does not exist" in summary["skip_details"]["missing media file"][0]


# --- tfds --------------------------------------------------------------------------------------------


def _tiny_tfds(data_dir, rows):
    import tensorflow_datasets as tfds

    with tfds.core.registered.skip_registration():

        class OmnijaxTinyQa(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(
                    builder=self,
                    features=tfds.features.FeaturesDict(
                        {
                            "question": tfds.features.Text(),
                            "answer": tfds.features.Text(),
                            "pixels": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
                            "jpeg": tfds.features.Tensor(shape=(), dtype=np.object_),
                            "wave": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                            "meta": {"uid": tfds.features.Text()},
                        }
                    ),
                )

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                yield from enumerate(rows)

    OmnijaxTinyQa(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_tfds_array_record_without_tensorflow(tmp_path):
    """TFDS Text/Tensor features, built and read back with no TensorFlow (the venv has none; where it is
    installed, the assertion below shows the path never imports it)."""
    rows = [
        {
            "question": f"What is in picture {i}?",
            "answer": "" if i == 2 else f"Answer {i}.",
            "pixels": _pixels(20 + i),
            "jpeg": _image_bytes(_pixels(30 + i), "JPEG"),
            "wave": _samples(40 + i, 800),
            "meta": {"uid": f"uid-{i}"},
        }
        for i in range(3)
    ]
    data_dir = str(tmp_path / "tfds")
    _tiny_tfds(data_dir, rows)
    prefix = str(tmp_path / "qa")
    common = ["tfds", "omnijax_tiny_qa", "--data-dir", data_dir, "--split", "train", "--answer-field", "answer"]

    assert (
        build.main(
            common
            + [
                "--text-field",
                "question",
                "--image-field",
                "pixels",
                "--audio-field",
                "wave",
                "--sampling-rate",
                "8000",
                "--id-field",
                "meta/uid",
                "--out",
                prefix,
            ]
        )
        == 0
    )

    examples, paths = _read_all(prefix, 1)
    assert writer_options(paths[0]).startswith("group_size:1,")
    assert _summary(prefix)["skipped"] == {"empty conversation": 1}
    assert sorted(examples) == ["uid-0", "uid-1"]
    for i in range(2):
        example = examples[f"uid-{i}"]
        assert (example.source, example.task) == ("omnijax_tiny_qa", "sft")
        assert [(t.role, t.text, t.media) for t in example.turns] == [
            ("user", f"<image>\n<audio>\nWhat is in picture {i}?", (0, 1)),
            ("assistant", f"Answer {i}.", ()),
        ]
        image, audio = example.media
        assert (image.format, image.size, audio.format, audio.sampling_rate) == ("png", (12, 8), "flac", 8000)
        np.testing.assert_array_equal(_decoded_pixels(image.data), rows[i]["pixels"])
        np.testing.assert_array_equal(_decoded_samples(audio.data), rows[i]["wave"])

    prefix = str(tmp_path / "caption")
    assert build.main(common + ["--prompt", "Describe the image.", "--image-field", "jpeg", "--out", prefix]) == 0
    examples, _ = _read_all(prefix, 1)
    assert sorted(examples) == ["omnijax_tiny_qa/train[0]", "omnijax_tiny_qa/train[1]"]
    for i in range(2):
        example = examples[f"omnijax_tiny_qa/train[{i}]"]
        assert example.turns[0].text == "<image>\nDescribe the image."
        assert example.media == (Media("image", "jpeg", rows[i]["jpeg"], size=(12, 8)),)

    assert "tensorflow" not in sys.modules
    with pytest.raises(SystemExit, match="has no field 'picture'"):
        build.main(common + ["--image-field", "picture", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="pass --sampling-rate"):
        build.main(common + ["--audio-field", "wave", "--out", str(tmp_path / "x")])
