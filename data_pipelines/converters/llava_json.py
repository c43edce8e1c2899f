"""LLaVA / Ola data files -> examples (`python -m data_pipelines.build llava-json`).

A data file is a JSON list, or JSON Lines, of entries: `id`, `conversations` [{`from`:
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
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from data_pipelines.converters.reencode import (audio_media, frame_folder_media, frames_media, image_media,
                                                read_bytes, video_media)
from data_pipelines.converters.writer import Skip
from data_pipelines.schema import PLACEHOLDERS, Example, Media, SpokenQuestion, Turn

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

    def _patch_bytes(self, ref: dict, what: str) -> bytes | list[bytes]:
        """Ola's patch reference: `size` bytes (or consecutive sizes) from `start_num` in file `patch`."""
        if "img_path" in ref:
            return read_bytes(self._path(ref["img_path"]), what)
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
            data = self._patch_bytes(ref, what)
            if isinstance(data, list):
                if kind != "video":
                    raise Skip("malformed entry", f"{what}: a list of sizes is for video frames only")
                return frames_media(data, what)
        elif isinstance(ref, str) and ref:
            path = self._path(ref)
            if kind == "video" and os.path.isdir(path):
                return frame_folder_media(path, what)
            data = read_bytes(path, what)
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
