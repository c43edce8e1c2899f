"""What a stage's input pipeline reads and how (`PipelineConfig`, `Source`): the settings the per-example
transforms (`prepare`, `chat_template`, `media_expansion`) and the Grain pipeline (`pipeline`) share."""

from __future__ import annotations

import dataclasses

from data_pipelines.tokenizer import DEFAULT_SYSTEM_PROMPT
from omnijax.batch import MediaBudget
from omnijax.media_layouts import MediaLayout
from omnijax.media_tokens import MODALITIES, OLA_MAXRES, OLA_VIDEO_MAXRES, OLA_VIDEO_MINRES


TOO_LONG_POLICIES = ("drop", "truncate")
BAD_REASONS = ("bad_record", "placeholder_mismatch", "corrupt_image", "corrupt_video", "corrupt_audio")
COUNTERS = ("records", "examples", "tokens", "loss_tokens", "truncated", "dropped_too_long", *BAD_REASONS)
PER_SOURCE = ("records", "dropped_too_long", "truncated")  # counted per source too: `records/asr`, ...
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
    native_lowres: int = 0  # native resolution: Ola's low-resolution view first, of this side's area (Ola: 384)
    native_maxres: int = OLA_MAXRES  # native resolution: images above this side squared scaled to it (Ola's MAXRES)
    native_video_maxres: int = OLA_VIDEO_MAXRES  # and video frames above it (VIDEO_MAXRES)
    native_video_minres: int = OLA_VIDEO_MINRES  # and video frames below it, scaled up (VIDEO_MINRES)
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
        """Names of the pipeline's counters (`Pipeline.metrics`): `COUNTERS`, then per source its records and
        the examples dropped and cut for length (`records/asr`, `dropped_too_long/asr`, `truncated/asr`)."""
        return COUNTERS + tuple(f"{c}/{s.name}" for s in self.sources for c in PER_SOURCE)

    def processes(self) -> tuple[int, int]:
        if self.process_index is not None and self.process_count is not None:
            index, count = self.process_index, self.process_count
        else:
            import jax

            index, count = jax.process_index(), jax.process_count()
        if not 0 <= index < count:
            raise ValueError(f"process_index {index} is outside [0, process_count={count})")
        return index, count
