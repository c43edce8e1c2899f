"""Plots of recipe runs for notebooks (matplotlib; each returns its ``Figure``).

    plot_stages({"progressive": r1, "mixed": [r2, r3]}, metrics=["image_qa/accuracy", "asr/wer"])
    plot_curves({"progressive": r1}, metric="loss")

An arm is one run (``omnijax.experiment.RecipeResult``) or a list of runs (seeds): bars and lines then show
the mean over the runs with the standard deviation as error bars / a band. Rates are drawn in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from omnijax.eval.report import RATES


def _runs(arms: Mapping) -> dict[str, list]:
    if not arms:
        raise ValueError("give at least one arm: {name: run or [runs]}")
    return {name: list(r) if isinstance(r, list | tuple) else [r] for name, r in arms.items()}


def _scale(metric: str) -> float:
    return 100.0 if metric.rsplit("/", 1)[-1] in RATES else 1.0


def plot_stages(arms: Mapping, metrics: Sequence[str] | None = None, stages: Sequence[str] | None = None):
    """One panel per metric: the metric after each evaluated stage, the arms' bars side by side."""
    import matplotlib.pyplot as plt

    runs = _runs(arms)
    tables = {name: [r.eval_table(chance=False) for r in rs] for name, rs in runs.items()}
    first = next(iter(tables.values()))[0]
    stages = list(stages or dict.fromkeys(s for ts in tables.values() for t in ts for s in t.index))
    metrics = list(metrics or first.columns)
    if not stages or not metrics:
        raise ValueError("the runs have no evaluated stage; run them with evaluate=True")
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 1.2 * len(stages) * len(runs) ** 0.5) * len(metrics),
                                                       3.2), squeeze=False)
    width = 0.8 / len(runs)
    x = np.arange(len(stages))
    for ax, metric in zip(axes[0], metrics):
        for i, (name, ts) in enumerate(tables.items()):
            values = np.array([[t.loc[s, metric] if s in t.index and metric in t.columns else np.nan for s in stages]
                               for t in ts], float) * _scale(metric)
            mean = np.nanmean(values, axis=0) if values.size else values
            err = np.nanstd(values, axis=0, ddof=1) if len(ts) > 1 else None
            ax.bar(x + (i - (len(runs) - 1) / 2) * width, mean, width, yerr=err, label=name, capsize=2)
        ax.set_xticks(x, stages)
        ax.set_title(metric)
        ax.set_xlabel("stage")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_curves(arms: Mapping, metric: str = "loss", stages: Sequence[str] | None = None):
    """``metric`` against the step counted across the recipe (stage after stage; dotted lines at the stage
    boundaries, named at the top), one line per arm (the mean over its runs, a band of one standard deviation)."""
    import matplotlib.pyplot as plt

    runs = _runs(arms)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    boundaries: dict[str, float] = {}
    for name, rs in runs.items():
        series = []
        for r in rs:
            frame = r.curves([metric])
            if stages is not None:
                frame = frame[frame.stage.isin(stages)]
            offset, xs, ys = 0, [], []
            for stage in dict.fromkeys(frame.stage):
                part = frame[frame.stage == stage]
                boundaries.setdefault(stage, offset)
                xs += list(part.step + offset)
                ys += list(part.value)
                offset += int(part.step.max())
            series.append((np.array(xs), np.array(ys, float) * _scale(metric)))
        xs = series[0][0]
        ys = np.stack([y for x, y in series if len(x) == len(xs)])
        line, = ax.plot(xs, ys.mean(0), label=name)
        if len(ys) > 1:
            ax.fill_between(xs, ys.mean(0) - ys.std(0, ddof=1), ys.mean(0) + ys.std(0, ddof=1), alpha=0.2,
                            color=line.get_color())
    for stage, start in boundaries.items():
        ax.axvline(start, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(stage, (start, 1.0), xycoords=("data", "axes fraction"), fontsize="small", va="bottom")
    ax.set_xlabel("step (stage after stage)")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
