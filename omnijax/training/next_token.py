"""The LLM's token terms of an objective: next-token cross-entropy (``NextTokenCE``) and the Self-KD loss
(``SelfKD``, arXiv 2503.00059) on stages with teacher-student pairs.

``NextTokenCE`` applies the masked cross-entropy of ``omnijax.training.losses`` to ``batch['targets']``
weighted by ``batch['loss_weights']``, from the LLM's hidden states:

- plain: ``OmniModel.logits`` (float32 ``[B, T, vocab]``) then ``masked_cross_entropy``;
- ``vocab_parallel=True``: ``vocab_parallel_cross_entropy`` under ``shard_map`` on the mesh, straight from the
  hidden states and the LM head (or the tied embedding): no device ever holds logits over the full
  vocabulary. The batch is split over the mesh's ``data``/``fsdp`` axes, the vocabulary over ``tensor``.

Self-KD (the batch has ``kd_part``, see ``omnijax.batch``). A pair is the same image question asked in text
(teacher) and in speech (student), with the same response. ``SelfKD`` shares the next-token term's mean
(its ``pool``): every learned token counts once in one token mean::

    loss = (sum over ordinary tokens of CE
            + sum over student response tokens of alpha * KL(p_teacher || p_student) + (1 - alpha) * CE)
           / (ordinary tokens + student response tokens)

so a batch of pairs alone gives the paper's ``alpha * L_Self-KD + (1 - alpha) * L_SFT`` and ``alpha = 0`` is
plain SFT on the spoken questions (the paper's baseline). The teacher part learns nothing: its tokens are in
no CE (``SelfKD.next_token_weights`` takes them from the next-token term) and its distributions enter the KL
under ``stop_gradient``, so the teacher (the model's own vision-text path) gets no gradient. The student and
teacher response positions of each row are gathered in order (``losses.align_responses``, on the hidden
states, before the LM head) into ``max_response_tokens`` static slots; the k-th slots of both sides hold the
same response token because pairs are packed whole and contiguous. Student response tokens past a row's
``max_response_tokens`` stay with the plain CE (``kd/overflow_tokens`` counts them: raise
``max_response_tokens`` when it is not 0); a slot whose teacher has no token (should not happen,
``check_batch`` refuses such batches) is masked. With ``vocab_parallel`` the plain CE stays on vocabulary
shards; the pairs' logits ``[B, 2 * max_response_tokens, vocab]`` are formed whole (GSPMD lays them out),
small next to ``[B, T, vocab]``.

Metrics: Self-KD logs ``kd/kl`` and ``kd/ce_student`` (means over the aligned student tokens), ``kd/tokens``
and ``kd/overflow_tokens``; the token mean's own sums (``loss_sum``, ``tokens``, per task) are the
objective's aux (``omnijax.training.objective``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from omnijax.batch import KD_ORDINARY, KD_STUDENT, KD_TEACHER
from omnijax.training.losses import align_responses, masked_cross_entropy, self_kd_loss, vocab_parallel_cross_entropy
from omnijax.training.term import HIDDEN, Outputs, Term, TermValue, check_weight


@dataclasses.dataclass(frozen=True)
class NextTokenCE(Term):
    """``c.objective.next_token = dict(weight=1.0, vocab_parallel=False)``: the mean next-token CE over the
    weighted response tokens (module docstring); ``vocab_parallel``: on vocabulary shards under ``shard_map``."""

    weight: float = 1.0
    vocab_parallel: bool = False
    name = "next_token"
    needs = (HIDDEN,)

    def __post_init__(self):
        check_weight(self.weight)

    def __call__(self, out: Outputs) -> TermValue:
        batch, num_tasks = out.batch, out.num_tasks
        task_ids = batch["task_ids"] if num_tasks else None
        if not self.vocab_parallel:
            logits = out.model.apply({"params": out.params}, out.hidden, method="logits")
            _, aux = masked_cross_entropy(logits, batch["targets"], out.next_token_weights, task_ids, num_tasks)
        else:
            if out.mesh is None:
                raise ValueError("vocab_parallel=True needs the mesh whose 'tensor' axis splits the vocabulary")
            tied = out.model.cfg.llm.tie_word_embeddings
            llm = out.params["llm"]
            kernel = llm["embed_tokens"]["embedding"] if tied else llm["lm_head"]["kernel"]
            _, aux = vocab_parallel_cross_entropy(out.hidden, kernel, batch["targets"], out.next_token_weights,
                                                  out.mesh, tied=tied, task_ids=task_ids, num_tasks=num_tasks)
        tasks = (aux["task_loss_sum"], aux["task_tokens"]) if num_tasks else None
        return TermValue(aux["loss_sum"], aux["tokens"], task_sums=tasks)


@dataclasses.dataclass(frozen=True)
class SelfKD(Term):
    """``c.objective.self_kd = dict(alpha=..., max_response_tokens=...)``: ``alpha`` weighs the KL against the
    student CE; ``max_response_tokens`` is the static number of student response tokens per row that the KL
    covers (gathered slots ``[B, r]``). No weight: it shares the next-token term's token mean."""

    alpha: float = 0.5
    max_response_tokens: int = 64
    name = "self_kd"
    needs = (HIDDEN,)

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha is {self.alpha}; it weighs KL against CE and must be in [0, 1]")
        if int(self.max_response_tokens) < 1:
            raise ValueError(f"max_response_tokens is {self.max_response_tokens}; it must be at least 1")

    @property
    def pool(self) -> str:
        return NextTokenCE.name

    def next_token_weights(self, batch, weights):
        """The plain CE's weights in a Self-KD batch ``[B, T]``: the ordinary tokens, and the student response
        tokens past the row's first ``max_response_tokens`` (which the KL does not cover)."""
        kd = batch["kd_part"]
        student = weights * (kd == KD_STUDENT)
        overflow = student * (jnp.cumsum(student > 0, axis=1) > self.max_response_tokens)
        return weights * (kd == KD_ORDINARY) + overflow

    def __call__(self, out: Outputs) -> TermValue:
        logits_fn = lambda h: out.model.apply({"params": out.params}, h, method="logits")  # noqa: E731
        return self.value(self_kd_sums(logits_fn, out.hidden, out.batch, self, out.num_tasks))

    def value(self, pairs: dict[str, jax.Array]) -> TermValue:
        """``self_kd_sums`` -> the term's value and metrics."""
        n = jnp.maximum(pairs["tokens"], 1.0)
        tasks = (pairs["task_loss_sum"], pairs["task_tokens"]) if "task_tokens" in pairs else None
        return TermValue(pairs["loss_sum"], pairs["tokens"],
                         means={"kd/kl": pairs["kl_sum"] / n, "kd/ce_student": pairs["ce_sum"] / n},
                         counts={"kd/tokens": pairs["tokens"], "kd/overflow_tokens": pairs["overflow_tokens"]},
                         task_sums=tasks)


def self_kd_sums(logits_fn: Callable[[jax.Array], jax.Array], hidden: jax.Array, batch: dict, cfg: SelfKD,
                 num_tasks: int = 0) -> dict[str, jax.Array]:
    """The Self-KD term's sums over a batch's pairs. ``logits_fn``: hidden ``[B, r, d]`` -> logits
    ``[B, r, vocab]`` (the LM head); hidden ``[B, T, d]``.

    Gathers each row's teacher and student response positions (``align_responses``, ``r =
    max_response_tokens`` slots), applies the LM head there only, and sums
    ``alpha * KL + (1 - alpha) * CE`` (``losses.self_kd_loss``) over the valid slots. Returns
    ``loss_sum``, ``kl_sum``, ``ce_sum``, ``tokens``, ``overflow_tokens`` (student response tokens past
    ``r``: ``next_token_weights`` leaves them to the plain CE) and, with ``num_tasks``, ``task_loss_sum`` and
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
