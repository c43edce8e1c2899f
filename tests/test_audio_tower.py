"""The Whisper / Qwen2-Audio audio tower against transformers (float32), its HF maps and token counts."""

import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    Qwen2AudioEncoder,
    Qwen2AudioEncoderConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperModel,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperPreTrainedModel

from omnijax import media_tokens, sharding
from omnijax.checkpoint import load_model
from omnijax.hf.exporter import save_hf
from omnijax.models.audio import AudioConfig, AudioTower, init_params

TOL = 1e-4  # max |diff| <= TOL * max |value|
# Tiny encoders with a 1 s window: max_source_positions 50 -> 100 mel frames.
TINY = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, max_source_positions=50)


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random (norm scales around 1), so a wrong or swapped mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1.0 + noise if "layer_norm.weight" in name else noise)


def whisper_dir(path, cls, n_mels: int, seed: int = 0):
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=n_mels, decoder_layers=1, decoder_attention_heads=4,
                        decoder_ffn_dim=64, max_target_positions=16, pad_token_id=50, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=3, **TINY)
    model = cls(cfg).eval()
    randomize(model, seed)
    model.save_pretrained(path)
    return model.get_encoder() if cls is WhisperForConditionalGeneration else model.encoder


def features(batch: int, n_mels: int, frames: int = 100, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randn(batch, n_mels, frames).astype(np.float32)


@pytest.mark.parametrize("cls,n_mels", [(WhisperModel, 80), (WhisperModel, 128),
                                        (WhisperForConditionalGeneration, 128)])
def test_whisper_encoder_matches_transformers(tmp_path, caplog, cls, n_mels):
    encoder = whisper_dir(str(tmp_path), cls, n_mels)
    with caplog.at_level(logging.INFO):
        loaded = load_model(str(tmp_path), progress=False)
    # The decoder is skipped by design: noted, not warned about.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "(expected)" in caplog.text
    assert loaded.cfg.variant == "whisper" and loaded.cfg.num_mel_bins == n_mels
    x = features(2, n_mels)
    got = loaded.arch.hf_forward(loaded.module, loaded.params, {"input_features": x})
    with torch.no_grad():
        want = encoder(torch.as_tensor(x)).last_hidden_state.numpy()
    assert got.shape == want.shape == (2, 50, 32)
    err = rel_err(got, want)
    print(f"{cls.__name__} {n_mels} mels: rel err {err:.2e}")
    assert err <= TOL


def test_whisper_model_reads_either_key_layout(tmp_path):
    """A WhisperModel config over ``model.encoder.*`` keys (and the reverse) loads through the aliases."""
    encoder = whisper_dir(str(tmp_path), WhisperForConditionalGeneration, 80)
    cpath = os.path.join(tmp_path, "config.json")
    with open(cpath) as f:
        c = json.load(f)
    c["architectures"] = ["WhisperModel"]
    with open(cpath, "w") as f:
        json.dump(c, f)
    loaded = load_model(str(tmp_path), progress=False)
    x = features(1, 80, seed=3)
    with torch.no_grad():
        want = encoder(torch.as_tensor(x)).last_hidden_state.numpy()
    assert rel_err(loaded.arch.hf_forward(loaded.module, loaded.params, {"input_features": x}), want) <= TOL


@pytest.fixture(scope="module")
def qwen2_audio_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qwen2_audio_encoder"))
    torch.manual_seed(0)
    model = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(num_mel_bins=128, **TINY)).eval()
    randomize(model, 7)
    model.save_pretrained(path)
    return path, model


def feature_attention_mask(valid_frames: np.ndarray, frames: int = 100) -> np.ndarray:
    """What ``WhisperFeatureExtractor(return_attention_mask=True)`` gives: 1 on the valid frames."""
    return (np.arange(frames)[None, :] < valid_frames[:, None]).astype(np.int32)


def hf_qwen2_audio(encoder: Qwen2AudioEncoder, x: np.ndarray, valid_frames: np.ndarray):
    """The audio tower call of ``Qwen2AudioModel.forward``, mask built as it builds it."""
    feature_attention_mask_ = torch.as_tensor(feature_attention_mask(valid_frames, x.shape[-1])).long()
    audio_feat_lengths, output_lengths = encoder._get_feat_extract_output_lengths(feature_attention_mask_.sum(-1))
    batch_size, _, max_mel_seq_len = x.shape
    max_seq_len = (max_mel_seq_len - 2) // 2 + 1
    seq_range = (torch.arange(0, max_seq_len, dtype=audio_feat_lengths.dtype)
                 .unsqueeze(0).expand(batch_size, max_seq_len))
    padding_mask = seq_range >= audio_feat_lengths.unsqueeze(1).expand(batch_size, max_seq_len)
    mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=torch.zeros(batch_size, max_seq_len, 1),
                                     attention_mask=(~padding_mask).long())
    with torch.no_grad():
        out = encoder(torch.as_tensor(x), attention_mask=mask).last_hidden_state.numpy()
    return out, output_lengths.numpy()


def test_qwen2_audio_encoder_matches_transformers(qwen2_audio_dir):
    path, encoder = qwen2_audio_dir
    loaded = load_model(path, progress=False)
    assert loaded.cfg.variant == "qwen2_audio" and loaded.cfg.output_length == 25
    valid = np.array([100, 57, 30, 3])  # full, odd, even, tiny clips in one batch
    x = features(4, 128, seed=5)
    want, lengths = hf_qwen2_audio(encoder, x, valid)
    got = np.asarray(loaded.arch.hf_forward(loaded.module, loaded.params, {
        "input_features": x, "feature_attention_mask": feature_attention_mask(valid)}))
    assert got.shape == want.shape == (4, 25, 32)
    np.testing.assert_array_equal(media_tokens.qwen2_audio_tokens(valid), lengths)
    errs = [rel_err(got[b, :n], want[b, :n]) for b, n in enumerate(lengths)]
    print(f"Qwen2AudioEncoder valid positions: rel errs {[f'{e:.2e}' for e in errs]}; "
          f"all positions {rel_err(got, want):.2e}")
    assert max(errs) <= TOL
    # Same key-padding mask as transformers, so even the padding positions agree.
    assert rel_err(got, want) <= TOL
    # The mask matters: without it the short clips differ.
    unmasked = np.asarray(loaded.module.apply({"params": loaded.params}, jnp.asarray(x)))
    assert rel_err(unmasked[2, :7], want[2, :7]) > 1e-2


def test_qwen2_audio_encoder_sharded_fsdp_tp(qwen2_audio_dir, devices):
    """Loaded straight into an fsdp x tensor mesh by the logical rules; same numbers as transformers."""
    path, encoder = qwen2_audio_dir
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    loaded = load_model(path, mesh=mesh, rules=sharding.logical_rules("fsdp_tp"), progress=False)
    q = loaded.params["audio"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    valid = np.array([100, 57, 30, 3, 100, 64, 9, 1])
    x = features(8, 128, seed=6)
    want, _ = hf_qwen2_audio(encoder, x, valid)
    with sharding.activation_sharding(mesh, sharding.logical_rules("fsdp_tp")):
        got = loaded.arch.hf_forward(loaded.module, loaded.params, {
            "input_features": x, "feature_attention_mask": feature_attention_mask(valid)})
    assert rel_err(got, want) <= TOL


def test_qwen2_audio_encoder_exports_to_transformers(qwen2_audio_dir, tmp_path):
    path, encoder = qwen2_audio_dir
    loaded = load_model(path, progress=False)
    out = str(tmp_path / "export")
    save_hf(out, loaded.arch, loaded.cfg, loaded.params, progress=False)
    back, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert isinstance(back, Qwen2AudioEncoder)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref = encoder.state_dict()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)


def test_whisper_export_is_refused(tmp_path):
    whisper_dir(str(tmp_path / "w"), WhisperModel, 80)
    loaded = load_model(str(tmp_path / "w"), progress=False)
    with pytest.raises(ValueError, match="export to WhisperModel is not supported.*decoder.*WhisperEncoder"):
        save_hf(str(tmp_path / "out"), loaded.arch, loaded.cfg, loaded.params, progress=False)
    assert not os.path.exists(tmp_path / "out")


def test_whisper_encoder_imports_and_exports(tmp_path):
    """A standalone ``WhisperEncoder`` (how the tiny pretrained audio tower ships): transformers' own directory
    loads with its outputs, and the export loads back in transformers with no missing key and equal tensors."""
    encoder = WhisperEncoder(WhisperConfig(num_mel_bins=80, **TINY)).eval()
    randomize(encoder, 4)
    encoder.save_pretrained(tmp_path / "hf")
    loaded = load_model(str(tmp_path / "hf"), progress=False)
    assert loaded.arch.name == "WhisperEncoder" and loaded.cfg.variant == "whisper"
    x = features(2, 80, seed=5)
    with torch.no_grad():
        want = encoder(torch.as_tensor(x)).last_hidden_state.numpy()
    assert rel_err(loaded.arch.hf_forward(loaded.module, loaded.params, {"input_features": x}), want) <= TOL
    save_hf(str(tmp_path / "out"), loaded.arch, loaded.cfg, loaded.params, progress=False)
    back, info = WhisperEncoder.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref = encoder.state_dict()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)


def test_token_counts_match_transformers():
    lengths = torch.arange(1, 3001)
    steps, tokens = Qwen2AudioEncoder._get_feat_extract_output_lengths(None, lengths)
    np.testing.assert_array_equal(media_tokens.qwen2_audio_tokens(np.arange(1, 3001)), tokens.numpy())
    np.testing.assert_array_equal(media_tokens.whisper_conv_steps(np.arange(1, 3001)), steps.numpy())
    np.testing.assert_array_equal(media_tokens.whisper_conv_steps(np.arange(1, 3001)),
                                  WhisperPreTrainedModel._get_feat_extract_output_lengths(None, lengths).numpy())
    assert media_tokens.qwen2_audio_tokens(3000) == 750
    assert media_tokens.whisper_frames_per_chunk(30.0) == 1500 == AudioConfig().output_length
    assert media_tokens.whisper_frames_per_chunk(4.0) == 200 == AudioConfig(max_source_positions=200).output_length


def test_config_round_trips_through_hf():
    for variant, hf_cls in (("whisper", WhisperConfig), ("qwen2_audio", Qwen2AudioEncoderConfig)):
        cfg = AudioConfig(num_mel_bins=128, variant=variant, **TINY)
        d = cfg.to_hf()
        assert AudioConfig.from_hf(d) == cfg
        hf = hf_cls(**{k: v for k, v in d.items() if k not in ("model_type", "torch_dtype")})
        assert AudioConfig.from_hf(hf.to_dict()) == cfg


def test_input_errors():
    model = AudioTower(AudioConfig(num_mel_bins=80, **TINY))
    key = jax.random.key(0)  # the checks run before any parameter is made
    with pytest.raises(ValueError, match=r"99 mel frames.*exactly 100 \(2 \* max_source_positions = 2 \* 50\)"):
        model.init(key, jnp.zeros((1, 80, 99)))
    with pytest.raises(ValueError, match="128 mel bins.*num_mel_bins=80"):
        model.init(key, jnp.zeros((1, 128, 100)))
    with pytest.raises(ValueError, match="only used by variant='qwen2_audio'"):
        model.init(key, jnp.zeros((1, 80, 100)), jnp.array([40]))
    with pytest.raises(ValueError, match=r"shape \[batch, chunks, n_mels, frames\]"):
        model.init(key, jnp.zeros((1, 80, 100)), method=AudioTower.encode_chunks)
    with pytest.raises(ValueError, match="splash attention is causal-only"):
        AudioConfig(attention="splash")


def test_every_param_has_logical_axes():
    cfg = AudioConfig(num_mel_bins=80, variant="qwen2_audio", **TINY)
    boxed = jax.eval_shape(AudioTower(cfg).init, jax.random.key(0), jnp.zeros((1, 80, 100)))
    specs = nn.get_partition_spec(boxed)["params"]
    shapes = nn.meta.unbox(boxed)["params"]
    flat_specs = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_specs) == len(flat_shapes) == 22
    for (path, spec), leaf in zip(flat_specs, flat_shapes):
        name = jax.tree_util.keystr(path)
        assert len(spec) == leaf.ndim and all(isinstance(a, str) for a in spec), (name, spec)
        assert ("layers" in name) == (spec[0] == "layers"), (name, spec)
    layers = specs["audio"]["layers"]
    assert tuple(layers["self_attn"]["q_proj"]["kernel"]) == ("layers", "audio_embed", "heads", "head_dim")
    assert tuple(layers["fc1"]["kernel"]) == ("layers", "audio_embed", "mlp")
    assert specs["audio"]["embed_positions"]["embedding"][1] == "audio_embed"


def test_encode_chunks_and_remat_match_per_clip():
    """Chunks fold into the batch; remat changes nothing numerically."""
    cfg = AudioConfig(num_mel_bins=80, variant="qwen2_audio", **TINY)
    model = AudioTower(cfg)
    params = init_params(model, cfg, jax.random.key(1))
    x = features(6, 80, seed=9).reshape(2, 3, 80, 100)
    valid = np.array([[100, 100, 41], [100, 12, 77]])
    chunked = jax.jit(lambda p, f, v: model.apply({"params": p}, f, v, method=AudioTower.encode_chunks))(
        params, jnp.asarray(x), jnp.asarray(valid))
    assert chunked.shape == (2, 3, 25, 32)
    one_clip = jax.jit(AudioTower(cfg.replace(remat="full")).apply)
    for b in range(2):
        for c in range(3):
            one = one_clip({"params": params}, jnp.asarray(x[b, c][None]), jnp.asarray(valid[b, c][None]))
            np.testing.assert_allclose(chunked[b, c], one[0], rtol=1e-5, atol=1e-5)
