"""The GPU backend path, measured on one GPU: cuDNN attention vs the XLA reference, bf16 numerics
against transformers, and the train step of the real trainer (time, memory, MFU).

Every part runs in its own child process, so each peak-memory figure belongs to that part alone
(``memory_stats()['peak_bytes_in_use']`` of the device). Parts:

- ``peak``: a bf16 ``jnp.dot`` of 8192^3 (the matmul rate the MFU figures are also quoted against).
- ``attention``: ``omnijax.models.attention.attention`` forward + backward at the shapes the towers and
  the LLM use at 7B (Qwen2.5-7B's 28:4 heads of 128 over 4096 tokens, one sequence per row and packed
  rows; SigLIP-so400m's 16 heads of 72 over 729 patches; Whisper-large-v3's 20 heads of 64 over 1500
  frames with per-clip lengths). ``xla``, ``cudnn`` and ``cudnn-mask`` (``--impls``; cuDNN with packed
  rows through the explicit mask instead of cuDNN's packed layout) in bf16 are compared with a dense
  float32 softmax over the whole square at ``highest`` matmul precision (relative L2 error over the valid
  rows of out, dq, dk, dv), timed round-robin, and their compile times recorded. Train runs take the same
  ``:cudnn-mask``.
- ``numerics``: Qwen2.5-0.5B's architecture (random weights, saved by transformers and read through
  ``omnijax.hf.load_hf``): omnijax's logits in float32 and bf16 (xla, cudnn) against transformers'
  float32 eager forward on the same GPU (TF32 off), next to transformers' own bf16 forward.
- ``train``: ``omnijax.training.trainer.setup`` + ``Stage.train_step`` (multi_transform freezing,
  clipping over the trainable gradients, metrics) on random packed batches (``c.data.source='random'``):
  ``llm1.5b`` is a text-only omni model with Qwen2.5-1.5B's sizes, everything trained;
  ``ola7b_1a`` is ``experiments/ola/stage1a.py:7b`` (Qwen2.5-7B + SigLIP-so400m + Whisper-large-v3,
  only the vision connector trains) with random weights instead of the HF checkpoints, frozen groups
  stored in bf16; ``ola1b_1.5b`` is ``experiments/ola/stage1b.py:7b`` (everything trains, SigLIP-so400m
  through the cuDNN backward) with Qwen2.5-1.5B's sizes for the LLM, since AdamW for 7B does not fit one
  GPU. ``--runs llm1.5b:xla`` times the XLA attention instead (on an H100 it did not finish
  compiling at 4096 tokens in 165 s: benchmarks/RESULTS.md section 6).

Model FLOPs (MFU numerator): a trained matmul weight costs 6 FLOPs per token (forward, input grad, weight
grad), a frozen one on the gradient path 4, a frozen one before it (the vision tower in 1a) 2; attention
costs ``12 * layers * rows * seq^2 * heads * head_dim`` when trained through (4 forward, 8 backward; the
full square, as usual for MFU), 4 forward-only. Rematerialised recomputation is not counted.

    python benchmarks/gpu.py --parts peak,numerics,train     # what RESULTS.md section 6 records (5 min)
    python benchmarks/gpu.py --parts attention --cases SigLIP,Whisper
    python benchmarks/gpu.py --quick               # tiny sizes, CPU-runnable (XLA attention only)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
from towers import interleaved as timed  # noqa: E402 - median seconds per call, round-robin

PARTS = ("peak", "attention", "numerics", "train")
TRAIN_RUNS = ("llm1.5b:cudnn", "ola7b_1a:cudnn", "ola1b_1.5b:cudnn")


def on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def peak_memory_gib() -> float:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2 ** 30


def part_peak(args) -> dict:
    import jax
    import jax.numpy as jnp

    n = 1024 if args.quick else 8192
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in range(2))
    dot = jax.jit(jnp.dot)
    t = timed({"dot": lambda: dot(a, b).block_until_ready()}, reps=20, warmup=2)["dot"]
    return {"matmul_n": n, "bf16_tflops": 2 * n ** 3 / t / 1e12, "device": jax.devices()[0].device_kind,
            "jax": jax.__version__}


def segments(rng, b: int, t: int, packed: bool, min_len: int):
    """Segment ids ``[b, t]``: packed rows hold 2-6 segments, unpacked rows one, each row right-padded."""
    import numpy as np

    seg = np.zeros((b, t), np.int32)
    for r in range(b):
        used = int(rng.integers(min_len, t + 1)) if r else t  # row 0 full, the rest padded
        cuts = np.sort(rng.choice(np.arange(1, used), size=int(rng.integers(1, 6)), replace=False)) if packed else []
        bounds = [0, *cuts, used]
        for i in range(len(bounds) - 1):
            seg[r, bounds[i]:bounds[i + 1]] = i + 1
    return seg


ATTENTION_CASES = {  # name: (batch, len, heads, kv_heads, head_dim, causal, packed)
    "Qwen2.5-7B causal, one sequence/row": (2, 4096, 28, 4, 128, True, False),
    "Qwen2.5-7B causal, packed rows": (2, 4096, 28, 4, 128, True, True),
    "SigLIP-so400m, 729 patches": (16, 729, 16, 16, 72, False, False),
    "Whisper-large-v3, 1500 frames": (4, 1500, 20, 20, 64, False, False),
}


def dense_attention(q, k, v, seg, causal: bool):
    """The reference: softmax over the whole square in float32, masked to the same nonzero segment (and the
    past when causal), grouped query heads repeated. Nothing blocked or fused, so nothing to get wrong."""
    import jax
    import jax.numpy as jnp

    groups = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(x, groups, axis=2) for x in (k, v))
    scores = jnp.einsum("bqnh,bknh->bnqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
    if causal:
        mask &= jnp.tril(jnp.ones(mask.shape[1:], bool))
    probs = jax.nn.softmax(jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("bnqk,bknh->bqnh", jnp.where(mask[:, None], probs, 0), v)


def dense_fwd_bwd(q, k, v, dout, seg, causal: bool):
    import jax

    out, vjp = jax.vjp(lambda *x: dense_attention(*x, seg, causal), q, k, v)
    return (out, *vjp(dout))


def part_attention(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from omnijax.models.attention import attention

    impls = [i for i in args.impls.split(",") if on_gpu() or i == "xla"]
    rows = []
    for name, (b, t, n, kv, h, causal, packed) in ATTENTION_CASES.items():
        if args.cases and not any(c in name for c in args.cases.split(",")):
            continue
        if args.quick:
            b, t, n, kv = 2, 256, 4, 2 if kv < n else 4
        rng = np.random.default_rng(0)
        seg = jnp.asarray(segments(rng, b, t, packed, t // 2))
        q = jnp.asarray(rng.standard_normal((b, t, n, h), np.float32))
        k, v = (jnp.asarray(rng.standard_normal((b, t, kv, h), np.float32)) for _ in range(2))
        # The output's cotangent is zero on padding, as under any loss that masks it: what padded queries
        # attend to is each implementation's own choice and no model's concern.
        dout = jnp.where((seg != 0)[:, :, None, None], jnp.asarray(rng.standard_normal((b, t, n, h), np.float32)), 0)

        def fwd_bwd(q, k, v, dout, impl, dtype):
            # cudnn-mask: packed rows through cuDNN's explicit mask rather than its packed layout
            out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal,
                                                          implementation=impl.split("-")[0], packed=packed,
                                                          max_segments=0 if impl == "cudnn-mask" else None),
                               *(x.astype(dtype) for x in (q, k, v)))
            return (out, *vjp(dout.astype(dtype)))

        with jax.default_matmul_precision("highest"):
            ref = jax.jit(dense_fwd_bwd, static_argnums=5)(q, k, v, dout, seg, causal)
        valid = (seg != 0)[:, :, None, None]
        errors, calls, temp, compile_s = {}, {}, {}, {}
        print(f"attention: {name}: reference done", flush=True)
        for impl in impls:
            fn = jax.jit(lambda *a, impl=impl: fwd_bwd(*a, impl, jnp.bfloat16))
            t0 = time.perf_counter()
            compiled = fn.lower(q, k, v, dout).compile()
            compile_s[impl] = time.perf_counter() - t0
            got = compiled(q, k, v, dout)
            errors[impl] = [float(jnp.linalg.norm(jnp.where(valid, g.astype(jnp.float32) - r, 0))
                                  / jnp.linalg.norm(jnp.where(valid, r, 0))) for g, r in zip(got, ref)]
            temp[impl] = compiled.memory_analysis().temp_size_in_bytes / 2 ** 20
            calls[impl] = lambda c=compiled: jax.block_until_ready(c(q, k, v, dout))
            print(f"attention: {name}: {impl} compiled and checked", flush=True)
        secs = timed(calls, reps=5 if args.quick else 10, warmup=2)
        fwd_flops = 4 * b * t * t * n * h * (0.5 if causal else 1.0)
        rows.append({"case": name, "shape": f"{b}x{t}, {n}:{kv} heads x {h}", "errors": errors,
                     "ms": {k: s * 1e3 for k, s in secs.items()}, "compile_s": compile_s,
                     "tflops": {k: 3.5 * fwd_flops / s / 1e12 for k, s in secs.items()}, "temp_mib": temp})
    return {"rows": rows}


def qwen05b_config(quick: bool):
    from transformers import Qwen2Config

    size = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2) if quick else \
        dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2)
    return Qwen2Config(**size, tie_word_embeddings=True, rope_theta=1e6, max_position_embeddings=32768,
                       use_cache=False)


def part_numerics(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import Qwen2ForCausalLM

    from omnijax.hf.importer import load_hf

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = qwen05b_config(args.quick)
    b, t = (2, 64) if args.quick else (2, 512)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (b, t))
    tid = torch.from_numpy(ids).to(dev)
    hf = Qwen2ForCausalLM(cfg).float().eval()
    results = {}

    def summary(logits, ref) -> dict:
        logits, ref = (x.to(dev).float() if torch.is_tensor(x) else torch.as_tensor(x, device=dev).float()
                       for x in (logits, ref))
        nll = -torch.log_softmax(logits, -1)[:, :-1].gather(-1, tid[:, 1:, None]).mean().item()
        return {"rel_l2": float(torch.linalg.norm(logits - ref) / torch.linalg.norm(ref)),
                "max_abs": float((logits - ref).abs().max()), "loss": nll,
                "top1_agree": float((logits.argmax(-1) == ref.argmax(-1)).float().mean())}

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        with torch.no_grad():
            ref = hf.to(dev)(input_ids=tid).logits.float()
            results["transformers bf16 (eager)"] = summary(hf.to(torch.bfloat16)(input_ids=tid).logits, ref)
        del hf
        variants = [("float32", "xla", "default"), ("float32", "xla", "highest"), ("bfloat16", "xla", "default")]
        if on_gpu():
            variants.append(("bfloat16", "cudnn", "default"))
        for dtype, impl, precision in variants:
            loaded = load_hf(tmp, progress=False, dtype=dtype, attention=impl)
            fwd = jax.jit(lambda p, i, m=loaded.module: m.apply({"params": p}, i)[0])
            with jax.default_matmul_precision(precision):
                logits = np.array(fwd(loaded.params, jnp.asarray(ids, jnp.int32)).astype(jnp.float32))
            results[f"omnijax {dtype} {impl} (matmul precision {precision})"] = summary(logits, ref)
            print(f"numerics: omnijax {dtype} {impl} {precision} done", flush=True)
            del loaded
    return {"config": f"Qwen2 hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}; "
                      f"{b} x {t} tokens; reference transformers float32 eager on {dev}, TF32 off",
            "ref_loss": summary(ref, ref)["loss"], "rows": results}


QWEN25_1P5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                   num_kv_heads=2, tie_word_embeddings=True)


def train_config(model: str, impl: str, args):
    from experiments import common
    from experiments.ola import stage1a, stage1b

    if model == "llm1.5b":
        c = common.stage_config("7b", "bench_llm1.5b", common.omni_model("7b", vision_connector=None,
                                                                         audio_connector=None))
        c.model.llm.update(QWEN25_1P5B)
        c.media.update(image_slots=0, video_slots=0, audio_slots=0)  # text only
        c.trainable = [(".*", common.schedule(1e-5))]
        c.batch_size, c.seq_len = args.llm_batch, args.seq
    elif model == "ola7b_1a":
        c = stage1a.get_config("7b")
        c.init_from = None  # random weights: the HF checkpoints are not on the benchmark machine
        c.frozen_param_dtype = "bfloat16"  # 8.9B params in float32 leave too little of one 80 GB GPU
        c.batch_size, c.seq_len = args.omni_batch, args.seq
    else:  # ola1b_1.5b: stage 1b trains everything, SigLIP-so400m included; AdamW for 7B is over one GPU
        c = stage1b.get_config("7b")
        c.model.llm.update(QWEN25_1P5B)
        c.init_from = None
        c.batch_size, c.seq_len = args.omni_batch, args.seq
    for tower in ("llm", "vision", "audio"):
        if c.model.get(tower):
            c.model[tower].attention = impl.split("-")[0]
    if impl == "cudnn-mask":  # packed rows through cuDNN's explicit mask rather than its packed layout
        c.model.llm.cudnn_max_segments = 0
    if args.quick:
        c.model.llm.update(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                           num_kv_heads=2)
        if c.model.get("vision"):
            c.model.vision.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4)
            c.model.audio.update(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128)
            c.model.frame_stack_hidden = 64
        c.batch_size, c.seq_len = 2, 2048
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.source = "random"
    c.num_steps = 1000
    return c


def trains(c, path: str) -> bool:
    """Whether the stage's first ``trainable`` rule that matches ``path`` gives it a learning rate."""
    import re

    return next(lr for rule, lr in c.trainable if re.fullmatch(rule, path)) is not None


def model_flops(c, batch: dict) -> float:
    """Model FLOPs of one step (module docstring): trained vs frozen weights, the LLM's attention square."""
    from omnijax.models.llm import LLMConfig

    llm = LLMConfig(**{k: v for k, v in c.model.llm.items()})
    h, f = llm.hidden_size, llm.intermediate_size
    q, kv = llm.num_heads * llm.head_dim, llm.num_kv_heads * llm.head_dim
    n_llm = llm.num_layers * (2 * h * q + 2 * h * kv + 3 * h * f) + h * llm.vocab_size
    rows, seq = batch["input_ids"].shape
    trained = trains(c, "llm/layers/mlp/kernel")
    flops = (6 if trained else 4) * n_llm * rows * seq + 12 * llm.num_layers * rows * seq * seq * q
    if "images" in batch and c.model.get("vision"):
        v = c.model.vision
        patches = (v.image_size // v.patch_size) ** 2
        images = batch["images"].shape[0] * batch["images"].shape[1]
        n_v = v.num_layers * (4 * v.hidden_size ** 2 + 2 * v.hidden_size * v.intermediate_size)
        w, a = (6, 12) if trains(c, "vision/layers/mlp/kernel") else (2, 4)
        flops += images * (w * n_v * patches + a * v.num_layers * patches * patches * v.hidden_size)
    return float(flops)


def part_train(args, run: str) -> dict:
    import jax
    import numpy as np

    from omnijax.training import trainer

    model, impl = run.split(":")
    c = train_config(model, impl, args)
    t0 = time.perf_counter()
    stage = trainer.setup(c)
    state = stage.init_state()
    data = stage.random_batches()
    batches = [stage.global_batch(data.batch_at(i)) for i in range(3)]
    with stage.context():
        compiled = stage.train_step().lower(state, batches[0]).compile()
    setup_s = time.perf_counter() - t0
    print(f"train {run}: set up and compiled in {setup_s:.0f} s", flush=True)
    box = {"state": state}

    def step(i=[0]):  # noqa: B006 - the batch counter
        box["state"], metrics = compiled(box["state"], batches[i[0] % len(batches)])
        i[0] += 1
        return jax.block_until_ready(metrics)

    metrics = [step() for _ in range(2)]
    sec = timed({"step": step}, reps=3 if args.quick else 10, warmup=0)["step"]
    host = {k: np.asarray(v) for k, v in data.batch_at(0).items()}
    flops = model_flops(c, host)
    params = sum(x.size for x in jax.tree.leaves(stage.abstract_params))
    return {"run": run, "params": params, "batch": f"{c.batch_size} x {c.seq_len}",
            "loss": [float(m["loss"]) for m in metrics], "step_s": sec, "tokens_per_s": c.batch_size * c.seq_len / sec,
            "model_tflops": flops / 1e12, "achieved_tflops": flops / sec / 1e12, "setup_s": setup_s,
            "peak_gib": peak_memory_gib(), "remat": c.model.llm.get("remat", "none")}


def child(args) -> None:
    part = args.child
    out = part_train(args, args.run) if part == "train" else globals()[f"part_{part}"](args)
    with open(args.result, "w") as f:
        json.dump(out, f)


def spawn(part: str, args, run: str | None = None) -> dict | None:
    """Run one part in a child process (its output streams through), at most ``--part-timeout`` seconds."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", part, "--result", result.name, f"--seq={args.seq}",
               f"--llm-batch={args.llm_batch}", f"--omni-batch={args.omni_batch}"] + \
            ([f"--cases={args.cases}"] if args.cases else []) + [f"--impls={args.impls}"] + \
            (["--quick"] if args.quick else []) + (["--run", run] if run else [])
        t0 = time.perf_counter()
        try:
            code = subprocess.run(cmd, timeout=args.part_timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        print(f"[{part}{' ' + run if run else ''}] {time.perf_counter() - t0:.0f} s, exit {code}", flush=True)
        with open(result.name) as f:
            text = f.read()
    return json.loads(text) if code == 0 and text else None


def report(results: dict, spec_tflops: float) -> None:
    peak = results.get("peak")
    if peak:
        print(f"\n== {peak['device']}; jax {peak['jax']}")
        print(f"bf16 matmul {peak['matmul_n']}^3: {peak['bf16_tflops']:.0f} TFLOP/s "
              f"(spec dense bf16: {spec_tflops:.0f})")
    att = results.get("attention")
    if att:
        print("\nattention forward + backward, bf16; rel. L2 error vs dense f32 (highest) on valid rows: "
              "out / dq / dk / dv")
        for r in att["rows"]:
            for impl, e in r["errors"].items():
                ratio = r["ms"]["xla"] / r["ms"][impl] if "xla" in r["ms"] else float("nan")
                print(f"  {r['case']:38s} {r['shape']:26s} {impl:6s} {r['ms'][impl]:8.2f} ms {r['tflops'][impl]:6.1f} "
                      f"TFLOP/s  x{ratio:4.2f} vs xla  compile {r['compile_s'][impl]:5.1f} s  "
                      f"temp {r['temp_mib'][impl]:8.0f} MiB  err "
                      + " / ".join(f"{x:.1e}" for x in e))
    num = results.get("numerics")
    if num:
        print(f"\nlogits vs transformers f32 ({num['config']}; reference loss {num['ref_loss']:.5f})")
        for name, s in num["rows"].items():
            print(f"  {name:48s} rel L2 {s['rel_l2']:.2e}  max|diff| {s['max_abs']:.2e}  loss {s['loss']:.5f}  "
                  f"top-1 agree {100 * s['top1_agree']:.2f}%")
    for run, r in results.items():
        if ":" in run and r:
            mfu = r["achieved_tflops"] / spec_tflops
            meas = f", {r['achieved_tflops'] / peak['bf16_tflops']:.2f} of measured matmul" if peak else ""
            print(f"\ntrain {run:16s} {r['params'] / 1e9:.2f}B params, batch {r['batch']}, remat {r['remat']}: "
                  f"{r['step_s'] * 1e3:.0f} ms/step, {r['tokens_per_s']:.0f} tok/s, {r['achieved_tflops']:.0f} model "
                  f"TFLOP/s = MFU {mfu:.2f} of spec{meas}; peak memory {r['peak_gib']:.1f} GiB; setup+compile "
                  f"{r['setup_s']:.0f} s; losses {', '.join(f'{x:.3f}' for x in r['loss'])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--runs", default=",".join(TRAIN_RUNS), help="train runs (model:attention)")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--llm-batch", type=int, default=4)
    p.add_argument("--omni-batch", type=int, default=2)
    p.add_argument("--spec-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--impls", default="xla,cudnn", help="attention implementations the attention part times")
    p.add_argument("--cases", help="attention cases whose names contain one of these (comma-separated)")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--part-timeout", type=float, default=300, help="seconds one part may run")
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    results = {}
    for part in args.parts.split(","):
        if part == "train":
            for run in args.runs.split(","):
                if args.quick:  # the CPU smoke run: cuDNN needs a GPU
                    run = run.split(":")[0] + ":xla"
                results[run] = spawn("train", args, run)
        else:
            results[part] = spawn(part, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results, args.spec_tflops)


if __name__ == "__main__":
    main()
