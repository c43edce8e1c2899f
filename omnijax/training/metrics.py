"""What a run writes about itself: ``metrics.jsonl``, TensorBoard events, a progress bar, and the
parameter-group table. Only process 0 writes.

``WORKDIR/metrics.jsonl`` has one JSON object per logged step::

    {"step": 10, "loss": 2.31, "task_loss/asr": 2.5, "grad_norm": 0.8, "lr/llm": 1e-5,
     "tokens": 8123, "loss_tokens": 2011.0, "tokens_per_s": 40615.0, "step_seconds": 0.2,
     "skipped": false, "nonfinite_in_a_row": 0}

A value that is not finite is written as ``null`` (the step's ``skipped`` is then true). On resume,
rows after the restored step (logged before a crash, then recomputed) are dropped first.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"


def _scalar(x):
    x = np.asarray(x)
    if x.dtype == bool:
        return bool(x)
    if np.issubdtype(x.dtype, np.integer):
        return int(x)
    v = float(x)
    return v if math.isfinite(v) else None


class MetricsLogger:
    def __init__(self, workdir: str, *, active: bool, resume_step: int, log_every: int = 1,
                 task_names: tuple[str, ...] = (), total: int | None = None, progress: bool = False):
        self.active, self.log_every, self.task_names = active, log_every, task_names
        self.rows: list[dict] = []
        self.file = self.writer = None
        if active:
            path = os.path.join(workdir, METRICS_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
                with open(path, "w") as f:
                    f.writelines(kept)
            self.file = open(path, "a")
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.bar = tqdm(total=total, initial=resume_step, disable=not progress, unit="step", dynamic_ncols=True)
        self.last = time.perf_counter()

    def log(self, step: int, metrics: dict, force: bool = False) -> dict:
        """The step's row (always: the trainer checks it); written when ``step`` is a logging step."""
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        row = {"step": step}
        for k, v in metrics.items():
            if k in ("task_loss", "task_tokens"):
                continue
            row[k] = _scalar(v)
        if "task_loss" in metrics:
            for i, (loss, n) in enumerate(zip(np.asarray(metrics["task_loss"]), np.asarray(metrics["task_tokens"]))):
                if n > 0:
                    name = self.task_names[i] if i < len(self.task_names) else str(i)
                    row[f"task_loss/{name}"] = _scalar(loss)
        row["step_seconds"] = seconds
        row["tokens_per_s"] = row["tokens"] / seconds if seconds > 0 else None
        self.bar.update(1)
        if self.active and (force or step % self.log_every == 0):
            self.rows.append(row)
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, step)
            self.bar.set_postfix(loss=row["loss"], refresh=False)
        return row

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()
            self.writer.close()
            self.file = None


def format_group_table(stage: str, table: list[dict]) -> str:
    """The parameter-group table printed at the start of a stage."""
    lines = [f"stage {stage!r}: parameter groups",
             f"  {'group':<24} {'params':>12} {'trainable':>9} {'param MiB':>10} {'opt-state MiB':>13}"]
    for r in table:
        lines.append(f"  {r['group']:<24} {r['params']:>12,} {r['trainable']:>9} {r['param_bytes'] / 2**20:>10.2f} "
                     f"{r['opt_state_bytes'] / 2**20:>13.2f}")
    return "\n".join(lines)
