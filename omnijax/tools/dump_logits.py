"""Run a model on HF forward inputs and save what transformers would return.

    python -m omnijax.tools.dump_logits --model PATH --inputs IN.npz --out OUT.npy [--dtype bfloat16]

PATH is a HF model directory or an omnijax checkpoint. IN.npz holds the keyword arrays of the HF
forward (``input_ids``, optional ``attention_mask``; multimodal models also take what their HF
processors produce). OUT.npy is float32: logits ``[batch, seq, vocab]`` for a full model, the
``last_hidden_state`` for a tower-only checkpoint. Computes in float32 unless ``--dtype bfloat16``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from omnijax.checkpoint import load_model
from omnijax.errors import report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnijax.tools.dump_logits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory or omnijax checkpoint")
    parser.add_argument("--inputs", required=True, help=".npz of HF forward keyword arrays")
    parser.add_argument("--out", required=True, help=".npy to write (float32)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    args = parser.parse_args(argv)
    try:
        with np.load(args.inputs) as f:
            inputs = {k: f[k] for k in f.files}
        loaded = load_model(args.model, dtype=args.dtype)
        out = np.asarray(loaded.arch.hf_forward(loaded.module, loaded.params, inputs), np.float32)
    except (ValueError, FileNotFoundError, KeyError) as e:
        return report(e)
    np.save(args.out, out)
    print(f"wrote {args.out} {out.shape} float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
