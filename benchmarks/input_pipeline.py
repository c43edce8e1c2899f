"""Input-pipeline throughput: examples/s and tokens/s of an omni-synth mixture by worker count, against
the train step that consumes it.

Default (`--train-stage experiments/ola/stage3b.py:tiny`): the stage's own pipeline (its mixture, batch,
sequence length and media budget, from `c.data`) for each worker count, then the stage's jitted train
step on 4 of those batches; prints the pipeline's rows/s divided by the step's rows/s (the pipeline
must not be the bottleneck: ratio >= 2).

With `--train-stage ''`: the eight omni-synth tasks as eight sources of equal weight at the sizes of
`--stage` (`tiny`: 64-pixel views, 2 x 2 tokens per view, 4 s audio windows of 80 mels; `ola`: Ola's
384-pixel views, 14 x 14 tokens per view, 30 s windows of 128 mels, 8 frames per video, 4096 tokens
per row), pipeline only.

Through the whole pipeline (`data_pipelines.pipeline`): read, decode (PNG, H.264, FLAC), features
(SigLIP-normalised views, Whisper log-mel), ChatML + placeholder expansion, first-fit packing, mixing,
`mp_prefetch` workers, batching. Each worker count gets a fresh pipeline; `--warmup` batches are not
timed, then `--batches` batches are. Tokens are non-padding tokens (`Pipeline.metrics['tokens']`).

    python benchmarks/input_pipeline.py                     # prepares workdirs/omni-synth on first use
    python benchmarks/input_pipeline.py --train-stage '' --stage ola --workers 0,2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

from data_pipelines import schema, synth
from data_pipelines import tokenizer as tok
from data_pipelines.pipeline import Pipeline, PipelineConfig, Source
from omnijax.batch import MediaBudget
from omnijax.media_layouts import OlaLayout

IDS = {m: tok.SYNTH_TOKEN_IDS[tok.PLACEHOLDER_TOKENS[m]] for m in ("image", "video", "audio")}
STAGES = {
    "tiny": dict(
        layout=OlaLayout(IDS["image"], IDS["video"], IDS["audio"], grid=(2, 2), chunk_tokens=20),
        budget=MediaBudget(image_slots=8, image_size=64, video_slots=32, video_size=64, audio_slots=16, n_mels=80,
                           audio_frames=400),
        seq_len=1024, batch_size=8, video_frames=8),
    "ola": dict(
        layout=OlaLayout(IDS["image"], IDS["video"], IDS["audio"], grid=(14, 14), chunk_tokens=150),
        budget=MediaBudget(image_slots=4, image_size=384, video_slots=16, video_size=384, audio_slots=4, n_mels=128,
                           audio_frames=3000),
        seq_len=4096, batch_size=4, video_frames=8),
}


def task_sources(corpus: str) -> tuple[Source, ...]:
    """One source per omni-synth task (the per-task shards `synth.prepare` writes)."""
    synth.prepare(corpus, progress=False)
    shards = synth.task_shards(corpus, "train")
    return tuple(Source(task, tuple(schema.shard_paths(shards[task], 1))) for task in synth.TASKS)


def measure(config: PipelineConfig, warmup: int, batches: int) -> dict:
    with Pipeline(config) as pipeline:
        start = time.perf_counter()
        for _ in range(warmup):
            next(pipeline)
        first = time.perf_counter() - start
        before = dict(pipeline.metrics)
        start = time.perf_counter()
        for _ in range(batches):
            next(pipeline)
        seconds = time.perf_counter() - start
        after = pipeline.metrics
    delta = {k: after[k] - before[k] for k in ("examples", "tokens", "records")}
    return {"workers": config.workers, "warmup_s": first, "seconds": seconds, "batches": batches,
            "examples_per_s": delta["examples"] / seconds, "tokens_per_s": delta["tokens"] / seconds,
            "rows_per_s": batches * config.batch_size / seconds,
            "fill": delta["tokens"] / (batches * config.batch_size * config.seq_len)}


def load_stage(spec: str, corpus: str):
    """A stage config from ``FILE[:arg]`` (as ``omnijax.train --config`` reads it), init_from cleared, its
    ``@corpus`` paths in ``corpus``."""
    import importlib.util

    from omnijax.training.config import resolve_roots

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("stage_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    c = module.get_config(arg or None)
    c.init_from = None
    return resolve_roots(c, {"corpus": corpus})


def train_step_rate(c, batches: list[dict], steps: int) -> dict:
    """Rows/s of the stage's jitted train step on real batches of its pipeline (compiled first, not timed)."""
    import jax

    from omnijax.training import trainer

    stage = trainer.setup(c)
    step = stage.train_step()
    with stage.context():
        state = stage.init_state()
        arrays = [stage.global_batch(b) for b in batches]
        state, metrics = step(state, arrays[0])
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for i in range(steps):
            state, metrics = step(state, arrays[i % len(arrays)])
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "rows_per_s": steps * c.batch_size / seconds,
            "step_s": seconds / steps}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="workdirs/omni-synth", help="omni-synth corpus folder (built when missing)")
    p.add_argument("--stage", default="tiny", choices=sorted(STAGES))
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (worker start-up)")
    p.add_argument("--train-stage", default="experiments/ola/stage3b.py:tiny",
                   help="stage config FILE:arg whose train step and pipeline are compared (its own mixture)")
    p.add_argument("--steps", type=int, default=20, help="timed train steps")
    args = p.parse_args(argv)

    if args.train_stage:
        compare(args)
        return
    sources = task_sources(args.corpus)
    tokenizer_dir = os.path.join(args.corpus, tok.SYNTH_TOKENIZER_DIR)
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        tok.build_synth_tokenizer(args.corpus)
    stage = STAGES[args.stage]
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        config = PipelineConfig(sources=sources, tokenizer=tokenizer_dir, task_names=synth.TASKS, workers=workers,
                                process_index=0, process_count=1, **stage)
        rows.append(measure(config, args.warmup, args.batches))
        print(f"workers={workers} done", flush=True)

    budget = stage["budget"]
    print(f"\nomni-synth mixture ({len(sources)} tasks, equal weights), stage '{args.stage}': batch "
          f"{stage['batch_size']} x {stage['seq_len']} tokens, views {budget.image_size}px, "
          f"{stage['video_frames']} frames/video, audio windows {budget.audio_frames / 100:g} s x {budget.n_mels} mels")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>7} {'examples/s':>11} {'tokens/s':>10} {'rows/s':>8} {'row fill':>8} {'warm-up s':>9}")
    for r in rows:
        print(f"{r['workers']:>7} {r['examples_per_s']:>11.1f} {r['tokens_per_s']:>10.0f} {r['rows_per_s']:>8.2f} "
              f"{r['fill']:>8.1%} {r['warmup_s']:>9.1f}")


def compare(args) -> None:
    """The stage's pipeline (its mixture, batch and sequence) against its train step's consumption."""
    from omnijax.launch import grain_pipeline_config

    synth.prepare(args.corpus)
    c = load_stage(args.train_stage, args.corpus)
    rows, batches = [], []
    for workers in (int(w) for w in args.workers.split(",")):
        config = dataclasses.replace(grain_pipeline_config(c, 0, 1), workers=workers)
        if not batches:
            with Pipeline(config) as pipeline:
                batches = [next(pipeline) for _ in range(4)]
        rows.append(measure(config, args.warmup, args.batches))
        print(f"workers={workers} done", flush=True)
    step = train_step_rate(c, batches, args.steps)
    print(f"\nstage {c.name} ({args.train_stage}): batch {c.batch_size} x {c.seq_len} tokens, "
          f"{len(c.data.sources)} sources; train step {step['step_s']:.3f} s = {step['rows_per_s']:.1f} rows/s "
          f"({jax_devices()})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>7} {'examples/s':>11} {'tokens/s':>10} {'rows/s':>8} {'row fill':>8} {'pipeline/step':>13}")
    for r in rows:
        print(f"{r['workers']:>7} {r['examples_per_s']:>11.1f} {r['tokens_per_s']:>10.0f} {r['rows_per_s']:>8.2f} "
              f"{r['fill']:>8.1%} {r['rows_per_s'] / step['rows_per_s']:>13.2f}")


def jax_devices() -> str:
    import jax

    return f"{jax.device_count()} {jax.devices()[0].platform} device(s)"


if __name__ == "__main__":
    main()
