"""The README's main job (``python -m omnijax.demo``) runs end to end: omni-synth, the Ola tiny recipe
from the shipped tiny checkpoints (every stage, evaluated), the HF exports, the re-import, the transformers
check and the questions asked through ``load_model(W).ask`` -- in its smoke form (tiny corpus, 2 steps a
stage), which is also the Ola tiny preset's smoke test."""

import json
import os
import platform
from importlib import metadata

from training_fixtures import cache_dir, compilation_cache

from omnijax import demo


def test_demo_smoke_passes_every_check(tmp_path, tmp_path_factory, capsys):
    with compilation_cache(cache_dir(tmp_path_factory)):
        assert demo.main(["--workdir", str(tmp_path / "demo"), "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "4/4 checks passed" in out and "info ask: " in out and "FAIL" not in out, out[-3000:]
    with open(tmp_path / "demo" / "ola" / "eval.json") as f:
        report = json.load(f)
    assert [r["stage"] for r in report["stages"]] == ["1a", "1b", "2", "3a", "3b"]
    assert {"asr/wer", "image_qa/accuracy", "video_audio_qa/accuracy", "spoken_image_qa/gap"} <= set(
        report["stages"][-1]["metrics"])
    # Ola's stage 1a starts from the shipped pretrained LLM and towers, both connectors fresh
    with open(tmp_path / "demo" / "ola" / "1a" / "stage.json") as f:
        init = json.load(f)["config"]["init_from"]
    assert sorted(g for _, (g,) in init) == ["audio", "llm", "vision"], init
    assert all(p.endswith(os.path.join("checkpoints", "tiny", g)) for p, (g,) in init), init
    assert os.path.isfile(tmp_path / "demo" / "export" / "llm" / "config.json")
    # what the table was computed with, beside it
    with open(tmp_path / "demo" / "environment.json") as f:
        env = json.load(f)
    assert env["packages"]["jax"] == metadata.version("jax") and env["packages"]["flax"] == metadata.version("flax")
    assert env["python"] == platform.python_version() and f"jax {metadata.version('jax')}" in out
    # Run again: the recipe is complete and evaluated; only the exports and checks repeat.
    with compilation_cache(cache_dir(tmp_path_factory)):
        assert demo.main(["--workdir", str(tmp_path / "demo"), "--smoke"]) == 0
    again = capsys.readouterr().out
    assert "steps ->" not in again and "done before" in again, again[-3000:]
