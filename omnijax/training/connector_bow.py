"""A bag-of-words term on a connector's output: each media item's connector output tokens, read through
the LLM's own token embeddings, say which tokens its text contains (``c.model.bow``).

A tower trained from scratch (the tiny recipes' stand-in stages) learns only through the LLM's next-token
loss, where the few tokens that name what is in an image (a colour, a shape) are a small share of a
caption's loss. Pretraining a vision tower by predicting the words of its caption as a bag -- a
multi-label classification (Joulin et al. 2016, "Learning Visual Features from Large Weakly Supervised
Data"; CatLIP, Mehta et al. 2024, with a sigmoid per class) -- gives every named object a direct
gradient, wherever it is in the image and in the caption. The classifier is the LLM's input embedding
matrix, so no parameter is added; an item's score for a token is a soft maximum over its frames
(multiple-instance pooling: one frame that shows a circle is enough to say "circle"):

    logits[f, v] = connector_output[f] . E[v]         E = llm/embed_tokens/embedding  [vocab, embed]
    score[v]     = logsumexp_f logits[f, v] - log F   (F frames of the item)
    loss         = sum_v BCE(sigmoid(score[v]), [v in the item's text])

Items, texts and frames come from the batch as for CTC (``connector_ctc.item_labels``): the item's
example is the segment of its first media placeholder token (the `<image>` or `<audio>` the connector
outputs replace), its task one of ``tasks``, its text the response less
the turn's end token (its first ``max_label_tokens`` tokens); its frames are the connector outputs of
the slots that hold it. The term is the mean over the kept items; ``objective.loss_fn`` adds ``weight``
times it to the cross-entropy (or, with ``c.model.next_token_loss = False``, trains on the connector
terms alone and skips the LLM's layers).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from omnijax.training import connector_ctc
from omnijax.training.connector_ctc import check_term, item_labels, term_task_ids


@dataclasses.dataclass(frozen=True)
class ConnectorBOW:
    """One entry of ``c.model.bow = {modality: dict(weight=..., tasks=(...), max_label_tokens=...)}``: the
    term's weight next to the cross-entropy, the tasks (by name, ``c.task_names``) whose responses describe
    their item, and how many of a text's tokens (from its start) make its bag."""

    modality: str
    weight: float = 0.5
    tasks: tuple[str, ...] = ()
    max_label_tokens: int = 48

    def __post_init__(self):
        check_term(self, "bow", "('image_caption',)")
        if int(self.max_label_tokens) < 1:
            raise ValueError(f"bow {self.modality} max_label_tokens={self.max_label_tokens} must be at least 1")

    def task_ids(self, task_names) -> tuple[int, ...]:
        """The ids of ``tasks`` among a stage's ``task_names`` (ValueError naming the unknown ones)."""
        return term_task_ids(self, "bow", task_names)


def bow_sums(features: jax.Array, embedding: jax.Array, batch: dict, layout, cfg: ConnectorBOW,
             task_ids: tuple[int, ...]) -> dict[str, jax.Array]:
    """The term's sums over a batch. features ``[B, S * L, embed]`` (the connector outputs of the
    modality's slots, slot after slot), embedding ``[vocab, embed]``. Returns ``sum`` (the items' binary
    cross-entropies, summed over the vocabulary) and ``items`` (items of the term's tasks with a text)."""
    item = batch[f"{cfg.modality}_item"]
    b, s = item.shape
    vocab = embedding.shape[0]
    n = int(cfg.max_label_tokens)
    labels, lengths, starts = item_labels(batch, layout, cfg.modality, task_ids, n)
    logits = features.astype(jnp.float32) @ embedding.astype(jnp.float32).T  # [B, S * L, V]
    per_slot = logits.shape[1] // s
    slot_lse = jax.nn.logsumexp(logits.reshape(b, s, per_slot, vocab), axis=2)  # [B, S, V]
    same = (item[:, :, None] == item[:, None, :]) & (item[:, None, :] >= 0)  # [B, S, S]: slot j holds i's item
    frames = per_slot * jnp.sum(same, axis=2, keepdims=True)
    score = jax.nn.logsumexp(jnp.where(same[..., None], slot_lse[:, None], -1e9), axis=2)  # finite: no NaN grads
    score = jnp.where(frames > 0, score - jnp.log(jnp.maximum(frames, 1)), 0.0)  # [B, S, V]
    present = jnp.arange(n)[None, None] < jnp.minimum(lengths, n)[..., None]  # [B, S, N]
    bag = jnp.max(jax.nn.one_hot(labels, vocab, dtype=jnp.float32) * present[..., None], axis=2)  # [B, S, V]
    keep = starts & (lengths > 0)
    per_item = jnp.sum(optax.sigmoid_binary_cross_entropy(score, bag), axis=-1)
    kept = keep.astype(jnp.float32)
    return {"sum": jnp.sum(per_item * kept), "items": jnp.sum(kept)}


def aux_values(modality: str, sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """``bow_sums`` -> the objective's aux entries: the mean over items (``bow_<m>``) and their count."""
    return {f"bow_{modality}": sums["sum"] / jnp.maximum(sums["items"], 1.0),
            f"bow_{modality}_items_sum": sums["items"]}


METRICS = {f"bow_{m}{suffix}": f"bow/{m}/{name}" for m in connector_ctc.MODALITIES for suffix, name in
           (("", "loss"), ("_items_sum", "items"))}
