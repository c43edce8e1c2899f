"""Experiments as Python objects: run a recipe in-process and get its tables and curves back, compare arms,
ask the trained model questions. What a notebook imports (the CLIs are thin wrappers over it)::

    from omnijax import experiment
    base = experiment.run_recipe("experiments/ola/recipe.py:tiny", "runs/base", corpus="workdirs/omni-synth")
    arm = experiment.run_recipe("experiments/ola/recipe.py:tiny", "runs/no_3a", corpus="workdirs/omni-synth",
                                overrides={"3a": {"num_steps": 1}}, seed=1)
    base.eval_table()                        # stages x metrics (+ the chance row), as W/eval.md
    base.curves()                            # long frame: stage, step, metric, value (every metrics.jsonl)
    experiment.compare({"base": base, "no 3a": arm})     # arms x metrics at the last stage
    experiment.plot_stages({"base": base, "no 3a": arm}, metrics=["image_qa/accuracy"])
    experiment.load_model(base.stage_dir("3b")).ask("What colour is the circle?", image=pil_image)
    mixed = experiment.run_recipe(mixing.one_stage("experiments/ola/recipe.py:tiny"), "runs/direct", ...)
    # omnijax.mixing: the recipe's data in one stage (Ola Fig. 3's direct mixing; balance=True: balanced sampling)

Nothing here reads environment variables: the omni-synth folder (``corpus``), the HF checkpoints
(``hf_root``) and the user's converted data (``data_root``) are arguments -- the roots a stage config's
``'@corpus/...'``, ``'@hf/...'`` and ``'@data/...'`` paths start at (``omnijax.training.config.ROOTS``, whose
defaults they keep). Runs are resumable: finished, evaluated stages are skipped, so re-executing a notebook
cell costs nothing; a workdir holds one arm and one seed (``omnijax.recipe.check_settings``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

from omnijax import recipe as recipe_lib
from omnijax.eval.plots import plot_curves, plot_stages
from omnijax.inference.chat import Model
from omnijax.training.metrics import METRICS_FILE

USER_ERRORS = recipe_lib.USER_ERRORS  # what a user's mistake raises (the CLIs print these in one line and exit 2)

__all__ = ["RecipeResult", "compare", "evaluate", "load_model", "plot_curves", "plot_stages", "run_recipe"]


@dataclasses.dataclass
class RecipeResult:
    """A recipe's run in ``workdir``: ``rows`` says what each stage did (``status``: trained, done before,
    preempted; ``seconds``; ``metrics`` when evaluated)."""

    workdir: str
    recipe: recipe_lib.Recipe
    rows: list[dict]

    @property
    def stages(self) -> list[str]:
        return self.recipe.names

    @property
    def complete(self) -> bool:
        """Every stage asked for finished."""
        return recipe_lib.complete(self.rows)

    def stage_dir(self, name: str) -> str:
        if name not in self.stages:
            raise ValueError(f"{name!r} is not a stage of {self.recipe.name}; stages: {', '.join(self.stages)}")
        return os.path.join(self.workdir, name)

    def eval_table(self, chance: bool = True):
        """``pandas.DataFrame`` indexed by stage, one column per metric (rates as fractions: 0.89 is 89%), as
        ``W/eval.json`` holds them; with ``chance``, a last row ``'chance'`` (``omnijax.evaluate.chance_levels``)."""
        import pandas as pd

        from omnijax.eval import report

        rows, levels = report.read_report(self.workdir)
        order = {name: i for i, name in enumerate(self.stages)}
        rows = sorted(rows, key=lambda r: order.get(r[0], len(order)))
        if chance and levels:
            rows = [*rows, ("chance", levels)]
        columns = list(dict.fromkeys(m for _, values in rows for m in values))
        frame = pd.DataFrame([values for _, values in rows], index=[s for s, _ in rows], columns=columns)
        frame.index.name = "stage"
        return frame

    def curves(self, metrics: Sequence[str] | None = None):
        """A long ``pandas.DataFrame`` (``stage``, ``step``, ``metric``, ``value``): every numeric value of every
        row of each stage's ``metrics.jsonl`` (one row per logged step and metric), stages in recipe order;
        ``metrics`` keeps only those."""
        import pandas as pd

        records = []
        for name in self.stages:
            path = os.path.join(self.workdir, name, METRICS_FILE)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                for line in f:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    for key, value in row.items():
                        if key == "step" or isinstance(value, bool) or (metrics is not None and key not in metrics):
                            continue
                        if value is None or isinstance(value, int | float):
                            records.append((name, row["step"], key, float("nan") if value is None else value))
        return pd.DataFrame(records, columns=["stage", "step", "metric", "value"])

    def model(self, stage: str | None = None, **kwargs) -> Model:
        """The model of ``stage`` (default: the last) to ask questions (``load_model``)."""
        return Model(self.stage_dir(stage or self.stages[-1]), **kwargs)


def run_recipe(recipe, workdir: str, *, corpus: str | None = None, hf_root: str | None = None,
               data_root: str | None = None, overrides: Mapping[str, Mapping] | None = None,
               steps: int | None = None, seed: int | None = None, evaluate: bool = True,
               eval_limit: int | None = None, progress: bool | None = True, only: Sequence[str] = (),
               eval_tasks: Sequence[str] | Mapping[str, Sequence[str]] | None = None, prepare=None, log=print,
               compilation_cache: str | None = None) -> RecipeResult:
    """Train and evaluate a recipe's stages in ``workdir`` (stage NAME in ``workdir/NAME``), in this process.

    ``recipe``: a spec (``"experiments/ola/recipe.py:tiny"``), a loaded ``omnijax.recipe.Recipe``, or a list of
    ``(stage name, ml_collections.ConfigDict)`` (``omnijax.recipe.from_stages``: evaluated on ``eval_tasks``
    -- after every stage, or ``{stage name: tasks}`` --, default the evaluable tasks it trains on, from the
    ``corpus``; ``prepare(preset, roots)`` builds data first, e.g. ``experiments.common.prepare_synth``).
    ``corpus``, ``hf_root``, ``data_root``: the roots (default ``ROOTS``'s). ``overrides``: ``{stage name or '*':
    {dotted config key: value}}``, e.g.
    ``{"*": {"optimizer.clip_norm": 0.5}, "3b": {"num_steps": 300}}``. ``steps``: every stage this many steps.
    ``seed``: every stage's parameter init and data order (two seeds are two samples of one configuration).
    ``evaluate``/``eval_limit``: evaluate each stage on that many held-out examples per task. ``progress``: a
    progress bar per stage (None: when stderr is a terminal). ``compilation_cache``: a folder for JAX's
    persistent compilation cache."""
    if isinstance(recipe, str):
        recipe = recipe_lib.load_recipe(recipe)
    elif isinstance(recipe, list | tuple):
        recipe = recipe_lib.from_stages(recipe, eval_tasks=eval_tasks, prepare=prepare)
    elif not isinstance(recipe, recipe_lib.Recipe):
        raise ValueError(f"recipe is a {type(recipe).__name__}; give a spec 'FILE:preset', an omnijax.recipe.Recipe "
                         "or a list of (stage name, ConfigDict)")
    if eval_tasks is not None:
        recipe = dataclasses.replace(recipe, eval_tasks=recipe_lib.eval_plan(eval_tasks))
    if compilation_cache:
        recipe_lib.use_compilation_cache(compilation_cache)
    roots = {"corpus": corpus, "hf": hf_root, "data": data_root}
    rows = recipe_lib.run(recipe, workdir, only=tuple(only), steps=steps, evaluate=evaluate, eval_limit=eval_limit,
                          log=log, roots=roots, overrides=overrides, seed=seed, progress=progress)
    return RecipeResult(os.path.abspath(workdir), recipe, rows)


def _at_stage(result: RecipeResult, stage: str | None) -> dict:
    table = result.eval_table(chance=False)
    if table.empty:
        raise ValueError(f"{result.workdir} has no evaluated stage (run it with evaluate=True)")
    name = stage or table.index[-1]
    if name not in table.index:
        raise ValueError(f"stage {name!r} of {result.workdir} was not evaluated; evaluated: {', '.join(table.index)}")
    return table.loc[name].to_dict()


def compare(arms: Mapping[str, RecipeResult | Sequence[RecipeResult]], stage: str | None = None,
            metrics: Sequence[str] | None = None):
    """Arms x metrics at ``stage`` (default: each arm's last evaluated stage). An arm given as a list of runs
    (seeds) gives its mean, standard deviation (ddof 1) and count: the columns are then ``(metric, 'mean' |
    'std' | 'n')``."""
    import numpy as np
    import pandas as pd

    runs = {arm: list(r) if isinstance(r, list | tuple) else [r] for arm, r in arms.items()}
    values = {arm: [_at_stage(r, stage) for r in rs] for arm, rs in runs.items()}
    names = list(metrics or dict.fromkeys(m for vs in values.values() for v in vs for m in v))
    if not any(isinstance(r, list | tuple) for r in arms.values()):
        frame = pd.DataFrame([[v[0].get(m) for m in names] for v in values.values()], index=list(arms),
                             columns=names, dtype=float)
    else:
        columns = pd.MultiIndex.from_product([names, ["mean", "std", "n"]], names=["metric", "stat"])
        data = []
        for vs in values.values():
            row = []
            for m in names:
                x = np.array([v.get(m) for v in vs if v.get(m) is not None], float)
                row += [x.mean() if x.size else np.nan, x.std(ddof=1) if x.size > 1 else np.nan, x.size]
            data.append(row)
        frame = pd.DataFrame(data, index=list(arms), columns=columns)
    frame.index.name = "arm"
    return frame


def load_model(path: str, **kwargs) -> Model:
    """A trained model to ask questions: a finished stage workdir, an omnijax model directory or a HF
    directory (``omnijax.inference.chat.Model``: ``.ask(prompt, image=, audio=, video=)``, ``.ask_many``). A stage
    workdir whose final checkpoint cannot be read gives the newest step that can, saying so in one line (the
    unreadable step is moved to ``damaged_checkpoints/``)."""
    return Model(path, **kwargs)


def evaluate(path: str, data: str, tasks: Sequence[str] | None = None, limit: int | None = None, log=print):
    """The model at ``path`` on the held-out ``tasks`` of ``data`` (``omnijax.evaluate``; default: every task
    the folder holds that the evaluator scores unasked) -> ``pandas.DataFrame``: a row named after the model,
    and the ``'chance'`` row."""
    import pandas as pd

    from omnijax import evaluate as evaluator

    if tasks is None:
        tasks = evaluator.default_tasks(data)
    metrics = evaluator.evaluate(path, data, tuple(tasks), limit=limit, log=log)
    chance = evaluator.chance_levels(tuple(tasks), data, limit)
    name = os.path.basename(os.path.normpath(path))
    return pd.DataFrame([metrics, chance], index=[name, "chance"], columns=list(metrics))
