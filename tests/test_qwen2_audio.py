"""Qwen2-Audio (audio tower + projector + Qwen2) against transformers' Qwen2AudioForConditionalGeneration
(float32): logits, export and reload, both checkpoint key layouts, dump_logits, placeholder checks."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen2AudioConfig as HFQwen2AudioConfig
from transformers import Qwen2AudioForConditionalGeneration

from omnijax import media_tokens
from omnijax.checkpoint import load_model
from omnijax.hf.exporter import save_hf
from omnijax.models.qwen2_audio import Qwen2AudioConfig, check_audio_placeholders
from omnijax.tools import dump_logits

TOL = 1e-4  # max |diff| <= TOL * max |logit|
AUDIO, AUDIO_BOS, AUDIO_EOS, PAD = 100, 101, 102, 0  # token ids in a 128-word vocabulary
N_MELS, FRAMES = 80, 100  # tiny 1 s window: max_source_positions 50
VALID = np.array([100, 57, 30])  # valid mel frames of the three clips: 25, 14 and 7 tokens
CLIPS_PER_ROW = (2, 1)  # example 0 holds clips 0 and 1, example 1 clip 2


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def hf_config() -> HFQwen2AudioConfig:
    return HFQwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", num_mel_bins=N_MELS, d_model=32, encoder_layers=2,
                          encoder_attention_heads=4, encoder_ffn_dim=64, max_source_positions=FRAMES // 2),
        text_config=dict(model_type="qwen2", vocab_size=128, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rope_theta=1e6),
        audio_token_index=AUDIO)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A tiny random Qwen2-Audio saved with save_pretrained; every tensor random (norms around 1)."""
    path = str(tmp_path_factory.mktemp("qwen2_audio"))
    model = Qwen2AudioForConditionalGeneration(hf_config()).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    model.save_pretrained(path)
    return path, model


def batch() -> dict[str, np.ndarray]:
    """Two examples laid out as Qwen2AudioProcessor lays them out (each <|AUDIO|> expanded to the
    clip's token count inside <|audio_bos|> ... <|audio_eos|>), the shorter one right-padded."""
    rng = np.random.RandomState(3)
    tokens = media_tokens.qwen2_audio_tokens(VALID)
    rows, clip = [], 0
    for n_clips in CLIPS_PER_ROW:
        row = list(rng.randint(3, AUDIO, 2))
        for _ in range(n_clips):
            row += [AUDIO_BOS] + [AUDIO] * int(tokens[clip]) + [AUDIO_EOS] + list(rng.randint(3, AUDIO, 2))
            clip += 1
        rows.append(row)
    t = max(map(len, rows))
    ids = np.full((len(rows), t), PAD, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return {"input_ids": ids, "attention_mask": mask,
            "input_features": rng.randn(len(VALID), N_MELS, FRAMES).astype(np.float32),
            "feature_attention_mask": (np.arange(FRAMES)[None, :] < VALID[:, None]).astype(np.int64)}


def torch_logits(model, inputs) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in inputs.items()}).logits.numpy()


def masked_err(got, want, mask) -> float:
    """Relative error over the non-padding positions (padding queries carry no meaning)."""
    keep = np.asarray(mask, bool)
    got, want = np.asarray(got)[keep], want[keep]
    err = rel_err(got, want)
    print(f"max |diff| {np.abs(got - want).max():.2e}, max |logit| {np.abs(want).max():.2f}, rel {err:.2e}")
    return err


@pytest.fixture(scope="module")
def reference(hf_model):
    inputs = batch()
    return inputs, torch_logits(hf_model[1], inputs)


def test_logits_match_transformers(hf_model, reference, caplog):
    inputs, want = reference
    with caplog.at_level(logging.WARNING):
        loaded = load_model(hf_model[0], progress=False)
    assert not caplog.records, caplog.text  # every tensor of the checkpoint is read
    assert sorted(loaded.params) == ["audio", "audio_connector", "llm"]
    assert loaded.cfg.audio.variant == "qwen2_audio" and loaded.cfg.audio_token_index == AUDIO
    assert (inputs["input_ids"] == AUDIO).sum(1).tolist() == [25 + 14, 7]
    got = loaded.arch.hf_forward(loaded.module, loaded.params, inputs)
    assert got.shape == want.shape == inputs["input_ids"].shape + (128,)
    err = masked_err(got, want, inputs["attention_mask"])
    assert err <= TOL
    # The audio reaches the logits: the same text with silent clips gives other logits.
    silent = dict(inputs, input_features=np.zeros_like(inputs["input_features"]))
    other = loaded.arch.hf_forward(loaded.module, loaded.params, silent)
    assert masked_err(other, want, inputs["attention_mask"]) > 1e-2


def test_export_loads_in_transformers(hf_model, reference, tmp_path):
    inputs, want = reference
    loaded = load_model(hf_model[0], progress=False)
    out = str(tmp_path / "export")
    save_hf(out, loaded.arch, loaded.cfg, loaded.params, progress=False)
    back, info = Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref = hf_model[1].state_dict()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)
    assert masked_err(torch_logits(back.eval(), inputs), want, inputs["attention_mask"]) == 0.0


def test_reads_v5_native_layout_and_dump_logits(hf_model, reference, tmp_path, caplog):
    """A checkpoint under the module's own v5 names (``model.language_model.*``, ``lm_head.*``) loads
    through the aliases; ``dump_logits`` on it gives transformers' logits."""
    inputs, want = reference
    path = tmp_path / "native"
    path.mkdir()
    state = {k: v.contiguous() for k, v in hf_model[1].state_dict().items()}
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in state and "lm_head.weight" in state
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(hf_model[0], "config.json")) as f:
        config = json.load(f)
    with open(path / "config.json", "w") as f:
        json.dump(config, f)
    np.savez(tmp_path / "in.npz", **inputs)
    with caplog.at_level(logging.WARNING):
        assert dump_logits.main(["--model", str(path), "--inputs", str(tmp_path / "in.npz"),
                                 "--out", str(tmp_path / "out.npy")]) == 0
    assert not caplog.records, caplog.text
    assert masked_err(np.load(tmp_path / "out.npy"), want, inputs["attention_mask"]) <= TOL


def test_placeholder_mismatch_names_the_example(hf_model, capsys, tmp_path):
    loaded = load_model(hf_model[0], progress=False)
    inputs = batch()
    assert check_audio_placeholders(inputs["input_ids"], inputs["feature_attention_mask"], AUDIO) == [[0, 1], [2]]
    with pytest.raises(ValueError, match=r"take only the first 0 of 3 clips"):
        check_audio_placeholders(np.zeros((2, 4), np.int64), inputs["feature_attention_mask"], AUDIO)
    ids = inputs["input_ids"].copy()
    ids[1, np.flatnonzero(ids[1] == AUDIO)[-1]] = 5  # example 1: one placeholder short of its clip's 7
    with pytest.raises(ValueError, match=r"example 1 has 6 audio placeholder tokens .* give 7 \(clip 2: 7\)"):
        loaded.arch.hf_forward(loaded.module, loaded.params, dict(inputs, input_ids=ids))
    with pytest.raises(ValueError, match=r"example 1 has 6 audio placeholder tokens"):  # eager apply checks too
        loaded.module.apply({"params": loaded.params}, ids, inputs["input_features"],
                            inputs["feature_attention_mask"], inputs["attention_mask"])
    short = dict(inputs, input_features=inputs["input_features"][:2],
                 feature_attention_mask=inputs["feature_attention_mask"][:2])
    with pytest.raises(ValueError, match=r"example 1 has 7 audio placeholder tokens .* give 0 \(no clips left\)"):
        loaded.arch.hf_forward(loaded.module, loaded.params, short)
    np.savez(tmp_path / "bad.npz", **dict(inputs, input_ids=ids))
    assert dump_logits.main(["--model", hf_model[0], "--inputs", str(tmp_path / "bad.npz"),
                             "--out", str(tmp_path / "bad.npy")]) == 2
    assert "example 1" in capsys.readouterr().err


def test_config_round_trip_and_defaults():
    cfg = Qwen2AudioConfig.from_hf(hf_config().to_dict())
    assert Qwen2AudioConfig.from_hf(cfg.to_hf()) == cfg
    # A config.json that leaves sizes to transformers' defaults (as Qwen/Qwen2-Audio-7B's text_config does).
    sparse = {"model_type": "qwen2_audio", "audio_config": {"model_type": "qwen2_audio_encoder"},
              "text_config": {"model_type": "qwen2"}}
    assert Qwen2AudioConfig.from_hf(sparse) == Qwen2AudioConfig.from_hf(HFQwen2AudioConfig(**sparse).to_dict())
    both = Qwen2AudioConfig.from_hf(cfg.to_hf(), dtype="bfloat16", attention="splash")
    assert (both.llm.dtype, both.audio.dtype, both.llm.attention, both.audio.attention) == \
        ("bfloat16", "bfloat16", "splash", "xla")
    with pytest.raises(ValueError, match="never ties"):
        Qwen2AudioConfig.from_hf(cfg.to_hf(), tie_word_embeddings=True)
