"""Where the omnijax CPU train step spends its time: one traced step, grouped by XLA operation.

Runs the step of ``llm_train_step.py`` (same config flags) under ``jax.profiler``, with XLA:CPU's
per-operation trace events switched on, and prints the time of each operation group (kind of fused
computation and output shape) with the HLO op it came from. Matmuls run as ``ynn_fusion`` (YNNPACK)
or ``dot`` (Eigen); ``copy_*``/``transpose_*`` fusions are layout changes; the rest is elementwise
work and reductions. Times are summed over both worker threads, so they can add up to more than
the step's wall time.

Usage::

    python benchmarks/profile_train_step.py [--layers 8 ...] [--top 30]
"""

from __future__ import annotations

import os

# Per-operation trace events (no effect on the compiled code). Must be set before JAX starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import collections  # noqa: E402
import glob  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llm_train_step as bench  # noqa: E402

_SKIP = ("ThunkExecutor::Execute", "SlinkyThreadPool::Await")


def op_times(trace_dir: str) -> collections.Counter:
    """Total duration (ns) per XLA operation name on XLA:CPU's worker threads."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    times = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):
                continue
            for ev in line.events:
                if ev.name not in _SKIP and not ev.name.startswith("end:"):
                    times[ev.name] += ev.duration_ns
    return times


def hlo_info(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Operation name -> (output shape, source op name from the metadata)."""
    info = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([^\n]*)$", hlo_text, re.M):
        op = re.search(r'op_name="([^"]*)"', m.group(3))
        source = re.sub(r"jit\(step\)/|transpose\(jvp\(CausalLM\)\)/|jvp\(CausalLM\)/|llm/llm\.decode/closed_call/", "",
                        op.group(1) if op else "")
        info[m.group(1)] = (m.group(2).split("{")[0], source)
    return info


def category(kind: str) -> str:
    if kind in ("ynn_fusion", "dot", "xnn_fusion"):
        return "matmul"
    if kind.startswith(("copy", "transpose")):
        return "layout copies"
    return "elementwise / reductions"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    top = 30
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        del argv[i:i + 2]
    args = bench.parse_args(argv)
    hf_model = bench.build_hf(args)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = bench.import_hf(hf_model, tmp)
    del hf_model
    cfg = loaded.cfg.replace(scan_unroll=args.scan_unroll or loaded.cfg.num_layers)  # one event per layer
    tx, step = bench.make_jax_step(type(loaded.module)(cfg))
    params, opt_state = loaded.params, tx.init(loaded.params)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq), dtype=np.int32))
    compiled = step.lower(params, opt_state, ids).compile()
    for _ in range(2):
        params, opt_state, _ = compiled(params, opt_state, ids)
    jax.block_until_ready(params)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        t0 = time.perf_counter()
        params, opt_state, _ = compiled(params, opt_state, ids)
        jax.block_until_ready(params)
        wall = time.perf_counter() - t0
        jax.profiler.stop_trace()
        times = op_times(trace_dir)
    info = hlo_info(compiled.as_text())
    total = sum(times.values())
    groups, sources, cats = collections.Counter(), {}, collections.Counter()
    for name, ns in times.items():
        kind = name.split(".")[0]
        shape, source = info.get(name, ("?", ""))
        groups[(kind, shape)] += ns
        sources.setdefault((kind, shape), collections.Counter())[source] += ns
        cats[category(kind)] += ns
    print(f"one step: wall {wall * 1e3:.0f} ms (traced); operation time summed over threads {total / 1e6:.0f} ms")
    print("  " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in cats.most_common()))
    print(f"{'ms':>8} {'%':>5}  {'operation':<28} {'output':<28} main source")
    for (kind, shape), ns in groups.most_common(top):
        source = sources[(kind, shape)].most_common(1)[0][0]
        print(f"{ns / 1e6:>8.1f} {100 * ns / total:>5.1f}  {kind:<28} {shape:<28} {source[:70]}")


if __name__ == "__main__":
    main()
