"""Cost of a stage by what it trains: full fine-tune vs connectors only, same model, same batches.

Each stage runs `omnijax.launch.run` in its own child process (so its peak memory is its
own: the child's max RSS from ``os.wait4``), alternating full / connectors / full / connectors. Step
time is the median of each run's logged ``step_seconds`` after the first steps (compilation);
optimizer-state bytes come from the run's ``param_groups.json``.

The model is the Ola-layout omni model of ``experiments/examples/tiny_connectors.py`` with a larger
LLM (``--hidden``, ``--layers``, ``--vocab``), so the LLM dominates as it does at 7B.

    python benchmarks/stage_cost.py [--steps 12] [--rounds 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage_config(kind: str, args):
    spec = importlib.util.spec_from_file_location("tiny_connectors", os.path.join(ROOT, "experiments/examples/tiny_connectors.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.name = kind
    c.model.llm.update(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                       num_layers=args.layers, num_heads=8, num_kv_heads=2)
    c.model.update(image_token_id=args.vocab - 8, audio_token_id=args.vocab - 6)
    sched = dict(lr=1e-4, warmup_fraction=0.1, decay="cosine")
    c.trainable = [(".*", sched)] if kind == "full" else [("(vision|audio)_connector/.*", sched), (".*", None)]
    c.num_steps = args.steps
    c.seq_len = args.seq
    c.checkpoint.update(every=10**6, keep=1)
    return c


def child(kind: str, workdir: str, args) -> None:
    from omnijax.launch import run

    run(stage_config(kind, args), workdir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--child", nargs=2, metavar=("KIND", "WORKDIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args)
        return
    results: dict[str, list[dict]] = {"full": [], "connectors": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in ("full", "connectors"):
                work = os.path.join(tmp, f"{kind}{r}")
                cmd = [sys.executable, __file__, "--child", kind, work] + [
                    f"--{k}={getattr(args, k)}" for k in ("steps", "hidden", "layers", "vocab", "seq")]
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, status, usage = os.wait4(proc.pid, 0)
                if status:
                    raise SystemExit(f"{kind} stage failed (status {status}); run: {' '.join(cmd)}")
                with open(os.path.join(work, "metrics.jsonl")) as f:
                    steps = [json.loads(line) for line in f]
                with open(os.path.join(work, "param_groups.json")) as f:
                    groups = json.load(f)
                results[kind].append({
                    "step_s": statistics.median(s["step_seconds"] for s in steps[3:]),
                    "rss_mib": usage.ru_maxrss / 1024,
                    "opt_bytes": sum(g["opt_state_bytes"] for g in groups),
                    "trainable": sum(g["trainable_params"] for g in groups),
                    "params": sum(g["params"] for g in groups),
                })
    print(f"LLM hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch 8 x {args.seq}; "
          f"{args.steps} steps x {args.rounds} rounds, float32, CPU")
    print(f"{'stage':12s} {'params':>11s} {'trainable':>11s} {'opt-state MiB':>14s} {'step s (median)':>16s} "
          f"{'peak RSS MiB':>13s}")
    summary = {}
    for kind, runs in results.items():
        s = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        summary[kind] = s
        print(f"{kind:12s} {s['params']:11,.0f} {s['trainable']:11,.0f} {s['opt_bytes'] / 2**20:14.2f} "
              f"{s['step_s']:16.3f} {s['rss_mib']:13.0f}")
    f, c = summary["full"], summary["connectors"]
    print(f"ratio full/connectors: step time {f['step_s'] / c['step_s']:.2f}, peak RSS {f['rss_mib'] / c['rss_mib']:.2f}, "
          f"optimizer state {f['opt_bytes'] / max(c['opt_bytes'], 1):.1f}")


if __name__ == "__main__":
    main()
