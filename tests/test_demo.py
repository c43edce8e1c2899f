"""The README's main job runs end to end and every step passes."""

from omnijax import demo


def test_demo_passes_every_step(tmp_path, capsys):
    assert demo.main(["--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "6/6 steps passed" in out and "FAIL" not in out
