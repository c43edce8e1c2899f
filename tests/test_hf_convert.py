"""HF <-> omnijax conversion: round trips through transformers, the command-line tools, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_fixtures import make_qwen2, rel_err, torch_logits
from transformers import Qwen2ForCausalLM

from omnijax.hf import convert
from omnijax.hf.safetensors_io import SafetensorsDir, _write_file
from omnijax.tools import dump_logits

TOL = 1e-4


def _save_tokenizer(path):
    """A small word-level tokenizer saved beside the weights, as Hub checkpoints ship one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "hello", "omni", "world"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>").save_pretrained(path)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qwen2") / "hf")
    model = make_qwen2(path, "gqa4_untied_legacy_theta", max_shard_size="40KB")  # sharded + index
    _save_tokenizer(path)
    return path, model


def _ids():
    return np.random.RandomState(0).randint(0, 128, (2, 9))


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300)


def test_round_trip_through_the_command_line(hf_dir, tmp_path):
    src, model = hf_dir
    assert os.path.exists(os.path.join(src, "model.safetensors.index.json"))
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf_out")
    r = _run("omnijax.hf.convert", "import", "--hf", src, "--out", ckpt)
    assert r.returncode == 0, r.stderr
    r = _run("omnijax.hf.convert", "export", "--ckpt", ckpt, "--out", out, "--max-shard-size", "30KB")
    assert r.returncode == 0, r.stderr
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and "config.json" in files and "generation_config.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1
    for name in ("tokenizer.json", "tokenizer_config.json"):  # copied through import and export
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(src, name), "rb").read()
    back, info = Qwen2ForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = _ids()
    np.testing.assert_array_equal(torch_logits(back.eval(), ids), torch_logits(model, ids))
    # dump_logits reads both the HF directory and the omnijax checkpoint
    np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    r = _run("omnijax.tools.dump_logits", "--model", ckpt, "--inputs", str(tmp_path / "in.npz"),
             "--out", str(tmp_path / "out.npy"))
    assert r.returncode == 0, r.stderr
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32 and got.shape == (2, 9, 128)
    assert rel_err(got, torch_logits(model, ids)) <= TOL


def test_dump_logits_bf16_and_hf_dir(hf_dir, tmp_path):
    src, model = hf_dir
    ids = _ids()
    np.savez(tmp_path / "in.npz", input_ids=ids)
    assert dump_logits.main(["--model", src, "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "f32.npy")]) == 0
    assert rel_err(np.load(tmp_path / "f32.npy"), torch_logits(model, ids)) <= TOL
    assert dump_logits.main(["--model", src, "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "bf.npy"),
                             "--dtype", "bfloat16"]) == 0
    err = rel_err(np.load(tmp_path / "bf.npy"), torch_logits(model, ids))
    assert 0 < err < 0.1  # bf16 compute: close, not identical


def test_export_bf16_loads_in_transformers(hf_dir, tmp_path):
    src, model = hf_dir
    out = str(tmp_path / "bf16")
    assert convert.main(["export", "--ckpt", src, "--out", out, "--dtype", "bfloat16"]) == 0
    back = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == "bfloat16"
    want = {k: v.bfloat16() for k, v in model.state_dict().items()}
    for k, v in back.state_dict().items():
        assert torch.equal(v, want[k]), k


def _copy_dir(src, dst):
    os.makedirs(dst)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())


def _assert_nothing_written(out):
    parent = os.path.dirname(out)
    assert not os.path.exists(out)
    assert not [f for f in os.listdir(parent) if ".partial-" in f]


def _import_error(src, out, capsys):
    assert convert.main(["import", "--hf", src, "--out", out]) == 2
    _assert_nothing_written(out)
    return capsys.readouterr().err


def test_unsupported_architecture(hf_dir, tmp_path, capsys):
    bad = str(tmp_path / "bad")
    _copy_dir(hf_dir[0], bad)
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["architectures"] = ["LlamaForCausalLM"]
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    err = _import_error(bad, str(tmp_path / "out"), capsys)
    assert "'LlamaForCausalLM' is not supported" in err and "Qwen2ForCausalLM" in err


def test_missing_tensor_is_named(hf_dir, tmp_path, capsys):
    bad = str(tmp_path / "bad")
    _copy_dir(hf_dir[0], bad)
    reader = SafetensorsDir(bad)
    victim = "model.layers.1.mlp.up_proj.weight"
    name = reader._key_file[victim]
    keep = {k: reader.get(k) for k, f in reader._key_file.items() if f == name and k != victim}
    _write_file(os.path.join(bad, name), keep)
    index = json.load(open(os.path.join(bad, "model.safetensors.index.json")))
    del index["weight_map"][victim]
    json.dump(index, open(os.path.join(bad, "model.safetensors.index.json"), "w"))
    err = _import_error(bad, str(tmp_path / "out"), capsys)
    assert f"tensor '{victim}' is missing" in err


def test_shape_mismatch_names_tensor_and_shapes(hf_dir, tmp_path, capsys):
    bad = str(tmp_path / "bad")
    _copy_dir(hf_dir[0], bad)
    cfg = json.load(open(os.path.join(bad, "config.json")))
    cfg["intermediate_size"] = 128  # the checkpoint has 160
    json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
    err = _import_error(bad, str(tmp_path / "out"), capsys)
    assert "tensor 'model.layers.0.mlp.gate_proj.weight' has shape (160, 96), the config expects (128, 96)" in err


def test_pickle_only_checkpoint_is_refused(tmp_path, capsys):
    src = str(tmp_path / "bin")
    make_qwen2(src, "mha_untied_1e4")
    pickled = str(tmp_path / "pickled")  # the pre-safetensors layout: config.json + pytorch_model.bin
    os.makedirs(pickled)
    torch.save(Qwen2ForCausalLM.from_pretrained(src).state_dict(), os.path.join(pickled, "pytorch_model.bin"))
    os.replace(os.path.join(src, "config.json"), os.path.join(pickled, "config.json"))
    err = _import_error(pickled, str(tmp_path / "out"), capsys)
    assert "pytorch_model.bin" in err and "safetensors only" in err and "save_pretrained" in err


def test_existing_output_is_refused_unless_overwrite(hf_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert convert.main(["export", "--ckpt", hf_dir[0], "--out", str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert convert.main(["export", "--ckpt", hf_dir[0], "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "wrong format"])
def test_damaged_safetensors_is_named_in_one_line(hf_dir, tmp_path, capsys, damage):
    """A shard cut short (as a copy that stopped) or not safetensors at all: one line naming the file and what is
    wrong, before any tensor is read; nothing written."""
    bad = str(tmp_path / "bad")
    _copy_dir(hf_dir[0], bad)
    shard = os.path.join(bad, sorted(f for f in os.listdir(bad) if f.endswith(".safetensors"))[1])
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) - 1000] if damage == "truncated" else b"PK\x03\x04 a zip, not tensors" * 10)
    err = _import_error(bad, str(tmp_path / "out"), capsys)
    assert err.count("\n") == 1 and err.startswith(f"error: {shard}: "), err
    if damage == "truncated":
        assert f"truncated: {len(data) - 1000} bytes, its header places tensor data up to byte {len(data)}" in err
    else:
        assert "wrong format or truncated: its first 8 bytes give a header of" in err and "longer than the file" in err
    assert "download or copy the checkpoint again" in err


def test_truncated_single_file_checkpoint_from_the_shell(tmp_path):
    """The issue's case, a cut ``model.safetensors``, in a real process: exit 2, one line, no traceback; with
    OMNIJAX_DEBUG=1 the traceback."""
    src = str(tmp_path / "hf")
    make_qwen2(src, "mha_untied_1e4")
    weights = os.path.join(src, "model.safetensors")
    size = os.path.getsize(weights)
    os.truncate(weights, size // 2)
    r = _run("omnijax.hf.convert", "import", "--hf", src, "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr == (f"error: {weights}: truncated: {size // 2} bytes, its header places tensor data up to byte "
                        f"{size}; download or copy the checkpoint again (or export it again)\n"), r.stderr
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMNIJAX_DEBUG="1")
    r = subprocess.run([sys.executable, "-m", "omnijax.hf.convert", "import", "--hf", src, "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and r.stderr.rstrip().endswith(
        f"DamagedFileError: {weights}: truncated: {size // 2} bytes, its header places tensor data up to byte {size}; "
        "download or copy the checkpoint again (or export it again)"), r.stderr


def test_exported_folders_follow_the_umask(hf_dir, tmp_path):
    """Import and export write folders as mkdir does (0755 under umask 022), not tempfile's 0700."""
    old = os.umask(0o022)
    try:
        ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf_out")
        assert convert.main(["import", "--hf", hf_dir[0], "--out", ckpt]) == 0
        assert convert.main(["export", "--ckpt", ckpt, "--out", out]) == 0
    finally:
        os.umask(old)
    for top in (ckpt, out):
        modes = {os.path.relpath(d, tmp_path): oct(os.stat(d).st_mode & 0o777) for d, _, _ in os.walk(top)}
        assert set(modes.values()) == {"0o755"}, modes
