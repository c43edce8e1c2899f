"""The training objective of an omni model on the batch contract: next-token cross-entropy, and the
Self-KD loss (arXiv 2503.00059) on stages with teacher-student pairs.

``loss_fn(model, params, batch)`` runs ``OmniModel.hidden`` (towers, layout, LLM with packed segments)
and applies the masked cross-entropy of ``omnijax.training.losses`` to ``batch['targets']`` weighted by
``batch['loss_weights']``:

- plain: ``OmniModel.logits`` (float32 ``[B, T, vocab]``) then ``masked_cross_entropy``;
- ``vocab_parallel=True``: ``vocab_parallel_cross_entropy`` under ``shard_map`` on ``mesh``, straight
  from the hidden states and the LM head (or the tied embedding): no device ever holds logits over the
  full vocabulary. The batch is split over the mesh's ``data``/``fsdp`` axes, the vocabulary over
  ``tensor``.

Self-KD (``self_kd=SelfKD(alpha, max_response_tokens)``; the batch has ``kd_part``, see
``omnijax.batch``). A pair is the same image question asked in text (teacher) and in speech
(student), with the same response. Every learned token counts once in one token mean::

    loss = (sum over ordinary tokens of CE
            + sum over student response tokens of alpha * KL(p_teacher || p_student) + (1 - alpha) * CE)
           / (ordinary tokens + student response tokens)

so a batch of pairs alone gives the paper's ``alpha * L_Self-KD + (1 - alpha) * L_SFT`` and
``alpha = 0`` is plain SFT on the spoken questions (the paper's baseline). The teacher part learns
nothing: its tokens are in no CE and its distributions enter the KL under ``stop_gradient``, so the
teacher (the model's own vision-text path) gets no gradient. The student and teacher response
positions of each row are gathered in order (``losses.align_responses``, on the hidden states, before
the LM head) into ``max_response_tokens`` static slots; the k-th slots of both sides hold the same
response token because pairs are packed whole and contiguous. Student response tokens past a row's
``max_response_tokens`` fall back to the plain CE (``aux['kd_overflow_tokens']`` counts them: raise
``max_response_tokens`` when it is not 0); a slot whose teacher has no token (should not happen,
``check_batch`` refuses such batches) is masked. With ``vocab_parallel`` the plain CE stays on
vocabulary shards; the pairs' logits ``[B, 2 * max_response_tokens, vocab]`` are formed whole (GSPMD
lays them out), small next to ``[B, T, vocab]``.

Both return ``(loss, aux)`` with the aux sums of ``losses`` (``loss_sum``, ``tokens``, and per task with
``num_tasks > 0``: ``batch['task_ids']`` index the tasks); with Self-KD also ``kl`` and ``ce_student``
(means over the aligned student tokens), ``kd_tokens`` and ``kd_overflow_tokens``. Pure: usable inside
``jax.grad`` / ``jit``. Check the host batch with ``omnijax.batch.check_batch`` before the step is
traced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from omnijax.batch import KD_ORDINARY, KD_STUDENT, KD_TEACHER
from omnijax.training import connector_bow
from omnijax.training.connector_bow import ConnectorBOW, bow_sums
from omnijax.training.connector_ctc import ConnectorCTC, aux_values, ctc_sums, sown_name
from omnijax.training.losses import align_responses, masked_cross_entropy, self_kd_loss, vocab_parallel_cross_entropy


@dataclasses.dataclass(frozen=True)
class SelfKD:
    """The Self-KD loss of a stage (``c.model.self_kd = dict(alpha=..., max_response_tokens=...)``):
    ``alpha`` weighs the KL against the student CE; ``max_response_tokens`` is the static number of
    student response tokens per row that the KL covers (gathered slots ``[B, r]``)."""

    alpha: float = 0.5
    max_response_tokens: int = 64

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"self_kd alpha is {self.alpha}; it weighs KL against CE and must be in [0, 1]")
        if int(self.max_response_tokens) < 1:
            raise ValueError(f"self_kd max_response_tokens is {self.max_response_tokens}; it must be at least 1")


def loss_fn(model, params: Any, batch: dict, *, mesh: Mesh | None = None, vocab_parallel: bool = False,
            num_tasks: int = 0, self_kd: SelfKD | None = None,
            ctc: tuple[tuple[ConnectorCTC, tuple[int, ...]], ...] = (),
            bow: tuple[tuple[ConnectorBOW, tuple[int, ...]], ...] = (), next_token_loss: bool = True):
    """Mean next-token CE (with Self-KD: the Self-KD objective of the module docstring) over the
    weighted positions of ``batch`` -> ``(loss, aux)``.

    model: an ``omnijax.models.omni.OmniModel``; params: its param tree (``{'llm': ..., ...}``);
    mesh: required with ``vocab_parallel`` (axes ``data``, ``fsdp``, ``tensor``); num_tasks: static
    number of tasks for per-task sums; self_kd: the stage's Self-KD loss (the batch then has
    ``kd_part``), or None; ctc: the stage's CTC terms on connector outputs
    (``omnijax.training.connector_ctc``) with their tasks' ids, each added as ``weight * ctc_<modality>``
    (terms of a modality the batch has no slots of are left out); bow: likewise the stage's bag-of-words
    terms (``omnijax.training.connector_bow``), each added as ``weight * bow_<modality>``;
    next_token_loss=False: the loss is the weighted connector terms alone, and the LLM's layers are not run.
    """
    variables = {"params": params}
    ctc = tuple((cfg, ids) for cfg, ids in ctc if f"{cfg.modality}_item" in batch)
    bow = tuple((cfg, ids) for cfg, ids in bow if f"{cfg.modality}_item" in batch)
    if not next_token_loss:
        _, sown = model.apply(variables, batch, method="embed", mutable=["aux"])
        loss, aux = jnp.zeros((), jnp.float32), {}
    else:
        if ctc or bow:
            hidden, sown = model.apply(variables, batch, method="hidden", mutable=["aux"])
        else:
            hidden = model.apply(variables, batch, method="hidden")
        loss, aux = _token_loss(model, variables, hidden, batch, mesh, vocab_parallel, num_tasks, self_kd)
    for cfg, ids in ctc:
        (features,) = sown["aux"][sown_name(cfg.modality)]
        sums = ctc_sums(features, params["llm"]["embed_tokens"]["embedding"], batch, model.cfg.media_layout, cfg,
                        ids, model.cfg.image_grid)
        aux.update(aux_values(cfg.modality, sums))
        loss = loss + cfg.weight * aux[f"ctc_{cfg.modality}"]
    for cfg, ids in bow:
        (features,) = sown["aux"][sown_name(cfg.modality)]
        sums = bow_sums(features, params["llm"]["embed_tokens"]["embedding"], batch, model.cfg.media_layout, cfg, ids)
        aux.update(connector_bow.aux_values(cfg.modality, sums))
        loss = loss + cfg.weight * aux[f"bow_{cfg.modality}"]
    return loss, aux


def _token_loss(model, variables, hidden, batch, mesh, vocab_parallel, num_tasks, self_kd):
    """The token objective of ``loss_fn`` on the LLM's hidden states: CE, or Self-KD's."""
    task_ids = batch["task_ids"] if num_tasks else None
    weights = batch["loss_weights"] if self_kd is None else ce_weights(batch, self_kd.max_response_tokens)
    if not vocab_parallel:
        logits = model.apply(variables, hidden, method="logits")
        loss, aux = masked_cross_entropy(logits, batch["targets"], weights, task_ids, num_tasks)
    else:
        if mesh is None:
            raise ValueError("vocab_parallel=True needs the mesh whose 'tensor' axis splits the vocabulary")
        tied = model.cfg.llm.tie_word_embeddings
        llm = variables["params"]["llm"]
        kernel = llm["embed_tokens"]["embedding"] if tied else llm["lm_head"]["kernel"]
        loss, aux = vocab_parallel_cross_entropy(hidden, kernel, batch["targets"], weights, mesh, tied=tied,
                                                 task_ids=task_ids, num_tasks=num_tasks)
    if self_kd is None:
        return loss, aux
    pairs = self_kd_sums(lambda h: model.apply(variables, h, method="logits"), hidden, batch, self_kd, num_tasks)
    return combine(aux, pairs)


def ce_weights(batch: dict, max_response_tokens: int) -> jax.Array:
    """The plain CE's weights in a Self-KD batch ``[B, T]``: the ordinary tokens, and the student
    response tokens past the row's first ``max_response_tokens`` (which the KL does not cover)."""
    w, kd = batch["loss_weights"], batch["kd_part"]
    student = w * (kd == KD_STUDENT)
    overflow = student * (jnp.cumsum(student > 0, axis=1) > max_response_tokens)
    return w * (kd == KD_ORDINARY) + overflow


def self_kd_sums(logits_fn: Callable[[jax.Array], jax.Array], hidden: jax.Array, batch: dict, cfg: SelfKD,
                 num_tasks: int = 0) -> dict[str, jax.Array]:
    """The Self-KD term's sums over a batch's pairs. ``logits_fn``: hidden ``[B, r, d]`` -> logits
    ``[B, r, vocab]`` (the LM head); hidden ``[B, T, d]``.

    Gathers each row's teacher and student response positions (``align_responses``, ``r =
    max_response_tokens`` slots), applies the LM head there only, and sums
    ``alpha * KL + (1 - alpha) * CE`` (``losses.self_kd_loss``) over the valid slots. Returns
    ``loss_sum``, ``kl_sum``, ``ce_sum``, ``tokens``, ``overflow_tokens`` (student response tokens past
    ``r``: ``ce_weights`` gives them to the plain CE) and, with ``num_tasks``, ``task_loss_sum`` and
    ``task_tokens`` (the student's task ids).
    """
    r = int(cfg.max_response_tokens)
    w, kd = batch["loss_weights"], batch["kd_part"]
    teacher_mask, student_mask = w * (kd == KD_TEACHER), w * (kd == KD_STUDENT)
    h_teacher, valid_t = align_responses(hidden, teacher_mask, r)
    h_student, valid_s = align_responses(hidden, student_mask, r)
    logits = logits_fn(jnp.concatenate([h_teacher, h_student], axis=1))  # one LM head call for both sides
    teacher_logits, student_logits = logits[:, :r], logits[:, r:]
    targets, _ = align_responses(batch["targets"], student_mask, r)
    slot_weights, _ = align_responses(student_mask, student_mask, r)
    weights = slot_weights * (valid_s & valid_t)
    stack = weights[None]  # [1 + num_tasks, B, r]: all slots, then each task's
    if num_tasks:
        tasks, _ = align_responses(batch["task_ids"], student_mask, r)
        per_task = jnp.moveaxis(jax.nn.one_hot(tasks, num_tasks, dtype=weights.dtype), -1, 0) * weights
        stack = jnp.concatenate([stack, per_task])

    def sums(wts):
        # self_kd_loss is linear in the weights: its means times max(tokens, 1) are the weighted sums.
        # vmap over the weights alone batches only these sums; the softmaxes are computed once.
        loss, aux = self_kd_loss(student_logits, teacher_logits, targets, wts, cfg.alpha)
        n = jnp.maximum(aux["tokens"], 1.0)
        return loss * n, aux["kl"] * n, aux["ce"] * n, aux["tokens"]

    loss_sum, kl_sum, ce_sum, tokens = jax.vmap(sums)(stack)
    out = {"loss_sum": loss_sum[0], "kl_sum": kl_sum[0], "ce_sum": ce_sum[0], "tokens": tokens[0],
           "overflow_tokens": jnp.sum(jnp.maximum(jnp.sum(student_mask > 0, axis=1) - r, 0))}
    if num_tasks:
        out["task_loss_sum"], out["task_tokens"] = loss_sum[1:], tokens[1:]
    return out


def combine(ce_aux: dict[str, jax.Array], pairs: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The plain CE's aux sums and ``self_kd_sums`` -> the Self-KD objective's ``(loss, aux)``: one
    token mean over the ordinary and the student response tokens (module docstring)."""
    aux = {"loss_sum": ce_aux["loss_sum"] + pairs["loss_sum"], "tokens": ce_aux["tokens"] + pairs["tokens"]}
    if "task_tokens" in ce_aux:
        aux["task_loss_sum"] = ce_aux["task_loss_sum"] + pairs["task_loss_sum"]
        aux["task_tokens"] = ce_aux["task_tokens"] + pairs["task_tokens"]
        aux["task_loss"] = aux["task_loss_sum"] / jnp.maximum(aux["task_tokens"], 1.0)
    n = jnp.maximum(pairs["tokens"], 1.0)
    aux.update(kl=pairs["kl_sum"] / n, ce_student=pairs["ce_sum"] / n, kd_tokens=pairs["tokens"],
               kd_overflow_tokens=pairs["overflow_tokens"])
    return aux["loss_sum"] / jnp.maximum(aux["tokens"], 1.0), aux
