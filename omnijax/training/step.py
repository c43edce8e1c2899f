"""The train step: ``train_step(state, batch) -> (state, metrics)``, pure, one ``jax.jit``.

- Gradients are taken with respect to the trainable parameters only (frozen leaves are closed over),
  so no frozen gradient is computed, accumulated or normed.
- Gradient accumulation: the global batch is cut into ``microbatches`` strided slices (row r goes
  to microbatch ``r % M``, so every microbatch stays spread over all data-parallel devices) and
  scanned with ``lax.scan``; each microbatch's loss is weighted by its share of the batch's loss
  tokens (``sum(loss_weights)``), so the accumulated gradient is the gradient of the token mean.
- A step whose loss or gradient norm is not finite changes neither the parameters nor the optimizer
  state; ``state.nonfinite`` counts such steps in a row (the trainer stops at its limit) and
  ``state.skipped`` in total. ``state.step`` always advances (the data moved on).
- The step's randomness is ``fold_in(state.rng, state.step)``: a resumed run draws the same.
- Metrics: loss, gradient norm, token counts, skips, learning rates, per-task losses, and whatever metrics the
  loss reports by name in ``aux['means']`` and ``aux['counts']`` (the objective's terms: ``kd/kl``,
  ``ctc/audio/loss``, ...); over microbatches counts add up and means are averaged with the microbatch weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from omnijax.training.optimizer import global_norm, state_param_paths
from omnijax.training.stages import FROZEN, path_str

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 [], updates attempted so far
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2], the run's base key
    nonfinite: jax.Array  # int32 [], non-finite steps in a row
    skipped: jax.Array  # int32 [], non-finite steps in total


def trainable_view(params, trainable):
    """``params`` with frozen leaves replaced by None (an empty subtree)."""
    return jax.tree.map(lambda p, t: p if t else None, params, trainable)


def merge_view(view, params, trainable):
    """Trainable leaves from ``view``, frozen leaves from ``params``."""
    flat_v = iter(jax.tree.leaves(view))
    return jax.tree.map(lambda p, t: next(flat_v) if t else p, params, trainable)


def _sum_aux(key: str) -> bool:
    return key == "tokens" or key.endswith("_sum") or key.endswith("_tokens")


def _combine_aux(auxes: Mapping[str, Any], weights: jax.Array) -> dict[str, Any]:
    """Microbatch aux values ``[M, ...]`` -> one: sums, token counts and the terms' ``counts`` add up, per-task
    means are recomputed from them, anything else (the terms' ``means``) is averaged with the microbatch weights."""
    average = lambda v: jnp.tensordot(weights, v, axes=1)  # noqa: E731
    out = {}
    for k, v in auxes.items():
        if k == "counts":
            out[k] = {name: jnp.sum(x, axis=0) for name, x in v.items()}
        elif k == "means":
            out[k] = {name: average(x) for name, x in v.items()}
        else:
            out[k] = jnp.sum(v, axis=0) if _sum_aux(k) else average(v)
    if "task_loss_sum" in out and "task_tokens" in out:
        out["task_loss"] = out["task_loss_sum"] / jnp.maximum(out["task_tokens"], 1.0)
    return out


def _gradients(loss_fn: LossFn, trainable):
    """``grads_of(params, batch, rng, weight) -> (loss, aux, gradient of weight * loss)``, the gradient over the
    trainable leaves only."""
    def grads_of(params, batch, rng, weight):
        def objective(view):
            loss, aux = loss_fn(merge_view(view, params, trainable), batch, rng)
            return loss * weight, (loss, aux)

        (_, (loss, aux)), g = jax.value_and_grad(objective, has_aux=True)(trainable_view(params, trainable))
        return loss, aux, g

    return grads_of


def _accumulate(grads_of, params, batch, rng, trainable, microbatches: int, mesh: Mesh | None, batch_axes):
    """Loss, aux and gradient of the batch from ``microbatches`` strided slices scanned in turn, each weighted
    by its share of the batch's loss tokens (module docstring)."""
    m = microbatches
    b = batch["input_ids"].shape[0]

    def split(x):
        x = x.reshape(b // m, m, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, batch_axes)))
        return x

    mbs = jax.tree.map(split, dict(batch))
    tokens = jnp.sum(mbs["loss_weights"].reshape(m, -1), axis=1)
    weights = tokens / jnp.maximum(jnp.sum(tokens), 1.0)
    zeros = jax.tree.map(jnp.zeros_like, trainable_view(params, trainable))

    def body(acc, xs):
        mb, w, i = xs
        loss, aux, g = grads_of(params, mb, jax.random.fold_in(rng, i), w)
        return jax.tree.map(jnp.add, acc, g), (loss, aux)

    g, (losses, auxes) = jax.lax.scan(body, zeros, (mbs, weights, jnp.arange(m)))
    return jnp.dot(weights, losses), _combine_aux(auxes, weights), g


def _metrics(loss, aux, grad_norm, ok, batch, state: TrainState, lr_fns, count) -> dict[str, jax.Array]:
    """The step's metrics: loss, gradient norm, tokens, skips, learning rates, per-task losses and every metric
    the objective's terms report (``aux['means']``, ``aux['counts']``)."""
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "tokens": jnp.sum(batch["segment_ids"] != 0),
        "loss_tokens": jnp.sum(batch["loss_weights"]),
        "skipped": ~ok,
        "nonfinite_in_a_row": jnp.where(ok, 0, state.nonfinite + 1),
        **{f"lr/{name}": fn(count) for name, fn in lr_fns.items()},
    }
    metrics.update(aux.get("means", {}))
    metrics.update(aux.get("counts", {}))
    if "task_loss" in aux:
        metrics["task_loss"] = aux["task_loss"]
        metrics["task_tokens"] = aux.get("task_tokens", jnp.zeros_like(aux["task_loss"]))
    return metrics


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, labels, lr_fns: Mapping[str, Callable],
                    *, microbatches: int = 1, mesh: Mesh | None = None, batch_axes=("data", "fsdp")):
    """The pure train step of a stage (module docstring).

    loss_fn(params, batch, rng) -> (scalar loss, aux dict); ``aux`` may hold ``tokens``,
    ``task_loss`` / ``task_loss_sum`` / ``task_tokens`` (``omnijax.training.losses``), and the objective's
    metrics by name in ``means`` and ``counts`` (``omnijax.training.objective``), all reported as metrics.
    labels: the stage's label tree (static). lr_fns: ``{label: schedule}``, reported as ``lr/<label>`` at the
    optimizer's update count.
    """
    trainable = jax.tree.map(lambda label: label != FROZEN, labels)
    grads_of = _gradients(loss_fn, trainable)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if microbatches == 1:
            loss, aux, g = grads_of(state.params, batch, rng, 1.0)
        else:
            loss, aux, g = _accumulate(grads_of, state.params, batch, rng, trainable, microbatches, mesh, batch_axes)
        grad_norm = global_norm(g)  # g holds trainable leaves only: the same norm the clip uses
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Frozen positions get zeros: set_to_zero drops them unread, so XLA never materialises them.
        full = merge_view(g, jax.tree.map(jnp.zeros_like, state.params), trainable)
        updates, opt_state = tx.update(full, state.opt_state, state.params)
        params = jax.tree.map(
            lambda p, u, t: jnp.where(ok, (p + u).astype(p.dtype), p) if t else p,
            state.params, updates, trainable)
        opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), opt_state, state.opt_state)
        count = state.step - state.skipped  # updates applied before this one: the schedules' step
        metrics = _metrics(loss, aux, grad_norm, ok, batch, state, lr_fns, count)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            nonfinite=metrics["nonfinite_in_a_row"],
                            skipped=state.skipped + jnp.where(ok, 0, 1).astype(state.skipped.dtype))
        return new, metrics

    return train_step


def state_shardings(abstract_state: TrainState, param_shardings, mesh: Mesh) -> TrainState:
    """Shardings of a train state: params as given, each optimizer-state leaf that mirrors a
    parameter (Adam's ``mu``, ``nu``) like that parameter, everything else replicated."""
    flat = {path_str(p): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]}
    replicated = NamedSharding(mesh, P())
    owners = state_param_paths(abstract_state.opt_state, set(flat))
    opt_treedef = jax.tree.structure(abstract_state.opt_state)
    opt = jax.tree.unflatten(opt_treedef, [flat[o] if o is not None and flat[o] is not None and
                                           getattr(leaf, "ndim", 0) else replicated for o, leaf in owners])
    return TrainState(step=replicated, params=param_shardings, opt_state=opt, rng=replicated,
                      nonfinite=replicated, skipped=replicated)
