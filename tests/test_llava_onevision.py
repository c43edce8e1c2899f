"""LLaVA-OneVision (SigLIP + 2-layer MLP + Qwen2, AnyRes images) against transformers'
``LlavaOnevisionForConditionalGeneration`` (float32): logits, export, other checkpoint layouts,
``dump_logits``, placeholder checks. One tiny random model for the module."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from transformers import LlavaOnevisionConfig as HFConfig
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

from data_pipelines import image_tiles
from omnijax import media_tokens as mt
from omnijax.checkpoint import load_model
from omnijax.hf.exporter import save_hf
from omnijax.models import llava_onevision as lo
from omnijax.tools import dump_logits

TOL = 1e-4  # max |diff| <= TOL * max |logit|, over the unpadded positions
IMAGE_TOKEN = 120
PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32]]
# SigLIP 16/4 (16 tokens per tile), Qwen2 width 48 with GQA 2:1; 'anyres_max_2' so that 2x2 grids are
# bilinearly shrunk and 1x2 grids are not.
HF_CONFIG = dict(
    vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, image_size=16, patch_size=4, vision_use_head=False),
    text_config=dict(model_type="qwen2", vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    image_token_index=IMAGE_TOKEN, image_grid_pinpoints=PINPOINTS, vision_aspect_ratio="anyres_max_2",
)


@pytest.fixture(scope="module")
def lov(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llava_onevision"))
    torch.manual_seed(0)
    hf = LlavaOnevisionForConditionalGeneration(HFConfig(**HF_CONFIG)).eval()
    hf.save_pretrained(path)
    return path, hf, load_model(path, progress=False)


def rgb(h, w, seed) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def image_processor() -> LlavaOnevisionImageProcessorPil:
    return LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16}, image_grid_pinpoints=PINPOINTS)


def hf_token_count(size) -> int:
    """``LlavaOnevisionProcessor._get_number_of_features`` (offline: no tokenizer, no video processor)."""
    proc = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    proc.image_processor, proc.num_image_tokens, proc.vision_aspect_ratio = image_processor(), 16, "anyres_max_2"
    return proc._get_number_of_features(*size, 16, 16)


def make_batch(cfg, sizes, rows, *, multi_image=False, seed=0) -> dict:
    """HF forward inputs: ``rows[i]`` lists the images of example i; text around each image's placeholders,
    right padding. ``multi_image``: the processor gets the images per example (reports batch_num_images)."""
    images = [rgb(*size, seed=seed + k) for k, size in enumerate(sizes)]
    grouped = [[images[k] for k in row] for row in rows] if multi_image else images
    out = dict(image_processor()(grouped, return_tensors="np"))
    if not multi_image:
        out.pop("batch_num_images")  # transformers' default: every image is a single-image sample
    tokens = lo.image_num_tokens(cfg, out["image_sizes"], out.get("batch_num_images"))
    rng = np.random.RandomState(seed)
    seqs = []
    for row in rows:
        seq = list(rng.randint(3, 100, 4))
        for k in row:
            seq += [IMAGE_TOKEN] * tokens[k] + list(rng.randint(3, 100, 3))
        seqs.append(seq)
    width = max(map(len, seqs)) + 2
    out["input_ids"] = np.zeros((len(rows), width), np.int64)
    out["attention_mask"] = np.zeros((len(rows), width), np.int64)
    for i, seq in enumerate(seqs):
        out["input_ids"][i, :len(seq)], out["attention_mask"][i, :len(seq)] = seq, 1
    return out


def hf_logits(model, inputs) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}).logits.numpy()


def rel_err(got, want, mask) -> float:
    m = np.asarray(mask, bool)
    got, want = np.asarray(got, np.float64)[m], np.asarray(want, np.float64)[m]
    return float(np.abs(got - want).max() / np.abs(want).max())


def ours(loaded, inputs):
    return loaded.arch.hf_forward(loaded.module, loaded.params, inputs)


ANYRES_SIZES = [(20, 40), (40, 30), (30, 30)]  # 1x2 grid (not shrunk), 2x2 unpadded + shrunk, 2x2 shrunk
ANYRES_ROWS = [[0], [1, 2]]


def test_single_image_per_row_matches_transformers(lov):
    _, hf, loaded = lov
    inputs = make_batch(loaded.cfg, [(16, 16), (12, 20)], [[0], [1]], multi_image=True, seed=1)
    assert inputs["batch_num_images"].tolist() == [1, 1]
    want = hf_logits(hf, inputs)
    err = rel_err(ours(loaded, inputs), want, inputs["attention_mask"])
    print(f"single image per row: max|diff| / max|logit| = {err:.2e}")
    assert err <= TOL
    text_only = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    assert rel_err(hf_logits(hf, text_only), want, inputs["attention_mask"]) > 0.1  # the images matter


def test_anyres_images_of_different_aspect_ratios_in_one_batch(lov):
    """Examples holding 3-tile and 5-tile images (HF pads pixel_values to [3, 5, 3, 16, 16]), one of them
    two images, the 2x2 grids unpadded and shrunk: logits == transformers, from both pixel layouts."""
    _, hf, loaded = lov
    cfg = loaded.cfg
    inputs = make_batch(cfg, ANYRES_SIZES, ANYRES_ROWS, seed=2)
    tiles = lo.image_num_tiles(cfg, ANYRES_SIZES)
    assert tiles == (3, 5, 5) and inputs["pixel_values"].shape == (3, 5, 3, 16, 16)
    assert [mt.anyres_layout(s, **cfg.layout_kw).shrunk for s in ANYRES_SIZES] == [False, True, True]
    assert lo.image_num_tokens(cfg, ANYRES_SIZES) == tuple(hf_token_count(s) for s in ANYRES_SIZES)
    mean, std = image_processor().image_mean, image_processor().image_std
    for k, size in enumerate(ANYRES_SIZES):  # omnijax's tiles are the processor's
        got = image_tiles.anyres_pixel_tiles(rgb(*size, seed=2 + k), base_image_size=16, pinpoints=PINPOINTS,
                                             mean=mean, std=std)
        np.testing.assert_allclose(got, inputs["pixel_values"][k, :tiles[k]].transpose(0, 2, 3, 1), atol=1e-5)
    want = hf_logits(hf, inputs)
    err = rel_err(ours(loaded, inputs), want, inputs["attention_mask"])
    print(f"AnyRes batch (HF padded layout): max|diff| / max|logit| = {err:.2e}")
    assert err <= TOL
    flat = np.concatenate([inputs["pixel_values"][k, :n] for k, n in enumerate(tiles)])  # tiles back to back
    assert rel_err(ours(loaded, {**inputs, "pixel_values": flat}), want, inputs["attention_mask"]) <= TOL


def test_multi_image_example_uses_one_base_tile_per_image(lov):
    """batch_num_images [1, 2]: the second example's images are one base tile + newline each."""
    _, hf, loaded = lov
    inputs = make_batch(loaded.cfg, ANYRES_SIZES, ANYRES_ROWS, multi_image=True, seed=3)
    assert inputs["batch_num_images"].tolist() == [1, 2]
    assert lo.image_num_tokens(loaded.cfg, ANYRES_SIZES, (1, 2)) == (hf_token_count(ANYRES_SIZES[0]), 17, 17)
    err = rel_err(ours(loaded, inputs), hf_logits(hf, inputs), inputs["attention_mask"])
    print(f"multi-image example: max|diff| / max|logit| = {err:.2e}")
    assert err <= TOL


def test_export_loads_in_transformers_with_equal_logits(lov, tmp_path):
    src, hf, loaded = lov
    out = str(tmp_path / "export")
    save_hf(out, loaded.arch, loaded.cfg, loaded.params, progress=False)
    back, info = LlavaOnevisionForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    mine, theirs = (load_file(os.path.join(d, "model.safetensors")) for d in (out, src))
    assert sorted(mine) == sorted(theirs)
    for k in theirs:
        np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)
    assert back.config.image_grid_pinpoints == PINPOINTS and back.config.vision_aspect_ratio == "anyres_max_2"
    inputs = make_batch(loaded.cfg, ANYRES_SIZES, ANYRES_ROWS, seed=2)
    assert rel_err(hf_logits(back.eval(), inputs), hf_logits(hf, inputs), inputs["attention_mask"]) == 0.0


def test_dump_logits_matches_transformers(lov, tmp_path):
    path, hf, loaded = lov
    inputs = make_batch(loaded.cfg, ANYRES_SIZES, ANYRES_ROWS, seed=4)
    np.savez(tmp_path / "in.npz", **inputs)
    assert dump_logits.main(["--model", path, "--inputs", str(tmp_path / "in.npz"),
                             "--out", str(tmp_path / "out.npy")]) == 0
    err = rel_err(np.load(tmp_path / "out.npy"), hf_logits(hf, inputs), inputs["attention_mask"])
    print(f"dump_logits: max|diff| / max|logit| = {err:.2e}")
    assert err <= TOL
    np.savez(tmp_path / "bad.npz", **inputs, pixel_values_videos=np.zeros(1))
    assert dump_logits.main(["--model", path, "--inputs", str(tmp_path / "bad.npz"),
                             "--out", str(tmp_path / "bad.npy")]) == 2


def test_placeholder_count_mismatch_names_the_example(lov):
    _, _, loaded = lov
    inputs = make_batch(loaded.cfg, ANYRES_SIZES, ANYRES_ROWS, seed=5)
    short = {**inputs, "input_ids": inputs["input_ids"].copy()}
    row1 = np.flatnonzero(short["input_ids"][1] == IMAGE_TOKEN)
    short["input_ids"][1, row1[-1]] = 5
    with pytest.raises(ValueError, match="example 1 has 91 image placeholder tokens"):
        ours(loaded, short)
    extra = {**inputs, "input_ids": inputs["input_ids"].copy()}
    extra["input_ids"][0, 0] = IMAGE_TOKEN  # example 0 now has one placeholder too many
    with pytest.raises(ValueError, match="example 0 has 53 image placeholder tokens"):
        ours(loaded, extra)
    multi = make_batch(loaded.cfg, ANYRES_SIZES, ANYRES_ROWS, multi_image=True, seed=5)
    multi["input_ids"][1, np.flatnonzero(multi["input_ids"][1] == IMAGE_TOKEN)[0]] = 5
    with pytest.raises(ValueError, match="example 1 has 33 image placeholder tokens, but its 2 image"):
        ours(loaded, multi)
    pixels = jnp.asarray(inputs["pixel_values"].transpose(0, 1, 3, 4, 2))
    with pytest.raises(ValueError, match="example 1"):  # the module checks concrete ids itself
        loaded.module.apply({"params": loaded.params}, jnp.asarray(short["input_ids"]), pixels,
                            image_sizes=lo.static_sizes(inputs["image_sizes"]))
    with pytest.raises(ValueError, match=r"pixel_values has shape \(3, 4, 16, 16, 3\); expected \[3, >= 5"):
        jax.eval_shape(lambda p: loaded.module.apply({"params": loaded.params}, jnp.asarray(inputs["input_ids"]), p,
                                                     image_sizes=lo.static_sizes(inputs["image_sizes"])),
                       jax.ShapeDtypeStruct((3, 4, 16, 16, 3), jnp.float32))


def test_other_checkpoint_layouts_load(lov, tmp_path):
    """v5-native module names and pre-v5 ``vision_tower.vision_model.*`` keys read into the same params."""
    src, _, loaded = lov
    tensors = load_file(os.path.join(src, "model.safetensors"))
    native = {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head.",
              "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector.",
              "image_newline": "model.image_newline"}
    layouts = {"native": native, "legacy_vision": {"vision_tower.": "vision_tower.vision_model."}}
    for name, renames in layouts.items():
        d = tmp_path / name
        d.mkdir()
        renamed = {}
        for k, v in tensors.items():
            pre = next((p for p in renames if k.startswith(p)), "")
            renamed[renames[pre] + k[len(pre):] if pre else k] = v
        assert renamed.keys() != tensors.keys()
        save_file(renamed, str(d / "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(src, "config.json")) as f, open(d / "config.json", "w") as g:
            json.dump(json.load(f), g)
        other = load_model(str(d), progress=False)
        for a, b in zip(jax.tree.leaves(other.params), jax.tree.leaves(loaded.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_config_round_trip_groups_and_axes(lov):
    path, _, loaded = lov
    cfg = loaded.cfg
    assert lo.LlavaOnevisionConfig.from_hf(cfg.to_hf()) == cfg
    with open(os.path.join(path, "config.json")) as f:
        hf_cfg = json.load(f)
    low = lo.LlavaOnevisionConfig.from_hf(hf_cfg, dtype="bfloat16", attention="splash", image_token_index=7)
    assert (low.vision.dtype, low.text.dtype, low.vision.attention, low.text.attention) == (
        "bfloat16", "bfloat16", "xla", "splash")
    assert low.image_token_index == 7 and cfg.vision.feature_layer == -1
    with pytest.raises(ValueError, match="'default' drops the first token"):
        lo.LlavaOnevisionConfig.from_hf({**hf_cfg, "vision_feature_select_strategy": "default"})
    with pytest.raises(ValueError, match="multiple of the vision image_size 16"):
        dataclasses.replace(cfg, image_grid_pinpoints=((16, 24),))
    specs, shapes = lo.logical_specs(loaded.module)
    assert set(shapes) == {"vision", "vision_connector", "mm_embed", "llm"}
    assert set(shapes["mm_embed"]) == {"newline"} and set(shapes["vision_connector"]) == {"linear_1", "linear_2"}
    flat_specs = jax.tree_util.tree_leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_specs) == len(flat_shapes) == len(loaded.arch.table(cfg))
    for spec, shape in zip(flat_specs, flat_shapes):
        assert len(spec) == len(shape.shape) and all(isinstance(a, str) for a in spec), (spec, shape)
