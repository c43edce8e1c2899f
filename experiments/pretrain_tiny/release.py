"""Rebuild the shipped tiny pretrained checkpoints (``checkpoints/tiny``) from scratch: build omni-synth,
run ``experiments/pretrain_tiny/recipe.py:tiny`` and write its final LLM (with the omni-synth tokenizer),
vision tower and audio tower as HF directories, with what they were trained on.

    python -m experiments.pretrain_tiny.release [--workdir workdirs/pretrain_tiny] [--corpus workdirs/omni-synth]
                                                [--out checkpoints/tiny] [--beats-only]

About 30 minutes on 2 CPU cores. Writes, whole or not at all::

    OUT/llm/       Qwen2ForCausalLM (config.json, model.safetensors) + tokenizer.json, tokenizer_config.json,
                   chat_template.jinja: the omni-synth BPE
    OUT/vision/    SiglipVisionModel
    OUT/audio/     WhisperEncoder (transformers' WhisperEncoder.from_pretrained)
    OUT/beats/     BEATs in the reference code's state_dict naming (``omnijax.hf.beats``): the music encoder of
                   ``audio=dual``, from stage 0c
    OUT/omni_synth.json  the pin: omni-synth version, seed and size, the tokenizer's sha256, each stage's
                   steps and final loss (``experiments.common.check_tiny_checkpoints`` reads it)
    OUT/README.md  the same in words

The tiny presets import these with ``init_from`` through ``omnijax.hf``, as the ``7b`` presets import
Qwen2.5-7B, SigLIP-so400m and Whisper-large-v3.

``--beats-only`` runs the BEATs stage alone (``recipe.BEATS_FROM``, about 12 minutes) from the checkpoints already in
OUT -- the groups its ``init_from`` takes from stage 0b read from OUT's HF directories, which hold 0b's weights -- and
replaces ``OUT/beats`` and the pin's entry for that stage; the other parts are not touched.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import sys

from experiments import common
from experiments.pretrain_tiny import recipe as pretrain

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipe.py") + ":tiny"


def _steps(stage_dir: str) -> int:
    with open(os.path.join(stage_dir, "stage.json")) as f:
        return json.load(f)["num_steps"]


def _final_loss(stage_dir: str) -> float | None:
    with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[-1].get("loss") if rows else None


def write_release(result, corpus: str, out: str) -> dict:
    """The shipped stage's LLM, vision and audio towers and the BEATs stage's BEATs from ``result`` (a finished
    pretraining run) into ``out`` as HF directories, with the pin file and a README; returns the pin."""
    from data_pipelines import synth
    from data_pipelines import tokenizer as tok
    from omnijax.checkpoint import load_model
    from omnijax.hf import beats, qwen2, siglip, whisper
    from omnijax.hf.exporter import save_hf
    from omnijax.outdir import atomic_dir

    loaded = load_model(result.stage_dir(pretrain.SHIPPED_FROM), progress=False)
    cfg, params = loaded.cfg, loaded.params
    sounds = load_model(result.stage_dir(pretrain.BEATS_FROM), progress=False)
    tokenizer = os.path.join(corpus, tok.SYNTH_TOKENIZER_DIR)
    with open(os.path.join(corpus, synth.MANIFEST)) as f:
        manifest = json.load(f)
    with open(os.path.join(tokenizer, "tokenizer.json"), "rb") as f:
        tokenizer_sha = hashlib.sha256(f.read()).hexdigest()
    pin = {"omni_synth_version": manifest["version"], "corpus": {"seed": manifest["seed"], "size": manifest["size"]},
           "tokenizer_sha256": tokenizer_sha, "recipe": "experiments/pretrain_tiny/recipe.py:tiny",
           "shipped_from": pretrain.SHIPPED_FROM, "beats_from": pretrain.BEATS_FROM, "made_with": common.REBUILD,
           "date": datetime.date.today().isoformat(),
           "stages": {n: {"steps": _steps(result.stage_dir(n)), "final_loss": _final_loss(result.stage_dir(n))}
                      for n in result.stages}}
    parts = {"llm": (qwen2.QWEN2, cfg.llm, {"llm": params["llm"]}, tokenizer),
             "vision": (siglip.SIGLIP_VISION, cfg.vision, {"vision": params["vision"]}, None),
             "audio": (whisper.WHISPER_ENCODER, cfg.audio, {"audio": params["audio"]}, None),
             "beats": (beats.BEATS, sounds.cfg.beats, {"beats": sounds.params["audio"]["beats"]}, None)}
    with atomic_dir(out, overwrite=True) as tmp:
        for name, (arch, part_cfg, part_params, assets) in parts.items():
            save_hf(os.path.join(tmp, common.TINY_DIRS[name]), arch, part_cfg, part_params, assets_dir=assets,
                    progress=False)
        with open(os.path.join(tmp, common.PIN_FILE), "w") as f:
            json.dump(pin, f, indent=1)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(readme(pin))
    return pin


def rebuild_beats(workdir: str, corpus: str, out: str, *, steps: int | None = None, log=print) -> dict:
    """``--beats-only``: the BEATs stage run in ``workdir`` from the shipped parts in ``out`` (the corpus must be the
    pinned omni-synth version: ``common.check_tiny_checkpoints``), then ``out/beats``, the pin and the README
    rewritten, each whole or not at all; returns the pin."""
    from omnijax import experiment
    from omnijax.checkpoint import load_model
    from omnijax.hf import beats
    from omnijax.hf.exporter import save_hf
    from omnijax.outdir import atomic_dir

    pin = common.check_tiny_checkpoints(corpus, out)
    name = pretrain.BEATS_FROM
    stage = importlib.import_module(f"{__package__}.{dict(pretrain.STAGES['tiny'])[name].removesuffix('.py')}")
    c = stage.get_config("tiny")
    with c.ignore_type():
        c.init_from = [(os.path.abspath(os.path.join(out, common.TINY_DIRS[g])), (g,)) for g in stage.KEPT]
    result = experiment.run_recipe([(name, c)], workdir, corpus=corpus, steps=steps, evaluate=False, progress=None,
                                   log=log)
    if not result.complete:
        raise RuntimeError(f"stage {name} did not finish in {workdir}")
    sounds = load_model(result.stage_dir(name), progress=False)
    pin["stages"][name] = {"steps": _steps(result.stage_dir(name)), "final_loss": _final_loss(result.stage_dir(name))}
    pin["beats_rebuilt"] = {"date": datetime.date.today().isoformat(), "made_with": f"{common.REBUILD} --beats-only"}
    with atomic_dir(os.path.join(out, common.TINY_DIRS["beats"]), overwrite=True) as tmp:
        save_hf(tmp, beats.BEATS, sounds.cfg.beats, {"beats": sounds.params["audio"]["beats"]}, progress=False)
    for file, text in ((common.PIN_FILE, json.dumps(pin, indent=1)), ("README.md", readme(pin))):
        with open(os.path.join(out, file + ".tmp"), "w") as f:
            f.write(text)
        os.replace(os.path.join(out, file + ".tmp"), os.path.join(out, file))
    return pin


def readme(pin: dict) -> str:
    stages = "\n".join(f"| {n} | {s['steps']} | {s['final_loss']:.3f} |" for n, s in pin["stages"].items())
    rebuilt = pin.get("beats_rebuilt")
    again = (f" BEATs was made again on {rebuilt['date']} by `{rebuilt['made_with']}` (stage `{pin['beats_from']}` "
             "alone, from these parts)." if rebuilt else "")
    return f"""# Tiny pretrained checkpoints

What the tiny presets start from, as the papers start from Qwen2.5, SigLIP and Whisper (no pretrained model
can be downloaded where omnijax's tests and demo run). Made on {pin['date']} by `{pin['made_with']}` from
`{pin['recipe']}` on omni-synth version {pin['omni_synth_version']} (seed {pin['corpus']['seed']}, size
{pin['corpus']['size']}); the parts are stage `{pin['shipped_from']}`'s, BEATs stage `{pin['beats_from']}`'s.{again}

- `llm/`: `Qwen2ForCausalLM` with the omni-synth BPE tokenizer (tokenizer.json sha256 `{pin['tokenizer_sha256']}`)
- `vision/`: `SiglipVisionModel`
- `audio/`: `WhisperEncoder` (`transformers.models.whisper.modeling_whisper.WhisperEncoder.from_pretrained`)
- `beats/`: BEATs (Microsoft's reference `state_dict` naming, `omnijax.hf.beats`), the music encoder of `audio=dual`
- `omni_synth.json`: what they were trained on; a corpus of another version is refused.

| stage | steps | final loss |
|---|---|---|
{stages}
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.pretrain_tiny.release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="workdirs/pretrain_tiny", help="the pretraining recipe's workdir (resumed)")
    p.add_argument("--corpus", default=os.environ.get("OMNIJAX_CORPUS", "workdirs/omni-synth"),
                   help="the omni-synth folder (default $OMNIJAX_CORPUS, else workdirs/omni-synth)")
    p.add_argument("--out", default=common.TINY_CHECKPOINTS, help="where the checkpoints go (replaced whole)")
    p.add_argument("--beats-only", action="store_true",
                   help="run only the BEATs stage, from the checkpoints in --out, and replace their beats/")
    args = p.parse_args(argv)
    from omnijax import experiment

    if args.beats_only:
        try:
            pin = rebuild_beats(args.workdir, os.path.abspath(args.corpus), args.out)
        except (*experiment.USER_ERRORS, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {os.path.join(args.out, common.TINY_DIRS['beats'])}: stage {pretrain.BEATS_FROM} final loss "
              f"{pin['stages'][pretrain.BEATS_FROM]['final_loss']:.3f}")
        return 0
    try:
        result = experiment.run_recipe(RECIPE, args.workdir, corpus=args.corpus, evaluate=False, progress=None,
                                       compilation_cache=os.path.join(args.workdir, ".jax_cache"))
    except experiment.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not result.complete:
        return 1
    pin = write_release(result, os.path.abspath(args.corpus), args.out)
    print(f"wrote {args.out}: omni-synth v{pin['omni_synth_version']}, stages " +
          ", ".join(f"{n} {s['final_loss']:.3f}" for n, s in pin["stages"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
