"""The main job: Ola's recipe at tiny size on omni-synth, evaluated after every stage, exported to HF.

    python -m omnijax.demo --workdir workdirs/demo            # what `make demo` runs

1. records Python, the CPU and the package versions (``W/environment.json``), builds the omni-synth corpus
   (cached in ``--corpus``, default ``workdirs/omni-synth``) and checks it is the version the shipped tiny
   pretrained checkpoints (``checkpoints/tiny``) were trained on;
2. runs ``experiments/ola/recipe.py:tiny`` in this process (``omnijax.experiment.run_recipe``): Ola's stages
   1a, 1b, 2, 3a, 3b, the first from the shipped pretrained LLM, vision tower and audio tower with fresh
   connectors, each next one from the previous one's params; resumable;
3. evaluates every stage on the held-out split and prints the stage table (``W/ola/eval.md``): ASR WER,
   image / video / video-audio question accuracy, the spoken-question gap;
4. exports the final stage (``omnijax.hf.convert.export_model``): the full omni model (``W/export/omni``) and
   the LLM alone (``W/export/llm``);
5. loads the exported LLM in transformers (``Qwen2ForCausalLM``) and compares its logits with omnijax's
   (float32), and re-imports the full export and checks the params are bit-identical;
6. asks the final stage ten held-out image questions (``omnijax.experiment.load_model(W).ask(q, image=...)``)
   and checks the answers beat a blind answerer by 30 points.

``--smoke`` runs the same job on the tiny corpus for 2 steps a stage (the test suite's check that
the main command works end to end; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

RECIPE = "experiments/ola/recipe.py:tiny"
EVAL_LIMIT = 100  # held-out examples per task and stage
# The packages whose versions a table depends on: the same code printed other numbers in another environment whose
# versions were not recorded (benchmarks/RESULTS.md §7.6); W/environment.json keeps them beside the table.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "av", "tokenizers", "transformers", "torch")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnijax.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--corpus", help="the omni-synth folder (default $OMNIJAX_CORPUS, else workdirs/omni-synth; "
                                         "with --smoke WORKDIR/omni-synth-tiny)")
    parser.add_argument("--smoke", action="store_true", help="tiny corpus, 2 steps a stage (tests)")
    args = parser.parse_args(argv)
    work = os.path.abspath(args.workdir)
    corpus = args.corpus or (os.path.join(work, "omni-synth-tiny") if args.smoke else
                             os.environ.get("OMNIJAX_CORPUS", os.path.join(os.path.dirname(work), "omni-synth")))

    import jax
    import numpy as np

    from data_pipelines import synth
    from experiments import common
    from omnijax import experiment
    from omnijax.checkpoint import load_model
    from omnijax.eval import report
    from omnijax.hf import convert

    start = time.time()
    checks: list[tuple[str, bool]] = []

    def say(msg: str) -> None:
        print(f"[{time.time() - start:6.0f}s] {msg}", flush=True)

    def check(name: str, detail: str, ok: bool) -> None:
        checks.append((name, ok))
        say(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")

    env = environment()
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "environment.json"), "w") as f:
        json.dump(env, f, indent=1)
    say(f"environment: Python {env['python']}, {env['cpu']}, "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items()) + f" ({work}/environment.json)")
    say(f"omni-synth ({'tiny' if args.smoke else 'default'} size) -> {corpus}")
    manifest = synth.prepare(corpus, size="tiny" if args.smoke else "default")
    say(f"omni-synth ready ({sum(t['examples'] for t in manifest['splits']['train']['tasks'].values())} train "
        "examples)")
    try:
        pin = common.check_tiny_checkpoints(corpus)
    except common.CorpusMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say(f"starting from the shipped tiny checkpoints in {common.TINY_CHECKPOINTS} (omni-synth v"
        f"{pin['omni_synth_version']})")

    ola = os.path.join(work, "ola")
    result = experiment.run_recipe(RECIPE, ola, corpus=corpus, steps=2 if args.smoke else None,
                                   eval_limit=4 if args.smoke else EVAL_LIMIT, log=say, progress=None,
                                   compilation_cache=None if args.smoke else os.path.join(work, ".jax_cache"))
    check("recipe", f"{len(result.rows)} stages of {RECIPE} in {ola}",
          result.complete and len(result.rows) == len(result.stages))
    if not result.complete:
        return 1
    table, chance = report.read_report(ola)
    print("\nheld-out omni-synth, after each stage (%; chance: " +
          ", ".join(f"{k} {100 * v:.1f}" for k, v in (chance or {}).items()) + ")\n")
    print(report.format_table(table) + "\n", flush=True)

    final = result.stage_dir(result.stages[-1])
    omni_dir, llm_dir = (os.path.join(work, "export", p) for p in ("omni", "llm"))
    convert.export_model(final, omni_dir, "full", overwrite=True)
    convert.export_model(final, llm_dir, "llm", overwrite=True)
    check("export", f"{final} -> {omni_dir} (full omni) and {llm_dir} (Qwen2ForCausalLM)",
          all(os.path.isfile(os.path.join(d, "config.json")) for d in (omni_dir, llm_dir)))

    trained_model = load_model(final, progress=False)
    again = load_model(omni_dir, progress=False)
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                     trained_model.params, again.params))
    check("re-import", f"{omni_dir} -> omnijax: params bit-identical = {same}", same)

    err = llm_logits_error(trained_model, llm_dir)
    check("transformers", f"{llm_dir} in Qwen2ForCausalLM: max|diff|/max|logit| = {err:.1e} vs omnijax (limit 1e-4)",
          err <= 1e-4)

    right, n, chance = ask_image_questions(experiment.load_model(final), corpus)
    detail = (f"load_model(W).ask(question, image=...) on {n} held-out image questions: {right}/{n} right (blind "
              f"answerer {100 * chance:.0f}%; needed: {100 * (chance + 0.3):.0f}%)")
    if args.smoke:  # an untrained model: the call must work, its answers mean nothing
        say(f"info ask: {detail}")
    else:
        check("ask", detail, right / n >= chance + 0.3)

    failed = [name for name, ok in checks if not ok]
    say(f"{len(checks) - len(failed)}/{len(checks)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def environment() -> dict:
    """What the numbers were computed with: Python, the CPU and the versions of ``PACKAGES`` (None: not installed)."""
    import platform
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), "cpu": f"{cpu} x {os.cpu_count()}",
            "packages": {name: version(name) for name in PACKAGES}}


def ask_image_questions(model, corpus: str, n: int = 10) -> tuple[int, int, float]:
    """Ask ``model`` ``n`` held-out image questions, each image as a PIL image -> (right answers, n, the blind
    answerer's accuracy on those questions' templates over the whole held-out task)."""
    from PIL import Image

    from omnijax import evaluate
    from omnijax.eval import metrics

    examples = evaluate.read_task(corpus, "image_qa")
    right = 0
    for example in examples[:n]:
        question, reference = evaluate.question_of(example), evaluate.answer_of(example)
        answer = model.ask(question, image=Image.open(io.BytesIO(example.media[0].data)), max_new_tokens=16)
        right += metrics.exact_match(reference, answer)
        print(f"    {question!r} -> {answer!r} (reference {reference!r})", flush=True)
    return right, n, evaluate.blind_accuracy(examples)


def llm_logits_error(loaded, hf_dir: str) -> float:
    """max|diff|/max|logit| between transformers' Qwen2ForCausalLM from ``hf_dir`` and the omni model's LLM."""
    import jax
    import numpy as np
    import torch
    from transformers import Qwen2ForCausalLM

    from omnijax.models.llm import CausalLM

    ids = np.random.RandomState(0).randint(6, loaded.cfg.llm.vocab_size, (2, 32))
    hf = Qwen2ForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    got = np.asarray(jax.jit(CausalLM(loaded.cfg.llm).apply)({"params": {"llm": loaded.params["llm"]}}, ids)[0])
    return float(np.abs(got - want).max() / np.abs(want).max())


if __name__ == "__main__":
    sys.exit(main())
