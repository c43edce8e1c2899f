"""The batch contract between the data pipeline and the model.

One definition, imported by ``data_pipelines`` (which builds batches) and ``omnijax.models`` /
``omnijax.training`` (which consume them); neither side imports the other. Shapes are static: a stage
fixes the batch size, the sequence length and the media budget (``MediaBudget``), so one stage
compiles once.

Text and packing (``B`` rows of ``T`` tokens; several examples may share a row):

=================  =========  =========  ==========================================================
field              shape      dtype      meaning
=================  =========  =========  ==========================================================
``input_ids``      [B, T]     int32      token ids; a media item appears as one run of its
                                         modality's placeholder id, one id per token it produces
``segment_ids``    [B, T]     int32      1, 2, ... per packed example in the row (each one
                                         contiguous run); 0 = padding
``positions``      [B, T]     int32      RoPE positions, restarting at 0 in every segment
``targets``        [B, T]     int32      the token position t predicts (next token of its segment,
                                         ``training.losses.shift_targets``)
``loss_weights``   [B, T]     float32    weight of position t's prediction (1 on response tokens)
``task_ids``       [B, T]     int32      task of position t's example, for per-task losses
``kd_part``        [B, T]     int32      Self-KD stages only (``batch_spec(self_kd=True)``): 0 = an
                                         ordinary example, 1 = a teacher part, 2 = a student part
=================  =========  =========  ==========================================================

Self-KD pairs (arXiv 2503.00059). A stage trained with the Self-KD loss has ``kd_part``: a pair is one
image question asked in text (the teacher part, ``KD_TEACHER``) directly followed by the same question
asked in speech (the student part, ``KD_STUDENT``), each its own segment (positions restart at 0, so
the student never attends to the teacher), both with the same response. Pairs are packed whole, so the
k-th teacher response token of a row and its k-th student response token are the same token.

Media slots (present when the budget has slots of that modality). A slot holds one image view or
tile, one video frame or one audio window; an item (an image, a video, an audio clip) fills
consecutive slots. ``*_item[b, s]`` is the index of the item slot ``s`` belongs to, counting that
modality's items of row ``b`` in placeholder order (0, 0, 1, 2, 2, 2, ...); used slots come first,
the rest are ``-1`` (empty, their pixels/features are ignored):

======================  ============================  =======  =========================================
``images``              [B, I, S, S, 3]               float32  image views/tiles (NHWC, processor-normalised)
``image_item``          [B, I]                        int32    item of each image slot (-1 empty)
``image_plan``          [B, I, 8]                     int32    layouts with ``image_plans`` only (AnyRes):
                                                               the AnyRes plan of the slot's image
                                                               (``media_tokens.anyres_plan``)
``videos``              [B, V, Sv, Sv, 3]             float32  video frames
``video_item``          [B, V]                        int32    item (video) of each frame slot (-1 empty)
``audio``               [B, A, n_mels, frames]        float32  log-mel windows (one encoder window each)
``audio_item``          [B, A]                        int32    item (clip) of each window slot (-1 empty)
``audio_valid_frames``  [B, A]                        int32    valid mel frames of each window
``audio_fbank``         [B, A, frames - 2, 128]       float32  models with BEATs only (Ola's dual encoder):
                                                               BEATs' fbank of each window (the same
                                                               zero-padded samples as its log-mel)
======================  ============================  =======  =========================================

Native-resolution images and frames (a budget with ``image_patches`` / ``video_patches``, the
``ola_native`` layout: OryxViT). A slot is still one view or frame, but its pixels are not a fixed
``S x S`` array: every view of the row is cut into ``p x p`` patches (zero-padded at the bottom and
right, ``data_pipelines.image_tiles.native_patches``) and the row's patches fill ``P`` patch slots one
view after another, in slot order, each view's patches row-major; ``images`` / ``videos`` are then
absent and these fields hold the pixels (``m`` = image or video):

======================  ============================  =======  =========================================
``{m}_patches``         [B, P, p, p, 3]               float32  patch pixels (NHWC, processor-normalised)
``{m}_patch_slot``      [B, P]                        int32    the view / frame slot each patch belongs to
                                                               (-1 empty, after the used ones)
``{m}_grid``            [B, I, 2]                     int32    patch grid (rows, cols) of each slot's view
                                                               (0, 0 for empty slots)
======================  ============================  =======  =========================================

The k-th item of a modality in a row takes the row's placeholder tokens of that modality number
``sum(tokens of items < k) ...`` onward, as one contiguous run inside one segment. Its token count is
the sum of its slots' spans, ``omnijax.media_layouts.MediaLayout.slot_tokens``: the same functions
give the pipeline's placeholder counts (``MediaLayout.image_tokens`` etc.) and the model's layout.

``media_slots`` fills the slot arrays from per-example item lists; ``check_batch`` verifies a host
batch against a model config before anything is traced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from omnijax.media_layouts import MediaLayout
from omnijax.media_tokens import BEATS_FBANK_BINS, MEL_FRAMES_PER_SECOND, MODALITIES

TEXT_FIELDS = {
    "input_ids": np.int32, "segment_ids": np.int32, "positions": np.int32,
    "targets": np.int32, "loss_weights": np.float32, "task_ids": np.int32,
}
KD_ORDINARY, KD_TEACHER, KD_STUDENT = 0, 1, 2  # values of ``kd_part``
ANYRES_PLAN = 8  # ints per AnyRes plan: rows, cols, top, bottom, left, right, resized_h, resized_w
SLOT_FIELDS = {"image": "images", "video": "videos", "audio": "audio"}  # modality -> its slot field
NATIVE_MODALITIES = ("image", "video")  # those a budget may give patch slots (native resolution)
_WHAT = {"image": "image slots (views/tiles)", "video": "video slots (frames)", "audio": "audio slots (windows)"}


@dataclasses.dataclass(frozen=True)
class MediaBudget:
    """Static media slots per row. Zero slots = the modality is absent from the stage's batches.
    ``OmniConfig.budget`` builds it from a model config (sizes from the towers). ``max_audio_windows``:
    the most windows one audio item may take (the model's limit, ``OmniConfig.max_audio_windows``).
    ``audio_fbank_frames``: BEATs' fbank frames per window for a model with BEATs
    (``media_tokens.beats_fbank_frames``), 0 for none: the batches then carry no ``audio_fbank``."""

    image_slots: int = 0
    image_size: int = 384
    video_slots: int = 0
    video_size: int = 384
    audio_slots: int = 0
    n_mels: int = 128
    audio_frames: int = 3000
    max_audio_windows: int = 25
    audio_fbank_frames: int = 0
    image_patches: int = 0  # native resolution: patch slots per row for the images' views (0: S x S views)
    video_patches: int = 0  # and for the video frames
    patch_size: int = 16  # the native tower's patch side

    def slots(self, modality: str) -> int:
        return getattr(self, f"{modality}_slots")

    def patches(self, modality: str) -> int:
        """Patch slots per row of a native-resolution modality (0: views of ``S x S`` pixels, or audio)."""
        return getattr(self, f"{modality}_patches", 0)

    @property
    def window_seconds(self) -> float:
        """Seconds of audio per window (slot): its mel frames at 100 per second."""
        return self.audio_frames / MEL_FRAMES_PER_SECOND

    @property
    def max_audio_seconds(self) -> float:
        """The longest audio item the model takes: ``max_audio_windows`` windows."""
        return self.max_audio_windows * self.window_seconds

    def describe(self, modality: str, slots: int | None = None) -> str:
        """``slots`` (default: the row's) of ``modality`` in the units a user thinks in: '16 s (4 windows of
        4 s)' of audio, '8 frames' of video, '4 views or tiles' of images."""
        n = self.slots(modality) if slots is None else slots
        if modality == "audio":
            return f"{n * self.window_seconds:g} s ({n} windows of {self.window_seconds:g} s)"
        return f"{n} frames" if modality == "video" else f"{n} views or tiles"


def batch_spec(batch_size: int, seq_len: int, budget: MediaBudget = MediaBudget(),
               layout: MediaLayout | None = None, self_kd: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of every field of a batch (the global batch); ``layout``: the model's media
    layout (``OmniConfig.media_layout``; its images may carry plans); ``self_kd``: a stage trained
    with the Self-KD loss, whose batches also hold ``kd_part``."""
    b, t = batch_size, seq_len
    spec = {name: jax.ShapeDtypeStruct((b, t), dtype) for name, dtype in TEXT_FIELDS.items()}
    if self_kd:
        spec["kd_part"] = jax.ShapeDtypeStruct((b, t), np.int32)
    for m in NATIVE_MODALITIES:
        n = budget.slots(m)
        if not n:
            continue
        if budget.patches(m):
            p, k = budget.patch_size, budget.patches(m)
            spec[f"{m}_patches"] = jax.ShapeDtypeStruct((b, k, p, p, 3), np.float32)
            spec[f"{m}_patch_slot"] = jax.ShapeDtypeStruct((b, k), np.int32)
            spec[f"{m}_grid"] = jax.ShapeDtypeStruct((b, n, 2), np.int32)
        else:
            s = budget.image_size if m == "image" else budget.video_size
            spec[SLOT_FIELDS[m]] = jax.ShapeDtypeStruct((b, n, s, s, 3), np.float32)
        spec[f"{m}_item"] = jax.ShapeDtypeStruct((b, n), np.int32)
        if m == "image" and layout is not None and layout.image_plans:
            spec["image_plan"] = jax.ShapeDtypeStruct((b, n, ANYRES_PLAN), np.int32)
    if budget.audio_slots:
        n = budget.audio_slots
        spec["audio"] = jax.ShapeDtypeStruct((b, n, budget.n_mels, budget.audio_frames), np.float32)
        spec["audio_item"] = jax.ShapeDtypeStruct((b, n), np.int32)
        spec["audio_valid_frames"] = jax.ShapeDtypeStruct((b, n), np.int32)
        if budget.audio_fbank_frames:
            spec["audio_fbank"] = jax.ShapeDtypeStruct((b, n, budget.audio_fbank_frames, BEATS_FBANK_BINS), np.float32)
    return spec


@dataclasses.dataclass(frozen=True)
class MediaItem:
    """One media item of an example, as ``media_slots`` takes it.

    ``data``: image views/tiles ``[n, S, S, 3]``, video frames ``[f, S, S, 3]`` or audio windows
    ``[c, n_mels, frames]``; ``valid_frames``: audio only, valid mel frames per window ``[c]``
    (default: whole windows); ``plan``: images of a layout with ``image_plans`` only,
    ``media_tokens.anyres_plan``; ``fbank``: audio of a model with BEATs only, BEATs' fbank per window
    ``[c, fbank_frames, 128]``; ``grids``: native resolution only, the views' (frames') patch grids ``[n, 2]``,
    ``data`` then their patches one view after another ``[sum rows * cols, p, p, 3]``.
    """

    kind: str
    data: np.ndarray
    valid_frames: Sequence[int] | None = None
    plan: Sequence[int] | None = None
    fbank: np.ndarray | None = None
    grids: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in MODALITIES:
            raise ValueError(f"media kind {self.kind!r} is not one of {MODALITIES}")


def media_slots(rows: Sequence[Sequence[Sequence[MediaItem]]], budget: MediaBudget,
                layout: MediaLayout | None = None) -> dict[str, np.ndarray]:
    """The media fields of a batch: ``rows[b][e]`` lists the items of the e-th example packed into row
    b (segment e + 1), in placeholder order; native-resolution views fill the patch slots in slot order
    (``_place_patches``; the data pipeline packs its rows itself, ``data_pipelines.media_expansion``). Raises
    ``ValueError`` naming the row and example when a row's items need more slots than the budget has."""
    spec = batch_spec(len(rows), 1, budget, layout)
    out = {k: np.zeros(s.shape, s.dtype) for k, s in spec.items() if k not in TEXT_FIELDS}
    for m in MODALITIES:
        if budget.slots(m):
            out[f"{m}_item"][:] = -1
        if f"{m}_patch_slot" in out:
            out[f"{m}_patch_slot"][:] = -1
    for b, examples in enumerate(rows):
        used = dict.fromkeys(MODALITIES, 0)
        count = dict.fromkeys(MODALITIES, 0)
        patches = dict.fromkeys(MODALITIES, 0)
        for e, items in enumerate(examples):
            for item in items:
                m, data = item.kind, np.asarray(item.data)
                n, cap = data.shape[0] if item.grids is None else len(item.grids), budget.slots(m)
                if used[m] + n > cap:
                    raise ValueError(
                        f"row {b}, example {e} (segment {e + 1}): its {m} (item {count[m]} of the row) needs {n} "
                        f"{_WHAT[m]}, but only {cap - used[m]} of the stage's {m}_slots={cap} are left: more "
                        f"media than the budget holds; pack fewer examples per row or raise {m}_slots")
                sl = slice(used[m], used[m] + n)
                if budget.patches(m):
                    patches[m] = _place_patches(out, b, e, item, sl, patches[m], budget)
                else:
                    field = out[SLOT_FIELDS[m]]
                    if data.shape[1:] != field.shape[2:]:
                        raise ValueError(f"row {b}, example {e}: {m} data has shape {data.shape}, slots hold "
                                         f"{list(field.shape[2:])}")
                    field[b, sl] = data
                out[f"{m}_item"][b, sl] = count[m]
                if m == "audio":
                    _place_audio(out, b, e, item, sl, budget)
                if m == "image" and "image_plan" in out:
                    if item.plan is None:
                        raise ValueError(f"row {b}, example {e}: layout {layout.name!r} needs each image's "
                                         "AnyRes plan (media_tokens.anyres_plan)")
                    out["image_plan"][b, sl] = item.plan
                used[m] += n
                count[m] += 1
    return out


def _place_audio(out: dict, b: int, e: int, item: MediaItem, sl: slice, budget: MediaBudget) -> None:
    """An audio item's valid frames (and BEATs fbank) into slots ``sl`` of row b."""
    out["audio_valid_frames"][b, sl] = budget.audio_frames if item.valid_frames is None else item.valid_frames
    if "audio_fbank" in out:
        want = (sl.stop - sl.start, *out["audio_fbank"].shape[2:])
        if item.fbank is None or np.shape(item.fbank) != want:
            got = None if item.fbank is None else list(np.shape(item.fbank))
            raise ValueError(f"row {b}, example {e}: the model's BEATs needs each audio window's fbank "
                             f"{list(want)} (data_pipelines.audio.beats_fbank), got {got}")
        out["audio_fbank"][b, sl] = item.fbank


def _place_patches(out: dict, b: int, e: int, item: MediaItem, sl: slice, start: int, budget: MediaBudget) -> int:
    """A native-resolution item's views into view slots ``sl`` of row b and its patches into the patch slots
    from ``start`` on (each patch's view slot in ``{m}_patch_slot``); returns the next free patch slot."""
    m, cap = item.kind, budget.patches(item.kind)
    if item.grids is None:
        raise ValueError(f"row {b}, example {e}: a native-resolution {m} needs its views' patch grids "
                         "(MediaItem.grids, as features.Feature.grids)")
    grids, data = np.asarray(item.grids, np.int32), np.asarray(item.data)
    if start + len(data) > cap:
        raise ValueError(f"row {b}, example {e}: its {m} needs {len(data)} patch slots, but only {cap - start} of "
                         f"the budget's {m}_patches={cap} are left; raise {m}_patches")
    out[f"{m}_patches"][b, start:start + len(data)] = data
    out[f"{m}_grid"][b, sl] = grids
    out[f"{m}_patch_slot"][b, start:start + len(data)] = np.repeat(np.arange(sl.start, sl.stop), grids.prod(axis=1))
    return start + len(data)


def _segment_of(seg_row: np.ndarray, pos: int) -> str:
    return f"segment {int(seg_row[pos])}" if seg_row[pos] else "padding"


def _item_tokens(b: int, m: str, batch: Mapping[str, np.ndarray], layout, budget: MediaBudget) -> np.ndarray:
    """Tokens of each of row b's items of modality m: the sum of its slots' spans (``layout.slot_tokens``),
    after checking the slots' item numbering, the AnyRes plans' tile counts and the audio valid frames."""
    item = np.asarray(batch[f"{m}_item"][b])
    n_used = int((item >= 0).sum())
    runs = item[:n_used]
    steps = np.diff(runs)
    if (item[n_used:] != -1).any() or (n_used and (runs[0] != 0 or (steps < 0).any() or (steps > 1).any())):
        raise ValueError(f"row {b}: {m}_item {item.tolist()} must number the items 0, 1, 2, ... over consecutive "
                         "slots, used slots first and -1 after them")
    n_items = int(runs.max()) + 1 if n_used else 0
    valid = item >= 0
    first = valid & (np.concatenate([[-1], item[:-1]]) != item)
    last = valid & (np.concatenate([item[1:], [-1]]) != item)
    plan = np.asarray(batch["image_plan"][b]) if m == "image" and "image_plan" in batch else None
    frames = np.asarray(batch["audio_valid_frames"][b]) if m == "audio" else None
    if plan is not None:
        for k in range(n_items):
            s = np.flatnonzero(item == k)
            rows, cols = plan[s[0], 0], plan[s[0], 1]
            if len(s) != 1 + rows * cols:
                raise ValueError(f"row {b}: image item {k} fills {len(s)} tile slots, its AnyRes plan "
                                 f"{plan[s[0]].tolist()} needs 1 + {rows} x {cols} = {1 + rows * cols}")
    if frames is not None:
        bad = valid & ((frames < 1) | (frames > budget.audio_frames))
        if bad.any():
            s = int(np.flatnonzero(bad)[0])
            raise ValueError(f"row {b}: audio slot {s} has {int(frames[s])} valid mel frames, outside "
                             f"[1, {budget.audio_frames}]")
    grid = None
    if f"{m}_grid" in batch:
        grid = _check_patches(b, m, batch, n_used, budget)
        grid = (grid[:, 0], grid[:, 1])
    spans = np.where(valid, layout.slot_tokens(m, first, last, plan, frames, grid), 0).astype(np.int64)
    return np.bincount(item[valid], weights=spans[valid], minlength=n_items).astype(np.int64)


def _check_patches(b: int, m: str, batch: Mapping[str, np.ndarray], n_used: int, budget: MediaBudget) -> np.ndarray:
    """Row b's patch slots of a native-resolution modality: each of its ``n_used`` views (slots) a positive
    grid and exactly rows x cols patches, the views' patches one run each in slot order, empty patch slots
    -1 after them. Returns the grids ``[slots, 2]``."""
    grid = np.asarray(batch[f"{m}_grid"][b]).astype(np.int64)
    owner = np.asarray(batch[f"{m}_patch_slot"][b])
    need = grid[:, 0] * grid[:, 1]
    if (grid[:n_used] < 1).any():
        s = int(np.flatnonzero((grid[:n_used] < 1).any(axis=1))[0])
        raise ValueError(f"row {b}: {m} slot {s} has the patch grid {grid[s].tolist()}; a used slot's view has at "
                         "least 1 x 1 patches")
    expected = np.full(owner.shape, -1, np.int64)
    total = int(need[:n_used].sum())
    if total > len(owner):
        raise ValueError(f"row {b}: its {n_used} {m} views need {total} patch slots, the row has "
                         f"{m}_patches={len(owner)}; fewer or smaller {m}s per row, or raise {m}_patches")
    expected[:total] = np.repeat(np.arange(n_used), need[:n_used])
    if (owner != expected).any():
        t = int(np.flatnonzero(owner != expected)[0])
        raise ValueError(f"row {b}: {m}_patch_slot[{t}] = {int(owner[t])}, expected {int(expected[t])}: each view's "
                         f"rows x cols patches ({m}_grid) one run in slot order, -1 on the empty patch slots after "
                         "them")
    return grid


def _check_items(b: int, m: str, batch: Mapping[str, np.ndarray], layout, budget: MediaBudget) -> None:
    """Row b's items of modality m against its placeholder tokens (module docstring)."""
    ids, seg = np.asarray(batch["input_ids"][b]), np.asarray(batch["segment_ids"][b])
    tid = layout.token_id(m)
    tokens = _item_tokens(b, m, batch, layout, budget)
    n_items = len(tokens)
    where = np.flatnonzero(ids == tid)
    fix = (f"expand each {m} placeholder to MediaLayout.{m}_tokens(...) ids {tid} and list the row's {m}s in "
           "placeholder order in the slots")
    if len(where) > tokens.sum():
        pos = int(where[tokens.sum()])
        raise ValueError(
            f"row {b}, {_segment_of(seg, pos)}: {len(where) - int(tokens.sum())} {m} placeholder token(s) (id {tid}) "
            f"from position {pos} on have no {m} in the row's slots: its {n_items} {m} item(s) take "
            f"{int(tokens.sum())} tokens, the row has {len(where)}. More {m}s than the stage's "
            f"{m}_slots={budget.slots(m)} hold, or a placeholder run longer than its {m}; {fix}")
    ends = np.cumsum(tokens)
    for k in range(n_items):
        lo, hi = int(ends[k] - tokens[k]), int(ends[k])
        if hi == lo:  # a window too short to give a token (Qwen2-Audio: 1 valid mel frame)
            continue
        if hi > len(where):
            at = _segment_of(seg, int(where[-1])) if len(where) else "no placeholders"
            raise ValueError(f"row {b} ({at}): {m} item {k} takes {int(tokens[k])} tokens, but only "
                             f"{max(len(where) - lo, 0)} {m} placeholder token(s) (id {tid}) are left for it; {fix}")
        pos = where[lo:hi]
        segs = np.unique(seg[pos])
        if len(segs) != 1 or segs[0] == 0 or pos[-1] - pos[0] != hi - lo - 1:
            raise ValueError(f"row {b}, {_segment_of(seg, int(pos[0]))}: {m} item {k} takes the {m} placeholder "
                             f"tokens at positions {int(pos[0])}..{int(pos[-1])}, which are not one run inside one "
                             f"example (segments {segs.tolist()}): a placeholder run does not match its {m}; {fix}")


def _check_kd_parts(b: int, batch: Mapping[str, np.ndarray]) -> None:
    """Row b's ``kd_part``: values 0, 1, 2, one part per segment, each student segment right after a
    teacher segment, and the teacher responses equal to the student responses (module docstring)."""
    kd, seg = np.asarray(batch["kd_part"][b]), np.asarray(batch["segment_ids"][b])
    bad = np.flatnonzero((kd < KD_ORDINARY) | (kd > KD_STUDENT) | ((seg == 0) & (kd != KD_ORDINARY)))
    if len(bad):
        t = int(bad[0])
        raise ValueError(f"row {b}, {_segment_of(seg, t)}: kd_part[{b}, {t}] = {int(kd[t])}; kd_part is "
                         f"{KD_ORDINARY} (ordinary), {KD_TEACHER} (Self-KD teacher) or {KD_STUDENT} (student), "
                         "and 0 on padding")
    parts = {}
    for s in (int(s) for s in np.unique(seg) if s):
        found = np.unique(kd[seg == s])
        if len(found) != 1:
            raise ValueError(f"row {b}, segment {s}: kd_part takes the values {found.tolist()}; each segment is one "
                             "part (ordinary, teacher or student)")
        parts[s] = int(found[0])
    order = [int(s) for s in seg[np.r_[True, seg[1:] != seg[:-1]]] if s]  # segments in row order
    kinds = [parts[s] for s in order]
    if any((a == KD_TEACHER) != (z == KD_STUDENT) for a, z in zip([None, *kinds], [*kinds, None])):
        raise ValueError(f"row {b}: segments {order} are the parts {kinds} ({KD_TEACHER} teacher, {KD_STUDENT} "
                         "student): each Self-KD teacher part must be directly followed by its student part")
    learn = np.asarray(batch["loss_weights"][b]) > 0
    targets = np.asarray(batch["targets"][b])
    teacher, student = targets[learn & (kd == KD_TEACHER)], targets[learn & (kd == KD_STUDENT)]
    if len(teacher) != len(student) or (teacher != student).any():
        raise ValueError(f"row {b}: its Self-KD teacher parts have {len(teacher)} response tokens and its student "
                         f"parts {len(student)}, not the same tokens in the same order: a pair's two parts must "
                         "answer with the same response")


def check_batch(batch: Mapping[str, np.ndarray], cfg, self_kd: bool = False) -> None:
    """Check a host (numpy) batch against a model config before tracing; a ``ValueError`` naming the
    field, or the row and example (segment), otherwise.

    ``cfg`` is an ``omnijax.models.omni.OmniConfig`` (or anything with ``budget``, ``media_layout`` and
    ``vocab_size``): fields, shapes and dtypes of ``batch_spec``; no empty row; each segment one
    contiguous run; token ids inside the vocabulary; and for every modality, the items in the slots
    fill the row's placeholder tokens exactly, each item one run inside one example. ``self_kd``: the
    stage trains with the Self-KD loss; ``kd_part`` is then checked too (values, one part per segment,
    teacher-student pairs with equal responses).
    """
    budget, layout = cfg.budget, cfg.media_layout
    ids = np.asarray(batch["input_ids"]) if "input_ids" in batch else None
    if ids is None or ids.ndim != 2 or 0 in ids.shape:
        shape = None if ids is None else list(ids.shape)
        raise ValueError(f"batch input_ids has shape {shape}; expected [batch, seq] with batch, seq > 0")
    spec = batch_spec(*ids.shape, budget, layout, self_kd)
    missing = sorted(set(spec) - set(batch))
    unknown = sorted(set(batch) - set(spec))
    if missing or unknown:
        raise ValueError(f"batch fields do not match the stage's spec: missing {missing}, unexpected {unknown}")
    for name, s in spec.items():
        a = batch[name]
        if tuple(a.shape) != tuple(s.shape) or np.dtype(a.dtype) != np.dtype(s.dtype):
            raise ValueError(f"batch field {name!r} is {np.dtype(a.dtype).name}{list(a.shape)}, "
                             f"the stage expects {np.dtype(s.dtype).name}{list(s.shape)}")
    seg = np.asarray(batch["segment_ids"])
    for b in range(ids.shape[0]):
        row = seg[b]
        if not row.any():
            raise ValueError(f"row {b} of the batch is empty: all its segment_ids are 0 (an empty sequence); "
                             "drop empty examples before packing")
        starts = row[np.r_[True, row[1:] != row[:-1]]]
        starts = starts[starts != 0]
        if len(np.unique(starts)) != len(starts) or (row < 0).any():
            raise ValueError(f"row {b}: segment_ids {row.tolist()} do not form one contiguous run per example")
    if self_kd:
        for b in range(ids.shape[0]):
            _check_kd_parts(b, batch)
    for name in ("input_ids", "targets"):
        a = np.asarray(batch[name])
        bad = np.argwhere((a < 0) | (a >= cfg.vocab_size))
        if len(bad):
            b, t = (int(x) for x in bad[0])
            raise ValueError(f"row {b}, {_segment_of(seg[b], t)}: {name}[{b}, {t}] = {int(a[b, t])} is outside the "
                             f"vocabulary [0, {cfg.vocab_size})")
    for m in MODALITIES:
        has_slots = budget.slots(m) > 0
        tid = getattr(layout, f"{m}_token_id")
        if not has_slots:
            if tid is not None and (ids == tid).any():
                b, t = (int(x) for x in np.argwhere(ids == tid)[0])
                raise ValueError(f"row {b}, {_segment_of(seg[b], t)}: {m} placeholder tokens (id {tid}) but the "
                                 f"stage's budget has no {m} slots ({m}_slots=0)")
            continue
        for b in range(ids.shape[0]):
            _check_items(b, m, batch, layout, budget)
