"""The main job: Ola's recipe at tiny size on omni-synth, evaluated after every stage, exported to HF.

    python -m omnijax.demo --workdir workdirs/demo            # what `make demo` runs

1. builds the omni-synth corpus and its tokenizer (``data_pipelines.synth.prepare``; cached);
2. runs ``experiments/ola/recipe.py:tiny`` (``omnijax.recipe``): five stand-in pretraining stages for
   the pretrained SigLIP and Whisper (0_vision_tower and 0_speech_tower: each tower alone, on caption
   words and on CTC; 0_vision_binding: the vision tower on which colour goes with which shape; 0a and
   0b: the LLM on captions and on ASR), then Ola's stages 1a, 1b, 2, 3a, 3b, each from the previous
   one's params; resumable;
3. evaluates every Ola stage on the held-out split (``omnijax.evaluate``) and prints the stage table
   (``W/ola/eval.md``): ASR WER, image / video / video-audio question accuracy, the spoken-question gap;
4. exports the final stage (``omnijax.hf.convert export``): the full omni model (``W/export/omni``)
   and the LLM alone (``W/export/llm``);
5. loads the exported LLM in transformers (``Qwen2ForCausalLM``) and compares its logits with
   omnijax's (float32), and re-imports the full export and checks the params are bit-identical;
6. asks ``python -m omnijax.tools.generate --image X.png --prompt Q`` ten held-out image questions on
   the final stage and checks the answers beat a blind answerer by 30 points.

``--smoke`` runs the same job on the tiny corpus for 2 steps a stage (the test suite's check that
the main command works end to end; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

RECIPE = "experiments/ola/recipe.py:tiny"
EVAL_LIMIT = 100  # held-out examples per task and stage


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnijax.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--smoke", action="store_true", help="tiny corpus, 2 steps a stage (tests)")
    args = parser.parse_args(argv)
    work = os.path.abspath(args.workdir)
    if args.smoke:  # the recipes read the corpus folder from the environment when they are imported
        os.environ["OMNIJAX_CORPUS"] = os.path.join(work, "omni-synth-tiny")
    os.environ.setdefault("OMNIJAX_CORPUS", os.path.join(os.path.dirname(work), "omni-synth"))

    import jax
    import numpy as np

    from data_pipelines import synth
    from omnijax import recipe as recipe_lib
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

    corpus = os.environ["OMNIJAX_CORPUS"]
    say(f"omni-synth ({'tiny' if args.smoke else 'default'} size) -> {corpus}")
    manifest = synth.prepare(corpus, size="tiny" if args.smoke else "default")
    say(f"omni-synth ready ({sum(t['examples'] for t in manifest['splits']['train']['tasks'].values())} train "
        "examples)")

    recipe = recipe_lib.load_recipe(RECIPE)
    ola = os.path.join(work, "ola")
    if not args.smoke:  # (the test suite keeps its own cache)
        recipe_lib.use_compilation_cache(os.path.join(work, ".jax_cache"))
    rows = recipe_lib.run(recipe, ola, steps=2 if args.smoke else None, eval_limit=4 if args.smoke else EVAL_LIMIT,
                          log=say)
    trained = all(r["status"] in ("trained", "done before") for r in rows)
    check("recipe", f"{len(rows)} stages of {RECIPE} in {ola}", trained and len(rows) == len(recipe.stages))
    if not trained:
        return 1
    table, chance = report.read_report(ola)
    print("\nheld-out omni-synth, after each stage (%; chance: " +
          ", ".join(f"{k} {100 * v:.1f}" for k, v in (chance or {}).items()) + ")\n")
    print(report.format_table(table) + "\n", flush=True)

    final = os.path.join(ola, recipe.stages[-1][0])
    omni_dir, llm_dir = (os.path.join(work, "export", p) for p in ("omni", "llm"))
    rc = convert.main(["export", "--ckpt", final, "--out", omni_dir, "--part", "full", "--overwrite"])
    rc |= convert.main(["export", "--ckpt", final, "--out", llm_dir, "--part", "llm", "--overwrite"])
    check("export", f"{final} -> {omni_dir} (full omni) and {llm_dir} (Qwen2ForCausalLM)", rc == 0)
    if rc:
        return 1

    trained_model = load_model(final, progress=False)
    again = load_model(omni_dir, progress=False)
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                     trained_model.params, again.params))
    check("re-import", f"{omni_dir} -> omnijax: params bit-identical = {same}", same)

    err = llm_logits_error(trained_model, llm_dir)
    check("transformers", f"{llm_dir} in Qwen2ForCausalLM: max|diff|/max|logit| = {err:.1e} vs omnijax (limit 1e-4)",
          err <= 1e-4)

    right, n, chance = generate_from_images(final, corpus, os.path.join(work, "generate"))
    detail = (f"python -m omnijax.tools.generate --image X.png --prompt Q on {n} held-out image questions: {right}/{n} "
              f"right (blind answerer {100 * chance:.0f}%; needed: {100 * (chance + 0.3):.0f}%)")
    if args.smoke:  # an untrained model: the command must run, its answers mean nothing
        say(f"info generate: {detail}")
    else:
        check("generate", detail, right / n >= chance + 0.3)

    failed = [name for name, ok in checks if not ok]
    say(f"{len(checks) - len(failed)}/{len(checks)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def generate_from_images(model: str, corpus: str, out: str, n: int = 10) -> tuple[int, int, float]:
    """Ask the generate CLI ``n`` held-out image questions (the PNG written to ``out``) -> (right answers, n,
    the blind answerer's accuracy on those questions' templates over the whole held-out task)."""
    import contextlib
    import io

    from omnijax import evaluate
    from omnijax.eval import metrics
    from omnijax.tools import generate

    os.makedirs(out, exist_ok=True)
    examples = evaluate.read_task(corpus, "image_qa")
    right = 0
    for i, example in enumerate(examples[:n]):
        path = os.path.join(out, f"image_qa_{i}.png")
        with open(path, "wb") as f:
            f.write(example.media[0].data)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            rc = generate.main(["--model", model, "--image", path, "--prompt", evaluate.question_of(example),
                                "--max-new-tokens", "16"])
        answer = printed.getvalue().strip()
        right += rc == 0 and metrics.exact_match(evaluate.answer_of(example), answer)
        print(f"    {evaluate.question_of(example)!r} -> {answer!r} (reference {evaluate.answer_of(example)!r})",
              flush=True)
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
