"""Generate text from a model.

    python -m omnijax.tools.generate --model PATH --input-ids 1,2,3 --max-new-tokens N
           [--temperature T --top-p P --seed S] [--stop-ids 2,7] [--dtype bfloat16]

PATH is a HF model directory or an omnijax checkpoint. Greedy by default. Stops at the model's
``eos_token_id`` (from its config / generation config) unless ``--stop-ids`` is given. The last line
printed is the generated ids, space-separated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

from omnijax.checkpoint import assets_of, load_model
from omnijax.inference import generate


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", ",").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from None


def default_stop_ids(path: str, cfg) -> list[int]:
    assets = assets_of(path)
    gen = os.path.join(assets, "generation_config.json") if assets else None
    eos = cfg.eos_token_id
    if gen and os.path.exists(gen):
        with open(gen) as f:
            eos = json.load(f).get("eos_token_id", eos)
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnijax.tools.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory or omnijax checkpoint")
    parser.add_argument("--input-ids", required=True, type=_ids, help="prompt token ids, e.g. 1,2,3")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-ids", type=_ids, help="stop token ids (default: the model's eos)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    try:
        loaded = load_model(args.model, dtype=args.dtype, progress=False)
        stop = args.stop_ids if args.stop_ids is not None else default_stop_ids(args.model, loaded.cfg)
        out = generate(loaded.module, loaded.params, [args.input_ids], max_new_tokens=args.max_new_tokens,
                       stop_token_ids=stop, temperature=args.temperature, top_p=args.top_p,
                       rng=jax.random.key(args.seed))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(" ".join(str(t) for t in out.tokens[0, : out.lengths[0]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
