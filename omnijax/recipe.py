"""Run a paper's recipe: its stages in order, each initialised from the previous, each evaluated.

    python -m omnijax.recipe --recipe experiments/ola/recipe.py:tiny --workdir W [--only 1b,2]
           [--steps N] [--seed S] [--no-eval] [--eval-limit 50] [--corpus DIR] [--hf-root DIR] [--data-root DIR]

The same run from Python (a notebook): ``omnijax.experiment.run_recipe``, which wraps this module's ``run``
as the CLI does.

A recipe file has ``STAGES = {preset: ((name, stage file), ...)}`` (stage files are read like
``omnijax.train --config FILE:preset``; knobs after the preset reach every stage, ``--recipe
experiments/ola/recipe.py:tiny,audio=dual``), and optionally ``EVAL = {preset: (eval task, ...)}`` (after every
stage) or ``{preset: {stage name: (eval task, ...)}}`` (after the stages named, on their tasks),
``eval_data(preset)`` (the ``omnijax.evaluate --data`` folder, e.g. ``'@corpus'``) and ``prepare(preset,
roots)`` (data to build before the first stage). A recipe can also be
built in memory (``from_stages``): a list of ``(name, ml_collections.ConfigDict)``. Stage ``name`` trains in
``W/<name>``; its config's ``init_from`` may name ``'@previous'`` (the stage before it) or ``'@stage:NAME'``
(any earlier stage of the recipe), and its paths may start at the roots ``@corpus``, ``@hf``, ``@data``
(``omnijax.training.config.ROOTS``), resolved from the run's ``roots``.

Resumable: a stage whose workdir holds its final checkpoint is skipped, an interrupted one resumes
from its newest checkpoint, and a stage already evaluated (a row in ``W/eval.json``) is not evaluated
again. A stage's final checkpoint is read whole before a later stage starts from it or before it is evaluated
(``checkpointing.verify_final``): a damaged one is named in one line and moved to ``W/<name>/damaged_checkpoints/``,
and the stage finishes again from its newest readable checkpoint first; none readable is a ``CheckpointError``
(the CLI exits 2). ``W/recipe.json`` records what shaped the run (seed, steps, overrides); resuming it with other
values is refused (one workdir per arm and seed). After each stage the recipe evaluates it on the
held-out split (``omnijax.evaluate``) and rewrites ``W/eval.md`` / ``W/eval.json``: one row per stage, as
in Ola's Table 5 (and writes the question accuracies per template to ``W/<name>/eval_by_template.json``).
``steps`` runs every stage for N steps (smoke tests); ``only`` runs the named stages (the stages they
start from must be complete).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import ml_collections as mlc

from data_pipelines.pipeline_config import BadRecordsError
from omnijax import errors
from omnijax.training.checkpointing import CheckpointError, latest_step, verify_final
from omnijax.training.config import set_field
from omnijax.training.stages import StageConfigError

# What a user's mistake raises (the CLIs print these in one line and exit 2).
USER_ERRORS = (FileNotFoundError, ValueError, StageConfigError, CheckpointError, BadRecordsError)  # damaged files too

SETTINGS_FILE = "recipe.json"  # in the recipe's workdir: what shaped the run (seed, steps, overrides)
EVAL_BY_TEMPLATE = "eval_by_template.json"  # in the stage workdir: accuracy per question template
ALL_STAGES = "*"  # an overrides key for every stage


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str  # the spec (FILE:preset) or a name given to an in-memory recipe
    preset: str
    stages: tuple[tuple[str, str | mlc.ConfigDict], ...]  # (name, stage file path or the stage's config)
    # after every stage, or {stage: tasks}; None: after every stage, those the stages train on that the evaluator
    # scores unasked (``omnijax.evaluate.default_tasks``)
    eval_tasks: tuple[str, ...] | Mapping[str, tuple[str, ...]] | None
    eval_data: str | None  # folder with tasks/eval/<task> shards; may start at a root ('@corpus')
    prepare: Callable | None = None  # ``prepare(preset, roots)``: data it needs first (e.g. building omni-synth)
    knobs: str = ""  # knobs for every stage file's ``get_config('preset,knobs')`` (``FILE:tiny,audio=dual``)

    @property
    def arg(self) -> str:
        """What each stage file's ``get_config`` is called with: the preset and the recipe's knobs."""
        return f"{self.preset},{self.knobs}" if self.knobs else self.preset

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.stages]

    def tasks_after(self, stage: str, data: str | None = None) -> tuple[str, ...]:
        """The tasks ``stage`` is evaluated on (none: not evaluated); the default (``eval_tasks`` None) is read
        from the held-out ``data``."""
        if self.eval_tasks is None:
            if data is None:
                return ()
            from omnijax.evaluate import default_tasks

            trained = dict.fromkeys(t for _, c in self.stages for t in (c.get("task_names") or ()))
            return default_tasks(data, list(trained))
        if isinstance(self.eval_tasks, Mapping):
            return tuple(self.eval_tasks.get(stage, ()))
        return tuple(self.eval_tasks)


def _module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise FileNotFoundError(f"{path}: no such recipe or stage file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_names(names: Sequence[str], where: str) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"recipe {where}: stage names repeat: {list(names)}")


def load_recipe(spec: str) -> Recipe:
    """``FILE:preset[,knob=value,...]`` -> the recipe's stages for that preset (clear errors for unknown presets);
    the knobs go to every stage file's ``get_config`` (``experiments/ola/recipe.py:tiny,audio=dual``)."""
    path, _, arg = spec.partition(":")
    preset, _, knobs = arg.partition(",")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe file {path!r} does not exist (e.g. experiments/ola/recipe.py:tiny)")
    module = _module(path, "omnijax_recipe")
    table = getattr(module, "STAGES", None)
    if not isinstance(table, dict):
        raise ValueError(f"{path} has no STAGES = {{preset: ((name, stage file), ...)}}")
    preset = preset or "tiny"
    if preset not in table:
        raise ValueError(f"recipe {path} has no preset {preset!r}; presets: {', '.join(table)}")
    folder = os.path.dirname(os.path.abspath(path))
    stages = tuple((name, os.path.join(folder, f)) for name, f in table[preset])
    _check_names([n for n, _ in stages], path)
    tasks = getattr(module, "EVAL", {}).get(preset, ())
    if isinstance(tasks, Mapping):
        unknown = sorted(set(tasks) - {n for n, _ in stages})
        if unknown:
            raise ValueError(f"{path}: EVAL[{preset!r}] names {unknown}, which are not stages of the recipe")
        tasks = {stage: tuple(t) for stage, t in tasks.items()}
    return Recipe(f"{path}:{arg or preset}", preset, stages, tasks if isinstance(tasks, dict) else tuple(tasks),
                  getattr(module, "eval_data", lambda _: None)(preset), getattr(module, "prepare", None), knobs.strip())


def eval_plan(eval_tasks: Sequence[str] | Mapping[str, Sequence[str]] | None):
    """``Recipe.eval_tasks`` from a user's value: tasks after every stage, or ``{stage: tasks}``, or None."""
    if eval_tasks is None:
        return None
    if isinstance(eval_tasks, Mapping):
        return {stage: tuple(tasks) for stage, tasks in eval_tasks.items()}
    return tuple(eval_tasks)


def from_stages(stages: Sequence[tuple[str, mlc.ConfigDict]], *, name: str = "in-memory recipe",
                eval_tasks: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                eval_data: str | None = "@corpus", prepare: Callable | None = None) -> Recipe:
    """A recipe of stage configs built in Python. ``eval_tasks``: the tasks after every stage, or ``{stage name:
    tasks}`` (the stages not named are not evaluated); default: the tasks the stages train on that the evaluator
    scores unasked (``omnijax.evaluate.default_tasks``), in order of first appearance."""
    stages = tuple(stages)
    for i, entry in enumerate(stages):
        if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], mlc.ConfigDict)):
            raise ValueError(f"recipe stage {i} is {entry!r}; a stage is (name, ml_collections.ConfigDict)")
    _check_names([n for n, _ in stages], name)
    unknown = sorted(set(eval_tasks) - {n for n, _ in stages}) if isinstance(eval_tasks, Mapping) else []
    if unknown:
        raise ValueError(f"eval_tasks names stages {unknown} that {name} does not have; stages: "
                         f"{', '.join(n for n, _ in stages)}")
    return Recipe(name, "tiny", tuple((n, c) for n, c in stages), eval_plan(eval_tasks), eval_data, prepare)


def apply_overrides(c: mlc.ConfigDict, name: str, overrides: Mapping[str, Mapping] | None) -> None:
    """The ``overrides`` of ``ALL_STAGES`` then of stage ``name``: ``{dotted key: value}`` each."""
    for scope in (ALL_STAGES, name):
        for key, value in dict((overrides or {}).get(scope) or {}).items():
            set_field(c, key, value, f"overrides[{scope!r}]")


def load_stage(recipe: Recipe, index: int) -> mlc.ConfigDict:
    """Stage ``index``'s config as its file (or the in-memory recipe) gives it: no overrides, references and roots
    unresolved; a copy (the caller's config stays as it was)."""
    _, source = recipe.stages[index]
    if isinstance(source, mlc.ConfigDict):
        return copy.deepcopy(source)
    return _module(source, f"omnijax_stage_{index}").get_config(recipe.arg)


def stage_config(recipe: Recipe, index: int, workdir: str, steps: int | None = None, *,
                 roots: Mapping[str, str] | None = None, overrides: Mapping[str, Mapping] | None = None,
                 seed: int | None = None) -> mlc.ConfigDict:
    """Stage ``index``'s config: its overrides applied, then ``steps`` and ``seed`` (parameter init, data
    order: ``c.seed``, ``c.data.seed``), its ``@previous`` / ``@stage:NAME`` references and its roots resolved."""
    from omnijax.training.config import init_sources, resolve_roots

    name = recipe.names[index]
    c = load_stage(recipe, index)
    apply_overrides(c, name, overrides)
    names = recipe.names

    def resolve(ref: str) -> str:
        if ref == "@previous":
            if index == 0:
                raise ValueError(f"recipe stage {name!r} starts from '@previous' but it is the first stage")
            return os.path.join(workdir, names[index - 1])
        if ref.startswith("@stage:"):
            target = ref.removeprefix("@stage:")
            if target not in names[:index]:
                raise ValueError(f"recipe stage {name!r} starts from stage {target!r}, which is not an earlier stage "
                                 f"of the recipe ({', '.join(names[:index]) or 'none'})")
            return os.path.join(workdir, target)
        return ref

    if c.init_from:
        entries = [(resolve(p), list(g)) if g is not None else resolve(p) for p, g in init_sources(c)]
        with c.ignore_type():
            c.init_from = entries
    if steps is not None:
        c.num_steps = int(steps)
        c.checkpoint.every = min(c.checkpoint.every, c.num_steps)
        c.log_every = min(c.log_every, c.num_steps)
    if seed is not None:
        c.seed = int(seed)
        c.data.seed = int(seed)
    return resolve_roots(c, dict(roots or {}))


def is_finished(stage_dir: str) -> bool:
    from omnijax.training.checkpointing import final_step

    if not os.path.isdir(os.path.join(stage_dir, "checkpoints")):
        return False
    try:
        final_step(stage_dir)
    except StageConfigError:
        return False
    return True


def _settings(recipe: Recipe, steps, seed, overrides) -> dict:
    return json.loads(json.dumps({"recipe": recipe.name, "steps": steps, "seed": seed,
                                  "overrides": overrides or {}}, default=repr))


def check_settings(recipe: Recipe, workdir: str, steps, seed, overrides) -> None:
    """Record what shapes the run in ``W/recipe.json``; a workdir run with other settings (seed, steps,
    overrides) is refused."""
    want = _settings(recipe, steps, seed, overrides)
    path = os.path.join(workdir, SETTINGS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            have = json.load(f)
        differ = [k for k in ("steps", "seed", "overrides") if have.get(k) != want[k]]
        if differ:
            shown = "; ".join(f"{k}: {have.get(k)!r} there, {want[k]!r} now" for k in differ)
            raise ValueError(f"{workdir} holds a run with other settings ({shown}); run each arm and seed in its "
                             "own workdir, or remove that one to start over")
        return
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".partial", "w") as f:
        json.dump(want, f, indent=1)
    os.replace(path + ".partial", path)


def run(recipe: Recipe, workdir: str, *, only: tuple[str, ...] = (), steps: int | None = None,
        evaluate: bool = True, eval_limit: int | None = None, log=print, roots: Mapping[str, str] | None = None,
        overrides: Mapping[str, Mapping] | None = None, seed: int | None = None,
        progress: bool | None = None) -> list[dict]:
    """Train (and evaluate) the recipe's stages in ``workdir``; returns one status row per stage."""
    from omnijax import launch
    from omnijax.training.config import ROOTS

    names = recipe.names
    check_selection(recipe, only, overrides)
    roots = {**ROOTS, **{k: os.path.abspath(v) for k, v in (roots or {}).items() if v is not None}}
    check_settings(recipe, workdir, steps, seed, overrides)
    if recipe.prepare is not None:
        recipe.prepare(recipe.preset, roots)
    selected = [i for i, name in enumerate(names) if not only or name in only]
    configs = {i: stage_config(recipe, i, workdir, steps, roots=roots, overrides=overrides, seed=seed)
               for i in selected}
    data = _resolved(recipe.eval_data, roots) if evaluate and recipe.eval_data else None
    rows = []
    for i in selected:
        name, source = recipe.stages[i]
        stage_dir = os.path.join(workdir, name)
        c = configs[i]
        start = time.perf_counter()
        tasks = recipe.tasks_after(name, data) if data else ()
        # Its final checkpoint is read again (verified first) when a later stage starts from it or it is evaluated.
        read = (bool(tasks) and not _evaluated(workdir, name)) or any(
            _starts_from(configs[k], stage_dir) and latest_step(os.path.join(workdir, names[k])) is None
            for k in selected if k > i)
        status, damaged = ("done before" if is_finished(stage_dir) else None), 0  # damaged: finals found unreadable
        if status and read and not verify_final(stage_dir, say=log):
            status, damaged = None, 1
        while status is None:
            if damaged == 2:
                raise CheckpointError(f"stage {name}: its final checkpoint cannot be read although it was just "
                                      f"written (the lines above); check the file system of {stage_dir}")
            what = os.path.basename(source) if isinstance(source, str) else "in memory"
            again = "; again, from its newest readable checkpoint" if damaged else ""
            log(f"[{i + 1}/{len(names)}] stage {name} ({what}): {c.num_steps} steps -> {stage_dir}{again}")
            result = launch.run(c, stage_dir, progress=progress)
            if result.status != "finished":
                log(f"stage {name}: {result.status} at step {result.step}; run the recipe again to resume")
                rows.append(dict(stage=name, status=result.status, seconds=time.perf_counter() - start))
                return rows
            if not read or verify_final(stage_dir, say=log):
                status = "trained"
            else:
                damaged += 1
        row = dict(stage=name, status=status, seconds=round(time.perf_counter() - start, 1))
        if tasks:
            row["metrics"] = evaluate_stage(name, tasks, stage_dir, workdir, data, eval_limit, log)
        rows.append(row)
        loss = _last_loss(stage_dir)
        log(f"stage {name}: {status} in {row['seconds']:.0f} s" + (f", final loss {loss:.3f}" if loss else "") +
            (f"; {_brief(row['metrics'])}" if row.get("metrics") else ""))
    return rows


def check_selection(recipe: Recipe, only: tuple[str, ...], overrides: Mapping[str, Mapping] | None) -> None:
    """``only`` and the overrides' keys name stages of the recipe (or ``ALL_STAGES``)."""
    names = recipe.names
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"--only names {unknown}, which are not stages of {recipe.name}; stages: {', '.join(names)}")
    unknown = sorted(set(overrides or {}) - set(names) - {ALL_STAGES})
    if unknown:
        raise ValueError(f"overrides name {unknown}, which are not stages of {recipe.name}; stages: "
                         f"{', '.join(names)} (or {ALL_STAGES!r} for all)")


def _starts_from(c: mlc.ConfigDict, stage_dir: str) -> bool:
    """Whether the stage of config ``c`` (its references resolved) starts from the workdir ``stage_dir``."""
    from omnijax.training.config import init_sources

    return any(os.path.abspath(src) == os.path.abspath(stage_dir) for src, _ in init_sources(c))


def _evaluated(workdir: str, name: str) -> bool:
    from omnijax.eval import report

    return any(stage == name for stage, _ in report.read_report(workdir)[0])


def complete(rows: Sequence[dict]) -> bool:
    """Every stage of ``run``'s rows finished (trained now or before)."""
    return all(r["status"] in ("trained", "done before") for r in rows)


def _resolved(path: str, roots: Mapping[str, str]) -> str:
    from omnijax.training.config import resolve_roots

    return resolve_roots(mlc.ConfigDict({"path": path}), dict(roots)).path


def evaluate_stage(name: str, tasks: Sequence[str], stage_dir: str, workdir: str, data: str, limit: int | None,
                   log) -> dict:
    """Stage ``name``'s row of ``W/eval.json``, on ``tasks`` (computed once; an existing row is reused)."""
    from omnijax import evaluate
    from omnijax.eval import report

    rows, _ = report.read_report(workdir)
    for stage, metrics in rows:
        if stage == name:
            return metrics
    templates = {}
    metrics = evaluate.evaluate(stage_dir, data, tasks, limit=limit, log=log, by_template=templates)
    tmp = os.path.join(stage_dir, f".{EVAL_BY_TEMPLATE}.partial")
    with open(tmp, "w") as f:
        json.dump(templates, f, indent=1)
    os.replace(tmp, os.path.join(stage_dir, EVAL_BY_TEMPLATE))
    report.update_report(workdir, name, metrics, chance=evaluate.chance_levels(tasks, data, limit))
    return metrics


def _last_loss(stage_dir: str) -> float | None:
    try:
        with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except OSError:
        return None
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    return losses[-1] if losses else None


def _brief(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                     if k.endswith(("/wer", "/accuracy")))


def use_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory``: programs two stages share (the fresh init,
    the evaluator's generation, a stage's own step on a rerun) compile once. Call before any compilation."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def add_root_flags(p: argparse.ArgumentParser) -> None:
    """``--corpus``, ``--hf-root``, ``--data-root``: the roots a config's paths start at; the defaults are
    ``$OMNIJAX_CORPUS``, ``$OMNIJAX_HF_ROOT``, ``$OMNIJAX_DATA_ROOT``, else ``ROOTS``'s."""
    from omnijax.training.config import ROOTS

    for flag, root, env in (("--corpus", "corpus", "OMNIJAX_CORPUS"), ("--hf-root", "hf", "OMNIJAX_HF_ROOT"),
                            ("--data-root", "data", "OMNIJAX_DATA_ROOT")):
        default = os.environ.get(env, ROOTS[root])
        p.add_argument(flag, default=default, help=f"the '@{root}' root (default ${env}, else {ROOTS[root]}; "
                                                   f"now {default})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m omnijax.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="RECIPE_FILE:preset, e.g. experiments/ola/recipe.py:tiny")
    p.add_argument("--workdir", required=True, help="the recipe's folder; stage NAME trains in WORKDIR/NAME")
    p.add_argument("--only", default="", help="comma-separated stage names to run (default: all)")
    p.add_argument("--steps", type=int, help="run every stage for this many steps (smoke test)")
    p.add_argument("--seed", type=int, help="seed of every stage's parameter init and data order (default: the "
                                            "stage configs')")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate the stages")
    p.add_argument("--eval-limit", type=int, help="held-out examples per eval task (default: all)")
    p.add_argument("--compilation-cache", help="JAX persistent compilation cache (default WORKDIR/.jax_cache)")
    add_root_flags(p)
    args = p.parse_args(argv)
    try:
        use_compilation_cache(args.compilation_cache or os.path.join(args.workdir, ".jax_cache"))
        rows = run(load_recipe(args.recipe), args.workdir, only=tuple(s for s in args.only.split(",") if s),
                   steps=args.steps, evaluate=not args.no_eval, eval_limit=args.eval_limit, seed=args.seed,
                   roots={"corpus": args.corpus, "hf": args.hf_root, "data": args.data_root}, progress=None)
    except USER_ERRORS as e:
        return errors.report(e)
    if not args.no_eval and os.path.exists(os.path.join(args.workdir, "eval.md")):
        with open(os.path.join(args.workdir, "eval.md")) as f:
            print(f.read())
    return 0 if complete(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
