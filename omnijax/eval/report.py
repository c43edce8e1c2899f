"""The per-stage results table (like Ola's Table 5): one row per training stage, one column per metric.

``OUT_DIR/eval.json`` is the machine-readable copy::

    {"stages": [{"stage": "audio_align", "metrics": {"librispeech/wer": 0.052, "mmbench/accuracy": 0.61}}],
     "chance": {"mmbench/accuracy": 0.25}}

``OUT_DIR/eval.md`` is the same as a markdown table. Rates (WER, CER, accuracies, the spoken gap) are
shown as percentages with one decimal, missing values as "–". Stages are evaluated one at a time
across resumable runs, so ``update_report`` adds or replaces one stage's row, keeping the order.
Both files are written atomically: a crash leaves the old report, never half a new one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

REPORT_JSON, REPORT_MD = "eval.json", "eval.md"
MISSING = "–"
# A metric named "<benchmark>/<rate>" or "<rate>" with one of these rates is shown as a percentage.
RATES = ("wer", "cer", "accuracy", "text_acc", "spoken_acc", "gap")

Rows = list[tuple[str, dict]]


def _is_rate(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in RATES


def _cell(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if _is_rate(metric):
        return f"{100 * value:.1f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Rows) -> str:
    """A markdown table: a "stage" column, then every metric in the order it first appears in ``rows``."""
    metrics = list(dict.fromkeys(m for _, values in rows for m in values))
    lines = ["| " + " | ".join(["stage", *metrics]) + " |", "|" + "---|" * (1 + len(metrics))]
    for stage, values in rows:
        lines.append("| " + " | ".join([stage, *(_cell(m, values.get(m)) for m in metrics)]) + " |")
    return "\n".join(lines) + "\n"


def _finite(values: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def _write_atomically(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_report(rows: Rows, out_dir: str, chance: dict | None = None) -> None:
    """Writes ``eval.json`` and ``eval.md``; ``chance`` (metric -> chance level) is stored in the JSON
    and shown as a last "chance" row of the table."""
    os.makedirs(out_dir, exist_ok=True)
    report = {"stages": [{"stage": s, "metrics": _finite(m)} for s, m in rows],
              "chance": _finite(chance) if chance is not None else None}
    _write_atomically(os.path.join(out_dir, REPORT_JSON), json.dumps(report, indent=1, allow_nan=False) + "\n")
    table_rows = list(rows) + ([("chance", chance)] if chance is not None else [])
    _write_atomically(os.path.join(out_dir, REPORT_MD), format_table(table_rows))


def read_report(out_dir: str) -> tuple[Rows, dict | None]:
    """The rows and chance levels of ``out_dir/eval.json``; ``([], None)`` if there is none yet."""
    path = os.path.join(out_dir, REPORT_JSON)
    if not os.path.exists(path):
        return [], None
    with open(path) as f:
        report = json.load(f)
    return [(r["stage"], r["metrics"]) for r in report["stages"]], report["chance"]


def update_report(out_dir: str, stage: str, metrics: dict, chance: dict | None = None) -> Rows:
    """Adds ``stage``'s row, or replaces it in place if present, and rewrites the report; ``chance``
    adds or replaces chance levels (stages may be evaluated on different tasks). Returns the rows written."""
    rows, stored_chance = read_report(out_dir)
    names = [s for s, _ in rows]
    if stage in names:
        rows[names.index(stage)] = (stage, metrics)
    else:
        rows.append((stage, metrics))
    if chance is not None:
        stored_chance = {**(stored_chance or {}), **chance}
    write_report(rows, out_dir, stored_chance)
    return rows
