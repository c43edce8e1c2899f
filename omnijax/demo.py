"""The main job, at its current size: a Qwen2 checkpoint through omnijax and back, checked against
transformers at every step.

    python -m omnijax.demo --workdir workdirs/demo

1. builds a small random ``Qwen2ForCausalLM`` offline and saves it in HF format (sharded safetensors);
2. imports it (``omnijax.hf.convert import``) into an omnijax checkpoint;
3. compares omnijax's logits with transformers' (float32), on one device and on an 8-device
   ``fsdp x tensor`` mesh (simulated on CPU when there are no accelerators);
4. generates greedily with the KV cache and compares with ``transformers.generate``;
5. exports back to HF (``omnijax.hf.convert export``) and reloads it in transformers.

The omni recipes (towers, connectors, staged training on the synthetic corpus) replace this job as
they land; see the README's feature table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnijax.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="workdirs/demo")
    args = parser.parse_args(argv)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

    import jax
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from omnijax import sharding
    from omnijax.checkpoint import load_model
    from omnijax.hf import convert
    from omnijax.inference import generate

    start = time.time()
    rows: list[tuple[str, str, bool]] = []

    def step(name: str, detail: str, ok: bool) -> None:
        rows.append((name, detail, ok))
        print(f"[{time.time() - start:6.1f}s] {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    hf_dir, ckpt, export = (os.path.join(work, d) for d in ("hf_source", "omnijax_ckpt", "hf_export"))
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=512, hidden_size=96, intermediate_size=224, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=512, initializer_range=0.2,
        bos_token_id=1, eos_token_id=2)).eval()
    hf.save_pretrained(hf_dir, max_shard_size="200KB")
    step("build", f"random Qwen2 (GQA 8:2, 4 layers) saved to {hf_dir}", True)

    rc = convert.main(["import", "--hf", hf_dir, "--out", ckpt, "--overwrite"])
    step("import", f"HF -> omnijax checkpoint {ckpt}", rc == 0)

    ids = np.random.RandomState(0).randint(3, 512, (2, 24))
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    loaded = load_model(ckpt)
    got = np.asarray(jax.jit(loaded.module.apply)({"params": loaded.params}, ids)[0])
    err = float(np.abs(got - want).max() / np.abs(want).max())
    step("logits", f"max|diff|/max|logit| = {err:.1e} vs transformers (limit 1e-4)", err <= 1e-4)

    mesh = sharding.make_mesh({"fsdp": 2, "tensor": -1})
    rules = sharding.logical_rules("fsdp_tp")
    sharded = load_model(ckpt, mesh=mesh, rules=rules)
    with sharding.activation_sharding(mesh, rules):
        got_sharded = np.asarray(jax.jit(sharded.module.apply)({"params": sharded.params}, ids)[0])
    err = float(np.abs(got_sharded - got).max() / np.abs(got).max())
    step("sharded", f"{dict(mesh.shape)} mesh, FSDP+TP rules: max rel diff {err:.1e} vs one device", err <= 1e-5)

    prompt = [int(t) for t in ids[0, :8]]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32, min_new_tokens=32,
                          eos_token_id=None, pad_token_id=0)[0, 8:].tolist()
    out = generate(loaded.module, loaded.params, [prompt], max_new_tokens=32).tokens[0].tolist()
    same = sum(a == b for a, b in zip(out, ref))
    step("generate", f"greedy 32 tokens: {same}/32 equal to transformers.generate", out == ref)

    rc = convert.main(["export", "--ckpt", ckpt, "--out", export, "--max-shard-size", "200KB", "--overwrite"])
    back, info = Qwen2ForCausalLM.from_pretrained(export, output_loading_info=True)
    with torch.no_grad():
        again = back.eval()(torch.tensor(ids)).logits.numpy()
    clean = not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    step("export", f"omnijax -> HF {export}: loads cleanly={clean}, logits identical={np.array_equal(again, want)}",
         rc == 0 and clean and np.array_equal(again, want))

    failed = [name for name, _, ok in rows if not ok]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} steps passed in {time.time() - start:.0f}s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
