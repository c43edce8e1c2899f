"""Token losses: masked next-token cross-entropy, its vocab-parallel form, and the Self-KD loss.

Target convention (every loss here): ``targets[b, t]`` is the token to predict *at* position ``t``,
i.e. already shifted; ``weights[b, t]`` says how much that prediction counts (0 = not trained on).
``shift_targets`` builds both from a packed row. A loss is ``sum(w * ce) / max(sum(w), 1)`` and
comes with an aux dict of sums, so callers can also average over steps or hosts exactly::

    aux = {"loss_sum": sum(w * ce), "tokens": sum(w),
           # only with num_tasks > 0 (task_ids [b, t] in [0, num_tasks)):
           "task_loss_sum": [num_tasks], "task_tokens": [num_tasks], "task_loss": [num_tasks] (means)}

Per-task sums use a one-hot over the static ``num_tasks`` (no dynamic shapes); a task id outside
``[0, num_tasks)`` counts in the total and in no task.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P


def shift_targets(input_ids: jax.Array, loss_mask: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next-token targets and weights for packed rows.

    input_ids, loss_mask, segment_ids ``[b, t]``; ``loss_mask[t]`` marks token ``t`` as one to learn
    (a response token), ``segment_ids`` are 1-based per packed example, 0 = padding.
    Returns (targets int32 ``[b, t]``, weights float32 ``[b, t]``): ``targets[t] = input_ids[t + 1]``
    and ``weights[t] = loss_mask[t + 1]`` when ``t + 1`` is in the same (non-padding) segment as ``t``;
    the last token of each segment predicts nothing (target 0, weight 0), so no prediction crosses a
    segment boundary.
    """
    nxt = lambda x: jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)  # noqa: E731
    same = (nxt(segment_ids) == segment_ids) & (segment_ids != 0)
    targets = jnp.where(same, nxt(input_ids), 0).astype(jnp.int32)
    weights = jnp.where(same, nxt(loss_mask), 0).astype(jnp.float32)
    return targets, weights


def _check_tasks(task_ids, num_tasks: int) -> None:
    if num_tasks and task_ids is None:
        raise ValueError(f"num_tasks={num_tasks} needs task_ids [b, t]")
    if task_ids is not None and not num_tasks:
        raise ValueError("task_ids given with num_tasks=0: pass the number of tasks (a static int)")


def _weighted_sums(ce, weights, task_ids, num_tasks) -> dict[str, jax.Array]:
    """Sums of the weighted per-token loss ``ce [b, t]``, in total and per task."""
    _check_tasks(task_ids, num_tasks)
    w = weights.astype(jnp.float32)
    sums = {"loss_sum": jnp.sum(w * ce), "tokens": jnp.sum(w)}
    if num_tasks:
        onehot = jax.nn.one_hot(task_ids, num_tasks, dtype=jnp.float32)  # [b, t, num_tasks]
        sums["task_loss_sum"] = jnp.einsum("bt,btk->k", w * ce, onehot)
        sums["task_tokens"] = jnp.einsum("bt,btk->k", w, onehot)
    return sums


def _finish(sums: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    aux = dict(sums)
    if "task_tokens" in aux:
        aux["task_loss"] = aux["task_loss_sum"] / jnp.maximum(aux["task_tokens"], 1.0)
    return sums["loss_sum"] / jnp.maximum(sums["tokens"], 1.0), aux


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token ``logsumexp(logits) - logits[target]`` in float32. logits ``[..., v]`` -> ``[...]``.

    Computed as ``log(sum(exp(x - m))) - (x[target] - m)`` with ``m`` the row max: the large ``m``
    cancels exactly instead of being added to and subtracted from a small loss (which costs f32
    precision when logits are large).
    """
    logits = logits.astype(jnp.float32)
    shifted = logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    target = jnp.take_along_axis(shifted, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.log(jnp.sum(jnp.exp(shifted), axis=-1)) - target


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                         task_ids: jax.Array | None = None, num_tasks: int = 0):
    """Weighted next-token cross-entropy. logits ``[b, t, v]``, targets int ``[b, t]`` (already
    shifted), weights ``[b, t]``, optional task_ids int ``[b, t]``.

    Returns (``sum(w * ce) / max(sum(w), 1)``, aux) — see the module docstring for aux.
    """
    return _finish(_weighted_sums(token_cross_entropy(logits, targets), weights, task_ids, num_tasks))


def vocab_parallel_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, weights: jax.Array,
                                 mesh: Mesh, *, tied: bool = False, task_ids: jax.Array | None = None,
                                 num_tasks: int = 0, batch_axes: Sequence[str] = ("data", "fsdp"),
                                 vocab_axis: str = "tensor"):
    """``masked_cross_entropy(hidden @ kernel, ...)`` without full-vocabulary logits on any device.

    hidden ``[b, t, d]`` (the LLM's ``decode`` output), kernel ``[d, v]`` (``lm_head/kernel``) or,
    with ``tied=True``, the embedding ``[v, d]``; targets, weights, task_ids ``[b, t]``.

    Under ``jax.shard_map`` the batch is split over ``batch_axes`` and the vocabulary over
    ``vocab_axis``: each device forms its logits slice ``[b_local, t, v / tensor]`` in float32, takes
    the row max with ``pmax`` of the ``stop_gradient``-ed local max (logsumexp does not depend on the
    shift, and ``pmax`` has no differentiation rule, so its input must carry no tangent), the sum of
    exponentials with ``psum``, and the target logit from the device whose slice holds the target (a
    masked local gather, then ``psum``). The loss sums are ``psum``-ed over ``batch_axes`` inside, so
    the result is the same global (loss, aux) as ``masked_cross_entropy``. A kernel sharded on
    ``embed`` (FSDP) is gathered on entry, as any FSDP weight is. Differentiable in hidden and kernel.
    """
    vocab = kernel.shape[0] if tied else kernel.shape[1]
    n_vocab = mesh.shape[vocab_axis]
    if vocab % n_vocab:
        raise ValueError(
            f"vocab size {vocab} is not divisible by the '{vocab_axis}' mesh axis ({n_vocab}): pad the vocabulary "
            f"(embedding rows and lm_head columns) to a multiple of {n_vocab}, as Qwen checkpoints do "
            f"(Qwen2.5 ships 151936 = 128 * 1187 rows for 151665 tokens)")
    batch_axes = tuple(batch_axes)
    n_batch = 1
    for a in batch_axes:
        n_batch *= mesh.shape[a]
    if hidden.shape[0] % n_batch:
        raise ValueError(f"batch {hidden.shape[0]} is not divisible by the {batch_axes} mesh axes ({n_batch} devices)")
    _check_tasks(task_ids, num_tasks)
    if task_ids is None:
        task_ids = jnp.zeros(targets.shape, jnp.int32)  # not read when num_tasks == 0

    def local(h, w, tgt, wts, tids):
        if tied:
            logits = jnp.einsum("btd,vd->btv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)
        else:
            logits = jnp.einsum("btd,dv->btv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)
        v_local = logits.shape[-1]
        shifted = logits - lax.pmax(lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)), vocab_axis)
        log_sum_exp = jnp.log(lax.psum(jnp.sum(jnp.exp(shifted), axis=-1), vocab_axis))
        local_tgt = tgt - lax.axis_index(vocab_axis) * v_local
        here = (local_tgt >= 0) & (local_tgt < v_local)
        picked = jnp.take_along_axis(shifted, jnp.clip(local_tgt, 0, v_local - 1)[..., None], axis=-1)[..., 0]
        target = lax.psum(jnp.where(here, picked, 0.0), vocab_axis)
        sums = _weighted_sums(log_sum_exp - target, wts, tids if num_tasks else None, num_tasks)
        return lax.psum(sums, batch_axes)

    rows = P(batch_axes, None)
    sums = jax.shard_map(
        local, mesh=mesh,
        in_specs=(P(batch_axes, None, None), P(vocab_axis, None) if tied else P(None, vocab_axis), rows, rows, rows),
        out_specs=P(),
    )(hidden, kernel, targets.astype(jnp.int32), weights.astype(jnp.float32), task_ids.astype(jnp.int32))
    return _finish(sums)


def align_responses(x: jax.Array, response_mask: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """Gather the response positions of each row to the front, in order, with static length.

    x ``[b, t, ...]`` (logits, or better the hidden states before the LM head, which is far
    smaller), response_mask ``[b, t]`` (e.g. the weights from ``shift_targets``), ``length`` = r, a
    static int at least the longest response. Returns (``[b, r, ...]``, valid bool ``[b, r]``);
    slots past a row's response hold position 0 and are not valid.

    Self-KD pairs teacher (vision + text question) and student (vision + spoken question) rows whose
    responses are the same tokens at different offsets: gather each side with its own mask, and the
    student's targets with the student's mask, then the k-th slot is the same response token on both
    sides; weight by ``valid_student & valid_teacher``.
    """
    def row(xr, mr):
        (idx,) = jnp.nonzero(mr, size=length, fill_value=0)
        return jnp.take(xr, idx, axis=0)

    gathered = jax.vmap(row)(x, response_mask)
    valid = jnp.arange(length)[None, :] < jnp.sum(response_mask != 0, axis=1, keepdims=True)
    return gathered, valid


def self_kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array, weights: jax.Array,
                 alpha: float, temperature: float = 1.0):
    """Self-KD (arXiv 2503.00059): ``alpha * KL(p_teacher || p_student) + (1 - alpha) * CE_student``.

    student_logits, teacher_logits ``[b, r, v]`` at the same response positions (see
    ``align_responses``), targets int ``[b, r]`` (the response tokens), weights ``[b, r]``. The
    teacher is the same model on the vision + text question; it gets no gradient
    (``lax.stop_gradient``). KL is summed over the vocabulary and weight-averaged over positions
    like the CE, which is the plain student cross-entropy (temperature 1).

    The paper's KD term is ``KL(p_T || p_S)`` on the model's own distributions, with no temperature;
    ``temperature=1`` (the default) is exactly that. A temperature T != 1 softens both
    distributions and scales the KL by ``T**2`` (Hinton et al. 2015), keeping its gradient scale.

    Returns (loss, aux with ``kl``, ``ce`` and ``tokens``).
    """
    t = temperature
    log_ps = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    log_pt = jax.nn.log_softmax(lax.stop_gradient(teacher_logits).astype(jnp.float32) / t, axis=-1)
    pt = jnp.exp(log_pt)
    # where(): a teacher probability of exactly 0 (a -inf logit) contributes 0, not 0 * inf.
    kl_tok = jnp.sum(jnp.where(pt > 0, pt * (log_pt - log_ps), 0.0), axis=-1) * (t * t)
    kl, _ = _finish(_weighted_sums(kl_tok, weights, None, 0))
    ce, ce_aux = masked_cross_entropy(student_logits, targets, weights)
    loss = alpha * kl + (1.0 - alpha) * ce
    return loss, {"kl": kl, "ce": ce, "tokens": ce_aux["tokens"]}
