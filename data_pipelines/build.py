"""Convert raw corpora into ArrayRecord shards of `data_pipelines.schema.Example` records.

    python -m data_pipelines.build llava-json DATA.json [MORE.json ...] --media-root DIR --out PREFIX --num-shards N
    python -m data_pipelines.build asr-dir LibriSpeech/train-clean-100 --out PREFIX --num-shards N
    python -m data_pipelines.build tfds NAME --data-dir DIR --split train --text-field question \\
        --answer-field answer [--image-field image] [--audio-field audio] --out PREFIX --num-shards N

Shards are `PREFIX.array_record-0000i-of-0000N` (`group_size:1`); a summary (examples per shard,
skips by reason with examples) is printed and written to `PREFIX.build_summary.json`. A bad entry is
skipped with its reason, never the end of the build: missing media file, unreadable media,
placeholder mismatch, empty conversation, malformed entry, spoken question (audio_q that cannot be
paired with its text), invalid example (breaks the schema).

Media are copied as the bytes of their files when the schema has their format (JPEG, PNG, FLAC, WAV,
MP4, recognised by their signature, not their name) and re-encoded otherwise: other images -> PNG
(lossless; the first frame of an animation); other audio (MP3, OGG, M4A, ...) -> decoded to 16-bit
PCM and stored as FLAC at its own sampling rate; other video containers (WebM, AVI, MKV, ...) and
folders of frames -> `jpeg_frames` (every frame, JPEG quality 95; JPEG frames are kept as they are).
Headers are probed (size, sampling rate, fps) so unreadable files are skipped here, not in training.

llava-json: LLaVA / Ola data files (a JSON list, or JSON Lines): `id`, `conversations` [{`from`:
human|gpt|system, `value`}], `image` (path or list), `video` (path), `audio` (path or list),
`audio_q` + `text_q`. Paths are relative to `--media-root` (default: the JSON file's folder); Ola's
patch references `{"patch", "start_num", "size"}` (byte ranges of a patch file, `size` a list for
video frames) work too. Placeholders follow Ola: `<image>` is an image, or the video when the entry
has `video` and no `image` (Ola and LLaVA-Video write `<image>` for videos); `<video>` is a video;
`<speech>` and `<audio>` are audio. The k-th placeholder of a kind takes the k-th file of that kind.
`audio_q`: the question as speech. Ola trains on `text_q` with `<speech>` standing for `audio_q`; we
store the written question in the turns and the recording as `spoken_question` (see schema.py):
  - the first human value holds `<speech>` and `text_q` is the written question: the turn becomes the
    value with `<speech>` replaced by `text_q` (Ola's DATA.md form);
  - `text_q` holds `<speech>` and the first human value is the written form: the question is the part
    of the value that `<speech>` stands for (the value must start and end like `text_q`);
  - neither holds `<speech>`: `text_q` must be written in the first human value.

asr-dir: LibriSpeech layout `SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`, lines `UTTID TRANSCRIPT`, audio
`UTTID.flac` (or `.wav`) beside it. User turn: `<audio>\\n` + Ola's ASR prompt ("Please give the ASR
results of the given speech."); assistant turn: the transcript as written (LibriSpeech is upper case
without punctuation; normalise at evaluation, e.g. in WER, not here).

tfds: a TFDS dataset prepared in array_record format, read with `tfds.data_source` (no TensorFlow
needed for Text and Tensor features; TFDS's Image and Audio features need TensorFlow to decode). The
user turn is the media placeholders, one per line, then `--text-field` (or the fixed `--prompt`); the
assistant turn is `--answer-field` (the first value when it is a list, as in VQA answers). Image
fields: encoded bytes or uint8 arrays `[H, W]`, `[H, W, C]` (or a list / `[N, H, W, C]` for several)
-> PNG. Audio fields: encoded bytes or arrays `[samples]` / `[samples, channels]` -> FLAC (int16 ->
16-bit, other dtypes -> 24-bit) at the feature's `sample_rate` or `--sampling-rate`. Nested fields are
named with `/` (`meta/caption`).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import soundfile
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from data_pipelines.schema import (
    PLACEHOLDERS,
    Example,
    Media,
    SchemaError,
    ShardWriter,
    SpokenQuestion,
    Turn,
    sniff_format,
)

ASR_PROMPT = "Please give the ASR results of the given speech."  # Ola paper, appendix (stage 3)
JPEG_QUALITY = 95
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
_FRAME_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Skip(Exception):
    """An input entry that cannot become an example: `reason` is the category, `detail` says which and why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- media -----------------------------------------------------------------------------------------


def read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise Skip("missing media file", f"{path} does not exist")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Skip("unreadable media", f"{path}: {e}") from e


def _unreadable(what: str, error: Exception) -> Skip:
    return Skip("unreadable media", f"{what}: {type(error).__name__}: {error}")


def image_media(data: bytes, what: str) -> Media:
    """JPEG and PNG bytes as they are; any other image PIL reads -> PNG (first frame)."""
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        fmt = sniff_format(data)
        if fmt in ("jpeg", "png"):
            return Media("image", fmt, data, size=size)
        image.load()
        if image.mode not in _PNG_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return Media("image", "png", _encode_image(image, "PNG"), size=size)
    except UnidentifiedImageError as e:
        raise Skip("unreadable media", f"{what}: not an image PIL can read (starts {data[:12]!r})") from e
    except Exception as e:  # PIL raises many kinds for damaged files
        raise _unreadable(what, e) from e


def image_array_media(array: np.ndarray, what: str) -> Media:
    """A uint8 array `[H, W]`, `[H, W, 1|3|4]` -> PNG."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise Skip(
            "unreadable media",
            f"{what}: image arrays must be uint8 [H, W] or [H, W, 1|3|4], got {array.dtype} {array.shape}",
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    image = Image.fromarray(array)
    return Media("image", "png", _encode_image(image, "PNG"), size=image.size)


def _encode_image(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _jpeg_frame(data: bytes, what: str) -> bytes:
    if sniff_format(data) == "jpeg":
        return data
    try:
        image = Image.open(io.BytesIO(data))
        return _encode_image(image.convert("RGB"), "JPEG", quality=JPEG_QUALITY)
    except Exception as e:
        raise _unreadable(what, e) from e


def frames_media(frames: Sequence[bytes], what: str, fps: float | None = None) -> Media:
    """Encoded frames -> `jpeg_frames` (JPEG frames kept as they are, others re-encoded)."""
    if not frames:
        raise Skip("unreadable media", f"{what}: no frames")
    jpegs = tuple(_jpeg_frame(frame, f"{what} frame {i}") for i, frame in enumerate(frames))
    try:
        size = Image.open(io.BytesIO(jpegs[0])).size
    except Exception as e:
        raise _unreadable(f"{what} frame 0", e) from e
    return Media("video", "jpeg_frames", jpegs, fps=fps, size=size)


def video_media(data: bytes, what: str) -> Media:
    """MP4 (any ISO-BMFF file) as it is, probed for fps and size; other containers -> `jpeg_frames`."""
    import av  # only video needs PyAV

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            if sniff_format(data) == "mp4":
                size = (stream.codec_context.width, stream.codec_context.height)
                return Media("video", "mp4", data, fps=fps, size=size if all(size) else None)
            frames = [
                _encode_image(frame.to_image(), "JPEG", quality=JPEG_QUALITY) for frame in container.decode(stream)
            ]
    except Exception as e:
        raise _unreadable(what, e) from e
    return frames_media(frames, what, fps=fps)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_folder_media(folder: str, what: str) -> Media:
    """A folder of frame images, in natural name order (`frame_2` before `frame_10`) -> `jpeg_frames`."""
    names = sorted(
        (n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in _FRAME_SUFFIXES), key=_natural_key
    )
    if not names:
        raise Skip(
            "missing media file", f"{what}: folder {folder} holds no frames ({', '.join(sorted(_FRAME_SUFFIXES))})"
        )
    return frames_media([read_bytes(os.path.join(folder, n)) for n in names], what)


def audio_media(data: bytes, what: str) -> Media:
    """FLAC and WAV bytes as they are (when libsndfile reads them); other audio -> 16-bit FLAC."""
    fmt = sniff_format(data)
    if fmt in ("flac", "wav"):
        try:
            info = soundfile.info(io.BytesIO(data))
            return Media("audio", fmt, data, sampling_rate=int(info.samplerate))
        except Exception:
            pass  # e.g. a WAV holding a codec libsndfile lacks: decode it below
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception:
        samples, rate = _decode_audio_with_av(data, what)
    return flac_media(samples, rate, what)


def _decode_audio_with_av(data: bytes, what: str) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.channels
            resampler = av.AudioResampler(format="s16", layout=stream.layout.name, rate=stream.rate)
            chunks = [
                out.to_ndarray().reshape(-1, channels)
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
            chunks += [out.to_ndarray().reshape(-1, channels) for out in resampler.resample(None)]
            rate = stream.rate
    except Exception as e:
        raise _unreadable(what, e) from e
    if not chunks:
        raise Skip("unreadable media", f"{what}: no audio samples")
    return np.concatenate(chunks), int(rate)


def flac_media(samples: np.ndarray, sampling_rate: int, what: str) -> Media:
    """Samples `[samples]` or `[samples, channels]` -> FLAC: int16 as 16-bit; int32 and floats (full
    scale +-1, clipped) as 24-bit."""
    samples = np.asarray(samples)
    if (
        samples.ndim not in (1, 2)
        or samples.size == 0
        or samples.dtype not in (np.int16, np.int32, np.float32, np.float64)
    ):
        raise Skip(
            "unreadable media",
            f"{what}: audio arrays must be int16, int32 or float, [samples] or [samples, channels]; "
            f"got {samples.dtype} {samples.shape}",
        )
    if samples.dtype.kind == "f":
        samples = np.clip(samples, -1.0, 1.0)
    subtype = "PCM_16" if samples.dtype == np.int16 else "PCM_24"
    out = io.BytesIO()
    try:
        soundfile.write(out, samples, int(sampling_rate), format="FLAC", subtype=subtype)
    except Exception as e:
        raise _unreadable(what, e) from e
    return Media("audio", "flac", out.getvalue(), sampling_rate=int(sampling_rate))


# --- the build loop --------------------------------------------------------------------------------


class Summary:
    """Examples written per shard and skips per reason (with the first few details of each)."""

    MAX_DETAILS = 10

    def __init__(self):
        self.skipped = collections.Counter()
        self.details = collections.defaultdict(list)
        self.shards: dict[str, int] = {}

    def skip(self, skip: Skip) -> None:
        self.skipped[skip.reason] += 1
        if len(self.details[skip.reason]) < self.MAX_DETAILS:
            self.details[skip.reason].append(skip.detail)

    def to_dict(self) -> dict:
        return {
            "written": sum(self.shards.values()),
            "shards": self.shards,
            "skipped": dict(self.skipped),
            "skip_details": dict(self.details),
        }

    def report(self) -> str:
        lines = [f"wrote {sum(self.shards.values())} examples to {len(self.shards)} shard(s):"]
        lines += [f"  {path}: {count}" for path, count in self.shards.items()]
        total = sum(self.skipped.values())
        lines.append(f"skipped {total} entr{'y' if total == 1 else 'ies'}" + (":" if total else ""))
        for reason, count in self.skipped.most_common():
            lines.append(f"  {reason}: {count}, e.g.")
            lines += [f"    {detail}" for detail in self.details[reason][:3]]
        return "\n".join(lines)


def write_shards(
    items: Iterable[Callable[[], Example]], total: int | None, out: str, num_shards: int, desc: str
) -> Summary:
    """Run each item's conversion and write the examples; a `Skip` or schema error is counted, not raised."""
    summary = Summary()
    with ShardWriter(out, num_shards) as writer:
        progress = tqdm(items, total=total, desc=desc, unit="ex", dynamic_ncols=True)
        for convert in progress:
            try:
                writer.write(convert())
            except Skip as skip:
                summary.skip(skip)
            except SchemaError as e:
                summary.skip(Skip("invalid example", str(e)))
            progress.set_postfix(skipped=sum(summary.skipped.values()), refresh=False)
    summary.shards = dict(zip(writer.paths, writer.counts, strict=True))
    return summary


# --- llava-json ------------------------------------------------------------------------------------

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_SOURCE_PLACEHOLDER_RE = re.compile(r"<image>|<video>|<speech>|<audio>")


def _load_entries(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: not valid JSON ({e})") from e
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as e:
                entries.append(Skip("malformed entry", f"{path} line {number}: not valid JSON ({e})"))
    return entries


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class _LlavaEntry:
    """Converts one LLaVA/Ola entry; `where` names it in skip details."""

    def __init__(self, entry: Any, where: str, media_root: str, source: str, task: str):
        self.entry, self.where, self.media_root, self.source, self.task = entry, where, media_root, source, task

    def _path(self, ref: str) -> str:
        return ref if os.path.isabs(ref) else os.path.join(self.media_root, ref)

    def _patch_bytes(self, ref: dict) -> bytes | list[bytes]:
        """Ola's patch reference: `size` bytes (or consecutive sizes) from `start_num` in file `patch`."""
        if "img_path" in ref:
            return read_bytes(self._path(ref["img_path"]))
        try:
            path, start, sizes = self._path(ref["patch"]), int(ref["start_num"]), ref["size"]
            many = isinstance(sizes, list)
            sizes = [int(s) for s in _as_list(sizes)]
        except (KeyError, TypeError, ValueError) as e:
            raise Skip("malformed entry", f"{self.where}: bad patch reference {ref!r} ({e})") from e
        if not os.path.exists(path):
            raise Skip("missing media file", f"{self.where}: {path} does not exist")
        with open(path, "rb") as f:
            f.seek(start)
            chunks = [f.read(size) for size in sizes]
        if any(len(chunk) != size for chunk, size in zip(chunks, sizes, strict=True)):
            raise Skip(
                "unreadable media", f"{self.where}: {path} ends before byte {start + sum(sizes)} of patch {ref!r}"
            )
        if ref.get("image_encoding") == "base64":
            import base64

            chunks = [base64.b64decode(chunk) for chunk in chunks]
        return chunks if many else chunks[0]

    def media(self, kind: str, ref: Any) -> Media:
        what = f"{self.where} {kind} {ref!r}"
        if isinstance(ref, dict):
            data = self._patch_bytes(ref)
            if isinstance(data, list):
                if kind != "video":
                    raise Skip("malformed entry", f"{what}: a list of sizes is for video frames only")
                return frames_media(data, what)
        elif isinstance(ref, str) and ref:
            path = self._path(ref)
            if kind == "video" and os.path.isdir(path):
                return frame_folder_media(path, what)
            data = read_bytes(path)
        else:
            raise Skip("malformed entry", f"{self.where}: {kind} reference must be a path or a patch, got {ref!r}")
        return {"image": image_media, "video": video_media, "audio": audio_media}[kind](data, what)

    def _turns(self) -> list[tuple[str, str]]:
        conversations = self.entry.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise Skip("empty conversation", f"{self.where}: no conversations")
        turns = []
        for i, message in enumerate(conversations):
            if not isinstance(message, dict) or not isinstance(message.get("value"), str):
                raise Skip(
                    "malformed entry",
                    f"{self.where}: conversations[{i}] must be {{'from', 'value': str}}, got {message!r}",
                )
            role = _ROLES.get(message.get("from"))
            if role is None:
                raise Skip(
                    "malformed entry",
                    f"{self.where}: conversations[{i}] is from {message.get('from')!r}; "
                    f"expected one of {', '.join(_ROLES)}",
                )
            turns.append((role, message["value"]))
        if not any(text.strip() for _, text in turns):
            raise Skip("empty conversation", f"{self.where}: every turn is empty")
        return turns

    def _spoken_question(self, turns: list[tuple[str, str]]) -> SpokenQuestion | None:
        """Rewrites the first user turn to the written question and returns the recording (see module doc)."""
        if "audio_q" not in self.entry:
            return None
        text_q = self.entry.get("text_q")
        if not isinstance(text_q, str) or not text_q.strip():
            raise Skip("spoken question", f"{self.where}: audio_q without text_q (the question's text)")
        first = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
        if first is None:
            raise Skip("spoken question", f"{self.where}: audio_q but no human turn")
        value = turns[first][1]
        if "<speech>" in value and "audio" not in self.entry:
            if value.count("<speech>") != 1 or "<speech>" in text_q:
                raise Skip(
                    "spoken question",
                    f"{self.where}: expected one <speech> in the first human turn and a written text_q",
                )
            question = text_q.strip()
            turns[first] = ("user", value.replace("<speech>", question))
        elif text_q.count("<speech>") == 1:
            prefix, suffix = text_q.split("<speech>")
            if not (value.startswith(prefix) and value.endswith(suffix) and len(value) > len(prefix) + len(suffix)):
                raise Skip(
                    "spoken question", f"{self.where}: the first human turn {value!r} does not fit text_q {text_q!r}"
                )
            question = value[len(prefix) : len(value) - len(suffix)].strip()
        elif "<speech>" not in text_q and text_q.strip() in value:
            question = text_q.strip()
        else:
            raise Skip("spoken question", f"{self.where}: text_q {text_q!r} is not in the first human turn {value!r}")
        if not question or _SOURCE_PLACEHOLDER_RE.search(question):
            raise Skip(
                "spoken question", f"{self.where}: the written question {question!r} is empty or holds a placeholder"
            )
        audio = self.media("audio", self.entry["audio_q"])
        return SpokenQuestion(audio.format, audio.data, question, sampling_rate=audio.sampling_rate)

    def convert(self) -> Example:
        if not isinstance(self.entry, dict):
            raise Skip("malformed entry", f"{self.where}: an entry must be an object, got {type(self.entry).__name__}")
        turns = self._turns()
        spoken = self._spoken_question(turns)
        image_kind = "video" if "video" in self.entry and "image" not in self.entry else "image"
        kind_of = {"<image>": image_kind, "<video>": "video", "<speech>": "audio", "<audio>": "audio"}
        refs = {
            "image": _as_list(self.entry.get("image")),
            "video": _as_list(self.entry.get("video")),
            "audio": _as_list(self.entry.get("audio")),
        }
        order = [kind_of[m] for _, text in turns for m in _SOURCE_PLACEHOLDER_RE.findall(text)]
        for kind, files in refs.items():
            if order.count(kind) != len(files):
                raise Skip(
                    "placeholder mismatch",
                    f"{self.where}: {order.count(kind)} {kind} placeholder(s) in the conversation but "
                    f"{len(files)} file(s) under {kind!r}",
                )
        taken = collections.Counter()
        media = []
        for kind in order:
            media.append(self.media(kind, refs[kind][taken[kind]]))
            taken[kind] += 1
        out_turns, next_ref = [], 0
        for role, text in turns:
            n = len(_SOURCE_PLACEHOLDER_RE.findall(text))
            text = _SOURCE_PLACEHOLDER_RE.sub(lambda m: PLACEHOLDERS[kind_of[m.group()]], text)
            out_turns.append(Turn(role, text, tuple(range(next_ref, next_ref + n))))
            next_ref += n
        example_id = self.entry.get("id")
        example_id = str(example_id) if example_id not in (None, "") else self.where
        return Example(example_id, self.source, self.task, out_turns, media, spoken_question=spoken)


def llava_items(
    json_paths: Sequence[str], media_root: str | None, source: str | None, task: str
) -> Iterator[Callable[[], Example]]:
    """One item per entry of each JSON file, in file order."""
    for path in json_paths:
        entries = _load_entries(path)
        if not isinstance(entries, list):
            raise SystemExit(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
        root = media_root if media_root is not None else os.path.dirname(os.path.abspath(path))
        name = os.path.basename(path)
        source_name = source or os.path.splitext(name)[0]
        for i, entry in enumerate(entries):
            if isinstance(entry, Skip):
                yield _raiser(entry)
            else:
                yield _LlavaEntry(entry, f"{name}[{i}]", root, source_name, task).convert


def _raiser(skip: Skip) -> Callable[[], Example]:
    def convert() -> Example:
        raise skip

    return convert


# --- asr-dir ---------------------------------------------------------------------------------------


def asr_items(root: str, source: str | None, task: str, prompt: str) -> list[Callable[[], Example]]:
    """One item per line of every `*.trans.txt` under `root` (sorted walk, so the order is stable)."""
    if not os.path.isdir(root):
        raise SystemExit(f"asr-dir: {root} is not a folder")
    source = source or os.path.basename(os.path.normpath(root))
    items = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".trans.txt")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        items.append(_asr_item(folder, f"{path}:{number}", line, source, task, prompt))
    if not items:
        raise SystemExit(
            f"asr-dir: no *.trans.txt transcripts under {root} (expected SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt)"
        )
    return items


def _asr_item(folder: str, where: str, line: str, source: str, task: str, prompt: str) -> Callable[[], Example]:
    def convert() -> Example:
        utt_id, _, transcript = line.strip().partition(" ")
        transcript = transcript.strip()
        if not transcript:
            raise Skip("empty conversation", f"{where}: utterance {utt_id} has no transcript")
        candidates = [os.path.join(folder, utt_id + suffix) for suffix in (".flac", ".wav")]
        path = next((p for p in candidates if os.path.exists(p)), None)
        if path is None:
            raise Skip("missing media file", f"{where}: {candidates[0]} does not exist")
        audio = audio_media(read_bytes(path), path)
        turns = [Turn("user", f"{PLACEHOLDERS['audio']}\n{prompt}", (0,)), Turn("assistant", transcript)]
        return Example(utt_id, source, task, turns, [audio])

    return convert


# --- tfds ------------------------------------------------------------------------------------------


def _get_field(record: dict, name: str) -> Any:
    value = record
    for part in name.split("/"):
        value = value[part]
    return value


def _feature(features: Any, name: str, dataset: str) -> Any:
    feature = features
    try:
        for part in name.split("/"):
            feature = feature[part]
    except (KeyError, TypeError) as e:
        raise SystemExit(f"tfds: {dataset} has no field {name!r}; its features are:\n{features}") from e
    return feature


def _text(value: Any, what: str) -> str:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            value = value.item()
        elif value.size:
            value = value.reshape(-1)[0]
        else:
            raise Skip("empty conversation", f"{what}: no text")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Skip("malformed entry", f"{what}: text is not UTF-8 ({e})") from e
    if isinstance(value, (list, tuple)):
        return _text(np.asarray(value, dtype=object), what)
    if not isinstance(value, str):
        raise Skip("malformed entry", f"{what}: expected text, got {type(value).__name__}")
    return value


def _tfds_images(value: Any, what: str) -> list[Media]:
    if isinstance(value, bytes):
        return [image_media(value, what)]
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind == "S":
        return [image_media(bytes(v), f"{what}[{i}]") for i, v in enumerate(array.reshape(-1))]
    if array.ndim == 4:
        return [image_array_media(a, f"{what}[{i}]") for i, a in enumerate(array)]
    return [image_array_media(array, what)]


def _tfds_audio(value: Any, sampling_rate: int | None, what: str) -> Media:
    if isinstance(value, np.ndarray) and (value.dtype == object or value.dtype.kind == "S") and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        return audio_media(value, what)
    if sampling_rate is None:
        raise Skip("unreadable media", f"{what}: sample array without a sampling rate; pass --sampling-rate")
    return flac_media(np.asarray(value), sampling_rate, what)


def tfds_items(args: argparse.Namespace) -> tuple[int, Iterator[Callable[[], Example]]]:
    import tensorflow_datasets as tfds

    try:
        data = tfds.data_source(args.name, data_dir=args.data_dir, split=args.split)
    except Exception as e:
        raise SystemExit(
            f"tfds: cannot open {args.name!r} split {args.split!r} under {args.data_dir}: {e}\n"
            "It must be prepared with file_format='array_record'."
        ) from e
    features = data.dataset_info.features
    for field in filter(None, (args.text_field, args.answer_field, args.image_field, args.audio_field, args.id_field)):
        _feature(features, field, args.name)
    sampling_rate = args.sampling_rate
    if args.audio_field:
        feature = _feature(features, args.audio_field, args.name)
        sampling_rate = sampling_rate or getattr(feature, "sample_rate", None)
        dtype = getattr(feature, "np_dtype", None)
        if sampling_rate is None and dtype is not None and np.issubdtype(dtype, np.number):
            raise SystemExit(
                f"tfds: {args.audio_field!r} holds sample arrays and its feature has no sample_rate; "
                "pass --sampling-rate"
            )
    source = args.source or args.name
    name = f"{args.name}/{args.split}"

    def item(index: int) -> Callable[[], Example]:
        def convert() -> Example:
            where = f"{name}[{index}]"
            record = data[index]
            media = []
            if args.image_field:
                media += _tfds_images(_get_field(record, args.image_field), f"{where} {args.image_field}")
            if args.audio_field:
                value = _get_field(record, args.audio_field)
                media.append(_tfds_audio(value, sampling_rate, f"{where} {args.audio_field}"))
            question = _text(_get_field(record, args.text_field), where) if args.text_field else (args.prompt or "")
            answer = _text(_get_field(record, args.answer_field), where)
            if not answer.strip():
                raise Skip("empty conversation", f"{where}: empty {args.answer_field!r}")
            lines = [PLACEHOLDERS[m.kind] for m in media if PLACEHOLDERS[m.kind] not in question]
            user = "\n".join(lines + ([question] if question else []))
            turns = [Turn("user", user, tuple(range(len(media)))), Turn("assistant", answer)]
            example_id = _text(_get_field(record, args.id_field), where) if args.id_field else where
            return Example(example_id, source, args.task, turns, media)

        return convert

    return len(data), (item(i) for i in range(len(data)))


# --- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.build", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser, task: str) -> None:
        sub.add_argument("--out", required=True, help="shard path prefix: PREFIX.array_record-0000i-of-0000N")
        sub.add_argument("--num-shards", type=int, default=1)
        sub.add_argument("--source", help="the examples' source name (default: from the input's name)")
        sub.add_argument("--task", default=task, help=f"the examples' task (default {task!r})")

    llava = commands.add_parser("llava-json", help="LLaVA / Ola JSON or JSON Lines with media files")
    llava.add_argument("json", nargs="+")
    llava.add_argument("--media-root", help="folder media paths are relative to (default: each JSON file's folder)")
    common(llava, "sft")

    asr = commands.add_parser("asr-dir", help="a LibriSpeech-layout folder")
    asr.add_argument("root")
    asr.add_argument("--prompt", default=ASR_PROMPT, help="user instruction after the <audio> placeholder")
    common(asr, "asr")

    tf = commands.add_parser("tfds", help="a TFDS dataset prepared in array_record format")
    tf.add_argument("name", help="dataset name, optionally with config and version (name/config:1.0.0)")
    tf.add_argument("--data-dir", required=True)
    tf.add_argument("--split", default="train")
    question = tf.add_mutually_exclusive_group()
    question.add_argument("--text-field", help="the user's text (question / instruction)")
    question.add_argument("--prompt", help="a fixed user instruction, when the dataset has none")
    tf.add_argument("--answer-field", required=True, help="the assistant's text")
    tf.add_argument("--image-field")
    tf.add_argument("--audio-field")
    tf.add_argument("--sampling-rate", type=int, help="Hz of --audio-field arrays, if its feature does not say")
    tf.add_argument("--id-field", help="a field with the example id (default NAME/SPLIT[index])")
    common(tf, "sft")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.num_shards < 1:
        raise SystemExit(f"--num-shards must be at least 1, got {args.num_shards}")
    if args.command == "llava-json":
        items = list(llava_items(args.json, args.media_root, args.source, args.task))
        total = len(items)
    elif args.command == "asr-dir":
        items = asr_items(args.root, args.source, args.task, args.prompt)
        total = len(items)
    else:
        total, items = tfds_items(args)
    summary = write_shards(items, total, args.out, args.num_shards, desc=args.command)
    with open(f"{args.out}.build_summary.json", "w", encoding="utf-8") as f:
        json.dump(
            {"command": args.command, "argv": list(argv if argv is not None else sys.argv[1:]), **summary.to_dict()},
            f,
            indent=2,
        )
    print(summary.report())
    return 0 if sum(summary.shards.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
