"""CTC on a connector's output against the LLM's own token embeddings: a direct training signal for a
tower that starts from random weights: the loss term ``ConnectorCTC`` (``c.objective.ctc_audio``,
``c.objective.ctc_image``).

Ola, Capybara-OMNI and Baichuan-Omni start from a pretrained SigLIP and Whisper. A tower trained from
scratch (the tiny recipes' stand-in stages) learns only through the LLM's next-token loss, a weak and
late signal. CTC (Graves et al. 2006) asks each connector output token ("frame") to name a token of the
item's text -- or a blank -- in order, with the alignment left free:

    logits[f] = connector_output[f] . E^T        E = llm/embed_tokens/embedding  [vocab, embed]

so a frame that says token ``v`` lies close to the embedding the LLM reads for ``v``: the media tokens
the LLM receives become a text-like stream it can copy from. The blank class is the modality's
placeholder token's row of ``E`` (a placeholder never occurs in a text). No parameter is added.

- ``audio``: the frames of a clip in time order, its text the transcript (ASR).
- ``image``: the frames of an image view column by column, left to right (each column top to bottom),
  its text a caption that names the objects from left to right -- the reading order of CTC text
  recognisers over image columns (CRNN, Shi et al. 2015).

What is learned, per item of the modality (an image, a clip: one or more consecutive slots), from the
batch alone:

- the item's example is the segment of its first placeholder token; the example's task must be one of
  ``ConnectorCTC.tasks`` (tasks whose response is the text of their single item: ASR, captions);
- its text is the example's response tokens (``loss_weights > 0``) less the last one (the turn's end
  token, ``<|im_end|>`` in ChatML);
- its frames are the connector outputs of its slots; the other slots' frames are padding.

An item is dropped (counted in ``ctc/<modality>/dropped_items``) when it fills more than ``max_slots``
slots, or its text is longer than ``max_label_tokens`` or than CTC can align to its frames (tokens +
repeated neighbours > frames). The term is the CTC negative log-likelihood of the kept items per text token
(``ctc/<modality>/loss``; also logged: ``tokens``, ``items``); the objective adds ``weight`` times it to the
other terms. Cost: ``B * S`` alignments over ``max_slots * L`` frames (``S`` slots, ``L`` tokens per slot)
with ``max_label_tokens`` labels each, and log-probabilities over the vocabulary for every frame -- small
for the tiny towers this is for.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from omnijax.models import layouts
from omnijax.training.losses import align_responses
from omnijax.training.term import BOUND, Outputs, Stage, Term, TermValue, check_weight, ids_of_tasks

MODALITIES = ("audio", "image")


def sown_name(modality: str) -> str:
    """The OmniModel's sown connector outputs (collection ``aux``): ``[B, S * L, embed]``, slot after slot."""
    return f"{modality}_features"


@dataclasses.dataclass(frozen=True)
class ConnectorCTC(Term):
    """``c.objective.ctc_<modality> = dict(weight=..., tasks=(...), max_label_tokens=..., max_slots=...)``: the
    term's weight in the objective, the tasks (by name, ``c.task_names``) whose responses are their item's
    text, the static number of label slots per item and of media slots per item. ``task_ids``: the tasks' ids,
    filled in by ``bind``."""

    modality: str = dataclasses.field(metadata=BOUND)
    weight: float = 0.2
    tasks: tuple[str, ...] = ()
    max_label_tokens: int = 48
    max_slots: int = 1
    task_ids: tuple[int, ...] = dataclasses.field(default=(), metadata=BOUND)

    def __post_init__(self):
        check_connector_term(self, "('asr',)")
        if int(self.max_label_tokens) < 1 or int(self.max_slots) < 1:
            raise ValueError(f"max_label_tokens={self.max_label_tokens} and max_slots={self.max_slots} must be at "
                             "least 1")

    @property
    def name(self) -> str:
        return f"ctc_{self.modality}"

    @property
    def needs(self) -> tuple[str, ...]:
        return (sown_name(self.modality),)

    def active(self, batch) -> bool:
        return f"{self.modality}_item" in batch

    def bind(self, stage: Stage) -> ConnectorCTC:
        return bind_connector_term(self, stage)

    def __call__(self, out: Outputs) -> TermValue:
        cfg, embedding = out.model.cfg, out.params["llm"]["embed_tokens"]["embedding"]
        return self.value(ctc_sums(out.features[sown_name(self.modality)], embedding, out.batch, cfg.media_layout,
                                   self, self.task_ids, cfg.image_grid))

    def value(self, sums: dict[str, jax.Array]) -> TermValue:
        """``ctc_sums`` -> the term's value (its mean is over text tokens) and metrics."""
        m = self.modality
        mean = sums["sum"] / jnp.maximum(sums["tokens"], 1.0)
        return TermValue(sums["sum"], sums["tokens"], means={f"ctc/{m}/loss": mean},
                         counts={f"ctc/{m}/tokens": sums["tokens"], f"ctc/{m}/items": sums["items"],
                                 f"ctc/{m}/dropped_items": sums["dropped"]})


def check_connector_term(term, example_tasks: str) -> None:
    """A connector term's common fields (``modality``, ``weight``, ``tasks``): ``tasks`` made a tuple,
    ValueError naming the field that is wrong."""
    object.__setattr__(term, "tasks", tuple(term.tasks))
    object.__setattr__(term, "task_ids", tuple(term.task_ids))
    if term.modality not in MODALITIES:
        raise ValueError(f"a connector term is built for {', '.join(MODALITIES)}, not {term.modality!r}")
    check_weight(term.weight)
    if not term.tasks:
        raise ValueError(f"tasks is empty; name the tasks whose responses are their item's text, e.g. {example_tasks}")


def bind_connector_term(term, stage: Stage):
    """``term`` with its tasks' ids; ValueError when the model has no tower of its modality."""
    if term.modality not in stage.towers:
        raise ValueError(f"it needs the model's {'audio' if term.modality == 'audio' else 'vision'} tower")
    return dataclasses.replace(term, task_ids=ids_of_tasks(term.tasks, stage.task_names))


def item_labels(batch: dict, layout, modality: str, task_ids: tuple[int, ...], max_label_tokens: int):
    """Each slot of ``modality`` that starts an item of a CTC task -> its text.

    Returns labels int ``[B, S, N]`` (right-padded), label lengths ``[B, S]`` and ``starts`` bool ``[B, S]``
    (the slot starts an item whose example has one of ``task_ids``), ``N = max_label_tokens``. Texts
    longer than ``N`` keep their length (> N): ``ctc_sums`` drops them.
    """
    ids, seg, task = batch["input_ids"], batch["segment_ids"], batch["task_ids"]
    item = batch[f"{modality}_item"]
    tid = layout.token_id(modality)
    spans = layouts.slot_spans(layout, modality, item, batch.get("image_plan"), batch.get("audio_valid_frames"))
    first_placeholder = jnp.cumsum(spans, axis=1) - spans  # index among the row's placeholder tokens
    t = ids.shape[1]

    def row(ids_r, seg_r, task_r, w_r, targets_r, first_r):
        (where,) = jnp.nonzero(ids_r == tid, size=t, fill_value=0)
        pos = where[jnp.minimum(first_r, t - 1)]  # [S]
        item_seg, item_task = seg_r[pos], task_r[pos]
        response = (seg_r[None, :] == item_seg[:, None]) & (w_r[None, :] > 0)  # [S, T]
        last = t - 1 - jnp.argmax(response[:, ::-1], axis=1)  # the turn's end token
        response = response & (jnp.arange(t)[None, :] != last[:, None])
        labels, _ = align_responses(jnp.broadcast_to(targets_r, response.shape), response, max_label_tokens)
        return labels, jnp.sum(response, axis=1), item_task

    labels, lengths, item_task = jax.vmap(row)(ids, seg, task, batch["loss_weights"], batch["targets"],
                                               first_placeholder)
    _, first, _ = layouts.slot_flags(item)
    wanted = jnp.isin(item_task, jnp.asarray(task_ids, jnp.int32))
    return labels, lengths, first & wanted


def columns_first(features: jax.Array, slots: int, grid: tuple[int, int]) -> jax.Array:
    """``[B, S * rows * cols, d]`` raster-ordered slots -> each slot's frames column by column."""
    b, _, d = features.shape
    rows, cols = grid
    return features.reshape(b, slots, rows, cols, d).swapaxes(2, 3).reshape(b, slots * rows * cols, d)


def ctc_sums(features: jax.Array, embedding: jax.Array, batch: dict, layout, cfg: ConnectorCTC,
             task_ids: tuple[int, ...], grid: tuple[int, int] | None = None) -> dict[str, jax.Array]:
    """The CTC term's sums over a batch. features ``[B, S * L, embed]`` (the connector outputs of the
    modality's slots, slot after slot; images raster-ordered with ``grid`` = (rows, cols) per slot),
    embedding ``[vocab, embed]``. Returns ``sum`` (negative log-likelihood of the kept items),
    ``tokens`` (their text tokens), ``items`` and ``dropped`` (items of CTC tasks left out)."""
    item = batch[f"{cfg.modality}_item"]
    b, s = item.shape
    if cfg.modality == "image":
        features = columns_first(features, s, grid)
    per_slot = features.shape[1] // s
    n, w = int(cfg.max_label_tokens), int(cfg.max_slots)
    labels, lengths, starts = item_labels(batch, layout, cfg.modality, task_ids, n)
    logprobs = jax.nn.log_softmax(features.astype(jnp.float32) @ embedding.astype(jnp.float32).T)  # [B, S*L, V]
    # each slot's next w slots of frames [B, S, w * L, V]; a frame counts when its slot holds the same item
    frame = jnp.arange(s)[:, None] * per_slot + jnp.arange(w * per_slot)[None, :]  # [S, w*L]
    padded_item = jnp.pad(item, ((0, 0), (0, w)), constant_values=-1)
    own = padded_item[:, frame // per_slot] == item[:, :, None]  # [B, S, w*L]
    slots_of_item = jnp.sum(item[:, :, None] == item[:, None, :], axis=2)  # [B, S]
    frames = jnp.pad(logprobs, ((0, 0), (0, w * per_slot), (0, 0)))[:, frame]
    repeats = jnp.sum((labels[..., 1:] == labels[..., :-1]) & (jnp.arange(1, n)[None, None] < lengths[..., None]),
                      axis=-1)
    keep = (starts & (lengths > 0) & (lengths <= n) & (slots_of_item <= w)
            & (lengths + repeats <= jnp.sum(own, axis=2)))
    label_pad = (jnp.arange(n)[None, None] >= jnp.where(keep, lengths, 0)[..., None]).astype(jnp.float32)
    per_item = optax.ctc_loss(
        frames.reshape(b * s, w * per_slot, -1),
        1.0 - own.reshape(b * s, -1).astype(jnp.float32),
        labels.reshape(b * s, n),
        label_pad.reshape(b * s, n),
        blank_id=layout.token_id(cfg.modality),
    ).reshape(b, s)
    kept = keep.astype(jnp.float32)
    return {"sum": jnp.sum(per_item * kept), "tokens": jnp.sum(jnp.where(keep, lengths, 0)).astype(jnp.float32),
            "items": jnp.sum(kept), "dropped": jnp.sum((starts & ~keep).astype(jnp.float32))}
