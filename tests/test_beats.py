"""The BEATs music encoder and its fbank front end against golden outputs of Microsoft's reference code
(``tests/golden/README.md``: which commit, which shim, how), and the import / export of its weights."""

import json
import logging
import os
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from data_pipelines.audio import beats_fbank, kaldi_fbank
from omnijax.hf.beats import BEATS, load_beats
from omnijax.hf.exporter import save_hf
from omnijax.hf.safetensors_io import CheckpointError
from omnijax.models.beats import BEATsConfig, BEATsTower, init_params, relative_position_buckets

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
TINY_DIR = os.path.join(GOLDEN, "beats_tiny")
TOL = 1e-4  # max |diff| <= TOL * max |value|, float32


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def pcm(int16: np.ndarray) -> np.ndarray:
    return int16.astype(np.float32) / 32768


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(os.path.join(GOLDEN, "beats_encoder.npz")))


@pytest.fixture(scope="module")
def tiny():
    return load_beats(TINY_DIR)


def encode(loaded, waveforms: np.ndarray) -> np.ndarray:
    fbank = np.stack([beats_fbank(pcm(w)) for w in waveforms])
    return np.asarray(loaded.module.apply({"params": loaded.params}, jnp.asarray(fbank)))


def test_beats_fbank_equals_reference_preprocess():
    d = np.load(os.path.join(GOLDEN, "beats_fbank.npz"))
    got = beats_fbank(pcm(d["waveform"]))
    assert got.shape == d["features"].shape == (98, 128)  # 1 + (16000 - 400) // 160 frames
    assert rel_err(got, d["features"]) < TOL


def test_kaldi_fbank_floors_silence_and_needs_one_frame():
    silent = kaldi_fbank(np.zeros(800), n_mels=128)
    assert silent.shape == (3, 128)
    np.testing.assert_allclose(silent, np.log(np.finfo(np.float32).eps), rtol=1e-6)
    with pytest.raises(ValueError, match="399 samples, fewer than one Kaldi frame.*at least 400 samples"):
        kaldi_fbank(np.ones(399))


def test_relative_position_buckets_equal_reference(golden):
    got = relative_position_buckets(golden["relative_positions"], num_buckets=320, max_distance=800)
    np.testing.assert_array_equal(got, golden["buckets"])  # offsets -1999..1999: every bucket, both directions
    assert got[golden["relative_positions"] == 0] == 0 and got.max() == 319


def test_beats_encoder_equals_reference(tiny, golden):
    """Waveforms (one with a zero-padded tail) -> fbank -> imported random-weight encoder, against
    ``BEATs.extract_features`` of the reference with the same weights."""
    assert tiny.arch is BEATS and tiny.cfg.encoder_layers == 2 and tiny.cfg.deep_norm
    got = np.asarray(BEATS.hf_forward(tiny.module, tiny.params, {"source": pcm(golden["waveform"])}))
    assert got.shape == golden["output"].shape == (2, 96, 32)  # 198 frames -> 12 x 8 patches
    assert rel_err(got, golden["output"]) < TOL
    with pytest.raises(ValueError, match=r"inputs \['input_features'\] are not used by BEATs; expected source"):
        BEATS.hf_forward(tiny.module, tiny.params, {"input_features": got})


def test_beats_param_tree_and_logical_names():
    cfg = BEATsConfig(embed_dim=24, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                      encoder_layers=3, conv_pos=16, conv_pos_groups=4)
    params = init_params(BEATsTower(cfg), cfg, jax.random.key(0))["beats"]
    enc = params["encoder"]
    assert params["patch_embedding"]["kernel"].shape == (16, 16, 1, 24)
    assert enc["pos_conv"]["weight_v"].shape == (16, 8, 32) and enc["pos_conv"]["weight_g"].shape == (16, 1, 1)
    assert enc["relative_attention_bias"]["embedding"].shape == (320, 4)
    assert enc["layers"]["self_attn"]["q_proj"]["kernel"].shape == (3, 32, 4, 8)
    assert enc["layers"]["self_attn"]["grep_a"].shape == (3, 1, 4, 1, 1)
    assert cfg.num_patches(2998) == 1496  # a 30 s window, as Ola feeds it


def test_beats_export_writes_the_reference_state_dict(tiny, tmp_path, golden):
    """Export gives the reference ``state_dict`` back: every key (the shared relative position table under each
    layer too, so ``load_state_dict`` is strict-clean), every shape and value; it imports to the same outputs."""
    out = str(tmp_path / "beats")
    save_hf(out, tiny.arch, tiny.cfg, tiny.params, progress=False)
    want = load_file(os.path.join(TINY_DIR, "model.safetensors"))
    got = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(got) == sorted(want)
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" in got
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    again = load_beats(out)
    assert again.cfg == tiny.cfg
    assert rel_err(encode(again, golden["waveform"][:1]), golden["output"][:1]) < TOL


def test_beats_pickle_refused_with_a_working_conversion(tmp_path, golden, caplog):
    """The reference's ``.pt`` (here fine-tuned: with a ``predictor`` head of 5 classes) is refused in one line whose
    command converts it; the converted directory imports, head included, to the golden outputs."""
    state = {k: torch.from_numpy(v) for k, v in load_file(os.path.join(TINY_DIR, "model.safetensors")).items()}
    state["predictor.weight"], state["predictor.bias"] = torch.zeros(5, 32), torch.zeros(5)
    with open(os.path.join(TINY_DIR, "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if k != "architectures"}
    pt = str(tmp_path / "BEATs_iter3_plus_AS2M.pt")
    torch.save({"cfg": dict(cfg, finetuned_model=True, predictor_class=5), "model": state}, pt)
    for path in (pt, str(tmp_path)):
        with pytest.raises(CheckpointError) as err:
            load_beats(path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{pt} is a PyTorch pickle")
    command = shlex.split(message.split("convert it once: ", 1)[1])
    assert command[:2] == ["python", "-c"]
    subprocess.run([sys.executable, "-c", command[2]], check=True, cwd=tmp_path)
    converted = str(tmp_path / "BEATs_iter3_plus_AS2M_safetensors")
    with caplog.at_level(logging.INFO):
        loaded = load_beats(converted)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if "predictor." in r.getMessage()]
    assert loaded.cfg.predictor_class == 5 and loaded.params["beats"]["predictor"]["kernel"].shape == (32, 5)
    assert rel_err(encode(loaded, golden["waveform"][1:]), golden["output"][1:]) < TOL


def test_beats_config_errors():
    with open(os.path.join(TINY_DIR, "config.json")) as f:
        hf = json.load(f)
    with pytest.raises(ValueError, match=r"BEATs config lacks \['conv_pos'\]; write the checkpoint's whole cfg"):
        BEATsConfig.from_hf({k: v for k, v in hf.items() if k != "conv_pos"})
    with pytest.raises(ValueError, match="layer_norm_first=True is not supported"):
        BEATsConfig.from_hf(dict(hf, layer_norm_first=True))
    with pytest.raises(ValueError, match=r"encoder_embed_dim \(30\) must be a multiple of encoder_attention_heads"):
        BEATsConfig(encoder_embed_dim=30, encoder_attention_heads=4)
    cfg = BEATsConfig.from_hf(hf, dtype="bfloat16")
    assert cfg.to_hf()["max_distance"] == 800 and cfg.compute_dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"shape \[batch, frames, 128\]"):
        BEATsTower(cfg).init(jax.random.key(0), jnp.zeros((1, 128, 98)))
    with pytest.raises(ValueError, match="15 frames, fewer than one 16-frame patch; pad the clip to at least 2800"):
        BEATsTower(cfg).init(jax.random.key(0), jnp.zeros((1, 15, 128)))


def test_beats_bfloat16_runs_and_trains_the_shared_table(golden):
    """bfloat16 compute with remat stays near the float32 reference, and the relative position table that all
    layers share gets a gradient (it is one parameter, as in the reference)."""
    loaded = load_beats(TINY_DIR, dtype="bfloat16", remat="full")
    fbank = jnp.asarray(np.stack([beats_fbank(pcm(w)) for w in golden["waveform"]]))
    out = loaded.module.apply({"params": loaded.params}, fbank)
    assert out.dtype == jnp.bfloat16 and rel_err(out.astype(jnp.float32), golden["output"]) < 3e-2
    grads = jax.grad(lambda p: jnp.mean(loaded.module.apply({"params": p}, fbank).astype(jnp.float32) ** 2))(
        loaded.params)
    assert float(jnp.abs(grads["beats"]["encoder"]["relative_attention_bias"]["embedding"]).max()) > 0
