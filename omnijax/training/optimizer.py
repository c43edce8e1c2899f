"""The stage's optimizer: AdamW per trainable rule, nothing at all for frozen parameters.

    chain(clip_by_trainable_global_norm(max_norm),           # one norm over every trainable leaf
          multi_transform({'frozen': set_to_zero(),            # no state, zero updates
                           'llm': adamw(sched_llm, ...),       # one entry per trainable rule,
                           'llm/no_decay': adam(sched_llm)},   # split by the weight-decay mask
                          labels))

The clip sits in front of ``multi_transform`` so its norm is global across labels (clipping inside
each label's chain would clip every label by its own norm) and reads only trainable leaves: frozen
gradients never enter the norm, the clip, or the optimizer state (MaxText once computed the norm
over frozen gradients too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from omnijax.training.stages import FROZEN, make_schedule, path_str

NO_DECAY = "/no_decay"


def global_norm(tree) -> jax.Array:
    """L2 norm over every leaf of ``tree``, accumulated in float32."""
    return jnp.sqrt(sum((jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)),
                        jnp.zeros((), jnp.float32)))


def trainable_global_norm(grads, trainable) -> jax.Array:
    """L2 norm over the leaves whose ``trainable`` flag (a tree of bools like ``grads``) is True."""
    return global_norm([g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(trainable)) if t])


def clip_by_trainable_global_norm(max_norm: float | None, trainable) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with the norm taken over trainable leaves only; frozen leaves
    pass through untouched (``set_to_zero`` discards them next). ``max_norm=None``: no clipping."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        if max_norm is None:
            return updates, state
        norm = trainable_global_norm(updates, trainable)
        scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        out = jax.tree.map(lambda g, t: (g * scale).astype(g.dtype) if t else g, updates, trainable)
        return out, state

    return optax.GradientTransformation(init_fn, update_fn)


def optimizer_labels(labels, decay_mask, weight_decay: float):
    """Split each trainable label by the decay mask: ``llm`` (decayed) and ``llm/no_decay``."""
    return jax.tree.map(
        lambda label, decay: label if label == FROZEN or decay or not weight_decay else label + NO_DECAY,
        labels, decay_mask)


def build_optimizer(labels, schedules: Mapping[str, Any], decay_mask, stage_steps: int, *,
                    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                    clip_norm: float | None = 1.0) -> tuple[optax.GradientTransformation, dict[str, Callable]]:
    """The stage optimizer (module docstring) and ``{label: lr schedule}`` of its trainable rules.

    labels: tree of rule labels (``stages.assign_labels``); schedules: ``{label: schedule dict}``;
    decay_mask: tree of bools, True where weight decay applies.
    """
    lr_fns = {name: make_schedule(spec, stage_steps) for name, spec in schedules.items()}
    opt_labels = optimizer_labels(labels, decay_mask, weight_decay)
    present = set(jax.tree.leaves(opt_labels))
    transforms = {}
    for label in present:
        if label == FROZEN:
            transforms[label] = optax.set_to_zero()
            continue
        name = label.removesuffix(NO_DECAY)
        decayed = weight_decay and not label.endswith(NO_DECAY)
        transforms[label] = (optax.adamw(lr_fns[name], b1, b2, eps, weight_decay=weight_decay) if decayed
                             else optax.adam(lr_fns[name], b1, b2, eps))
    trainable = jax.tree.map(lambda label: label != FROZEN, labels)
    tx = optax.chain(clip_by_trainable_global_norm(clip_norm, trainable),
                     optax.multi_transform(transforms, opt_labels))
    return tx, lr_fns


def state_param_paths(opt_state, param_paths: set[str]) -> list[tuple[str | None, Any]]:
    """For each leaf of an optimizer state: the parameter path it mirrors (Adam's ``mu``/``nu``
    leaves sit at their parameter's dict path) or None (step counts and other bookkeeping)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        owner = None
        for i in range(len(keys)):
            if "/".join(keys[i:]) in param_paths:
                owner = "/".join(keys[i:])
                break
        out.append((owner, leaf))
    return out


def nbytes(x) -> int:
    return int(x.size) * jnp.dtype(x.dtype).itemsize


def group_table(params, labels, opt_state) -> list[dict]:
    """One row per top-level group: parameter count and bytes, trainable (``yes``/``no``/``partly``),
    optimizer-state bytes attributed to the group's parameters. ``opt_state`` may be abstract."""
    paths = {path_str(p): (x, lab) for (p, x), lab in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                                          jax.tree.leaves(labels))}
    rows = {}
    for path, (x, label) in paths.items():
        row = rows.setdefault(path.split("/")[0], {"params": 0, "param_bytes": 0, "trainable_params": 0,
                                                   "opt_state_bytes": 0})
        row["params"] += int(x.size)
        row["param_bytes"] += nbytes(x)
        row["trainable_params"] += int(x.size) if label != FROZEN else 0
    other = 0
    for owner, leaf in state_param_paths(opt_state, set(paths)):
        if owner is None:
            other += nbytes(leaf)
        else:
            rows[owner.split("/")[0]]["opt_state_bytes"] += nbytes(leaf)
    table = []
    for group, row in rows.items():
        t = row.pop("trainable_params")
        table.append({"group": group, **row,
                      "trainable": "yes" if t == row["params"] else ("no" if t == 0 else "partly"),
                      "trainable_params": t})
    table.append({"group": "(optimizer bookkeeping)", "params": 0, "param_bytes": 0, "opt_state_bytes": other,
                  "trainable": "-", "trainable_params": 0})
    return table
