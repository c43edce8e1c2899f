"""Run a paper's recipe: its stages in order, each initialised from the previous, each evaluated.

    python -m omnijax.recipe --recipe experiments/ola/recipe.py:tiny --workdir W [--only 1b,2]
           [--steps N] [--no-eval] [--eval-limit 50]

A recipe file has ``STAGES = {preset: ((name, stage file), ...)}`` (stage files are read like
``omnijax.train --config FILE:preset``), and optionally ``EVAL = {preset: (eval task, ...)}``,
``eval_data(preset)`` (the ``omnijax.evaluate --data`` folder), ``SKIP_EVAL = (stage name, ...)`` and
``prepare(preset)`` (data to build before the first stage). Stage ``name`` trains in ``W/<name>``; its config's ``init_from``
may name ``'@previous'`` (the stage before it) or ``'@stage:NAME'`` (any earlier stage of the recipe).

Resumable: a stage whose workdir holds its final checkpoint is skipped, an interrupted one resumes
from its newest checkpoint, and a stage already evaluated (a row in ``W/eval.json``) is not evaluated
again. After each stage the recipe evaluates it on the held-out split (``omnijax.evaluate``) and
rewrites ``W/eval.md`` / ``W/eval.json``: one row per stage, as in Ola's Table 5 (and writes the
question accuracies per template to ``W/<name>/eval_by_template.json``).
``--steps N`` runs every stage for N steps (smoke tests); ``--only`` runs the named stages (the
stages they start from must be complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time

STATUS_FILE = "recipe.json"
EVAL_BY_TEMPLATE = "eval_by_template.json"  # in the stage workdir: accuracy per question template


@dataclasses.dataclass(frozen=True)
class Recipe:
    path: str
    preset: str
    stages: tuple[tuple[str, str], ...]  # (name, stage file path)
    eval_tasks: tuple[str, ...]
    eval_data: str | None  # folder with tasks/eval/<task> shards
    skip_eval: tuple[str, ...]
    prepare: object = None  # the recipe's ``prepare(preset)``: data it needs first (e.g. building omni-synth)


def _module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise FileNotFoundError(f"{path}: no such recipe or stage file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe(spec: str) -> Recipe:
    """``FILE:preset`` -> the recipe's stages for that preset (clear errors for unknown presets)."""
    path, _, preset = spec.partition(":")
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
    names = [n for n, _ in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"recipe {path}: stage names repeat: {names}")
    return Recipe(path, preset, stages, tuple(getattr(module, "EVAL", {}).get(preset, ())),
                  getattr(module, "eval_data", lambda _: None)(preset), tuple(getattr(module, "SKIP_EVAL", ())),
                  getattr(module, "prepare", None))


def stage_config(recipe: Recipe, index: int, workdir: str, steps: int | None = None):
    """Stage ``index``'s config with its ``@previous`` / ``@stage:NAME`` references resolved."""
    name, path = recipe.stages[index]
    c = _module(path, f"omnijax_stage_{index}").get_config(recipe.preset)
    names = [n for n, _ in recipe.stages]

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
        from omnijax.training.config import init_sources

        entries = [(resolve(p), list(g)) if g is not None else resolve(p) for p, g in init_sources(c)]
        with c.ignore_type():
            c.init_from = entries
    if steps is not None:
        c.num_steps = int(steps)
        c.checkpoint.every = min(c.checkpoint.every, c.num_steps)
        c.log_every = min(c.log_every, c.num_steps)
    return c


def is_finished(stage_dir: str) -> bool:
    from omnijax.training.checkpointing import final_step
    from omnijax.training.stages import StageConfigError

    if not os.path.isdir(os.path.join(stage_dir, "checkpoints")):
        return False
    try:
        final_step(stage_dir)
    except StageConfigError:
        return False
    return True


def run(recipe: Recipe, workdir: str, *, only: tuple[str, ...] = (), steps: int | None = None,
        evaluate: bool = True, eval_limit: int | None = None, log=print) -> list[dict]:
    """Train (and evaluate) the recipe's stages in ``workdir``; returns one status row per stage."""
    from omnijax.training import trainer

    names = [n for n, _ in recipe.stages]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"--only names {unknown}, which are not stages of {recipe.path}; stages: {', '.join(names)}")
    os.makedirs(workdir, exist_ok=True)
    if recipe.prepare is not None:
        recipe.prepare(recipe.preset)
    rows = []
    for i, (name, path) in enumerate(recipe.stages):
        if only and name not in only:
            continue
        stage_dir = os.path.join(workdir, name)
        c = stage_config(recipe, i, workdir, steps)
        start = time.perf_counter()
        if is_finished(stage_dir):
            status = "done before"
        else:
            log(f"[{i + 1}/{len(names)}] stage {name} ({os.path.basename(path)}): {c.num_steps} steps -> {stage_dir}")
            result = trainer.run(c, stage_dir)
            if result.status != "finished":
                log(f"stage {name}: {result.status} at step {result.step}; run the recipe again to resume")
                rows.append(dict(stage=name, status=result.status, seconds=time.perf_counter() - start))
                return rows
            status = "trained"
        row = dict(stage=name, status=status, seconds=round(time.perf_counter() - start, 1))
        if evaluate and recipe.eval_tasks and recipe.eval_data and name not in recipe.skip_eval:
            row["metrics"] = evaluate_stage(recipe, name, stage_dir, workdir, eval_limit, log)
        rows.append(row)
        loss = _last_loss(stage_dir)
        log(f"stage {name}: {status} in {row['seconds']:.0f} s" + (f", final loss {loss:.3f}" if loss else "") +
            (f"; {_brief(row['metrics'])}" if row.get("metrics") else ""))
    return rows


def evaluate_stage(recipe: Recipe, name: str, stage_dir: str, workdir: str, limit: int | None, log) -> dict:
    """The stage's row of ``W/eval.json`` (computed once; an existing row is reused)."""
    from omnijax import evaluate
    from omnijax.eval import report

    rows, _ = report.read_report(workdir)
    for stage, metrics in rows:
        if stage == name:
            return metrics
    data = recipe.eval_data
    templates = {}
    metrics = evaluate.evaluate(stage_dir, data, recipe.eval_tasks, limit=limit, log=log, by_template=templates)
    tmp = os.path.join(stage_dir, f".{EVAL_BY_TEMPLATE}.partial")
    with open(tmp, "w") as f:
        json.dump(templates, f, indent=1)
    os.replace(tmp, os.path.join(stage_dir, EVAL_BY_TEMPLATE))
    report.update_report(workdir, name, metrics, chance=evaluate.chance_levels(recipe.eval_tasks, data, limit))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m omnijax.recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, help="RECIPE_FILE:preset, e.g. experiments/ola/recipe.py:tiny")
    p.add_argument("--workdir", required=True, help="the recipe's folder; stage NAME trains in WORKDIR/NAME")
    p.add_argument("--only", default="", help="comma-separated stage names to run (default: all)")
    p.add_argument("--steps", type=int, help="run every stage for this many steps (smoke test)")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate the stages")
    p.add_argument("--eval-limit", type=int, help="held-out examples per eval task (default: all)")
    p.add_argument("--compilation-cache", help="JAX persistent compilation cache (default WORKDIR/.jax_cache)")
    args = p.parse_args(argv)
    use_compilation_cache(args.compilation_cache or os.path.join(args.workdir, ".jax_cache"))
    from omnijax.training.stages import StageConfigError

    try:
        recipe = load_recipe(args.recipe)
        rows = run(recipe, args.workdir, only=tuple(s for s in args.only.split(",") if s), steps=args.steps,
                   evaluate=not args.no_eval, eval_limit=args.eval_limit)
    except (FileNotFoundError, ValueError, StageConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_eval and os.path.exists(os.path.join(args.workdir, "eval.md")):
        with open(os.path.join(args.workdir, "eval.md")) as f:
            print(f.read())
    return 0 if all(r["status"] in ("trained", "done before") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
