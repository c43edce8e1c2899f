"""The Grain input pipeline: ArrayRecord shards of `schema.Example` records -> packed batches on the
batch contract (`omnijax.batch`), per stage, per host, resumable.

    per source:  MapDataset.source(shards) -> shuffle(seed) -> repeat -> [process_index::process_count]
                 -> to_iter_dataset -> map(Prepare): parse, decode + features (`features.py`),
                    ChatML + placeholder expansion + loss mask, over-long policy
    IterDataset.mix({source: dataset}, {source: weight})
    -> Account: skip bad records (counted per reason; too many in a window -> BadRecordsError)
    -> FirstFitPackIterDataset (text and media slots packed together) -> map(FinishRow)
    -> mp_prefetch (workers) -> batch(batch_size)

Text. Each example is written as ChatML, `<|im_start|>{role}\\n{text}<|im_end|>\\n` per turn, with a
system turn (`system_prompt`, Ola's "You are a helpful assistant.") when it has none, and
tokenised in one call with the stage's tokenizer (the checkpoint's, or the omni-synth BPE of
`data_pipelines.tokenizer`). Every `<image>`/`<video>`/`<audio>` placeholder is written as the
modality's placeholder token and then repeated to exactly the count the shared count function
gives for that item (`MediaLayout.image_tokens` etc. via `features.MediaFeatures`). Loss weights are
1 on the text and `<|im_end|>` of assistant turns, never on placeholders; `targets` are the next
token within the example (the last token predicts nothing), so packing never crosses examples.
`Prepare.prompt` writes a generation prompt the same way, up to the assistant's header
(`omnijax.inference.omni`).

Packing. Grain's first-fit packer carries media as sequence features: each modality's slot array
(`images [k, S, S, 3]`, ...) and per-slot fields are packed along their first axis with the stage's
slot count as capacity, so an example goes into a row only when its tokens *and* its media fit, and
a row's slots hold its examples' items in segment order. The packer gives each slot the segment
of its example; `FinishRow` turns the per-example item numbers into the row's (`*_item`, -1 for
empty slots). Bins are emitted in order (no bin shuffle).

Self-KD pairs (arXiv 2503.00059). In a source with `self_kd=True` every example becomes one element
holding two parts: the example with its written question (the teacher, `kd_part` 1) followed by its
spoken view (`Example.spoken_view`, the student, `kd_part` 2), each tokenised as an example of its own
(targets never cross from teacher to student); its media in placeholder order across the pair (teacher
image, student image, student audio). `FinishRow` gives each part its own segment and restarts the
positions at 0 for the student. Pairs are packed whole: one that does not fit a row is dropped (counted
as `dropped_too_long`) under either over-long policy, since a cut pair would not answer with the same
tokens on both sides. An example without a spoken question in such a source is an error. When any
source is a Self-KD source, every element carries `kd_part` (0 for ordinary examples) and the batches
have it (`omnijax.batch.batch_spec(self_kd=True)`).

Bad records (undecodable record or media, placeholders that do not match the media) are skipped
and counted per reason (`BAD_REASONS`). When more than `max_bad_fraction * bad_window` of the last
`bad_window` records were bad, the pipeline stops with `BadRecordsError` naming the shards and
record indices. Over-long examples (more tokens than `seq_len`, more media than the slots, audio
beyond `max_audio_chunks` windows) are dropped (`too_long='drop'`) or cut before the first item
or token that does not fit (`'truncate'`; an example left with nothing to learn is dropped).

State. `Pipeline.get_state()` is JSON; restoring it needs the same worker count and the same
process count and index (Grain's iterator state is per worker); the source weights may change
(`IterDataset.mix` keeps each source's position by name). The same seed and worker count give the
same batches.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import zlib
from collections.abc import Sequence

import grain
import msgpack
import numpy as np

from data_pipelines import features as features_lib
from data_pipelines import schema
from data_pipelines.tokenizer import DEFAULT_SYSTEM_PROMPT, IM_END, IM_START, load_tokenizer
from omnijax.batch import ANYRES_PLAN, KD_ORDINARY, KD_STUDENT, KD_TEACHER, SLOT_FIELDS, MediaBudget, batch_spec
from omnijax.media_layouts import MediaLayout
from omnijax.media_tokens import MODALITIES

TOO_LONG_POLICIES = ("drop", "truncate")
BAD_REASONS = ("bad_record", "placeholder_mismatch", "corrupt_image", "corrupt_video", "corrupt_audio")
COUNTERS = ("records", "examples", "tokens", "loss_tokens", "truncated", "dropped_too_long", *BAD_REASONS)
EXAMPLE_TEXT_FIELDS = ("input_ids", "targets", "loss_weights", "task_ids")  # per example; the packer adds the rest
STATE_VERSION = 1


class BadRecordsError(RuntimeError):
    """Too many bad records in a window; the message names them (shard and record index)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One corpus in a stage's mixture: ArrayRecord shards of `schema.Example` records and its weight.
    `spoken`: feed examples with a spoken question in their spoken form (`Example.spoken_view`).
    `self_kd`: feed each example as a Self-KD pair, its written then its spoken form (module docstring)."""

    name: str
    paths: tuple[str, ...]
    weight: float = 1.0
    spoken: bool = False
    self_kd: bool = False

    def __post_init__(self):
        object.__setattr__(self, "paths", (self.paths,) if isinstance(self.paths, str) else tuple(self.paths))
        if not self.paths:
            raise ValueError(f"source {self.name!r} has no shards")
        if not self.weight > 0:
            raise ValueError(f"source {self.name!r}: weight must be positive, got {self.weight!r}")
        if self.spoken and self.self_kd:
            raise ValueError(f"source {self.name!r} is spoken and self_kd: a Self-KD pair already holds the spoken "
                             "form (its student part); set only self_kd")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """A stage's input pipeline. `batch_size` is this process's rows (the global batch divided by the
    process count); `budget` and `layout` come from the model config (`OmniConfig.budget`,
    `OmniConfig.media_layout`); `tokenizer` is an HF tokenizer directory."""

    sources: tuple[Source, ...]
    tokenizer: str
    batch_size: int
    seq_len: int
    budget: MediaBudget
    layout: MediaLayout
    seed: int = 0
    task_names: tuple[str, ...] = ()  # task id = index of the record's task here; others get len(task_names)
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # added when an example has no system turn
    video_frames: int = 8  # frames sampled per video
    image_tiling: str = "resize"  # ola layout: 'resize' or 'dynamic' (features.MediaFeatures)
    max_image_tiles: int = 9
    max_audio_chunks: int = 25  # Ola: 25 x 30 s
    too_long: str = "drop"  # or 'truncate'
    max_bad_fraction: float = 0.01
    bad_window: int = 1000  # records
    packing_bins: int = 8  # rows the first-fit packer fills at once
    max_examples_per_row: int | None = None
    workers: int = 0  # mp_prefetch processes (0: decode in this process)
    worker_buffer_size: int = 2  # rows buffered per worker
    read_threads: int = 1  # record read-ahead threads per source (per worker)
    read_buffer: int = 16  # records read ahead per source (per worker)
    process_index: int | None = None  # default: jax.process_index()
    process_count: int | None = None  # default: jax.process_count()

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "task_names", tuple(self.task_names))
        names = [s.name for s in self.sources]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"sources need distinct names and at least one source, got {names}")
        if self.too_long not in TOO_LONG_POLICIES:
            raise ValueError(f"too_long={self.too_long!r} is not one of {TOO_LONG_POLICIES}")
        if self.batch_size < 1 or self.seq_len < 2 or self.packing_bins < 1 or self.workers < 0:
            raise ValueError("batch_size, packing_bins >= 1, seq_len >= 2 and workers >= 0 are required")
        if not 0 <= self.max_bad_fraction < 1 or self.bad_window < 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1) and bad_window >= 1, got "
                             f"{self.max_bad_fraction}, {self.bad_window}")
        if self.budget.video_slots and self.video_frames > self.budget.video_slots:
            raise ValueError(f"video_frames={self.video_frames} is more than the budget's video_slots="
                             f"{self.budget.video_slots}: no video would fit a row")
        for m in MODALITIES:
            if self.budget.slots(m) and getattr(self.layout, f"{m}_token_id") is None:
                raise ValueError(f"the budget has {m}_slots={self.budget.slots(m)} but the {self.layout.name} "
                                 f"layout has no {m} placeholder token")

    @property
    def self_kd(self) -> bool:
        """Whether a source gives Self-KD pairs: then the batches carry `kd_part`."""
        return any(s.self_kd for s in self.sources)

    @property
    def counters(self) -> tuple[str, ...]:
        """Names of the pipeline's counters (`Pipeline.metrics`)."""
        return COUNTERS + tuple(f"records/{s.name}" for s in self.sources)

    def processes(self) -> tuple[int, int]:
        if self.process_index is not None and self.process_count is not None:
            index, count = self.process_index, self.process_count
        else:
            import jax

            index, count = jax.process_index(), jax.process_count()
        if not 0 <= index < count:
            raise ValueError(f"process_index {index} is outside [0, process_count={count})")
        return index, count


class _Skip(Exception):  # noqa: N818  (control flow inside Prepare, never leaves the module)
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class Records:
    """ArrayRecord shards as one random-access source of `(index, record bytes)`; `where(index)` names
    the shard and the record inside it. Picklable (readers open lazily in each worker)."""

    def __init__(self, paths: Sequence[str]):
        self.paths = tuple(paths)
        counts = [schema.num_records(p) for p in self.paths]
        self.starts = np.cumsum([0, *counts]).tolist()
        if self.starts[-1] == 0:
            raise ValueError(f"the shards {list(self.paths)} hold no records")
        self._source = grain.sources.ArrayRecordDataSource(list(self.paths))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> tuple[int, bytes]:
        return int(index), self._source[index]

    def where(self, index: int) -> str:
        shard = bisect.bisect_right(self.starts, index) - 1
        return f"shard {self.paths[shard]} record {index - self.starts[shard]}"


class Prepare:
    """One record -> a tokenised example with its media features (the packer's input), or a skip
    marker `{"skip": reason, "where": ..., "detail": ...}`. Runs in the pipeline workers. `prompt`
    prepares a generation prompt the same way (inference; `records` may then be None)."""

    def __init__(self, config: PipelineConfig, source: Source, records: Records, tokenizer):
        self.source, self.records = source, records
        self.seq_len, self.budget = config.seq_len, config.budget
        self.system_prompt, self.truncate = config.system_prompt, config.too_long == "truncate"
        self.task_names = config.task_names
        self.kd_part = config.self_kd  # every element carries kd_part
        self.features = features_lib.MediaFeatures(
            config.budget, config.layout, video_frames=config.video_frames, image_tiling=config.image_tiling,
            max_image_tiles=config.max_image_tiles, max_audio_chunks=config.max_audio_chunks)
        self.backend = tokenizer.backend_tokenizer  # the Rust tokenizer: picklable, no transformers in workers
        self.modalities = tuple(m for m in MODALITIES if config.budget.slots(m))
        self.pad_ids = {m: config.layout.token_id(m) for m in self.modalities}
        self.pad_tokens = {}
        for m, tid in self.pad_ids.items():
            token = tokenizer.convert_ids_to_tokens(tid)
            if tid not in tokenizer.added_tokens_decoder:
                raise ValueError(f"{m} placeholder id {tid} ({token!r}) is not a special token of the tokenizer "
                                 f"{config.tokenizer}; the layout's {m}_token_id must name one")
            self.pad_tokens[m] = token
        self.plan = config.layout.image_plans and "image" in self.modalities

    def __call__(self, item: tuple[int, bytes]) -> dict:
        index, data = item
        try:
            return self.example(self.parse(data))
        except _Skip as skip:
            return {"skip": skip.reason, "where": self.records.where(index), "detail": str(skip),
                    "source": self.source.name}

    def parse(self, data: bytes) -> schema.Example:
        try:
            record = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
                msgpack.exceptions.StackError) as e:
            raise _Skip("bad_record", f"not msgpack ({type(e).__name__}: {e})") from e
        try:
            example = schema.Example.from_dict(record)
        except schema.SchemaError as e:
            raise _Skip("placeholder_mismatch" if _placeholders_mismatch(record) else "bad_record", str(e)) from e
        if self.source.spoken and example.spoken_question is not None:
            example = example.spoken_view()
        return example

    def task_id(self, task: str) -> int:
        return self.task_names.index(task) if task in self.task_names else len(self.task_names)

    def text(self, example: schema.Example, generation: bool = False) -> tuple[str, list[tuple[int, int]], list[int]]:
        """ChatML text with one placeholder token per media item, the assistant spans to learn
        (characters), and the media indices in placeholder order. `generation`: the prompt to answer
        instead, the turns before the first assistant turn and then the assistant's header."""
        turns = list(example.turns)
        if generation:
            turns = list(itertools.takewhile(lambda turn: turn.role != "assistant", turns))
        if self.system_prompt is not None and (not turns or turns[0].role != "system"):
            turns.insert(0, schema.Turn("system", self.system_prompt))
        parts, spans, order, length = [], [], [], 0
        for turn in turns:
            text = turn.text
            for ref in turn.media:
                kind = example.media[ref].kind
                if kind not in self.modalities:
                    raise ValueError(
                        f"source {self.source.name!r}, example {example.id!r}: it has a {kind} but the stage takes "
                        f"no {kind}s ({kind}_slots=0); give the stage {kind} slots or leave such examples out of "
                        "its sources")
            for m, token in self.pad_tokens.items():
                text = text.replace(schema.PLACEHOLDERS[m], token)
            order.extend(turn.media)
            head = f"{IM_START}{turn.role}\n"
            body = f"{text}{IM_END}"
            if turn.role == "assistant":
                spans.append((length + len(head), length + len(head) + len(body)))
            parts.append(f"{head}{body}\n")
            length += len(parts[-1])
        if generation:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts), spans, order

    def example(self, example: schema.Example) -> dict:
        if self.source.self_kd:
            return self.pair(example)
        ids, learn, order = self.tokens(example)
        items, trimmed = self.media(example, order)
        ids, learn, items, truncated = self.expand(ids, learn, items)
        out = self.text_fields(ids, learn, example.task, KD_ORDINARY)
        out.update(self.slots(items), truncated=truncated or trimmed, source=self.source.name)
        return out

    def pair(self, example: schema.Example) -> dict:
        """A Self-KD pair as one element: the teacher part (the written question) then the student part
        (`spoken_view`), whole or skipped as `dropped_too_long` (module docstring)."""
        if example.spoken_question is None:
            raise ValueError(
                f"source {self.source.name!r} is a Self-KD source (self_kd=True), but example {example.id!r} has no "
                "spoken_question; such a source holds questions with their recordings (omni-synth's spoken_image_qa): "
                "leave other examples out of it, or set self_kd=False")
        views = (example, example.spoken_view())
        tokens = [self.tokens(view) for view in views]
        text = sum(len(ids) - len(order) for ids, _, order in tokens)
        if text > self.seq_len:
            raise _Skip("dropped_too_long", f"{text} text tokens in the Self-KD pair for seq_len {self.seq_len}")
        # The student's media are the teacher's and the recording: each item is decoded once.
        student_items, trimmed = self.media(views[1], tokens[1][2])
        decoded = dict(zip(tokens[1][2], student_items, strict=True))
        per_part = ([decoded[i] for i in tokens[0][2]], student_items)
        parts = []
        for kd_part, (ids, learn, _), mine in zip((KD_TEACHER, KD_STUDENT), tokens, per_part, strict=True):
            ids, learn, _, _ = self.runs(ids, learn, mine)
            parts.append(self.text_fields(ids, learn, example.task, kd_part))
        items = per_part[0] + per_part[1]  # placeholder order across the pair
        n = sum(len(p["input_ids"]) for p in parts)
        used = collections.Counter()
        for item in items:
            used[item.kind] += item.slots
        if n > self.seq_len or any(used[m] > self.budget.slots(m) for m in used):
            raise _Skip("dropped_too_long", f"the Self-KD pair takes {n} tokens for seq_len {self.seq_len} and "
                                            f"slots {dict(used)}; pairs are never cut")
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out.update(self.slots(items), truncated=trimmed, source=self.source.name)
        return out

    def text_fields(self, ids: np.ndarray, learn: np.ndarray, task: str, kd_part: int) -> dict[str, np.ndarray]:
        """An example's token fields: ids, next-token targets and weights inside the example, task ids,
        and (Self-KD pipelines) its `kd_part`."""
        out = {
            "input_ids": ids.astype(np.int32),
            "targets": np.append(ids[1:], 0).astype(np.int32),
            "loss_weights": np.append(learn[1:], False).astype(np.float32),
            "task_ids": np.full(len(ids), self.task_id(task), np.int32),
        }
        if self.kd_part:
            out["kd_part"] = np.full(len(ids), kd_part, np.int32)
        return out

    def tokens(self, example: schema.Example, generation: bool = False) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Token ids with one placeholder token per media item, which tokens to learn, and the media
        indices in placeholder order (`generation`: of the prompt, `text`). Skips examples whose
        placeholder tokens do not match their media (e.g. a placeholder token written in the text) and,
        under `too_long='drop'`, examples whose text alone passes `seq_len` (before any media is decoded)."""
        text, spans, order = self.text(example, generation)
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, np.int64)
        starts = np.fromiter((o[0] for o in encoding.offsets), np.int64, len(ids))
        learn = np.zeros(len(ids), bool)
        for lo, hi in spans:
            learn |= (starts >= lo) & (starts < hi)
        kinds = [example.media[i].kind for i in order]
        for m, tid in self.pad_ids.items():
            found = int(np.count_nonzero(ids == tid))
            if found != kinds.count(m):
                raise _Skip("placeholder_mismatch", f"the text holds {found} {m} placeholder token(s) "
                                                    f"for {kinds.count(m)} {m}(s)")
        if not self.truncate and len(ids) - len(order) > self.seq_len:
            raise _Skip("dropped_too_long", f"{len(ids) - len(order)} text tokens for seq_len {self.seq_len}")
        return ids, learn, order

    def prompt(self, example: schema.Example) -> tuple[np.ndarray, list[features_lib.Feature]]:
        """A generation prompt (inference), prepared as training prepares examples: the turns before the
        first assistant turn as ChatML, then the assistant's header `<|im_start|>assistant\\n`, each
        placeholder expanded to its item's tokens. Returns (input_ids int32 `[n]`, the media features in
        placeholder order). Raises `ValueError` naming the example when a media item does not decode or
        the prompt does not fit `seq_len` or the budget's slots (a `too_long='drop'` config)."""
        try:
            ids, learn, order = self.tokens(example, generation=True)
            items, _ = self.media(example, order)
            ids, _, items, _ = self.expand(ids, learn, items)
        except _Skip as skip:
            raise ValueError(f"example {example.id!r}: {skip} ({skip.reason})") from None
        return ids.astype(np.int32), items

    def media(self, example: schema.Example, order: list[int]) -> tuple[list[features_lib.Feature], bool]:
        """The features of the media items in placeholder order, and whether an audio clip was cut."""
        multi_image = sum(example.media[i].kind == "image" for i in order) > 1
        items = []
        for i in order:
            try:
                items.append(self.features.item(example.media[i], multi_image=multi_image, trim_audio=self.truncate))
            except features_lib.MediaError as e:
                raise _Skip(e.reason, f"media[{i}]: {e}") from e
            except features_lib.TooLongError as e:
                raise _Skip("dropped_too_long", f"media[{i}]: {e}") from e
        return items, any(f.trimmed for f in items)

    def expand(self, ids, learn, items):
        """Each placeholder token -> its item's run of placeholder tokens; then the over-long policy.
        Returns (ids, learn, items, truncated)."""
        ids, learn, run_starts, run_ends = self.runs(ids, learn, items)
        cut, kept = self.fit(len(ids), run_starts, run_ends, items)
        if cut == len(ids) and kept == len(items):
            return ids, learn, items, False
        if not self.truncate:
            raise _Skip("dropped_too_long", f"{len(ids)} tokens for seq_len {self.seq_len}, or more media than the "
                                            "slots hold")
        if not learn[1:cut].any():
            raise _Skip("dropped_too_long", f"nothing to learn is left in the first {cut} tokens")
        return ids[:cut], learn[:cut], items[:kept], True

    def runs(self, ids, learn, items):
        """Each placeholder token -> its item's run of placeholder tokens (never learned). Returns (ids,
        learn, and where each item's run starts and ends)."""
        pads = np.asarray(list(self.pad_ids.values()), np.int64)
        positions = np.flatnonzero(np.isin(ids, pads))  # one per item, in placeholder order
        reps = np.ones(len(ids), np.int64)
        reps[positions] = [f.tokens for f in items]
        ends = np.cumsum(reps)[positions]
        ids, learn = np.repeat(ids, reps), np.repeat(learn, reps)
        learn &= ~np.isin(ids, pads)
        return ids, learn, ends - reps[positions], ends

    def fit(self, n: int, run_starts, run_ends, items) -> tuple[int, int]:
        """(tokens, items) of the example that fit the row: cut before the first item whose tokens
        pass `seq_len` or whose slots pass the budget."""
        cut, used = min(n, self.seq_len), collections.Counter()
        for k, item in enumerate(items):
            used[item.kind] += item.slots
            if run_ends[k] > cut or used[item.kind] > self.budget.slots(item.kind):
                return min(cut, int(run_starts[k])), k
        return cut, len(items)

    def slots(self, items: list[features_lib.Feature]) -> dict[str, np.ndarray]:
        """Per modality the example's slot arrays `[slots, ...]` and each slot's item number in the example."""
        out = {}
        for m in self.modalities:
            mine = [f for f in items if f.kind == m]
            shape = _slot_shape(self.budget, m)
            out[SLOT_FIELDS[m]] = np.concatenate([f.data for f in mine]) if mine else np.zeros((0, *shape), np.float32)
            out[f"{m}_item"] = np.repeat(np.arange(len(mine), dtype=np.int32), [f.slots for f in mine])
            if m == "audio":
                out["audio_valid_frames"] = np.concatenate([f.valid_frames for f in mine] or [np.zeros(0, np.int32)])
            if m == "image" and self.plan:
                plans = [np.tile(np.asarray(f.plan, np.int32), (f.slots, 1)) for f in mine]
                out["image_plan"] = np.concatenate(plans) if plans else np.zeros((0, ANYRES_PLAN), np.int32)
        return out


def _slot_shape(budget: MediaBudget, m: str) -> tuple[int, ...]:
    if m == "audio":
        return budget.n_mels, budget.audio_frames
    size = budget.image_size if m == "image" else budget.video_size
    return size, size, 3


def _placeholders_mismatch(record) -> bool:
    """Whether a raw record's placeholders disagree with its media list (count per turn or in all)."""
    try:
        turns, media = record["turns"], record["media"]
        counts = [len(schema.placeholder_kinds(t["text"])) for t in turns]
        return any(c != len(t["media"]) for c, t in zip(counts, turns, strict=True)) or sum(counts) != len(media)
    except (TypeError, KeyError, AttributeError):
        return False


class Account(grain.IterDataset):
    """Drops skip markers, counts records per reason and source, and stops the run when more than
    `max_bad_fraction * bad_window` of the last `bad_window` records were bad. Each example leaves
    with `stats`: the counters (`PipelineConfig.counters`) since the previous example."""

    def __init__(self, parent: grain.IterDataset, config: PipelineConfig):
        super().__init__(parent)
        self.counters = config.counters
        self.window, self.limit = config.bad_window, config.max_bad_fraction

    def __iter__(self):
        return _AccountIterator(self._parent.__iter__(), self.counters, self.window, self.limit)


class _AccountIterator(grain.DatasetIterator):
    def __init__(self, parent, counters, window, limit):
        super().__init__(parent)
        self.index = {name: i for i, name in enumerate(counters)}
        self.size, self.window, self.limit = len(counters), window, limit
        self.seen = 0
        self.bad: list[tuple[int, str]] = []  # (record number, description) of the bad records in the window

    def __next__(self) -> dict:
        stats = np.zeros(self.size, np.int64)
        while True:
            element = next(self._parent)
            self.seen += 1
            stats[self.index["records"]] += 1
            stats[self.index[f"records/{element.pop('source')}"]] += 1
            reason = element.get("skip")
            if reason is None:
                break
            stats[self.index[reason]] += 1
            if reason in BAD_REASONS:
                self.bad.append((self.seen, f"{element['where']}: {reason} ({element['detail']})"))
                self.check()
            elif stats[self.index["dropped_too_long"]] >= self.window:
                raise ValueError(f"{self.window} records in a row were over-long (the last: {element['where']}: "
                                 f"{element['detail']}); raise seq_len or the media slots, or use too_long='truncate'")
        self.bad = [b for b in self.bad if self.seen - b[0] < self.window]
        stats[self.index["examples"]] += 1
        stats[self.index["tokens"]] += len(element["input_ids"])
        stats[self.index["loss_tokens"]] += int(np.count_nonzero(element["loss_weights"]))
        stats[self.index["truncated"]] += element.pop("truncated")
        element["stats"] = stats
        return element

    def check(self) -> None:
        self.bad = [b for b in self.bad if self.seen - b[0] < self.window]
        if len(self.bad) > self.limit * self.window:
            listed = "\n  ".join(d for _, d in self.bad[-10:])
            raise BadRecordsError(
                f"{len(self.bad)} of the last {self.window} records were bad, more than max_bad_fraction="
                f"{self.limit} allows; the last {min(len(self.bad), 10)}:\n  {listed}\n"
                "repair or rebuild these shards, or raise max_bad_fraction")

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "seen": self.seen, "bad": [list(b) for b in self.bad]}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self.seen = int(state["seen"])
        self.bad = [(int(i), str(d)) for i, d in state["bad"]]


class FinishRow:
    """A packed row -> the batch contract's fields for one row (plus its `stats`): segment ids and
    positions from the packer (`self_kd`: each pair split into its teacher and student segments,
    `split_pairs`), and the row's item number of every media slot (-1 = empty)."""

    def __init__(self, modalities: Sequence[str], num_counters: int, self_kd: bool = False):
        self.modalities, self.num_counters, self.self_kd = tuple(modalities), num_counters, self_kd

    def __call__(self, row: dict) -> dict:
        out = {name: row[name] for name in EXAMPLE_TEXT_FIELDS}
        out["segment_ids"] = row["input_ids_segment_ids"]
        out["positions"] = row["input_ids_positions"]
        if self.self_kd:
            out["kd_part"] = row["kd_part"]
            out["segment_ids"], out["positions"] = split_pairs(row["input_ids_segment_ids"], row["kd_part"])
        for m in self.modalities:
            field, item = SLOT_FIELDS[m], f"{m}_item"
            seg, local = row[f"{field}_segment_ids"], row[item]
            per_segment = np.zeros(int(seg.max(initial=0)) + 1, np.int32)
            np.maximum.at(per_segment, seg, local + 1)  # items of each segment (segment 0 = empty slots)
            offset = np.concatenate([[0], np.cumsum(per_segment[1:])]).astype(np.int32)
            out[field] = row[field]
            out[item] = np.where(seg > 0, local + offset[np.maximum(seg - 1, 0)], -1).astype(np.int32)
            if m == "audio":
                out["audio_valid_frames"] = row["audio_valid_frames"]
            if m == "image" and "image_plan" in row:
                out["image_plan"] = row["image_plan"]
        out["stats"] = np.sum(row["stats"], axis=0) if len(row["stats"]) else np.zeros(self.num_counters, np.int64)
        return out


def split_pairs(segment_ids: np.ndarray, kd_part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One packed row's segment ids ``[t]`` (one per packed element) -> segment ids with each Self-KD
    pair's student part a segment of its own, numbered 1, 2, ... in row order (0 = padding), and RoPE
    positions restarting at 0 in every segment."""
    t = np.arange(len(segment_ids))
    before = lambda x: np.concatenate([[0], x[:-1]])  # noqa: E731
    start = (segment_ids > 0) & ((segment_ids != before(segment_ids))
                                 | ((kd_part == KD_STUDENT) & (before(kd_part) != KD_STUDENT)))
    first = np.maximum.accumulate(np.where(start, t, 0))
    real = segment_ids > 0
    return np.where(real, np.cumsum(start), 0).astype(np.int32), np.where(real, t - first, 0).astype(np.int32)


_THREAD_LIMITS = []


def _init_worker(worker_index: int, worker_count: int) -> None:
    """One BLAS/OpenMP thread per pipeline worker (the workers are the parallelism)."""
    del worker_index, worker_count
    from threadpoolctl import threadpool_limits

    _THREAD_LIMITS.append(threadpool_limits(limits=1))


def _source_seed(seed: int, name: str) -> int:
    """The shuffle seed of one source: from the pipeline seed and the source's name, so adding a source
    leaves the others' order alone."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def build_dataset(config: PipelineConfig, tokenizer=None) -> grain.IterDataset:
    """The pipeline as a Grain `IterDataset` of batches (each with a `stats [batch, counters]` field
    next to the batch contract's fields)."""
    tokenizer = tokenizer or load_tokenizer(config.tokenizer)
    index, count = config.processes()
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer)
    mixture = {}
    for source in config.sources:
        records = Records(source.paths)
        ds = grain.MapDataset.source(records).shuffle(seed=_source_seed(config.seed, source.name)).repeat()
        ds = ds[index::count]
        mixture[source.name] = ds.to_iter_dataset(read).map(Prepare(config, source, records, tokenizer))
    ds = grain.IterDataset.mix(mixture, {s.name: s.weight for s in config.sources})
    ds = Account(ds, config)
    modalities = [m for m in MODALITIES if config.budget.slots(m)]
    lengths = {name: config.seq_len for name in EXAMPLE_TEXT_FIELDS + (("kd_part",) if config.self_kd else ())}
    for m in modalities:
        slots = config.budget.slots(m)
        lengths[SLOT_FIELDS[m]] = lengths[f"{m}_item"] = slots
        if m == "audio":
            lengths["audio_valid_frames"] = slots
        if m == "image" and config.layout.image_plans:
            lengths["image_plan"] = slots
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=lengths, num_packing_bins=config.packing_bins, shuffle_bins=False,
        meta_features=("stats",), max_sequences_per_bin=config.max_examples_per_row)
    ds = ds.map(FinishRow(modalities, len(config.counters), config.self_kd))
    if config.workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # Grain 0.2.18's mp_prefetch reads absl flags (JAX defines some)
        options = grain.MultiprocessingOptions(num_workers=config.workers,
                                               per_worker_buffer_size=config.worker_buffer_size)
        ds = ds.mp_prefetch(options, worker_init_fn=_init_worker)
    return ds.batch(config.batch_size, drop_remainder=True)


class Pipeline:
    """Batches of one stage for this process: an iterator of dicts of numpy arrays with the fields of
    `spec` (`omnijax.batch.batch_spec`), resumable through `get_state`/`set_state` (JSON) and the
    trainer's checkpoint protocol (`checkpoint_handler`, `save_args`, `restore_args`, `restored`).
    `metrics` counts records, examples, tokens, skips per reason, truncations and records per source."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        if not config.workers:
            features_lib.limit_blas_threads()  # the decode runs in this process, next to the train step
        self.tokenizer = load_tokenizer(config.tokenizer)
        self.dataset = build_dataset(config, self.tokenizer)
        self.spec = batch_spec(config.batch_size, config.seq_len, config.budget, config.layout,
                               config.self_kd)
        self.totals = dict.fromkeys(config.counters, 0)
        self._iterator = None

    def _it(self):
        if self._iterator is None:
            self._iterator = iter(self.dataset)
        return self._iterator

    def __iter__(self) -> Pipeline:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it())
        for name, value in zip(self.config.counters, batch.pop("stats").sum(axis=0), strict=True):
            self.totals[name] += int(value)
        return batch

    @property
    def metrics(self) -> dict[str, float]:
        """The counters so far, plus `bad_fraction` (bad records / records)."""
        out = dict(self.totals)
        bad = sum(self.totals[r] for r in BAD_REASONS)
        out["bad_fraction"] = bad / max(self.totals["records"], 1)
        return out

    def get_state(self) -> dict:
        index, count = self.config.processes()
        return {"version": STATE_VERSION, "workers": self.config.workers, "process_index": index,
                "process_count": count, "iterator": self._it().get_state(), "totals": dict(self.totals)}

    def set_state(self, state: dict) -> None:
        index, count = self.config.processes()
        mine = {"version": STATE_VERSION, "workers": self.config.workers, "process_index": index,
                "process_count": count}
        differ = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differ:
            raise ValueError(
                "the saved pipeline state does not fit this pipeline: "
                + ", ".join(f"{k} saved {s!r}, now {n!r}" for k, (s, n) in differ.items())
                + "; Grain's iterator state is per worker and per process: resume with the same workers and hosts")
        self._it().set_state(state["iterator"])
        self.totals = dict.fromkeys(self.config.counters, 0) | {
            k: int(v) for k, v in state["totals"].items() if k in self.totals}

    def close(self) -> None:
        """Stop the workers."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the trainer's checkpoint protocol (omnijax.training.data_source) --

    def checkpoint_handler(self):
        import orbax.checkpoint as ocp

        return ocp.JsonCheckpointHandler()

    def save_args(self):
        import orbax.checkpoint as ocp

        return ocp.args.JsonSave(self.get_state())

    def restore_args(self):
        import orbax.checkpoint as ocp

        return ocp.args.JsonRestore()

    def restored(self, value) -> None:
        self.set_state(value)
