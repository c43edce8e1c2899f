"""The README's main job (``python -m omnijax.demo``) runs end to end: omni-synth, the Ola tiny recipe
(every stage, evaluated), the HF exports, the re-import and the transformers check -- in its smoke
form (tiny corpus, 2 steps a stage), which is also the Ola tiny preset's smoke test."""

import json
import math
import os

from training_fixtures import cache_dir, compilation_cache

from omnijax import demo


def test_demo_smoke_passes_every_check(tmp_path, tmp_path_factory, capsys, monkeypatch):
    monkeypatch.delenv("OMNIJAX_CORPUS", raising=False)
    with compilation_cache(cache_dir(tmp_path_factory)):
        assert demo.main(["--workdir", str(tmp_path / "demo"), "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "4/4 checks passed" in out and "info generate: " in out and "FAIL" not in out, out[-3000:]
    with open(tmp_path / "demo" / "ola" / "eval.json") as f:
        report = json.load(f)
    assert [r["stage"] for r in report["stages"]] == ["1a", "1b", "2", "3a", "3b"]
    assert {"asr/wer", "image_qa/accuracy", "video_audio_qa/accuracy", "spoken_image_qa/gap"} <= set(
        report["stages"][-1]["metrics"])
    # the stand-in stages' connector terms: stage 0_vision_tower trains on the bag of words alone (no LLM,
    # no task loss), 0_vision_binding on the bag with its (colour, shape) pairs
    logs = {stage: [json.loads(line) for line in open(tmp_path / "demo" / "ola" / stage / "metrics.jsonl")
                    if '"loss": ' in line] for stage in ("0_vision_tower", "0_speech_tower", "0_vision_binding",
                                                          "0b_speech")}
    assert logs["0_vision_tower"] and all(
        math.isfinite(r["bow/image/loss"]) and r["bow/image/items"] > 0 and r["loss"] == r["bow/image/loss"]
        and "bow/image/pairs" not in r and not any(k.startswith("task_loss") for k in r)
        for r in logs["0_vision_tower"]), logs
    assert logs["0_vision_binding"] and all(
        r["loss"] == r["bow/image/loss"] and 0 < r["bow/image/pairs"] < r["bow/image/loss"]
        and not any(k.startswith("task_loss") for k in r) for r in logs["0_vision_binding"]), logs
    # the speech tower's stage likewise trains on CTC alone
    assert logs["0_speech_tower"] and all(
        math.isfinite(r["ctc/audio/loss"]) and r["ctc/audio/items"] > 0 and r["loss"] == r["ctc/audio/loss"]
        and not any(k.startswith("task_loss") for k in r) for r in logs["0_speech_tower"]), logs
    assert logs["0b_speech"] and all(math.isfinite(r["ctc/audio/loss"]) for r in logs["0b_speech"]), logs
    assert os.path.isfile(tmp_path / "demo" / "export" / "llm" / "config.json")
    # Run again: the recipe is complete and evaluated; only the exports and checks repeat.
    assert demo.main(["--workdir", str(tmp_path / "demo"), "--smoke"]) == 0
    again = capsys.readouterr().out
    assert "steps ->" not in again and "done before" in again, again[-3000:]
