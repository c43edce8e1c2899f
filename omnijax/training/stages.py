"""Stages: which parameters train, with which learning-rate schedule, and which are frozen.

A stage lists rules ``[(regex, schedule | None), ...]`` over '/'-joined parameter paths
(``llm/layers/attn/q_proj/kernel``). The first rule whose regex ``fullmatch``-es a path decides it;
``None`` freezes it. Every parameter must be matched and every rule must match something, so a typo
in a group name is an error, not a silently frozen (or silently trained) tower::

    sched = dict(lr=1e-3, warmup_steps=10, decay='cosine')
    c.trainable = [('(vision|audio)_connector/.*', sched), ('.*', None)]

A schedule is a small dict (or ConfigDict): ``lr`` (peak), ``warmup_steps`` or ``warmup_fraction``
(linear from 0), ``decay`` (``'cosine'``, ``'linear'`` or ``'constant'`` after warmup), ``end_factor``
(final lr as a fraction of the peak, default 0), ``steps`` (schedule length, default the stage's).

Each trainable rule is an optimizer *label* named after its regex (``'llm/.*'`` -> ``llm``); all
frozen rules share the label ``frozen``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

FROZEN = "frozen"
SCHEDULE_KEYS = {"lr", "warmup_steps", "warmup_fraction", "decay", "end_factor", "steps"}
DECAYS = ("cosine", "linear", "constant")
# Parameters weight decay never applies to: biases, norm scales (RMSNorm and LayerNorm both name theirs
# 'scale'), and the learned layout vectors of ``mm_embed``.
DEFAULT_NO_DECAY = (r".*/bias", r".*/scale", r"mm_embed/.*")


class StageConfigError(ValueError):
    """A stage config that cannot run; the message names the thing and the fix."""


def path_str(path) -> str:
    """A ``jax.tree_util`` key path as ``'a/b/c'``."""
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def param_paths(params) -> list[str]:
    """Every parameter's '/'-joined path, in tree order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def groups_of(params) -> list[str]:
    """The top-level parameter groups (``llm``, ``vision``, ...)."""
    return list(params.keys())


def _as_dict(spec) -> dict:
    return dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)


def label_name(regex: str) -> str:
    """``'llm/.*'`` -> ``'llm'``; ``'(vision|audio)_connector/.*'`` -> ``'(vision|audio)_connector'``;
    ``'.*'`` -> ``'all'``."""
    if regex in (".*", ".+"):
        return "all"
    name = regex
    for suffix in ("/.*", ".*"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return name


def check_rules(rules: Sequence, stage: str = "stage") -> list[tuple[str, dict | None]]:
    """Rules as ``[(regex, schedule dict | None)]``, with their form checked (not yet the params)."""
    out = []
    if not rules:
        raise StageConfigError(f"stage {stage!r}: no trainable rules; set e.g. c.trainable = [('.*', sched)]")
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise StageConfigError(f"stage {stage!r}: rule {i} is {rule!r}; a rule is (regex, schedule dict or None)")
        regex, sched = rule
        try:
            re.compile(regex)
        except re.error as e:
            raise StageConfigError(f"stage {stage!r}: rule {regex!r} is not a valid regex ({e})") from None
        if sched is not None:
            sched = _as_dict(sched)
            unknown = sorted(set(sched) - SCHEDULE_KEYS)
            if unknown or "lr" not in sched:
                raise StageConfigError(
                    f"stage {stage!r}: rule {regex!r} has schedule {sched}; a schedule needs 'lr' and may have "
                    f"{sorted(SCHEDULE_KEYS - {'lr'})}" + (f" (unknown: {unknown})" if unknown else ""))
            if sched.get("decay", "cosine") not in DECAYS:
                raise StageConfigError(f"stage {stage!r}: rule {regex!r}: decay {sched['decay']!r} is not one of "
                                       f"{DECAYS}")
            if "warmup_steps" in sched and "warmup_fraction" in sched:
                raise StageConfigError(f"stage {stage!r}: rule {regex!r} sets both warmup_steps and "
                                       "warmup_fraction; keep one")
            if label_name(regex) == FROZEN:
                raise StageConfigError(f"stage {stage!r}: rule {regex!r}: the label {FROZEN!r} is reserved for "
                                       "frozen rules; write the regex differently")
        out.append((regex, sched))
    return out


def assign_labels(params, rules: Sequence, stage: str = "stage"):
    """Label every parameter by the first rule that matches its path.

    Returns (labels: a tree like ``params`` of label strings, schedules: ``{label: schedule dict}``
    for the trainable labels in rule order). Raises ``StageConfigError`` for a parameter no rule
    matches (a few are listed) and for a rule that matches no parameter (the groups are listed).
    """
    rules = check_rules(rules, stage)
    compiled = [re.compile(r) for r, _ in rules]
    names, seen = [], set()
    for i, (regex, sched) in enumerate(rules):
        name = FROZEN if sched is None else label_name(regex)
        if sched is not None and name in seen:
            name = f"{name}#{i}"
        seen.add(name)
        names.append(name)
    used = [0] * len(rules)
    unmatched = []

    def label(path, _):
        p = path_str(path)
        for i, rx in enumerate(compiled):
            if rx.fullmatch(p):
                used[i] += 1
                return names[i]
        unmatched.append(p)
        return None

    labels = jax.tree_util.tree_map_with_path(label, params)
    groups = ", ".join(groups_of(params))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f", ... ({len(unmatched)} in all)" if len(unmatched) > 5 else "")
        raise StageConfigError(f"stage {stage!r}: no rule matches these parameters: {shown}; add a rule for them "
                               f"(e.g. ('.*', None) last to freeze the rest); groups are: {groups}")
    for (regex, _), n in zip(rules, used):
        if not n:
            raise StageConfigError(f"stage {stage!r}: rule {regex!r} matches no parameter (or only parameters an "
                                   f"earlier rule took); groups are: {groups}")
    schedules = {name: sched for name, (_, sched) in zip(names, rules) if sched is not None}
    return labels, schedules


def make_schedule(spec: Mapping[str, Any], stage_steps: int) -> optax.Schedule:
    """An optax schedule from a schedule dict (module docstring)."""
    spec = _as_dict(spec)
    lr = float(spec["lr"])
    steps = int(spec.get("steps") or stage_steps)
    if "warmup_fraction" in spec:
        warmup = int(round(float(spec["warmup_fraction"]) * steps))
    else:
        warmup = int(spec.get("warmup_steps", 0))
    warmup = min(warmup, steps)
    decay = spec.get("decay", "cosine")
    end = lr * float(spec.get("end_factor", 0.0))
    rest = max(steps - warmup, 1)
    if decay == "constant":
        after = optax.constant_schedule(lr)
    elif decay == "linear":
        after = optax.linear_schedule(lr, end, rest)
    else:
        after = optax.cosine_decay_schedule(lr, rest, alpha=end / lr if lr else 0.0)
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(params, no_decay: Sequence[str] = DEFAULT_NO_DECAY):
    """A tree of bools like ``params``: True where weight decay applies."""
    compiled = [re.compile(r) for r in no_decay]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(rx.fullmatch(path_str(path)) for rx in compiled), params)
