"""The record format: one ArrayRecord record holds one training example as a self-describing msgpack map.

A record is the msgpack encoding (`use_bin_type=True`: text as str, media as bin) of

    {
      "schema_version": 1,
      "id": str,                     # unique within its source
      "source": str,                 # corpus name, e.g. "librispeech/train-clean-100"
      "task": str,                   # e.g. "asr", "sft", "caption"
      "turns": [{"role": "system" | "user" | "assistant",
                 "text": str,        # may hold the placeholders <image>, <video>, <audio>
                 "media": [int]}],   # one index into "media" per placeholder, in text order
      "media": [{"kind": "image" | "video" | "audio",
                 "format": "jpeg" | "png" | "mp4" | "jpeg_frames" | "flac" | "wav",
                 "data": bin | [bin],   # a list of JPEG frames for "jpeg_frames", else one file
                 "sampling_rate": int,  # optional, audio only (Hz)
                 "fps": float,          # optional, video only
                 "size": [int, int]}],  # optional, image/video only: [width, height] in pixels
      "spoken_question": {           # optional: the question as speech (Self-KD; Ola's audio_q/text_q)
                 "format": "flac" | "wav", "data": bin, "sampling_rate": int (optional),
                 "text": str},       # what the audio says, written verbatim in the first user turn
    }

Placeholders. `<image>`, `<video>` and `<audio>` are reserved strings: each occurrence in a turn's text
marks where one media item goes, and the turn's `media` list names those items, in the order the
placeholders appear. So `text="<image>\\nCompare with <image>"`, `media=[1, 0]` puts media[1] first. Every
media item is referenced exactly once in the example, and the placeholder at each position must be
the one for the referenced item's kind. The pipeline later expands each placeholder into as many
tokens as its encoder produces.

Spoken question. `turns` always hold the written form (the teacher's input in Self-KD).
`Example.spoken_view()` gives the spoken form (the student's input): the first occurrence of
`spoken_question.text` in the first user turn is replaced by `<audio>` and the recording becomes a
media item.

Media is stored as encoded bytes, decoded in the input pipeline (`soundfile`, PIL, `av`); the bytes
must start with their format's file signature (`sniff_format`; "mp4" is any ISO-BMFF file: MP4, MOV,
M4V). Optional keys are left out of the record when they are unset. Readers reject records of any other
`schema_version`; a new version comes with this module's reader for the old one or a rebuild.
`data_pipelines.schema` writes records into ArrayRecord shards and reads them back.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import msgpack

SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant")
PLACEHOLDERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
FORMATS = {"image": ("jpeg", "png"), "video": ("mp4", "jpeg_frames"), "audio": ("flac", "wav")}

_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))
_KIND_OF_PLACEHOLDER = {p: k for k, p in PLACEHOLDERS.items()}


class SchemaError(ValueError):
    """A record or an `Example` that breaks the schema."""


def sniff_format(data: bytes) -> str | None:
    """The schema format whose file signature `data` starts with (jpeg, png, flac, wav, mp4), or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] in (b"RIFF", b"RIFX", b"RF64") and data[8:12] == b"WAVE":
        return "wav"
    if data[4:8] == b"ftyp":
        return "mp4"
    return None


def truncation(data: bytes, fmt: str | None) -> str | None:
    """How a file of format `fmt` is cut short, read from its own structure, or None where it looks whole: a JPEG
    without its end-of-image marker, a PNG without its IEND chunk, a WAV shorter than its RIFF header says, an MP4
    (ISO-BMFF) box running past the end. FLAC keeps no length to check (its decoder loses sync instead)."""
    n = len(data)
    if fmt == "jpeg" and not data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return f"truncated: the JPEG ends without its end-of-image marker ({n} bytes)"
    if fmt == "png" and b"IEND" not in data[-12:]:
        return f"truncated: the PNG ends without its IEND chunk ({n} bytes)"
    if fmt == "wav" and data[:4] == b"RIFF":
        riff = int.from_bytes(data[4:8], "little") + 8
        if n < riff < 0xFFFFFFFF:
            return f"truncated: {n} bytes of the {riff} its RIFF header gives"
    if fmt == "mp4":
        at = 0
        while at + 8 <= n:
            size, box = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8].decode("latin-1")
            if size == 1:  # a 64-bit size follows the type
                size = int.from_bytes(data[at + 8:at + 16], "big")
            elif size == 0:  # the box runs to the end of the file
                return None
            if size < 8:
                return None  # not a box layout this check reads; the decoder decides
            if at + size > n:
                return f"truncated: its {box!r} box runs to byte {at + size}, the file ends at byte {n}"
            at += size
        if at < n:
            return f"truncated: the file ends inside a box header at byte {at} of {n}"
    return None


def placeholder_kinds(text: str) -> list[str]:
    """Kinds of the placeholders in `text`, in order: `"<audio> and <image>"` -> `["audio", "image"]`."""
    return [_KIND_OF_PLACEHOLDER[m] for m in _PLACEHOLDER_RE.findall(text)]


def _check_bytes(data: Any, fmt: str, what: str) -> None:
    if not isinstance(data, bytes) or not data:
        raise SchemaError(f"{what}: data must be non-empty bytes, got {type(data).__name__} of length {_len(data)}")
    found = sniff_format(data)
    if found != fmt:
        raise SchemaError(
            f"{what}: format is {fmt!r} but the bytes start like {found or 'no known format'} "
            f"({data[:12]!r}); store the file as it is and name its real format"
        )


def _len(value: Any) -> int | str:
    try:
        return len(value)
    except TypeError:
        return "?"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass(frozen=True)
class Media:
    """One encoded media item. `data` is one file, or a tuple of JPEG files for `jpeg_frames`."""

    kind: str
    format: str
    data: bytes | tuple[bytes, ...]
    sampling_rate: int | None = None
    fps: float | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self):
        if isinstance(self.data, list):
            object.__setattr__(self, "data", tuple(self.data))
        if isinstance(self.size, list):
            object.__setattr__(self, "size", tuple(self.size))

    def validate(self, what: str) -> None:
        if self.kind not in FORMATS:
            raise SchemaError(f"{what}: unknown kind {self.kind!r}; kinds are {', '.join(FORMATS)}")
        if self.format not in FORMATS[self.kind]:
            all_formats = sorted({f for fs in FORMATS.values() for f in fs})
            hint = "" if self.format in all_formats else f" (known formats: {', '.join(all_formats)})"
            raise SchemaError(
                f"{what}: format {self.format!r} is not allowed for kind {self.kind!r}; "
                f"{self.kind} formats are {', '.join(FORMATS[self.kind])}{hint}"
            )
        if self.format == "jpeg_frames":
            if not isinstance(self.data, tuple) or not self.data:
                raise SchemaError(f"{what}: jpeg_frames data must be a non-empty list of JPEG files")
            for i, frame in enumerate(self.data):
                _check_bytes(frame, "jpeg", f"{what} frame {i}")
        else:
            _check_bytes(self.data, self.format, what)
        if self.sampling_rate is not None and (self.kind != "audio" or not _positive_int(self.sampling_rate)):
            raise SchemaError(
                f"{what}: sampling_rate is for audio only and must be a positive int, got {self.sampling_rate!r}"
            )
        if self.fps is not None and (
            self.kind != "video"
            or not isinstance(self.fps, (int, float))
            or not math.isfinite(self.fps)
            or self.fps <= 0
        ):
            raise SchemaError(f"{what}: fps is for video only and must be a positive number, got {self.fps!r}")
        if self.size is not None and (
            self.kind == "audio"
            or not isinstance(self.size, tuple)
            or len(self.size) != 2
            or not all(_positive_int(s) for s in self.size)
        ):
            raise SchemaError(
                f"{what}: size is for images and videos only and must be [width, height] in pixels, got {self.size!r}"
            )

    def to_dict(self) -> dict:
        record = {
            "kind": self.kind,
            "format": self.format,
            "data": list(self.data) if self.format == "jpeg_frames" else self.data,
        }
        for key in ("sampling_rate", "fps", "size"):
            value = getattr(self, key)
            if value is not None:
                record[key] = list(value) if key == "size" else value
        return record


@dataclasses.dataclass(frozen=True)
class Turn:
    """One message: `role`, `text` with placeholders, and the media index of each placeholder in order."""

    role: str
    text: str
    media: tuple[int, ...] = ()

    def __post_init__(self):
        if isinstance(self.media, list):
            object.__setattr__(self, "media", tuple(self.media))

    def to_dict(self) -> dict:
        return {"role": self.role, "text": self.text, "media": list(self.media)}


@dataclasses.dataclass(frozen=True)
class SpokenQuestion:
    """A recording (FLAC/WAV bytes) of `text`, which is written verbatim in the first user turn."""

    format: str
    data: bytes
    text: str
    sampling_rate: int | None = None

    def to_dict(self) -> dict:
        record = {"format": self.format, "data": self.data, "text": self.text}
        if self.sampling_rate is not None:
            record["sampling_rate"] = self.sampling_rate
        return record


def _question_span(text: str, question: str) -> tuple[int, int] | None:
    """Where `question` first occurs in `text`, or None; the span must not cut into a placeholder."""
    start = text.find(question)
    if start < 0:
        return None
    end = start + len(question)
    for match in _PLACEHOLDER_RE.finditer(text):
        if match.start() < end and start < match.end():
            return None
    return start, end


@dataclasses.dataclass(frozen=True)
class Example:
    """One training example; validated on construction, so an `Example` always follows the schema."""

    id: str
    source: str
    task: str
    turns: tuple[Turn, ...]
    media: tuple[Media, ...] = ()
    spoken_question: SpokenQuestion | None = None

    def __post_init__(self):
        object.__setattr__(self, "turns", tuple(self.turns))
        object.__setattr__(self, "media", tuple(self.media))
        self.validate()

    def validate(self) -> None:
        for key in ("id", "source", "task"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise SchemaError(f"example {self.id!r}: {key} must be a non-empty string, got {value!r}")
        where = f"example {self.id!r}"
        if not self.turns:
            raise SchemaError(f"{where}: has no turns; an example needs at least one")
        for i, media in enumerate(self.media):
            if not isinstance(media, Media):
                raise SchemaError(f"{where}: media[{i}] must be a Media, got {type(media).__name__}")
            media.validate(f"{where} media[{i}]")
        uses = [0] * len(self.media)
        for t, turn in enumerate(self.turns):
            what = f"{where} turn {t}"
            if not isinstance(turn, Turn):
                raise SchemaError(f"{what}: must be a Turn, got {type(turn).__name__}")
            if turn.role not in ROLES:
                raise SchemaError(f"{what}: unknown role {turn.role!r}; roles are {', '.join(ROLES)}")
            if turn.role == "system" and t != 0:
                raise SchemaError(f"{what}: a system turn may only be the first turn")
            if not isinstance(turn.text, str):
                raise SchemaError(f"{what}: text must be a string, got {type(turn.text).__name__}")
            for ref in turn.media:
                if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < len(self.media):
                    raise SchemaError(
                        f"{what}: media ref {ref!r} is out of range; the example has {len(self.media)} media item(s)"
                    )
                uses[ref] += 1
            kinds = placeholder_kinds(turn.text)
            ref_kinds = [self.media[ref].kind for ref in turn.media]
            if kinds != ref_kinds:
                counts = ", ".join(
                    f"{kinds.count(k)} {p} placeholder(s) vs {ref_kinds.count(k)} {k} ref(s)"
                    for k, p in PLACEHOLDERS.items()
                    if kinds.count(k) or ref_kinds.count(k)
                )
                raise SchemaError(
                    f"{what}: placeholders in the text ({kinds}) do not match the kinds of its media refs "
                    f"({ref_kinds}): {counts or 'none'}; put one placeholder per ref, in ref order"
                )
        for i, n in enumerate(uses):
            if n != 1:
                raise SchemaError(
                    f"{where}: media[{i}] is referenced {n} times; every media item is referenced exactly once"
                )
        if self.spoken_question is not None:
            self._validate_spoken_question(where)

    def _validate_spoken_question(self, where: str) -> None:
        question = self.spoken_question
        what = f"{where} spoken_question"
        if not isinstance(question, SpokenQuestion):
            raise SchemaError(f"{what}: must be a SpokenQuestion, got {type(question).__name__}")
        if question.format not in FORMATS["audio"]:
            raise SchemaError(
                f"{what}: format {question.format!r} is not an audio format ({', '.join(FORMATS['audio'])})"
            )
        _check_bytes(question.data, question.format, what)
        if question.sampling_rate is not None and not _positive_int(question.sampling_rate):
            raise SchemaError(f"{what}: sampling_rate must be a positive int, got {question.sampling_rate!r}")
        if not isinstance(question.text, str) or not question.text.strip():
            raise SchemaError(f"{what}: text must be the non-empty written question")
        if _PLACEHOLDER_RE.search(question.text):
            raise SchemaError(
                f"{what}: text {question.text!r} holds a placeholder; it must be the question's words only"
            )
        user = self._first_user_turn()
        if user is None:
            raise SchemaError(f"{what}: the example has no user turn to hold the question")
        if _question_span(self.turns[user].text, question.text) is None:
            raise SchemaError(
                f"{what}: text {question.text!r} is not written in the first user turn "
                f"({self.turns[user].text!r}) outside placeholders; the turns hold the written form of the question"
            )

    def _first_user_turn(self) -> int | None:
        return next((i for i, turn in enumerate(self.turns) if turn.role == "user"), None)

    def spoken_view(self) -> Example:
        """The example with its question as speech: the question's text in the first user turn becomes
        `<audio>`, referencing the recording, appended as the last media item."""
        question = self.spoken_question
        if question is None:
            raise SchemaError(f"example {self.id!r} has no spoken_question")
        t = self._first_user_turn()
        turn = self.turns[t]
        start, end = _question_span(turn.text, question.text)
        before = len(_PLACEHOLDER_RE.findall(turn.text[:start]))
        text = turn.text[:start] + PLACEHOLDERS["audio"] + turn.text[end:]
        new_ref = len(self.media)
        refs = turn.media[:before] + (new_ref,) + turn.media[before:]
        turns = self.turns[:t] + (Turn(turn.role, text, refs),) + self.turns[t + 1 :]
        audio = Media("audio", question.format, question.data, sampling_rate=question.sampling_rate)
        return dataclasses.replace(self, turns=turns, media=self.media + (audio,), spoken_question=None)

    def to_dict(self) -> dict:
        record = {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "source": self.source,
            "task": self.task,
            "turns": [turn.to_dict() for turn in self.turns],
            "media": [media.to_dict() for media in self.media],
        }
        if self.spoken_question is not None:
            record["spoken_question"] = self.spoken_question.to_dict()
        return record

    def to_bytes(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def from_dict(cls, record: Any) -> Example:
        if not isinstance(record, dict):
            raise SchemaError(f"a record must be a map, got {type(record).__name__}")
        if "schema_version" not in record:
            raise SchemaError(
                f"record has no schema_version (keys: {sorted(record)}); it was not written by data_pipelines.schema"
            )
        version = record["schema_version"]
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"record {record.get('id')!r} has schema_version {version!r}; this reader supports schema_version "
                f"{SCHEMA_VERSION} only: rebuild the shards with `python -m data_pipelines.build` from this checkout"
            )
        where = f"record {record.get('id')!r}"
        _check_keys(record, {"schema_version", "id", "source", "task", "turns", "media"}, {"spoken_question"}, where)
        turns = _list(record["turns"], f"{where} turns")
        media = _list(record["media"], f"{where} media")
        for t, turn in enumerate(turns):
            _check_keys(turn, {"role", "text", "media"}, set(), f"{where} turn {t}")
            _list(turn["media"], f"{where} turn {t} media")
        for i, item in enumerate(media):
            _check_keys(item, {"kind", "format", "data"}, {"sampling_rate", "fps", "size"}, f"{where} media[{i}]")
            if item.get("size") is not None:
                _list(item["size"], f"{where} media[{i}] size")
        question = record.get("spoken_question")
        if question is not None:
            _check_keys(question, {"format", "data", "text"}, {"sampling_rate"}, f"{where} spoken_question")
        return cls(
            id=record["id"],
            source=record["source"],
            task=record["task"],
            turns=tuple(Turn(**turn) for turn in turns),
            media=tuple(Media(**item) for item in media),
            spoken_question=SpokenQuestion(**question) if question is not None else None,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Example:
        try:
            record = msgpack.unpackb(data, raw=False)
        except (
            ValueError,
            msgpack.exceptions.ExtraData,
            msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError,
        ) as e:
            raise SchemaError(
                f"record is not valid msgpack ({type(e).__name__}: {e}); "
                f"{len(data)} bytes starting {bytes(data[:16])!r}"
            ) from e
        return cls.from_dict(record)


def _check_keys(record: Any, required: set[str], optional: set[str], where: str) -> None:
    if not isinstance(record, dict):
        raise SchemaError(f"{where}: must be a map, got {type(record).__name__}")
    missing = required - record.keys()
    unknown = record.keys() - required - optional
    if missing or unknown:
        problems = [
            f"{name} keys {sorted(keys)}" for name, keys in (("missing", missing), ("unknown", unknown)) if keys
        ]
        raise SchemaError(
            f"{where}: {', '.join(problems)}; expected {sorted(required)}"
            + (f" and optionally {sorted(optional)}" if optional else "")
        )


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise SchemaError(f"{where}: must be a list, got {type(value).__name__}")
    return value
