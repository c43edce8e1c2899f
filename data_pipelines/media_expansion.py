"""Media expansion: an example's media items -> their features (`features.MediaFeatures`), each placeholder
token repeated to exactly the count the shared count function gives for its item (`MediaLayout.image_tokens`
etc.), the over-long policy (`too_long`: drop the example, or cut it before the first item or token that does
not fit), and the example's slot arrays for the packer.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines import features as features_lib
from data_pipelines import schema
from data_pipelines.records import Skip
from omnijax.batch import ANYRES_PLAN, SLOT_FIELDS, MediaBudget
from omnijax.media_tokens import BEATS_FBANK_BINS, MODALITIES

if TYPE_CHECKING:
    from data_pipelines.pipeline_config import PipelineConfig


class MediaExpansion:
    """Decodes and places one source's media under a stage's config (`PipelineConfig`)."""

    def __init__(self, config: PipelineConfig):
        self.seq_len, self.budget = config.seq_len, config.budget
        self.truncate = config.too_long == "truncate"
        self.features = features_lib.MediaFeatures(
            config.budget, config.layout, video_frames=config.video_frames, image_tiling=config.image_tiling,
            max_image_tiles=config.max_image_tiles, native_lowres=config.native_lowres,
            native_maxres=config.native_maxres, native_video_maxres=config.native_video_maxres,
            native_video_minres=config.native_video_minres)
        self.modalities = tuple(m for m in MODALITIES if config.budget.slots(m))
        self.pad_ids = {m: config.layout.token_id(m) for m in self.modalities}
        self.plan = config.layout.image_plans and "image" in self.modalities

    def media(self, example: schema.Example, order: list[int],
              names: Sequence[str] | None = None) -> tuple[list[features_lib.Feature], bool]:
        """The features of the media items in placeholder order, and whether an audio clip was cut.
        ``names``: how errors name each item of ``example.media`` (default ``media[i] (kind)``)."""
        multi_image = sum(example.media[i].kind == "image" for i in order) > 1
        items = []
        for i in order:
            name = names[i] if names else f"media[{i}] ({example.media[i].kind})"
            try:
                items.append(self.features.item(example.media[i], multi_image=multi_image, trim_audio=self.truncate))
            except features_lib.MediaError as e:
                raise Skip(e.reason, f"{name}: {e}") from e
            except features_lib.TooLongError as e:
                raise Skip("dropped_too_long", f"{name} {e}") from e
        return items, any(f.trimmed for f in items)

    def expand(self, ids, learn, items):
        """Each placeholder token -> its item's run of placeholder tokens; then the over-long policy.
        Returns (ids, learn, items, truncated)."""
        ids, learn, run_starts, run_ends = self.runs(ids, learn, items)
        cut, kept, why = self.fit(len(ids), run_starts, run_ends, items)
        if cut == len(ids) and kept == len(items):
            return ids, learn, items, False
        if not self.truncate:
            raise Skip("dropped_too_long", why)
        if not learn[1:cut].any():
            raise Skip("dropped_too_long", f"{why}; cut to fit, nothing to learn is left in the first {cut} tokens")
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

    def fit(self, n: int, run_starts, run_ends, items) -> tuple[int, int, str]:
        """(tokens, items) of the example that fit the row, and why the rest does not, in the units a user
        thinks in: cut before the first item whose tokens pass `seq_len` or whose slots pass the budget."""
        cut, used, patches = min(n, self.seq_len), collections.Counter(), collections.Counter()
        for k, item in enumerate(items):
            used[item.kind] += item.slots
            patches[item.kind] += item.patches
            if patches[item.kind] > self.budget.patches(item.kind):
                return min(cut, int(run_starts[k])), k, (
                    f"its {item.kind}s up to item {k} ({item.describe()}) take {patches[item.kind]} patches, more "
                    f"than a row holds: {item.kind}_patches={self.budget.patches(item.kind)}")
            if used[item.kind] > self.budget.slots(item.kind):
                slots = self.budget.slots(item.kind)
                return min(cut, int(run_starts[k])), k, (
                    f"its {item.kind} up to item {k} ({item.describe()}) takes "
                    f"{self.budget.describe(item.kind, used[item.kind])}, more than a row holds: "
                    f"{self.budget.describe(item.kind)} ({item.kind}_slots={slots})")
            if run_ends[k] > cut:
                start, end = int(run_starts[k]), int(run_ends[k])
                room = ""
                if item.kind == "audio":  # the tokens the rest of the example leaves it
                    room = f"; {self.audio_fitting(self.seq_len - (n - (end - start)))} of audio fit with the rest"
                return min(cut, start), k, (f"{n} tokens for seq_len {self.seq_len}: item {k} ({item.describe()}) "
                                            f"takes tokens {start}..{end}{room}")
        return cut, len(items), f"{n} tokens for seq_len {self.seq_len}"

    def audio_fitting(self, tokens: int) -> str:
        """The most audio whose tokens fit in ``tokens`` (whole windows, at most the model's limit), e.g. '8 s'."""
        layout, frames, windows = self.features.layout, self.budget.audio_frames, 0
        while windows < self.budget.max_audio_windows and \
                layout.audio_tokens(windows + 1, valid_frames=[frames] * (windows + 1)) <= tokens:
            windows += 1
        return f"{windows * self.budget.window_seconds:g} s"

    def slots(self, items: list[features_lib.Feature]) -> dict[str, np.ndarray]:
        """Per modality the example's slot arrays `[slots, ...]` and each slot's item number in the example."""
        out = {}
        for m in self.modalities:
            mine = [f for f in items if f.kind == m]
            if self.budget.patches(m):  # native resolution: the views' patches, each patch's view, the grids
                p = self.budget.patch_size
                grids = [f.grids for f in mine]
                out[f"{m}_patches"] = np.concatenate([f.data for f in mine] or [np.zeros((0, p, p, 3), np.float32)])
                out[f"{m}_grid"] = np.concatenate(grids or [np.zeros((0, 2), np.int32)])
                out[f"{m}_patch_slot"] = np.repeat(np.arange(len(out[f"{m}_grid"]), dtype=np.int32),
                                                   out[f"{m}_grid"].prod(axis=1))
                out[f"{m}_item"] = np.repeat(np.arange(len(mine), dtype=np.int32), [f.slots for f in mine])
                continue
            shape = _slot_shape(self.budget, m)
            out[SLOT_FIELDS[m]] = np.concatenate([f.data for f in mine]) if mine else np.zeros((0, *shape), np.float32)
            out[f"{m}_item"] = np.repeat(np.arange(len(mine), dtype=np.int32), [f.slots for f in mine])
            if m == "audio":
                out["audio_valid_frames"] = np.concatenate([f.valid_frames for f in mine] or [np.zeros(0, np.int32)])
                if self.budget.audio_fbank_frames:
                    empty = np.zeros((0, self.budget.audio_fbank_frames, BEATS_FBANK_BINS), np.float32)
                    out["audio_fbank"] = np.concatenate([f.fbank for f in mine] or [empty])
            if m == "image" and self.plan:
                plans = [np.tile(np.asarray(f.plan, np.int32), (f.slots, 1)) for f in mine]
                out["image_plan"] = np.concatenate(plans) if plans else np.zeros((0, ANYRES_PLAN), np.int32)
        return out


def _slot_shape(budget: MediaBudget, m: str) -> tuple[int, ...]:
    if m == "audio":
        return budget.n_mels, budget.audio_frames
    size = budget.image_size if m == "image" else budget.video_size
    return size, size, 3
