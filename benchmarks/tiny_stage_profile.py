"""Where a tiny recipe stage spends its time on a CPU: the trainer's loop, the train step's operations, and
the per-stage evaluation.

Builds the stage exactly as the trainer does (``launch.setup``, the Grain pipeline, ``Stage.train_step``),
from the shipped tiny checkpoints, and measures side by side in one run:

- the loop's parts per step: the pipeline's ``next(data)``, ``global_batch``, the step itself (dispatched
  and waited for), over ``--steps`` steps after two warm-up steps;
- the step's FLOPs (XLA's cost analysis; the model's layers run under ``nn.scan``, whose body XLA counts
  once, so the stage is compiled with its layers unrolled for this) against a plain ``[m, k] x [k, n]``
  float32 matmul's rate on this machine at the LLM's shapes;
- one traced step, its operation time grouped as in ``profile_train_step.py`` (matmuls, layout copies,
  elementwise work), and the top operation groups;
- the evaluation of one stage as the recipe runs it (``omnijax.evaluate``): seconds per task, and how much of
  it is compiling.

    python benchmarks/tiny_stage_profile.py [--stage experiments/ola/stage1b.py:tiny] [--corpus workdirs/omni-synth]
           [--steps 20] [--eval-limit 100]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_train_step import category, hlo_info, op_times  # noqa: E402


def load_stage(spec: str, corpus: str):
    from experiments import common
    from omnijax import recipe as recipe_lib
    from omnijax.training.config import resolve_roots

    path, _, preset = spec.partition(":")
    c = recipe_lib._module(path, "stage").get_config(preset or "tiny")
    with c.ignore_type():  # the pretrained LLM and towers, fresh connectors: the stage's shapes and cost
        c.init_from = common.pretrained("tiny", ("llm", "vision", "audio"))
    return resolve_roots(c, {"corpus": corpus})


def matmul_rate(m: int, k: int, n: int, repeats: int = 20) -> float:
    """GFLOP/s of a jitted float32 ``[m, k] x [k, n]`` on this machine."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((m, k), np.float32))
    b = jnp.asarray(np.random.default_rng(1).standard_normal((k, n), np.float32))
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(a, b).block_until_ready()
    return 2 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9


def loop_parts(stage, data, steps: int) -> dict:
    """Seconds per step of the trainer loop's parts (``trainer._loop`` without logging and checkpoints)."""
    step_fn = stage.train_step()
    state = stage.init_state()
    with stage.context():
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, stage.global_batch(next(data))).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            state, metrics = compiled(state, stage.global_batch(next(data)))
        jax.block_until_ready(metrics)
        parts = collections.Counter()
        for _ in range(steps):
            t = time.perf_counter()
            local = next(data)
            parts["pipeline next(data)"] += time.perf_counter() - t
            t = time.perf_counter()
            batch = stage.global_batch(local)
            parts["global_batch"] += time.perf_counter() - t
            t = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            parts["train step"] += time.perf_counter() - t
    return {"compile_s": compile_s, **{k: v / steps for k, v in parts.items()}}, compiled, state, batch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="experiments/ola/stage1b.py:tiny")
    p.add_argument("--corpus", default="workdirs/omni-synth")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-limit", type=int, default=100)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    from omnijax import launch

    c = load_stage(args.stage, args.corpus)
    unrolled = load_stage(args.stage, args.corpus)
    for tower, layers in (("llm", "num_layers"), ("vision", "num_layers"), ("audio", "encoder_layers")):
        if unrolled.model.get(tower):  # every layer in the HLO: its FLOPs counted per layer
            unrolled.model[tower].scan_unroll = unrolled.model[tower][layers]
    runs = {}
    for name, config in (("as configured", c), ("layers unrolled", unrolled)):
        stage = launch.setup(config)
        data = launch.build_data(stage)
        runs[name] = (stage, *loop_parts(stage, data, args.steps))
        data.close()
    print(f"stage {c.name} ({args.stage}): batch {c.batch_size} x {c.seq_len}, {jax.device_count()} device(s), "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, (_, parts, *_) in runs.items():
        print(f"  {name}: compile {parts['compile_s']:.1f} s; " +
              ", ".join(f"{k} {1e3 * parts[k]:.1f} ms" for k in ("pipeline next(data)", "global_batch", "train step")))
    stage, parts, compiled, state, batch = runs["as configured"]
    ustage, uparts, ucompiled, *_ = runs["layers unrolled"]
    step_s = parts["train step"]
    print(f"  step time unrolled / as configured: {uparts['train step'] / step_s:.2f}")
    cost = ucompiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan"))
    llm = c.model.llm
    rate = matmul_rate(c.batch_size * c.seq_len, llm.hidden_size, llm.intermediate_size)
    print(f"  step FLOPs {flops / 1e9:.2f} G -> {flops / step_s / 1e9:.1f} GFLOP/s; a float32 "
          f"[{c.batch_size * c.seq_len}, {llm.hidden_size}] x [{llm.hidden_size}, {llm.intermediate_size}] matmul "
          f"here: {rate:.1f} GFLOP/s (ratio {flops / step_s / 1e9 / rate:.2f})")

    with stage.context(), tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        times = op_times(trace_dir)
    info = hlo_info(compiled.as_text())
    total = sum(times.values())
    groups, cats = collections.Counter(), collections.Counter()
    for name, ns in times.items():
        kind = name.split(".")[0]
        groups[(kind, info.get(name, ("?", ""))[0])] += ns
        cats[category(kind)] += ns
    print(f"  traced step: operation time over threads {total / 1e6:.0f} ms; " +
          ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in cats.most_common()))
    for (kind, shape), ns in groups.most_common(args.top):
        print(f"    {ns / 1e6:7.1f} ms {100 * ns / total:5.1f}%  {kind:<26} {shape}")

    evaluate_profile(c, stage, args)


def evaluate_profile(c, stage, args) -> None:
    """The recipe's evaluation of this stage's params (from the shipped checkpoints + a fresh connector),
    task by task: wall seconds, and the seconds a second pass over the same examples takes (compiled)."""
    from omnijax import evaluate
    from omnijax.inference.omni import OmniGenerator, generation_config
    from omnijax.training.omni_task import omni_config

    params = jax.device_get(stage.init_params())  # outside the stage's activation-sharding context
    cfg = generation_config(omni_config(c), c.data.pipeline.get("video_frames"))
    gen = OmniGenerator(cfg, params, c.data.tokenizer, max_prompt_len=c.seq_len, batch_size=evaluate.BATCH_SIZE,
                        bucket=c.seq_len, **{k: v for k, v in c.data.pipeline.items() if k == "video_frames"})
    print(f"  evaluation, {args.eval_limit} held-out examples per task, batch {evaluate.BATCH_SIZE}:")
    for task in evaluate.default_tasks(args.corpus):
        examples = evaluate.read_task(args.corpus, task, args.eval_limit)
        kind = evaluate.task_kind(examples)
        seconds = []
        for _ in range(2):
            t0 = time.perf_counter()
            gen.answer(examples, evaluate.MAX_NEW_TOKENS[kind])
            if kind == "spoken":
                gen.answer(examples, evaluate.MAX_NEW_TOKENS[kind], spoken=True)
            seconds.append(time.perf_counter() - t0)
        prepare = time.perf_counter()
        for e in examples:
            gen.prepare(e)
        prepare = time.perf_counter() - prepare
        print(f"    {task:<17} first {seconds[0]:6.1f} s, again {seconds[1]:6.1f} s (prompts prepared: "
              f"{prepare:5.1f} s)")


if __name__ == "__main__":
    main()
