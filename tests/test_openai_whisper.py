"""openai-whisper-named Whisper encoder weights (the naming Ola's loader reads) against golden outputs of
openai-whisper's ``AudioEncoder`` (``tests/golden/README.md``: which version, how), import and export."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from omnijax.hf.exporter import save_hf
from omnijax.hf.openai_whisper import OLA_PREFIX, load_openai_whisper, openai_whisper_table
from omnijax.hf.safetensors_io import CheckpointError

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
TINY_DIR = os.path.join(GOLDEN, "openai_whisper_tiny")
TOL = 1e-4  # max |diff| <= TOL * max |value|, float32


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(os.path.join(GOLDEN, "ola_dual_encoder.npz")))


@pytest.fixture(scope="module")
def tiny():
    return load_openai_whisper(TINY_DIR)


def encode(loaded, mel):
    return np.asarray(loaded.module.apply({"params": loaded.params}, jnp.asarray(mel)))


def test_openai_whisper_import_equals_audio_encoder(tiny, golden):
    """The imported encoder's output equals openai-whisper's ``AudioEncoder`` on the same log-mel (Whisper's
    32 channels of Ola's dual output)."""
    assert (tiny.cfg.num_mel_bins, tiny.cfg.d_model, tiny.cfg.encoder_layers, tiny.cfg.encoder_ffn_dim,
            tiny.cfg.max_source_positions) == (128, 32, 2, 128, 100)
    want = golden["dual_output"][..., :32]
    got = encode(tiny, golden["mel"])
    assert got.shape == want.shape == (2, 100, 32)
    assert rel_err(got, want) < TOL


def test_openai_whisper_reads_ola_prefix_and_exports_the_same_keys(tiny, golden, tmp_path):
    """A state dict under Ola's ``model.speech_encoder.whisper_model.`` imports to the same outputs; export writes
    openai-whisper's ``encoder.*`` keys back, every one with its shape and value."""
    want = load_file(os.path.join(TINY_DIR, "model.safetensors"))
    ola = tmp_path / "ola"
    ola.mkdir()
    save_file({OLA_PREFIX + k[len("encoder."):]: v for k, v in want.items()}, str(ola / "model.safetensors"))
    (ola / "config.json").write_text(open(os.path.join(TINY_DIR, "config.json")).read())
    assert rel_err(encode(load_openai_whisper(str(ola)), golden["mel"][1:]), golden["dual_output"][1:, :, :32]) < TOL

    out = str(tmp_path / "out")
    save_hf(out, tiny.arch, tiny.cfg, tiny.params, progress=False)
    got = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(got) == sorted(want)
    assert "encoder.blocks.1.attn.key.weight" in got and "encoder.blocks.1.attn.key.bias" not in got
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert json.load(open(os.path.join(out, "config.json"))) == json.load(open(os.path.join(TINY_DIR, "config.json")))


def test_openai_whisper_table_names_every_block_key(tiny):
    keys = {e.hf for e in openai_whisper_table(tiny.cfg, "")}
    assert {"blocks.{i}.mlp.0.weight", "blocks.{i}.mlp.2.bias", "blocks.{i}.attn_ln.weight", "blocks.{i}.mlp_ln.bias",
            "ln_post.weight", "positional_embedding", "blocks.{i}.attn.query.bias"} <= keys
    every = {e.hf_key(i) for e in openai_whisper_table(tiny.cfg) for i in range(tiny.cfg.encoder_layers)}
    assert every == set(load_file(os.path.join(TINY_DIR, "model.safetensors")))  # 7 + 15 per block
    assert len(every) == 7 + 15 * 2


def test_openai_whisper_pickle_refused_with_the_conversion(tmp_path):
    pt = tmp_path / "large-v3.pt"
    pt.write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"large-v3.pt is a PyTorch pickle.*model_state_dict.*"
                                              r"OpenAIWhisperEncoder"):
        load_openai_whisper(str(pt))
    with pytest.raises(CheckpointError, match=r"names architectures \['BEATs'\], not \['OpenAIWhisperEncoder'\]"):
        load_openai_whisper(os.path.join(GOLDEN, "beats_tiny"))
