"""Tower forward throughput: omnijax (jitted JAX) against transformers (PyTorch eager), same CPU.

- Vision: ``SiglipVisionModel`` at SigLIP-base-patch16-384 sizes (768 wide, 12 layers, 576 patches),
  images/s for a batch of images.
- Audio: the Whisper encoder at whisper-base sizes (512 wide, 6 layers, 80 mels, one 30 s window =
  3000 frames), seconds of audio encoded per second.

Both sides get the same random weights (built with transformers, saved, imported by omnijax) and the
same inputs; outputs are checked equal first. Each pair is timed interleaved (A, B, A, B, ...) and
compared by medians, so machine noise hits both alike; the ratio is the figure to read.

    python benchmarks/towers.py            # the recorded configs (benchmarks/RESULTS.md)
    python benchmarks/towers.py --quick    # tiny sizes, a smoke run
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
import torch

from omnijax.checkpoint import load_model


def interleaved(fns: dict, reps: int, warmup: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_vision(args, tmp: str) -> dict:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=64, patch_size=16) if args.quick else \
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             image_size=384, patch_size=16)
    torch.manual_seed(0)
    hf = SiglipVisionModel(SiglipVisionConfig(**size)).eval()
    hf.save_pretrained(os.path.join(tmp, "siglip"))
    ours = load_model(os.path.join(tmp, "siglip"), progress=False)
    pixels = np.random.RandomState(0).uniform(-1, 1, (args.images, 3, size["image_size"], size["image_size"]))
    pixels = pixels.astype(np.float32)
    fwd = jax.jit(ours.module.apply)
    nhwc = jnp.asarray(pixels.transpose(0, 2, 3, 1))
    tp = torch.from_numpy(pixels)

    def run_jax():
        return fwd({"params": ours.params}, nhwc)[0].block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return hf(pixel_values=tp).last_hidden_state

    err = float(np.abs(np.asarray(run_jax()) - run_torch().numpy()).max())
    t = interleaved({"omnijax": run_jax, "pytorch": run_torch}, args.reps, args.warmup)
    return {"name": f"SigLIP vision {size['image_size']}px x{args.images}", "unit": "images/s",
            "omnijax": args.images / t["omnijax"], "pytorch": args.images / t["pytorch"], "max_abs_diff": err}


def bench_audio(args, tmp: str) -> dict:
    from transformers import WhisperConfig, WhisperModel

    size = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                max_source_positions=200) if args.quick else \
        dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
             max_source_positions=1500)
    torch.manual_seed(0)
    hf = WhisperModel(WhisperConfig(num_mel_bins=80, decoder_layers=1, decoder_attention_heads=4,
                                    decoder_ffn_dim=64, vocab_size=128, pad_token_id=0, bos_token_id=1,
                                    eos_token_id=2, decoder_start_token_id=1, **size)).eval()
    hf.save_pretrained(os.path.join(tmp, "whisper"))
    ours = load_model(os.path.join(tmp, "whisper"), progress=False)
    frames = 2 * size["max_source_positions"]
    feats = np.random.RandomState(0).uniform(-1, 1, (args.clips, 80, frames)).astype(np.float32)
    fwd = jax.jit(ours.module.apply)
    jf, tf = jnp.asarray(feats), torch.from_numpy(feats)
    encoder = hf.get_encoder()

    def run_jax():
        return fwd({"params": ours.params}, jf).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return encoder(tf).last_hidden_state

    err = float(np.abs(np.asarray(run_jax()) - run_torch().numpy()).max())
    t = interleaved({"omnijax": run_jax, "pytorch": run_torch}, args.reps, args.warmup)
    seconds = args.clips * frames / 100  # 100 mel frames per second of audio
    return {"name": f"Whisper encoder d{size['d_model']} x{args.clips} clips of {frames // 100} s",
            "unit": "audio s/s", "omnijax": seconds / t["omnijax"], "pytorch": seconds / t["pytorch"],
            "max_abs_diff": err}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}, "
          f"torch {torch.__version__}; float32")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_vision(args, tmp), bench_audio(args, tmp)]
    print(f"{'tower':48s} {'unit':10s} {'omnijax':>9s} {'pytorch':>9s} {'ratio':>6s} {'max|diff|':>9s}")
    for r in rows:
        print(f"{r['name']:48s} {r['unit']:10s} {r['omnijax']:9.2f} {r['pytorch']:9.2f} "
              f"{r['omnijax'] / r['pytorch']:6.2f} {r['max_abs_diff']:9.1e}")


if __name__ == "__main__":
    main()
