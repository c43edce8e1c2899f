"""The training objective of an omni model: a list of loss terms (``omnijax.training.term``), run on one
pass of the model over a batch of the batch contract.

A stage config lists its terms by name, each with its settings (``TERMS``; a term set to None is left out)::

    c.objective.next_token = dict(weight=1.0)                      # next-token CE (next_token.NextTokenCE)
    c.objective.self_kd = dict(alpha=0.5, max_response_tokens=64)  # Self-KD on teacher-student pairs (SelfKD)
    c.objective.ctc_audio = dict(weight=0.2, tasks=('asr',))       # CTC on connector outputs (connector_ctc)
    c.objective.bow_image = dict(weight=1.0, tasks=('image_caption',))  # bag of words (connector_bow)

``loss_fn(model, params, batch, terms)`` runs the model once, as far as the terms need (``Term.needs``: the
LLM's hidden states, the connectors' sown outputs; a stage of connector terms alone does not run the LLM's
layers), calls every term active on the batch, and combines them: the terms of one pool (``Term.pool``: a
term and those that share its mean, as Self-KD shares the next-token CE's) add up their loss sums and their
counts into one mean, and the loss is the sum over the pools of the pool's weight (its own term's) times its
mean::

    loss = w_next_token * (CE sum + Self-KD sum) / max(CE tokens + Self-KD tokens, 1)
           + w_ctc_audio * CTC sum / max(text tokens, 1) + ...

It returns ``(loss, aux)``: aux holds the next-token pool's sums as ``omnijax.training.losses`` has them
(``loss_sum``, ``tokens``, and with ``num_tasks > 0``, ``batch['task_ids']`` indexing the tasks:
``task_loss_sum``, ``task_tokens``, ``task_loss``), and the terms' metrics by name in ``aux['means']`` and
``aux['counts']`` (the train step logs them all). Pure: usable inside ``jax.grad`` / ``jit``. Check the host
batch with ``omnijax.batch.check_batch`` before the step is traced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from jax.sharding import Mesh

from omnijax.training.connector_bow import ConnectorBagOfWords
from omnijax.training.connector_ctc import MODALITIES, ConnectorCTC
from omnijax.training.next_token import NextTokenCE, SelfKD
from omnijax.training.term import HIDDEN, Outputs, Stage, Term, TermValue, settings

# name -> (term class, its fields given by the name); the objective adds up its terms in this order
TERMS = {"next_token": (NextTokenCE, {}), "self_kd": (SelfKD, {}),
         **{f"ctc_{m}": (ConnectorCTC, {"modality": m}) for m in MODALITIES},
         **{f"bow_{m}": (ConnectorBagOfWords, {"modality": m}) for m in MODALITIES}}
DEFAULT = {"next_token": {"weight": 1.0}}  # a stage's objective unless it says otherwise (``base_config``)


def terms_from_config(spec) -> tuple[Term, ...]:
    """A stage's ``c.objective`` -> its terms in ``TERMS`` order; ValueError naming the term and the fix."""
    if not isinstance(spec, Mapping | mlc.ConfigDict):
        raise ValueError(f"c.objective is {spec!r}; give a dict of terms by name ({', '.join(TERMS)}), e.g. "
                         "dict(next_token=dict(weight=1.0))")
    unknown = sorted(set(spec.keys()) - set(TERMS))
    if unknown:
        raise ValueError(f"c.objective names unknown terms {unknown}; the terms are {', '.join(TERMS)}")
    terms = tuple(_term(name, spec[name]) for name in TERMS if spec.get(name) is not None)
    if not terms:
        raise ValueError(f"c.objective lists no term, which leaves nothing to train on; give at least one of "
                         f"{', '.join(TERMS)}")
    names = {t.name for t in terms}
    for t in terms:
        if t.pool not in names:
            raise ValueError(f"c.objective.{t.name} needs the {t.pool} term, whose mean it shares; add "
                             f"c.objective.{t.pool} or set c.objective.{t.name} to None")
    return terms


def _term(name: str, fields) -> Term:
    cls, fixed = TERMS[name]
    known = settings(cls)
    if not isinstance(fields, Mapping | mlc.ConfigDict):
        raise ValueError(f"c.objective.{name} is {fields!r}; give a dict of its settings ({', '.join(known)}) or "
                         "None (not in the objective)")
    unknown = sorted(set(fields.keys()) - set(known))
    if unknown:
        raise ValueError(f"c.objective.{name} has no setting {unknown}; its settings are {', '.join(known)}")
    try:
        return cls(**fixed, **dict(fields))
    except (TypeError, ValueError) as e:
        raise ValueError(f"c.objective.{name}: {e}") from None


def bind(terms: Sequence[Term], stage: Stage) -> tuple[Term, ...]:
    """Each term with what it reads from its stage (``Term.bind``); ValueError naming the term."""
    out = []
    for t in terms:
        try:
            out.append(t.bind(stage))
        except (TypeError, ValueError) as e:
            raise ValueError(f"c.objective.{t.name}: {e}") from None
    return tuple(out)


def run_model(model, params: Any, batch: Mapping[str, jax.Array], needs) -> tuple[jax.Array | None, dict]:
    """One run of ``model`` (an ``omnijax.models.omni.OmniModel``) as far as ``needs`` asks: the LLM's hidden
    states (or None) and the sown connector outputs by name."""
    variables = {"params": params}
    sown = sorted(n for n in needs if n != HIDDEN)
    method = "hidden" if HIDDEN in needs else "embed"
    if not sown:
        return (model.apply(variables, batch, method=method) if HIDDEN in needs else None), {}
    result, state = model.apply(variables, batch, method=method, mutable=["aux"])
    return (result if HIDDEN in needs else None), {n: state["aux"][n][0] for n in sown}


def loss_fn(model, params: Any, batch: Mapping[str, jax.Array], terms: Sequence[Term] = (NextTokenCE(),), *,
            mesh: Mesh | None = None, num_tasks: int = 0) -> tuple[jax.Array, dict]:
    """The objective of ``terms`` (bound to their stage) on ``batch`` -> ``(loss, aux)`` (module docstring).

    model: an ``omnijax.models.omni.OmniModel``; params: its param tree (``{'llm': ..., ...}``); mesh: for a
    vocab-parallel next-token term (axes ``data``, ``fsdp``, ``tensor``); num_tasks: static number of tasks
    for per-task sums. Terms of a modality the batch has no slots of are left out.
    """
    terms = tuple(t for t in terms if t.active(batch))
    hidden, features = run_model(model, params, batch, {n for t in terms for n in t.needs})
    weights = batch["loss_weights"]
    for t in terms:
        weights = t.next_token_weights(batch, weights)
    out = Outputs(model, params, batch, hidden, features, weights, num_tasks, mesh)
    return combine(terms, [t(out) for t in terms])


def combine(terms: Sequence[Term], values: Sequence[TermValue]) -> tuple[jax.Array, dict]:
    """The terms' values -> the objective's ``(loss, aux)``: one mean per pool, weighted by the pool's own term."""
    weights = {t.name: t.weight for t in terms if t.pool == t.name}
    pools: dict[str, list[TermValue]] = {}
    for t, v in zip(terms, values):
        if t.pool not in weights:
            raise ValueError(f"the {t.name} term shares the mean of the {t.pool} term, which is not in the objective")
        pools.setdefault(t.pool, []).append(v)
    aux = {"means": {k: x for v in values for k, x in v.means.items()},
           "counts": {k: x for v in values for k, x in v.counts.items()}}
    loss = None
    for pool, vs in pools.items():
        sums = _pool_sums(vs)
        weighted = weights[pool] * (sums["loss_sum"] / jnp.maximum(sums["tokens"], 1.0))
        loss = weighted if loss is None else loss + weighted
        if pool == NextTokenCE.name:
            aux.update(sums)
    return (jnp.zeros((), jnp.float32) if loss is None else loss), aux


def _pool_sums(values: Sequence[TermValue]) -> dict[str, jax.Array]:
    """One pool's loss sums and counts added up (``losses``' names: ``loss_sum``, ``tokens``, per task)."""
    sums = {"loss_sum": values[0].loss_sum, "tokens": values[0].count}
    for v in values[1:]:
        sums["loss_sum"], sums["tokens"] = sums["loss_sum"] + v.loss_sum, sums["tokens"] + v.count
    tasks = [v.task_sums for v in values if v.task_sums is not None]
    if tasks:
        sums["task_loss_sum"], sums["task_tokens"] = tasks[0]
        for loss_sum, tokens in tasks[1:]:
            sums["task_loss_sum"], sums["task_tokens"] = sums["task_loss_sum"] + loss_sum, sums["task_tokens"] + tokens
        sums["task_loss"] = sums["task_loss_sum"] / jnp.maximum(sums["task_tokens"], 1.0)
    return sums
