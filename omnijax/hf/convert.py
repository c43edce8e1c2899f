"""HF <-> omnijax conversion.

    python -m omnijax.hf.convert import --hf DIR --out CKPT [--overwrite]
    python -m omnijax.hf.convert export --ckpt CKPT --out DIR [--part full|llm|stock] [--dtype bfloat16]
                                        [--max-shard-size 5GB] [--overwrite]

CKPT is an omnijax model directory, a finished omni stage workdir or a HF model directory. ``--part``
(``omnijax.hf.omni.part``): ``full`` (default) the model as it is, an omni model as one
``OmnijaxOmniModel`` directory; ``llm`` its LLM as ``Qwen2ForCausalLM``; ``stock`` the model as
``LlavaOnevisionForConditionalGeneration`` / ``Qwen2AudioForConditionalGeneration`` when it is exactly
one (else an error naming why). The tokenizer files come along (a stage's: ``c.data.tokenizer``).

An Ola release directory (``OlaQwenForCausalLM``: Ola-7B's layout, its two speech-encoder files beside it as
safetensors) imports as an omni model and exports back to that layout (``omnijax.hf.ola``).

Both refuse an existing non-empty output (unless ``--overwrite``) and write it whole or not at all. A weights
file cut short or not safetensors is named in one line (exit status 2; ``OMNIJAX_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import re
import sys

from omnijax.checkpoint import assets_of, load_model, save_model_dir
from omnijax.errors import report
from omnijax.hf.exporter import DEFAULT_SHARD_BYTES, save_hf
from omnijax.hf.importer import load_hf
from omnijax.hf.omni import PARTS, part
from omnijax.outdir import check_writable

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected e.g. 5GB, 500MB or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def import_model(hf_dir: str, out: str, overwrite: bool = False) -> None:
    """A HF model directory -> an omnijax model directory ``out`` (params, description, tokenizer files)."""
    check_writable(out, overwrite)
    save_model_dir(out, load_hf(hf_dir), assets_dir=hf_dir, overwrite=overwrite)


def export_model(ckpt: str, out: str, part_name: str = "full", dtype: str | None = None,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> None:
    """An omnijax checkpoint, finished stage workdir or HF directory -> a HF directory ``out`` (``part_name``:
    ``omnijax.hf.omni.PARTS``; ``dtype``: the tensors', default as stored), with its tokenizer files."""
    check_writable(out, overwrite)
    loaded = part(load_model(ckpt), part_name)
    if dtype is not None:
        import jax.numpy as jnp

        dtype = jnp.dtype(dtype)
    save_hf(out, loaded.arch, loaded.cfg, loaded.params, assets_dir=assets_of(ckpt), dtype=dtype,
            max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnijax.hf.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="HF model directory -> omnijax checkpoint")
    imp.add_argument("--hf", required=True, help="HF model directory (safetensors)")
    imp.add_argument("--out", required=True, help="omnijax checkpoint directory to create")
    imp.add_argument("--overwrite", action="store_true")
    exp = sub.add_parser("export", help="omnijax checkpoint -> HF model directory")
    exp.add_argument("--ckpt", required=True, help="omnijax checkpoint, omni stage workdir or HF directory")
    exp.add_argument("--out", required=True, help="HF directory to create")
    exp.add_argument("--part", choices=PARTS, default="full",
                     help="full: the whole model; llm: its LLM (Qwen2ForCausalLM); stock: its stock transformers class")
    exp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="tensor dtype (default: as stored)")
    exp.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES)
    exp.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "import":
            import_model(args.hf, args.out, args.overwrite)
        else:
            export_model(args.ckpt, args.out, args.part, args.dtype, args.max_shard_size, args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # damaged files too (omnijax.errors)
        return report(e)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
