"""How the command-line tools end on damaged input and on the small user errors: one line on stderr naming the
file (or flag) and the fix, exit status 2, no traceback (``OMNIJAX_DEBUG=1`` gives it); ``--help`` of the
absl-flags CLIs; list and dict fields overridden with ``--config.KEY=[...]``."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import media
from omnijax import compile as compile_cli
from omnijax import errors, train
from omnijax.inference import chat
from omnijax.tools import generate

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
RNG = np.random.default_rng(0)


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def tone(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


# (flag, file name, whole file, what the one line says about its first half)
MEDIA = {
    "jpeg": ("--image", "photo.jpg", jpeg, "truncated: the JPEG ends without its end-of-image marker"),
    "png": ("--image", "photo.png", lambda: media.encode_png(RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
            "truncated: the PNG ends without its IEND chunk"),
    "flac": ("--audio", "speech.flac", lambda: media.encode_flac(tone(), 16000),
             "truncated or damaged: 0 of the 16000 samples its header gives decode (0.00 s of 1.00 s)"),
    "wav": ("--audio", "speech.wav", lambda: media.encode_wav(tone(), 16000),
            "truncated: 32040 bytes of the 64080 its RIFF header gives"),
    "mp4": ("--video", "clip.mp4", lambda: media.encode_mp4(RNG.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), 4),
            "truncated: its 'mdat' box runs to byte"),
}


def cut_file(tmp_path, fmt: str) -> tuple[str, str, str]:
    """The format's file cut to its first half, as a copy that stopped: (flag, path, what the line says)."""
    flag, name, make, what = MEDIA[fmt]
    data = make()
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return flag, path, what


@pytest.mark.parametrize("fmt", list(MEDIA))
def test_a_truncated_media_file_is_one_line_naming_it(tmp_path, capsys, fmt):
    """Refused before the model loads (the model path is never read), exit 2."""
    flag, path, what = cut_file(tmp_path, fmt)
    code = generate.main(["--model", str(tmp_path / "no-model"), flag, path, "--prompt", "What is it?"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}: {what}"), err
    formats = {"--image": "jpeg or png", "--audio": "flac or wav", "--video": "mp4"}[flag]
    assert err.endswith(f"; {flag} takes a whole {formats} file: copy or export it again\n"), err


def test_whole_media_files_pass_the_check(tmp_path):
    for fmt, (flag, name, make, _) in MEDIA.items():
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(make())
        example = generate.build_example([(flag[2:], path)], prompt="What is it?")
        assert [m.format for m in example.media] == [fmt]


def _python(*args, **env):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", **env))


def test_no_traceback_reaches_the_terminal_unless_omnijax_debug(tmp_path):
    flag, path, what = cut_file(tmp_path, "mp4")
    args = ("omnijax.tools.generate", "--model", str(tmp_path / "no-model"), flag, path, "--prompt", "Which way?")
    r = _python(*args)
    assert r.returncode == 2 and r.stdout == "", r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {path}: {what}"), r.stderr
    r = _python(*args, **{errors.DEBUG_ENV: "1"})
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert f"omnijax.errors.DamagedFileError: {path}: {what}" in r.stderr, r.stderr


def test_evaluate_names_a_truncated_eval_shard(tmp_path, capsys):
    """The held-out shards are read before the model loads: a cut one is one line, exit 2."""
    from data_pipelines import schema
    from omnijax import evaluate

    with schema.ShardWriter(str(tmp_path / "tasks" / "eval" / "asr"), 1) as writer:
        for i in range(5):
            writer.write(schema.Example(f"q{i}", "s", "asr", [schema.Turn("user", "Say it."),
                                                              schema.Turn("assistant", f"word {i}")]))
    os.truncate(writer.paths[0], 40000)
    assert evaluate.main(["--ckpt", str(tmp_path / "no-model"), "--data", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {writer.paths[0]}: truncated: 40000 bytes, not a whole number of the 64 KiB "
                          "blocks ArrayRecord files are written in (the reader: "), err
    assert err.endswith("; rebuild the shard (python -m data_pipelines.build, or data_pipelines.synth) or copy it "
                        "again\n"), err


def test_ask_names_a_damaged_image_file(tmp_path):
    """``load_model(W).ask(image=Image.open(path))``: PIL reads the pixels late; a cut file is named."""
    _, path, _ = cut_file(tmp_path, "jpeg")
    with pytest.raises(errors.DamagedFileError, match=rf"^{path}: the image does not decode \(image file is "
                                                      r"truncated .*\); open a whole image file"):
        chat.image_media(Image.open(path))


def test_report_is_one_line_and_exit_2_or_the_traceback_under_omnijax_debug(capsys, monkeypatch):
    error = errors.DamagedFileError("/data/a.flac", "truncated:\n  half of it", "copy it again")
    assert str(error) == "/data/a.flac: truncated: half of it; copy it again"
    assert errors.report(error) == 2 and capsys.readouterr().err == f"error: {error}\n"
    import pickle

    again = pickle.loads(pickle.dumps(error))  # crosses Grain's worker processes whole
    assert (again.path, again.what, again.fix, str(again)) == (error.path, error.what, error.fix, str(error))
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(errors.DamagedFileError):
        errors.report(error)
    monkeypatch.setenv(errors.DEBUG_ENV, "0")
    assert errors.report(error, 3) == 3


# -- the absl-flags CLIs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cli", [train, compile_cli])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_usage_and_exits_0(cli, flag, capsys):
    assert cli.main([flag]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith(cli.__doc__) and "--config" in out, out
    assert ("--topology" in out, "--workdir" in out) == ((True, False) if cli is compile_cli else (False, True))


def test_train_help_from_the_shell():
    r = _python("omnijax.train", "--help")
    assert r.returncode == 0 and r.stderr == "" and "flags:\n  --config: stage config file" in r.stdout, r


TOY = ["--config", os.path.join(TESTS, "training_fixtures.py:connectors"), "--workdir", "unused"]


@pytest.mark.parametrize("flag, line", ids=["typo", "nested typo", "not a literal", "list for an int"], argvalues=[
    ("--config.num_stepz=3", "--config.num_stepz: the stage config has no field 'num_stepz'; did you mean "
                             "--config.num_steps?"),
    ("--config.data.sourcez=grain", "--config.data.sourcez: c.data has no field 'sourcez'; did you mean "
                                    "--config.data.source?"),
    ("--config.trainable=[('.*', None)", "--config.trainable: \"[('.*', None)\" is not a Python literal"),
    ("--config.num_steps=[1]", "--config.num_steps: a list for a field that holds int 10; give it as "
                               "--config.num_steps=VALUE"),
])
def test_config_flag_errors_are_one_clean_line(flag, line, capsys):
    for cli, argv in ((train, TOY), (compile_cli, [*TOY[:2], "--topology", "v5p-8"])):
        assert cli.main([*argv, flag]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {line}") and err.count("\n") == 1 and "\\n" not in err and "\\'" not in err, err


def test_list_fields_take_a_python_literal(capsys):
    """--config.trainable=[...] reaches the stage config: a rule that matches nothing is refused by name, before
    anything trains; a dict field (c.data.pipeline) takes a dict literal."""
    rules = "[('vision_connektor/.*', {'lr': 1e-3}), ('.*', None)]"
    assert train.main([*TOY, f"--config.trainable={rules}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stage 'toy_connectors': rule 'vision_connektor/.*' matches no parameter"), err
    from omnijax.training.config import base_config, literal_overrides, override_literal

    argv, literals = literal_overrides(["x", "--config.seed=1", "--config.data.pipeline={'max_bad_fraction': 0.3}",
                                        f"--config.trainable={rules}"])
    assert argv == ["x", "--config.seed=1"]
    c = base_config()
    for key, text in literals:
        override_literal(c, key, text)
    assert c.data.pipeline.to_dict() == {"max_bad_fraction": 0.3}
    assert c.trainable == [("vision_connektor/.*", {"lr": 1e-3}), (".*", None)]
