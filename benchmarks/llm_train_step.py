"""Train-step throughput: omnijax (JAX, jitted) against transformers (PyTorch eager) on the CPU.

One process, one config, the same initial weights and the same batch in both:

- omnijax: ``CausalLM`` (weights read through ``omnijax.hf.load_hf``) forward + the project's
  masked next-token cross entropy + ``jax.value_and_grad`` + ``optax.adamw``, one ``jax.jit`` with
  the params and optimizer state donated.
- PyTorch: ``Qwen2ForCausalLM`` forward + ``F.cross_entropy`` + ``loss.backward()`` +
  ``torch.optim.AdamW``, eager, ``torch.set_num_threads(nproc)``.

Loss in both: mean next-token cross entropy over all ``batch * (seq - 1)`` predicted tokens.
AdamW in both: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter.

The two steps and a large f32 matmul in each framework (the machine's practical FLOP/s peak) are
timed round-robin (A, B, C, D, A, B, ...) and compared by their medians, so that load from other
processes falls on all of them alike; the process CPU time of each call is recorded too. FLOPs
per step are counted analytically (formula in ``analytic_flops``) and by XLA's cost analysis of the
unrolled step. The warm-up steps check that both give the same losses.

Usage::

    python benchmarks/llm_train_step.py             # the recorded config (see benchmarks/RESULTS.md)
    python benchmarks/llm_train_step.py --quick     # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from omnijax.hf.importer import load_hf
from omnijax.models.llm import LLMConfig
from omnijax.training.losses import masked_cross_entropy, shift_targets

LR, WEIGHT_DECAY = 1e-4, 0.01


def build_hf(args):
    """A freshly initialised transformers ``Qwen2ForCausalLM`` (f32, untied, seed 0)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    hf_cfg = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq, 128), tie_word_embeddings=False, use_cache=False,
    )
    return Qwen2ForCausalLM(hf_cfg).float().train()


def import_hf(hf_model, tmp_dir: str):
    """The same weights as omnijax params, through the project's importer (``omnijax.hf.load_hf``)."""
    hf_model.save_pretrained(tmp_dir)
    return load_hf(tmp_dir, progress=False)


def next_token_loss(logits, ids):
    """Mean next-token cross entropy over the ``batch * (seq - 1)`` predicted tokens (omnijax's loss)."""
    ones = jnp.ones_like(ids)
    targets, weights = shift_targets(ids, ones, ones)
    return masked_cross_entropy(logits, targets, weights)[0]


def make_jax_step(model):
    """(optax AdamW, the jitted ``step(params, opt_state, ids) -> (params, opt_state, loss)``)."""
    tx = optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY)

    def loss_fn(params, ids):
        logits, _ = model.apply({"params": params}, ids)
        return next_token_loss(logits, ids)

    def step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, jax.jit(step, donate_argnums=(0, 1))


def make_torch_step(hf_model):
    """``step(ids) -> loss``: forward, the same loss, backward and an AdamW step, eager."""
    opt = torch.optim.AdamW(hf_model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY)
    vocab = hf_model.config.vocab_size

    def step(ids):
        opt.zero_grad(set_to_none=True)
        logits = hf_model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def analytic_flops(cfg: LLMConfig, batch: int, seq: int) -> tuple[float, int]:
    """Training FLOPs of one step: ``6 * N * tokens + 12 * layers * batch * seq^2 * heads * head_dim``.

    ``N`` = parameters used in matmuls (every weight but the input embedding, lm_head included);
    forward = 2 FLOPs per weight per token, backward = twice the forward. The attention term counts
    ``q k^T`` and ``p v`` over the full ``seq x seq`` square (the usual MFU convention; a causal
    kernel can skip about half of it). Norms, RoPE, softmax and the optimizer are not counted.
    """
    h, f, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f
    n_matmul = cfg.num_layers * per_layer + h * cfg.vocab_size
    tokens = batch * seq
    return 6.0 * n_matmul * tokens + 12.0 * cfg.num_layers * batch * seq * seq * q, n_matmul


def interleaved(fns: dict, reps: int) -> tuple[dict, dict]:
    """Run each zero-arg callable (which must block until done) ``reps`` times, round-robin.

    Returns (wall seconds, process CPU seconds) per call, by name. CPU / wall says how many cores a
    call kept busy: about ``nproc`` on an idle machine, less when other processes share the cores.
    """
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


def matmul_fns(n: int) -> dict:
    """Zero-arg calls of an ``n x n`` f32 matmul in JAX (jitted ``jnp.dot``) and PyTorch (``torch.mm``)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    dot = jax.jit(jnp.dot)
    dot(ja, jb).block_until_ready()
    torch.mm(ta, tb)
    return {"matmul jax": lambda: dot(ja, jb).block_until_ready(), "matmul torch": lambda: torch.mm(ta, tb)}


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} cores, {model}, {ram:.0f} GiB RAM, {platform.platform()}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per implementation (interleaved)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation (losses compared)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--scan-unroll", type=int, default=None, help="LLMConfig.scan_unroll (default: the config default)")
    p.add_argument("--matmul", type=int, default=2048, help="size of the square matmul for the peak")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads = 64, 160, 2, 4, 2
        args.vocab, args.batch, args.seq, args.steps, args.warmup = 256, 2, 32, 3, 2
        args.matmul = 256
    return args


def main(argv=None):
    args = parse_args(argv)
    threads = os.cpu_count()
    torch.set_num_threads(threads)  # XLA:CPU already runs its intra-op pool on every core

    hf_model = build_hf(args)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = import_hf(hf_model, tmp)
    cfg, params = loaded.cfg, loaded.params
    if args.scan_unroll:
        cfg = cfg.replace(scan_unroll=args.scan_unroll)
    tx, jax_step = make_jax_step(type(loaded.module)(cfg))
    opt_state = tx.init(params)
    ids_np = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq), dtype=np.int32)
    ids_j, ids_t = jnp.asarray(ids_np), torch.from_numpy(ids_np.astype(np.int64))
    torch_step = make_torch_step(hf_model)

    t0 = time.perf_counter()
    compiled = jax_step.lower(params, opt_state, ids_j).compile()
    compile_s = time.perf_counter() - t0
    flops, n_matmul = analytic_flops(cfg, args.batch, args.seq)
    # XLA counts a while loop's body once: count on the unrolled program (lowered only, not compiled).
    unrolled = make_jax_step(type(loaded.module)(cfg.replace(scan_unroll=cfg.num_layers)))[1]
    xla_flops = unrolled.lower(params, opt_state, ids_j).cost_analysis().get("flops", float("nan"))

    state = {"params": params, "opt": opt_state}

    def run_jax():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], ids_j)
        jax.block_until_ready((state["params"], state["opt"]))
        return float(loss)

    # Warm-up doubles as the correctness check: same weights, same batch -> same loss sequence.
    losses = [(run_jax(), float(torch_step(ids_t))) for _ in range(args.warmup)]
    loss_diff = max(abs(a - b) for a, b in losses) if losses else float("nan")

    load0 = os.getloadavg()[0]
    wall, cpu = interleaved({"omnijax": run_jax, "pytorch": lambda: torch_step(ids_t), **matmul_fns(args.matmul)},
                            args.steps)
    load1 = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in wall.items()}
    peak = {k: 2.0 * args.matmul ** 3 / med[k] for k in ("matmul jax", "matmul torch")}
    peak_best = max(peak.values())

    print(f"machine   {machine()}; 1-min load average {load0:.1f} before, {load1:.1f} after the timed loop")
    print(f"versions  jax {jax.__version__}, flax {__import__('flax').__version__}, optax {optax.__version__}, "
          f"torch {torch.__version__}, transformers {__import__('transformers').__version__}")
    print(f"threads   torch {torch.get_num_threads()}, XLA:CPU default pool ({threads} cores); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS') or '(none)'}")
    print(f"config    hidden {cfg.hidden_size}, layers {cfg.num_layers}, heads {cfg.num_heads}/{cfg.num_kv_heads} "
          f"(head_dim {cfg.head_dim}), mlp {cfg.intermediate_size}, vocab {cfg.vocab_size}, batch {args.batch} x "
          f"{args.seq}, f32, untied, scan_unroll {cfg.scan_unroll}, remat {cfg.remat}")
    print(f"flops     analytic {flops / 1e9:.1f} GFLOP/step (N_matmul {n_matmul / 1e6:.2f}M), "
          f"XLA cost_analysis {xla_flops / 1e9:.1f} GFLOP/step; jax compile {compile_s:.1f} s")
    print(f"matmul    {args.matmul}^2 f32 (interleaved with the steps): jax {peak['matmul jax'] / 1e9:.1f} GFLOP/s, "
          f"torch {peak['matmul torch'] / 1e9:.1f} GFLOP/s")
    print(f"check     first {len(losses)} losses (omnijax, pytorch): "
          + ", ".join(f"({a:.6f}, {b:.6f})" for a, b in losses) + f"; max |diff| {loss_diff:.2e}")
    print()
    print(f"{'impl':<9} {'step ms (median)':>17} {'min ms':>8} {'GFLOP/s':>8} {'of matmul peak':>15} "
          f"{'CPU s/step':>11} {'cores busy':>11}")
    for k in ("pytorch", "omnijax"):
        c = statistics.median(cpu[k])
        print(f"{k:<9} {med[k] * 1e3:>17.1f} {min(wall[k]) * 1e3:>8.1f} {flops / med[k] / 1e9:>8.1f} "
              f"{flops / med[k] / peak_best:>15.2f} {c:>11.2f} {c / med[k]:>11.2f}")
    print(f"speed ratio omnijax/pytorch (pytorch ms / omnijax ms): {med['pytorch'] / med['omnijax']:.2f} median, "
          f"{min(wall['pytorch']) / min(wall['omnijax']):.2f} best step; CPU-time ratio "
          f"{statistics.median(cpu['pytorch']) / statistics.median(cpu['omnijax']):.2f}")
    return med, peak, losses


if __name__ == "__main__":
    main()
