"""Ola's released checkpoint layout (omnijax.hf.ola) against a tiny release directory written by Ola's own code
(tests/golden/ola_release_tiny/, tests/golden/README.md): import, Ola's logits on an image + speech input, export back
to the same tensor names and shapes, re-import bit for bit."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import omnijax.hf  # noqa: F401  (registers the architectures)
from data_pipelines import audio as audio_features
from data_pipelines import image_tiles
from data_pipelines.features import MediaFeatures
from experiments.ola import stage3b
from omnijax import launch
from omnijax.hf import convert, ola
from omnijax.hf.importer import load_hf
from omnijax.hf.omni import omni_forward
from omnijax.hf.safetensors_io import CheckpointError, SafetensorsDir
from omnijax.models.omni import OmniModel
from omnijax.training.omni_task import omni_config

HERE = os.path.dirname(__file__)
RELEASE = os.path.join(HERE, "golden", "ola_release_tiny")
GOLDEN = os.path.join(HERE, "golden", "ola_release_tiny.npz")
WHISPER_DIR = "large-v3_safetensors"
BEATS_DIR = "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2_safetensors"
IMAGE, SPEECH = -300, -200  # Ola's ola/constants.py


@pytest.fixture(scope="module")
def loaded():
    return load_hf(RELEASE, progress=False)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def _names_shapes(directory: str) -> dict[str, tuple]:
    out = {}
    for sub in ("", WHISPER_DIR, BEATS_DIR):
        reader = SafetensorsDir(os.path.join(directory, sub))
        out.update({f"{sub}/{k}" if sub else k: reader.shape(k) for k in reader.keys()})
    return out


def _batch(cfg, g):
    """The golden input as omnijax's batch: Ola's -300 / -200 expanded into runs of placeholders as Ola's
    prepare_inputs_labels_for_speech_vision_text expands them (one per feature); pixels and features as Ola made
    them."""
    n_image, n_speech = len(g["image_features"]), len(g["speech_features"])
    ids = []
    for t in g["input_ids"]:
        ids += [cfg.image_token_id] * n_image if t == IMAGE else [cfg.audio_token_id] * n_speech if t == SPEECH else [t]
    views = [g["lowres_pixels"].transpose(1, 2, 0), g["highres_pixels"].transpose(1, 2, 0)]  # CHW -> HWC
    cut = [image_tiles.native_patches(v, 16) for v in views]
    patches = np.concatenate([p for p, _ in cut])
    windows = len(g["mel"])
    batch = {"input_ids": np.asarray([ids], np.int32), "positions": np.arange(len(ids), dtype=np.int32)[None],
             "segment_ids": np.ones((1, len(ids)), np.int32), "image_patches": patches[None],
             "image_patch_slot": np.repeat(np.arange(2, dtype=np.int32), [len(p) for p, _ in cut])[None],
             "image_grid": np.asarray([[grid for _, grid in cut]], np.int32), "image_item": np.zeros((1, 2), np.int32),
             "audio": g["mel"][None], "audio_item": np.zeros((1, windows), np.int32),
             "audio_valid_frames": np.full((1, windows), g["mel"].shape[-1], np.int32), "audio_fbank": g["fbank"][None]}
    budget = dict(image_slots=2, image_patches=len(patches), audio_slots=windows)
    return batch, budget


def test_import_gives_olas_logits(loaded, golden):
    batch, budget = _batch(loaded.cfg, golden)
    cfg = loaded.cfg.replace(**budget)
    logits = np.asarray(omni_forward(OmniModel(cfg), loaded.params, batch))[0]
    want = golden["logits"]
    assert logits.shape == want.shape == (61, 64)  # 11 text + 26 image + 24 speech tokens
    err = np.abs(logits - want).max()
    assert err <= 1e-4 * np.abs(want).max(), err


def test_beats_head_gives_olas_audioset_probs(loaded, golden):
    """The fine-tuned BEATs' AudioSet head (carried, unused by Ola's forward): the reference's extract_features
    without feature_only on the same windows."""
    from omnijax.models.beats import BEATsEncoder

    assert loaded.cfg.beats.predictor_class == 5
    _, state = BEATsEncoder(loaded.cfg.beats).apply({"params": loaded.params["audio"]["beats"]}, golden["fbank"],
                                                    mutable=["intermediates"])
    np.testing.assert_allclose(state["intermediates"]["audioset_probs"][0], golden["beats_audioset_probs"], atol=1e-5)


def test_omnijax_preprocessing_lays_out_olas_tokens(loaded, golden):
    """omnijax's own views of the image, as the pipeline makes them (``MediaFeatures`` at native resolution with
    Ola's low-res view at LOWRES_RESIZE 96x32: that view, then the image padded to 32-pixel multiples), and windows
    of the clip: the same pixels, grids and token counts as Ola's processor and projectors. Ola makes the low-res
    view from the padded image (process_anyres_highres_image pads first); from the unpadded one it would differ."""
    from PIL import Image

    image = Image.fromarray(golden["image_uint8"])
    low, high = golden["lowres_pixels"].transpose(1, 2, 0), golden["highres_pixels"].transpose(1, 2, 0)
    cfg = loaded.cfg.replace(image_slots=2, image_patches=96)
    feature = MediaFeatures(cfg.budget, cfg.media_layout, native_lowres=96).image(image)
    (low_patches, low_grid), (high_patches, high_grid) = (image_tiles.native_patches(v) for v in (low, high))
    assert feature.grids.tolist() == [list(low_grid), list(high_grid)] == [[4, 6], [6, 8]]
    np.testing.assert_array_equal(feature.data[:len(low_patches)], low_patches)
    np.testing.assert_allclose(feature.data[len(low_patches):], high_patches, atol=1e-6)
    unpadded = np.asarray(image.resize((96, 64), Image.BICUBIC), np.float32) / 127.5 - 1
    assert np.abs(unpadded - low).max() > 0.1  # what the unpadded image's view would have been
    assert [tuple(g) for g in (golden["lowres_grid"], golden["highres_grid"])] == [(4, 6), (6, 8)]
    assert feature.tokens == len(golden["image_features"]) == 26
    layout = loaded.cfg.media_layout
    assert layout.audio_tokens(len(golden["mel"])) == len(golden["speech_features"]) == 24
    wave = golden["waveform"].astype(np.float32) / 32768
    windows = [np.pad(wave[i:i + 32000], (0, max(0, i + 32000 - len(wave)))) for i in (0, 32000)]
    fbank = np.stack([audio_features.beats_fbank(w) for w in windows])
    np.testing.assert_allclose(fbank, golden["fbank"], atol=2e-3 * np.abs(golden["fbank"]).max())


def test_export_writes_the_release_names_and_shapes(loaded, tmp_path):
    """``convert import`` then ``convert export``: the release's tensor names and shapes (and the two files beside
    it), its architecture keys; the exported directory re-imports bit for bit."""
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "ola")
    assert convert.main(["import", "--hf", RELEASE, "--out", ckpt]) == 0
    assert convert.main(["export", "--ckpt", ckpt, "--out", out]) == 0
    got, want = _names_shapes(out), _names_shapes(RELEASE)
    # the Whisper decoder of large-v3.pt is no part of Ola's model and is not carried
    want = {k: v for k, v in want.items() if not k.startswith(f"{WHISPER_DIR}/decoder.")}
    assert got == want
    config = json.load(open(os.path.join(out, "config.json")))
    release = json.load(open(os.path.join(RELEASE, "config.json")))
    same = ("architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "mm_hidden_size",
            "mm_projector_type", "speech_encoder", "music_encoder", "speech_encoder_type", "speech_encoder_ds_rate",
            "speech_encoder_hidden_size", "ola_fixed_sizes", "tie_word_embeddings", "rope_theta")
    assert {k: config[k] for k in same} == {k: release[k] for k in same}
    again = load_hf(out, progress=False)
    assert again.cfg == loaded.cfg
    flat = jax.tree_util.tree_leaves_with_path(loaded.params)
    for (path, a), b in zip(flat, jax.tree_util.tree_leaves(again.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def test_errors_name_the_file_and_the_fix(tmp_path):
    d = tmp_path / "release"
    shutil.copytree(RELEASE, d)
    shutil.rmtree(d / BEATS_DIR)
    with pytest.raises(CheckpointError, match=r"lacks Ola's BEATs encoder \(config 'music_encoder' = "
                                              r"'\./BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2\.pt'\).*python -c"):
        load_hf(str(d), progress=False)
    (d / "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt").write_bytes(b"\x80\x02pickle")
    with pytest.raises(CheckpointError, match=r"\.pt \(Ola's BEATs encoder, config 'music_encoder'\) is a PyTorch "
                                              r"pickle; .* convert it once: python -c"):
        load_hf(str(d), progress=False)
    shutil.copytree(os.path.join(RELEASE, BEATS_DIR), d / BEATS_DIR)
    config = json.load(open(d / "config.json"))
    config["ola_fixed_sizes"]["speech_projector_hidden"] = 24
    json.dump(config, open(d / "config.json", "w"))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.speech_projector\.linear1\.weight' has shape "
                                              r"\(16, 640\), the config expects \(24, 640\)"):
        load_hf(str(d), progress=False)


def test_tiny_component_sizes_match_the_release(loaded):
    """Parameters per Ola component of the imported model == the release's tensors of that component, each counted
    once (the Whisper decoder aside; BEATs' relative position table, which every layer's state_dict repeats, once).
    ``python -m experiments.ola.sizes`` counts the 7b preset the same way."""
    want: dict[str, int] = {}
    for sub in (WHISPER_DIR, BEATS_DIR, ""):
        reader = SafetensorsDir(os.path.join(RELEASE, sub))
        for k in reader.keys():
            key = f"{sub}/{k}" if sub else k
            if k.startswith(("decoder.", "model.speech_encoder.")) or (
                    "relative_attention_bias" in k and not k.startswith("encoder.layers.0.")):
                continue
            want[ola.component(key)] = want.get(ola.component(key), 0) + int(np.prod(reader.shape(k)))
    got = ola.component_sizes(loaded.cfg, loaded.params)
    assert got == want
    assert got["speech_projector"] == 640 * 16 + 16 + 16 * 32 + 32 + 3 * 32  # linear1, linear2, begin/newline/end


def test_a_stage_starts_from_the_release(loaded, tmp_path):
    """Ola's tiny stage 3b with ``init=DIR`` (``common.start_from``) on a copy of the release: its model is the
    release's (sizes from its config.json, the tiny preset's patch slots), ``init_from`` lands every group, the
    params at step 0 are the import's bit for bit, and it trains 2 steps (random rows of text and audio)."""
    release = str(tmp_path / "release")
    shutil.copytree(RELEASE, release)
    c = stage3b.get_config(f"tiny,init={release},steps=2")
    assert c.init_from == release and c.data.pipeline.native_lowres == 32
    assert omni_config(c) == loaded.cfg.replace(image_slots=2, video_slots=4, audio_slots=2, image_patches=256,
                                                video_patches=512)
    c.data.source, c.data.sources = "random", []  # the release's 64-token vocabulary is not the tiny tokenizer's
    c.media.update(image_slots=0, video_slots=0, audio_slots=1)
    c.seq_len = 64
    c.checkpoint.update(every=2, keep=1, async_save=False)
    params = launch.setup(c).init_params()
    want = jax.tree_util.tree_leaves_with_path(loaded.params)
    assert jax.tree.structure(params) == jax.tree.structure(loaded.params)
    for (path, a), b in zip(want, jax.tree.leaves(params)):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)
    result = launch.run(c, str(tmp_path / "run"))
    assert result.status == "finished" and result.step == 2
    assert np.isfinite([row["loss"] for row in result.metrics if "loss" in row]).all()
    seven = omni_config(stage3b.get_config(f"7b,init={release}"))  # the 7b preset's numerics on the release's sizes
    assert (seven.llm.hidden_size, seven.llm.dtype, seven.vision.remat, seven.beats.dtype) == (32, "bfloat16", "full",
                                                                                              "bfloat16")
    assert seven.image_patches == 9216 and seven.beats.predictor_class == 5
    with pytest.raises(ValueError, match=r"init= takes the model of its directory; drop \['audio'\]"):
        stage3b.get_config(f"tiny,init={release},audio=dual")
    with pytest.raises(ValueError, match=r"init='@hf/Ola-7b': give the model directory as a folder"):
        stage3b.get_config("tiny,init=@hf/Ola-7b")
