"""The Grain input pipeline: ArrayRecord shards of `schema.Example` records -> packed batches on the
batch contract (`omnijax.batch`), per stage, per host, resumable.

    per source:  MapDataset.source(shards) -> shuffle(seed) -> repeat -> [process_index::process_count]
                 -> to_iter_dataset -> map(Prepare): parse, decode + features (`features.py`),
                    ChatML + placeholder expansion + loss mask, over-long policy
    IterDataset.mix({source: dataset}, {source: weight})
    -> Account: skip bad records (counted per reason; too many in a window -> BadRecordsError)
    -> FirstFitPackIterDataset (text and media slots packed together) -> map(FinishRow)
    -> mp_prefetch (workers) -> batch(batch_size)

Per example (`prepare.Prepare`): the record is parsed (`records`), written as ChatML and tokenised
(`chat_template`: the text, its loss mask, one placeholder token per media item), its media decoded and each
placeholder repeated to its item's token count under the over-long policy (`media_expansion`); a source with
`self_kd=True` gives Self-KD pairs, a teacher and a student part in one element (`self_kd`).

Packing. Grain's first-fit packer carries media as sequence features: each modality's slot array
(`images [k, S, S, 3]`, ...) and per-slot fields are packed along their first axis with the stage's
slot count as capacity, so an example goes into a row only when its tokens *and* its media fit, and
a row's slots hold its examples' items in segment order. The packer gives each slot the segment
of its example; `FinishRow` turns the per-example item numbers into the row's (`*_item`, -1 for
empty slots). Native-resolution images and frames (`image_patches`, `video_patches`) pack their patches
with the row's patch slots as capacity, and their grids with the view slots; `FinishRow` turns each
patch's view number in its example into the row's (`*_patch_slot`). Bins are emitted in order (no bin shuffle).

Bad records (undecodable record or media, placeholders that do not match the media, a record whose chunk
does not read) are skipped and counted per reason (`BAD_REASONS`). When more than `max_bad_fraction *
bad_window` of the last `bad_window` records were bad, the pipeline stops with `BadRecordsError` naming the
shards and record indices. A shard that does not open (truncated, not an ArrayRecord file) counts as bad
records too, as many as its source's readable shards hold on average (a set's shards are written round-robin):
the pipeline leaves it out, saying so in one line, while those stay within `max_bad_fraction` of all records,
and otherwise stops with the shard's `omnijax.errors.DamagedFileError` (`open_sources`). Over-long examples
(more tokens than `seq_len`, more media than the slots, audio beyond the model's `max_audio_windows` windows)
are dropped (`too_long='drop'`) or cut before the first item or token that does not fit (`'truncate'`; an
example left with nothing to learn is dropped); the reasons say the sizes in seconds of audio, frames of video
and views of images, and the drops and cuts are counted per source (`length_report`, the line a stage ends
with).

State. `Pipeline.get_state()` is JSON; restoring it needs the same worker count and the same
process count and index (Grain's iterator state is per worker); the source weights may change
(`IterDataset.mix` keeps each source's position by name). The same seed and worker count give the
same batches.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Sequence

import grain
import numpy as np

from data_pipelines import features as features_lib
from data_pipelines import schema
from data_pipelines.prepare import Prepare
from data_pipelines.records import Records
from data_pipelines.self_kd import split_pairs
from data_pipelines.pipeline_config import (BAD_REASONS, COUNTERS, EXAMPLE_TEXT_FIELDS, PER_SOURCE,  # noqa: F401
                                            STATE_VERSION, TOO_LONG_POLICIES, BadRecordsError, PipelineConfig,
                                            Source)
from data_pipelines.tokenizer import load_tokenizer
from omnijax.batch import SLOT_FIELDS, batch_spec
from omnijax.errors import DamagedFileError
from omnijax.media_tokens import MODALITIES

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
            source = element.pop("source")
            stats[self.index["records"]] += 1
            stats[self.index[f"records/{source}"]] += 1
            reason = element.get("skip")
            if reason is None:
                break
            stats[self.index[reason]] += 1
            if reason == "dropped_too_long":
                stats[self.index[f"dropped_too_long/{source}"]] += 1
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
        truncated = element.pop("truncated")
        stats[self.index["truncated"]] += truncated
        stats[self.index[f"truncated/{source}"]] += truncated
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
    `self_kd.split_pairs`), and the row's item number of every media slot (-1 = empty)."""

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
            seg, local = row[f"{item}_segment_ids"], row[item]
            per_segment = np.zeros(int(seg.max(initial=0)) + 1, np.int32)
            np.maximum.at(per_segment, seg, local + 1)  # items of each segment (segment 0 = empty slots)
            offset = np.concatenate([[0], np.cumsum(per_segment[1:])]).astype(np.int32)
            out[item] = np.where(seg > 0, local + offset[np.maximum(seg - 1, 0)], -1).astype(np.int32)
            if f"{m}_patches" in row:  # native resolution: each patch's view slot in the row
                views = np.bincount(seg, minlength=per_segment.size)  # slots of each segment
                first = np.concatenate([[0], np.cumsum(views[1:])]).astype(np.int32)
                pseg = row[f"{m}_patch_slot_segment_ids"]
                out[f"{m}_patch_slot"] = np.where(pseg > 0, row[f"{m}_patch_slot"] + first[np.maximum(pseg - 1, 0)],
                                                  -1).astype(np.int32)
                out[f"{m}_patches"], out[f"{m}_grid"] = row[f"{m}_patches"], row[f"{m}_grid"]
                continue
            out[field] = row[field]
            if m == "audio":
                out["audio_valid_frames"] = row["audio_valid_frames"]
                if "audio_fbank" in row:
                    out["audio_fbank"] = row["audio_fbank"]
            if m == "image" and "image_plan" in row:
                out["image_plan"] = row["image_plan"]
        out["stats"] = np.sum(row["stats"], axis=0) if len(row["stats"]) else np.zeros(self.num_counters, np.int64)
        return out


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


def open_sources(config: PipelineConfig, say=None) -> tuple[dict[str, Records], list[DamagedFileError]]:
    """Each source's readable shards as `Records`, and the errors of the shards that do not open. A damaged
    shard counts as bad records, as many as its source's readable shards hold on average; while the bad
    records stay within `max_bad_fraction` of all records the shard is left out (`say`, default stderr, gets
    one line for it), else its `DamagedFileError` is raised, its fix naming the `max_bad_fraction` that would
    allow it. A source without a readable shard always stops the pipeline."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    records, damaged, lost = {}, [], []
    for source in config.sources:
        counts = {}
        for path in source.paths:
            try:
                counts[path] = schema.num_records(path)
            except DamagedFileError as e:
                damaged.append(e)
                lost.append(source.name)
        if not counts:
            raise damaged[-1]
        records[source.name] = Records(tuple(counts), tuple(counts.values()))
    total = sum(len(r) for r in records.values())
    estimate = {name: len(r) / len(r.paths) for name, r in records.items()}  # records per shard
    bad = sum(estimate[name] for name in lost)
    fraction = bad / (total + bad) if damaged else 0.0
    for e, name in zip(damaged, lost, strict=True):
        share = f"about {estimate[name]:.0f} records of source {name!r}"
        if fraction > config.max_bad_fraction:
            raise DamagedFileError(e.path, e.what, f"{e.fix}; or train without it ({share}, with the other damaged "
                                   f"shards {fraction:.1%} of the records): max_bad_fraction={fraction:.3g} or more "
                                   f"in c.data.pipeline, now {config.max_bad_fraction}")
        say(f"warning: {e.path}: {e.what}; left out, counted as {share} bad (damaged shards hold {fraction:.1%} of "
            f"the records, max_bad_fraction={config.max_bad_fraction})")
    return records, damaged


def build_dataset(config: PipelineConfig, tokenizer=None, records: dict[str, Records] | None = None
                  ) -> grain.IterDataset:
    """The pipeline as a Grain `IterDataset` of batches (each with a `stats [batch, counters]` field
    next to the batch contract's fields); `records`: each source's shards (default: `open_sources`)."""
    tokenizer = tokenizer or load_tokenizer(config.tokenizer)
    shards = records if records is not None else open_sources(config)[0]
    index, count = config.processes()
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer)
    mixture = {}
    for source in config.sources:
        ds = grain.MapDataset.source(shards[source.name]).shuffle(seed=_source_seed(config.seed, source.name)).repeat()
        ds = ds[index::count]
        mixture[source.name] = ds.to_iter_dataset(read).map(Prepare(config, source, shards[source.name], tokenizer))
    ds = grain.IterDataset.mix(mixture, {s.name: s.weight for s in config.sources})
    ds = Account(ds, config)
    modalities = [m for m in MODALITIES if config.budget.slots(m)]
    lengths = {name: config.seq_len for name in EXAMPLE_TEXT_FIELDS + (("kd_part",) if config.self_kd else ())}
    for m in modalities:
        slots = config.budget.slots(m)
        if config.budget.patches(m):
            lengths[f"{m}_patches"] = lengths[f"{m}_patch_slot"] = config.budget.patches(m)
            lengths[f"{m}_grid"] = lengths[f"{m}_item"] = slots
            continue
        lengths[SLOT_FIELDS[m]] = lengths[f"{m}_item"] = slots
        if m == "audio":
            lengths["audio_valid_frames"] = slots
            if config.budget.audio_fbank_frames:
                lengths["audio_fbank"] = slots
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
    `metrics` counts records, examples, tokens, skips per reason, truncations and records per source, and the
    damaged shards left out (`damaged`: their errors; `open_sources`)."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        if not config.workers:
            features_lib.limit_blas_threads()  # the decode runs in this process, next to the train step
        self.tokenizer = load_tokenizer(config.tokenizer)
        records, self.damaged = open_sources(config)
        self.dataset = build_dataset(config, self.tokenizer, records)
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
        """The counters so far, plus `bad_fraction` (bad records / records) and `damaged_shards`."""
        out = dict(self.totals)
        bad = sum(self.totals[r] for r in BAD_REASONS)
        out["bad_fraction"] = bad / max(self.totals["records"], 1)
        out["damaged_shards"] = len(self.damaged)
        return out

    def length_report(self) -> str:
        """One line: per source, the records dropped (and the examples cut, `too_long='truncate'`) for length so
        far, and the limits in the units a user thinks in (tokens, seconds of audio, frames, views)."""
        c, t = self.config, self.totals
        per = ", ".join(f"{s.name} {t[f'dropped_too_long/{s.name}']} of {t[f'records/{s.name}']}"
                        + (f" (cut {t[f'truncated/{s.name}']})" if t[f"truncated/{s.name}"] else "")
                        for s in c.sources)
        limits = [f"{c.seq_len} tokens"] + [f"{c.budget.describe(m)} of {m}" for m in MODALITIES if c.budget.slots(m)]
        item = (f"; an audio item at most {c.budget.max_audio_seconds:g} s (model.max_audio_windows="
                f"{c.budget.max_audio_windows})" if c.budget.audio_slots else "")
        return (f"data: records dropped for length (too_long={c.too_long!r}) per source: {per}; a row holds "
                f"{', '.join(limits)}{item}")

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
