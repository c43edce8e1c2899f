"""What a loss term is: one part of a stage's objective (``omnijax.training.objective``).

A term is a small frozen dataclass whose fields are its settings in the stage config
(``c.objective.<name> = dict(weight=..., ...)``). Called on one run of the model over a batch (``Outputs``, shared
by every term of the objective), it returns a ``TermValue``: its loss summed over its units (response tokens, text
tokens, media items), how many units there were, optional per-task sums, and its logged metrics by name.

What a term tells the objective before the model runs:

- ``needs``: the model outputs it reads: ``'hidden'`` (the LLM's hidden states ``[B, T, d]``) and the sown
  connector outputs of a modality (``'audio_features'``, ``'image_features'``: ``[B, S * L, d]``). The model runs
  once, as far as the terms need: without ``'hidden'`` the LLM's layers are not run.
- ``pool``: the term whose mean it shares: its own name, unless it trains some of another term's units itself
  (Self-KD's student tokens join the next-token CE's one token mean) -- such a term has no weight of its own.
- ``active(batch)``: False when the batch has nothing for it (no slots of its modality): it is left out.
- ``next_token_weights(batch, weights)``: the next-token CE's weights once the term took the response tokens it
  trains itself (unchanged for every term but Self-KD).
- ``bind(stage)``: the term with what it reads from the stage filled in (its tasks' ids, its words' token ids),
  ``ValueError`` when the stage cannot give it (no tower of its modality, a task the stage does not have).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh

HIDDEN = "hidden"  # the LLM's hidden states, as a need
BOUND = {"bound": True}  # metadata of a field that binding fills in: not a setting of the stage config


class Stage(NamedTuple):
    """What binding a term may read from its stage: the task names (``c.task_names``, their order gives the
    ids), the modalities the model has a tower for, and a function that loads the stage's tokenizer."""

    task_names: tuple[str, ...]
    towers: frozenset[str]
    tokenizer: Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class Outputs:
    """One run of the model on a batch, for the terms: the model, its params and the batch; the LLM's hidden
    states ``[B, T, d]`` (None when no term needs them); the sown connector outputs by name
    (``'audio_features'``: ``[B, S * L, d]``); the next-token CE's weights ``[B, T]`` (``next_token_weights``
    of every term applied to ``loss_weights``); the stage's number of tasks (``batch['task_ids']`` index them;
    0: no per-task sums) and its mesh (None outside ``vocab_parallel``)."""

    model: Any
    params: Any
    batch: Mapping[str, jax.Array]
    hidden: jax.Array | None
    features: Mapping[str, jax.Array]
    next_token_weights: jax.Array
    num_tasks: int = 0
    mesh: Mesh | None = None


@dataclasses.dataclass(frozen=True)
class TermValue:
    """A term on a batch: its loss summed over its units and their count (its loss is ``loss_sum / max(count,
    1)``, shared with the other terms of its pool), per-task ``(loss sums, counts)`` ``[num_tasks]`` each or
    None, and its metrics by name: ``means`` (microbatches average them) and ``counts`` (microbatches add
    them up)."""

    loss_sum: jax.Array
    count: jax.Array
    means: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
    counts: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
    task_sums: tuple[jax.Array, jax.Array] | None = None


class Term:
    """The defaults of a loss term (module docstring); a term is a frozen dataclass that derives from this and
    sets ``name`` and ``needs`` and defines ``__call__(outputs) -> TermValue``."""

    name: str
    needs: tuple[str, ...] = ()

    @property
    def pool(self) -> str:
        return self.name

    def active(self, batch: Mapping[str, jax.Array]) -> bool:
        return True

    def next_token_weights(self, batch: Mapping[str, jax.Array], weights: jax.Array) -> jax.Array:
        return weights

    def bind(self, stage: Stage) -> Term:
        return self

    def __call__(self, outputs: Outputs) -> TermValue:
        raise NotImplementedError(f"{type(self).__name__} does not say what it computes")


def settings(cls) -> tuple[str, ...]:
    """The fields of a term class that a stage config sets (not those that binding fills in)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("bound"))


def check_weight(weight) -> None:
    """ValueError unless ``weight`` is a positive finite number."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight is {weight!r}; it must be a positive number (or leave the term out)")


def ids_of_tasks(tasks: tuple[str, ...], task_names) -> tuple[int, ...]:
    """The ids of ``tasks`` among a stage's ``task_names`` (ValueError naming the unknown ones)."""
    names = tuple(task_names)
    unknown = [t for t in tasks if t not in names]
    if unknown:
        raise ValueError(f"tasks {unknown} are not among the stage's tasks {list(names)}")
    return tuple(names.index(t) for t in tasks)
