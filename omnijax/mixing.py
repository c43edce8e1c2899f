"""A recipe's stages as one stage: the baselines of Ola's Fig. 3 (arXiv 2502.04328), "direct mixing" (all of the
recipe's data merged and trained in a single stage) and "balanced sampling" (the same stage, its sources upsampled
to equal shares), set against the progressive recipe at equal steps::

    from omnijax import experiment, mixing
    direct = mixing.one_stage("experiments/ola/recipe.py:tiny")                 # a Recipe of one stage, 'mix'
    balanced = mixing.one_stage("experiments/ola/recipe.py:tiny", balance=True)
    experiment.run_recipe(direct, "runs/direct", corpus="workdirs/omni-synth", seed=0)

The stage is the recipe's stages merged; what differs between them is merged field by field, and any other field
that differs is an error (one stage has one model, batch, objective, ...):

- ``num_steps``: the sum of the stages' steps.
- ``init_from``: the first stage's (for Ola: the pretrained LLM and towers, both connectors fresh).
- ``data.sources``: the union of the stages' sources, in order of first appearance. A source's weight is the
  share of the whole recipe's examples it gives, ``sum over stages (stage steps x its share of that stage's
  mixture) / total steps``, so the one stage draws each source as often as the recipe does (in examples: a row
  packs several, as in every stage). ``balance=True``: every source ``1 / n`` -- the rarer ones upsampled (Grain's
  mixture repeats a source's shards as often as it draws from it).
- ``trainable``: every parameter that any stage trains, at the schedule of the last stage that trains it (its
  warmup and decay then span the one stage); the others frozen. A stage trains a tower or connector only where
  its mixture holds the media that reach it (``READS``). One rule per parameter group (``llm/.*``) where
  the whole group agrees, one per parameter where it does not, read from the model's abstract shapes.
- ``media``: each kind's slots the most any stage gives, so any row a stage packs fits.
- evaluated on the union of the stages' eval tasks (``Recipe.eval_tasks``).

``overrides`` (``{stage name or '*': {dotted key: value}}``, as ``omnijax.experiment.run_recipe`` takes them) change
the stages before they are merged: the progressive arm and its one-stage baselines then run the same shortened
stages.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import jax
import ml_collections as mlc

from omnijax import recipe as recipe_lib

MERGED = ("name", "num_steps", "init_from", "data", "task_names", "num_tasks", "trainable", "media")
# The media kinds whose rows reach each of the omni model's towers and connectors: a stage whose mixture holds none
# of them (``media_slots`` gives them no slots) does not train the group, whatever its rule says -- no gradient
# reaches it (Ola's 1b trains '.*', the audio tower among them, on images and text only).
READS = {"vision": ("image", "video"), "vision_connector": ("image", "video"), "audio": ("audio",),
         "audio_connector": ("audio",)}


def one_stage(recipe: str | recipe_lib.Recipe, *, balance: bool = False, name: str = "mix",
              overrides: Mapping[str, Mapping] | None = None) -> recipe_lib.Recipe:
    """``recipe`` (a spec ``FILE:preset`` or a ``Recipe``) as a recipe of one stage, ``name``, that trains on all
    of its data at once (module docstring); ``balance``: its sources in equal shares."""
    if isinstance(recipe, str):
        recipe = recipe_lib.load_recipe(recipe)
    recipe_lib.check_selection(recipe, (), overrides)
    configs = []
    for i, stage in enumerate(recipe.names):
        c = recipe_lib.load_stage(recipe, i)
        recipe_lib.apply_overrides(c, stage, overrides)
        configs.append(c)
    _check_alike(configs, recipe.names)
    c = copy.deepcopy(configs[-1])
    c.name = name
    c.num_steps = sum(int(s.num_steps) for s in configs)
    with c.ignore_type():
        c.init_from = configs[0].init_from
        c.trainable = trainable(configs, recipe.names)
    c.data.sources = mixture(configs, balance=balance)
    c.task_names = tuple(s["name"] for s in c.data.sources)
    c.num_tasks = len(c.data.sources)
    c.media = media(configs)
    kind = "balanced" if balance else "direct"
    return recipe_lib.from_stages([(name, c)], name=f"{recipe.name} as one stage ({kind})",
                                  eval_tasks=_eval_tasks(recipe), eval_data=recipe.eval_data, prepare=recipe.prepare)


def _check_alike(configs: list[mlc.ConfigDict], names: list[str]) -> None:
    """Every field but the merged ones (and ``data.sources``) is the same in every stage."""
    last = configs[-1].to_dict()
    for c, stage in zip(configs, names):
        here = c.to_dict()
        for key in sorted(set(here) | set(last)):
            a, b = here.get(key), last.get(key)
            if key == "data":
                a, b = ({k: v for k, v in d.items() if k != "sources"} for d in (a, b))
            elif key in MERGED:
                continue
            if a != b:
                raise ValueError(f"stages {stage!r} and {names[-1]!r} differ in c.{key} ({a!r} vs {b!r}); one stage "
                                 f"has one {key}: make them equal with overrides={{'*': {{'{key}...': ...}}}}")


def mixture(configs: list[mlc.ConfigDict], *, balance: bool = False) -> list[dict]:
    """The stages' sources as one mixture: each weighted by its share of the recipe's examples (steps x share of
    its stage's mixture, over the total steps), or ``balance``: 1 / n each."""
    total = sum(int(c.num_steps) for c in configs)
    merged: dict[str, dict] = {}
    for c in configs:
        sources = [dict(s) for s in c.data.sources]
        stage_weight = sum(float(s["weight"]) for s in sources)
        for s in sources:
            share = int(c.num_steps) * float(s["weight"]) / stage_weight / total
            kept = merged.setdefault(s["name"], dict(s, weight=0.0))
            differ = sorted(k for k in set(s) | set(kept) if k != "weight" and s.get(k) != kept.get(k))
            if differ:
                raise ValueError(f"source {s['name']!r} differs between stages in {differ} ({c.name!r}: "
                                 f"{[s.get(k) for k in differ]}, before: {[kept.get(k) for k in differ]}); rename one")
            kept["weight"] += share
    if balance:
        for s in merged.values():
            s["weight"] = 1.0 / len(merged)
    return list(merged.values())


def trainable(configs: list[mlc.ConfigDict], names: list[str]) -> list:
    """``c.trainable`` of the one stage: each parameter at the schedule of the last stage that trains it, frozen if
    none does; a rule per group where the group agrees, else per parameter."""
    from omnijax.training.config import media_slots
    from omnijax.training.stages import FROZEN, assign_labels, param_paths
    from omnijax.training.task import build_task

    params = build_task(configs[-1], None).abstract_params
    paths = param_paths(params)
    chosen: dict[str, dict | None] = dict.fromkeys(paths)
    for c, stage in zip(configs, names):
        labels, schedules = assign_labels(params, c.trainable, stage)
        held = {k.removesuffix("_slots") for k, n in media_slots(c).items() if n}
        for path, label in zip(paths, jax.tree.leaves(labels), strict=True):
            group = path.split("/")[0]
            reached = group not in READS or bool(held.intersection(READS[group]))
            if label != FROZEN and reached:
                chosen[path] = dict(schedules[label])
    rules = []
    for group in dict.fromkeys(p.split("/")[0] for p in paths):
        members = [p for p in paths if p.split("/")[0] == group]
        if all(chosen[p] == chosen[members[0]] for p in members):
            rules.append((f"{group}/.*", chosen[members[0]]))
        else:
            rules += [(re.escape(p), chosen[p]) for p in members]
    return rules


def media(configs: list[mlc.ConfigDict]) -> mlc.ConfigDict:
    """``c.media`` of the one stage: each slot count the most any stage gives, ``always`` their union."""
    out = dict(configs[-1].media)
    for c in configs:
        for key, value in c.media.items():
            out[key] = tuple(dict.fromkeys((*out[key], *value))) if key == "always" else max(out.get(key, 0), value)
    return mlc.ConfigDict(out)


def _eval_tasks(recipe: recipe_lib.Recipe):
    """The one stage's eval tasks: the union of the stages' (in order of first appearance), or the recipe's
    default (``None``: the evaluable tasks it trains on)."""
    if not isinstance(recipe.eval_tasks, Mapping):
        return recipe.eval_tasks
    return tuple(dict.fromkeys(t for stage in recipe.names for t in recipe.eval_tasks.get(stage, ())))
