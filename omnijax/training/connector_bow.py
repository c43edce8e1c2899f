"""A bag-of-words term on a connector's output: each media item's connector output tokens, read through
the LLM's own token embeddings, say which tokens its text contains: the loss term ``ConnectorBagOfWords``
(``c.objective.bow_image``, ``c.objective.bow_audio``).

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

A bag says which words an image holds, not which go together: a tower trained on it alone told a held-out
scene's (colour, shape) pairs from the same scene's swapped pairs 66% of the time (chance 50%). The
optional binding term (``pairs=((attributes...), (objects...))``, words) scores each attribute-object pair
on the same frame -- one frame must show both -- and says whether the text holds the attribute directly
before the object ("a red circle"):

    pair[a, o]   = logsumexp_f (logits[f, a] + logits[f, o]) - log F
    loss        += pair_weight * sum_{a, o} BCE(sigmoid(pair[a, o]), ["a o" in the item's text])

Items, texts and frames come from the batch as for CTC (``connector_ctc.item_labels``): the item's
example is the segment of its first media placeholder token (the `<image>` or `<audio>` the connector
outputs replace), its task one of ``tasks``, its text the response less
the turn's end token (its first ``max_label_tokens`` tokens); its frames are the connector outputs of
the slots that hold it. The term is the mean over the kept items (``bow/<modality>/loss``, and the binding
term's alone ``bow/<modality>/pairs``; ``items`` counts them); the objective adds ``weight`` times it to the
other terms. A stage whose objective lists connector terms alone does not run the LLM's layers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from omnijax.training.connector_ctc import bind_connector_term, check_connector_term, item_labels, sown_name
from omnijax.training.term import BOUND, Outputs, Stage, Term, TermValue


@dataclasses.dataclass(frozen=True)
class ConnectorBagOfWords(Term):
    """``c.objective.bow_<modality> = dict(weight=..., tasks=(...), max_label_tokens=..., pairs=...,
    pair_weight=...)``: the term's weight in the objective, the tasks (by name, ``c.task_names``) whose
    responses describe their item, how many of a text's tokens (from its start) make its bag, and the optional
    binding term's words. ``task_ids`` and ``pair_ids`` (``pairs``' token ids) are filled in by ``bind``."""

    modality: str = dataclasses.field(metadata=BOUND)
    weight: float = 0.5
    tasks: tuple[str, ...] = ()
    max_label_tokens: int = 48
    pairs: tuple[tuple[str, ...], tuple[str, ...]] = ()
    pair_weight: float = 1.0
    task_ids: tuple[int, ...] = dataclasses.field(default=(), metadata=BOUND)
    pair_ids: tuple[tuple[int, ...], tuple[int, ...]] = dataclasses.field(default=(), metadata=BOUND)

    def __post_init__(self):
        check_connector_term(self, "('image_caption',)")
        if int(self.max_label_tokens) < 1:
            raise ValueError(f"max_label_tokens={self.max_label_tokens} must be at least 1")
        pairs = tuple(tuple(words) for words in self.pairs)
        if pairs and (len(pairs) != 2 or not all(pairs)):
            raise ValueError(f"pairs={self.pairs!r}: give two non-empty word lists, ((attributes...), (objects...)), "
                             "e.g. (('red', 'blue'), ('circle', 'square'))")
        if pairs and not self.pair_weight > 0:
            raise ValueError(f"pair_weight is {self.pair_weight}; it must be positive")
        object.__setattr__(self, "pairs", pairs)

    @property
    def name(self) -> str:
        return f"bow_{self.modality}"

    @property
    def needs(self) -> tuple[str, ...]:
        return (sown_name(self.modality),)

    def active(self, batch) -> bool:
        return f"{self.modality}_item" in batch

    def bind(self, stage: Stage) -> ConnectorBagOfWords:
        term = bind_connector_term(self, stage)
        return term.with_pair_ids(stage.tokenizer()) if term.pairs else term

    def with_pair_ids(self, tokenizer) -> ConnectorBagOfWords:
        """The term with ``pairs``' words as the tokenizer's ids (each word one token, as it follows a space
        in a text); ValueError naming a word that is not one token."""
        ids = []
        for words in self.pairs:
            group = []
            for word in words:
                encoded = tokenizer.encode(" " + word, add_special_tokens=False)
                if len(encoded) != 1:
                    raise ValueError(f"pairs: {word!r} is {len(encoded)} tokens in the stage's tokenizer, not one; "
                                     "name words the tokenizer keeps whole")
                group.append(int(encoded[0]))
            ids.append(tuple(group))
        return dataclasses.replace(self, pair_ids=tuple(ids))

    def __call__(self, out: Outputs) -> TermValue:
        embedding = out.params["llm"]["embed_tokens"]["embedding"]
        return self.value(bow_sums(out.features[sown_name(self.modality)], embedding, out.batch,
                                   out.model.cfg.media_layout, self, self.task_ids))

    def value(self, sums: dict[str, jax.Array]) -> TermValue:
        """``bow_sums`` -> the term's value (its mean is over items) and metrics: the mean over items (with the
        binding term when there is one, which is also logged alone) and their count."""
        m, items = self.modality, jnp.maximum(sums["items"], 1.0)
        means = {f"bow/{m}/loss": sums["sum"] / items}
        if "pair_sum" in sums:
            means[f"bow/{m}/pairs"] = sums["pair_sum"] / items
        return TermValue(sums["sum"], sums["items"], means=means, counts={f"bow/{m}/items": sums["items"]})


def bow_sums(features: jax.Array, embedding: jax.Array, batch: dict, layout, cfg: ConnectorBagOfWords,
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
    present = jnp.arange(n)[None, None] < jnp.minimum(lengths, n)[..., None]  # [B, S, N]
    bag = jnp.max(jax.nn.one_hot(labels, vocab, dtype=jnp.float32) * present[..., None], axis=2)  # [B, S, V]
    per_item = jnp.sum(optax.sigmoid_binary_cross_entropy(_item_scores(logits, item), bag), axis=-1)
    keep = starts & (lengths > 0)
    kept = keep.astype(jnp.float32)
    out = {"sum": jnp.sum(per_item * kept), "items": jnp.sum(kept)}
    if cfg.pairs and not cfg.pair_ids:
        raise ValueError(f"bow_{cfg.modality} pairs {cfg.pairs!r} have no token ids; bind the term to its stage "
                         "(ConnectorBagOfWords.bind, or .with_pair_ids(tokenizer))")
    if cfg.pair_ids:
        attrs, objs = (jnp.asarray(ids, jnp.int32) for ids in cfg.pair_ids)
        pair_logits = logits[..., attrs][..., :, None] + logits[..., objs][..., None, :]  # [B, S * L, A, O]
        scores = _item_scores(pair_logits.reshape(b, -1, len(cfg.pair_ids[0]) * len(cfg.pair_ids[1])), item)
        adjacent = present[..., 1:, None, None] & (labels[..., :-1, None, None] == attrs[:, None]) & (
            labels[..., 1:, None, None] == objs[None, :])  # [B, S, N - 1, A, O]
        said = jnp.any(adjacent, axis=2).reshape(scores.shape).astype(jnp.float32)
        per_pair = jnp.sum(optax.sigmoid_binary_cross_entropy(scores, said), axis=-1)
        out["pair_sum"] = jnp.sum(per_pair * kept)
        out["sum"] = out["sum"] + cfg.pair_weight * out["pair_sum"]
    return out


def _item_scores(logits: jax.Array, item: jax.Array) -> jax.Array:
    """Frame scores ``[B, S * L, K]`` -> each slot's item's score ``[B, S, K]``: the log-mean-exp over the
    frames of every slot that holds the same item (0 for slots that hold none)."""
    b, s = item.shape
    per_slot = logits.shape[1] // s
    slot_lse = jax.nn.logsumexp(logits.reshape(b, s, per_slot, logits.shape[-1]), axis=2)  # [B, S, K]
    same = (item[:, :, None] == item[:, None, :]) & (item[:, None, :] >= 0)  # [B, S, S]: slot j holds i's item
    frames = per_slot * jnp.sum(same, axis=2, keepdims=True)
    score = jax.nn.logsumexp(jnp.where(same[..., None], slot_lse[:, None], -1e9), axis=2)  # finite: no NaN grads
    return jnp.where(frames > 0, score - jnp.log(jnp.maximum(frames, 1)), 0.0)
