"""OryxViT (Ola's native-resolution vision tower) against golden outputs of Ola's own code.

The oracle is ``ola/model/multimodal_encoder/oryx_vit.py`` of Ola-Omni/Ola, run on CPU with tiny random
weights behind a shim (``tests/golden/oryx_vit_tiny/README.md`` names the commit and the steps): its
state dict (``model.safetensors``, the release's key names) and its features for three images and a
two-frame video (``golden.npz``).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from safetensors.numpy import load_file

from data_pipelines.image_tiles import native_patches, pack_native
from omnijax import media_tokens as mt
from omnijax.hf import architectures
from omnijax.hf.exporter import save_hf
from omnijax.hf.importer import load_hf
from omnijax.models.connectors import pooled_grid
from omnijax.models.oryx_vit import OryxViT, OryxViTConfig, OryxViTModel, example_inputs

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "oryx_vit_tiny")
SLOTS, MAX_IMAGES = 64, 3


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def pixels(a: np.ndarray) -> np.ndarray:
    """The golden script's SigLIP normalisation of uint8 CHW pixels, as HWC float32."""
    x = (a.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    return np.moveaxis(x, -3, -1)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(os.path.join(GOLDEN, "golden.npz")))


@pytest.fixture(scope="module")
def loaded():
    return load_hf(GOLDEN, progress=False)


@pytest.fixture(scope="module")
def packed(golden, loaded):
    """Two rows of 64 slots: [48x80 image, 150x40 image, empty], [96x32 image, video frame 0, frame 1, empty]."""
    images = [pixels(golden[f"image_{i}_uint8"]) for i in range(3)]
    frames = list(pixels(golden["video_0_uint8"]))
    rows = [pack_native([images[0], images[2]], slots=SLOTS, max_images=MAX_IMAGES),
            pack_native([images[1], *frames], slots=SLOTS, max_images=MAX_IMAGES)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return batch, np.asarray(loaded.arch.hf_forward(loaded.module, loaded.params, batch))


def test_packed_images_match_ola_reference(golden, packed):
    batch, out = packed
    # (row, first slot, golden key): each image's run of slots, row-major over its patch grid.
    spans = [(0, 0, "image_0"), (0, 15, "image_2"), (1, 0, "image_1"), (1, 12, "video_0")]
    for row, start, key in spans:
        want = golden[f"{key}_features"].reshape(-1, 32)
        got = out[row, start:start + len(want)]
        assert rel_err(got, want) < 1e-4, key
        rows, cols = golden[f"{key}_grid"]
        assert list(batch["grids"][row, 1 if start else 0]) == [rows, cols], key
    assert np.abs(out[0, 45:]).max() == 0 and np.abs(out[1, 24:]).max() == 0  # empty slots
    assert [tuple(golden[f"image_{i}_grid"]) for i in range(3)] == [(3, 5), (6, 2), (10, 3)]


def test_export_writes_ola_names_back(loaded, tmp_path):
    save_hf(str(tmp_path / "out"), loaded.arch, loaded.cfg, loaded.params, progress=False)
    want = load_file(os.path.join(GOLDEN, "model.safetensors"))
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert sorted(got) == sorted(want)
    assert "model.vision_tower.vision_tower.blocks.1.attn.qkv.weight" in got
    for k in want:
        assert got[k].shape == want[k].shape and np.array_equal(got[k], want[k]), k


def test_positions_are_torch_bilinear_without_antialias(loaded):
    """The table rescaled to grids smaller and larger than 8x8 equals F.interpolate(bilinear,
    align_corners=False), which does not antialias when shrinking (jax.image.resize would)."""
    table = np.asarray(loaded.params["vision"]["pos_embed"])
    grids = [(3, 13), (11, 2), (8, 8)]
    seg = np.concatenate([np.full(r * c, i + 1) for i, (r, c) in enumerate(grids)])[None].astype(np.int32)
    got = jax.jit(lambda p, s, g: OryxViT(loaded.cfg).apply({"params": p}, s, g, method="positions"))(
        loaded.params["vision"], seg, np.asarray(grids, np.int32)[None])[0]
    t = torch.from_numpy(np.array(table.T.reshape(1, 32, 8, 8)))
    start = 0
    for r, c in grids:
        want = torch.nn.functional.interpolate(t, size=(r, c), mode="bilinear", align_corners=False)
        want = want[0].reshape(32, r * c).T.numpy()
        assert rel_err(got[start:start + r * c], want) < 1e-6, (r, c)
        start += r * c
    assert rel_err(got[-64:], table) < 1e-7  # the trained grid: the table itself


def test_native_patches_pad_and_cut_row_major():
    x = np.arange(20 * 35 * 3, dtype=np.float32).reshape(20, 35, 3) + 1
    patches, grid = native_patches(x, patch_size=16)
    assert grid == mt.native_patch_grid((20, 35)) == (2, 3) and patches.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(patches[1], x[:16, 16:32])  # row 0, col 1
    np.testing.assert_array_equal(patches[5, :4, :3], x[16:, 32:])  # the last patch: image corner, then zeros
    assert patches[5, 4:].max() == 0 and patches[5, :, 3:].max() == 0
    row = pack_native([x, x[:16, :16]], slots=8, max_images=3)
    assert row["segment_ids"].tolist() == [1] * 6 + [2, 0] and row["grids"].tolist() == [[2, 3], [1, 1], [0, 0]]
    with pytest.raises(ValueError, match=r"need 7 patch slots, the row has slots=6: raise slots"):
        pack_native([x, x[:16, :16]], slots=6, max_images=3)
    with pytest.raises(ValueError, match=r"2 images do not fit a row of max_images=1"):
        pack_native([x, x], slots=64, max_images=1)


def test_every_param_has_logical_axes(loaded):
    cfg = loaded.cfg
    abstract = jax.eval_shape(OryxViTModel(cfg).init, jax.random.key(0), *example_inputs(cfg))
    specs = nn.get_partition_spec(abstract)["params"]
    flat_specs = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract)["params"])
    assert len(flat_specs) == len(flat_shapes) == len(architectures.get("OryxViT").table(cfg)) == 15
    for (path, spec), (_, shape) in zip(flat_specs, flat_shapes):
        name = jax.tree_util.keystr(path)
        assert len(spec) == len(shape.shape) and all(isinstance(a, str) for a in spec), (name, spec, shape.shape)
        assert ("layers" in spec) == ("blocks" in name), name


def test_bad_inputs_and_configs_are_named():
    cfg = OryxViTConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, pos_grid=4)
    model = OryxViTModel(cfg)
    patches, seg, grids = example_inputs(cfg, slots=4)
    with pytest.raises(ValueError, match=r"patches has shape \(1, 4, 14, 14, 3\); expected \[batch, slots, 16, 16, 3"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4, 14, 14, 3), jnp.float32), seg, grids)
    with pytest.raises(ValueError, match=r"segment_ids has shape \(1, 5\); expected \[1, 4\]"):
        jax.eval_shape(model.init, jax.random.key(0), patches, jax.ShapeDtypeStruct((1, 5), jnp.int32), grids)
    with pytest.raises(ValueError, match="splash attention is causal-only"):
        cfg.replace(attention="splash")
    with pytest.raises(ValueError, match=r"hidden_size \(30\) must be a multiple of num_heads \(4\)"):
        OryxViTConfig(hidden_size=30, num_heads=4)


def test_ola_layout_of_native_images_matches_ola_projector():
    """Token count and newline positions of images of three aspect ratios (two views each: lowres, sep,
    highres) equal what Ola's OlaMLP lays out (``ola_layout.json``)."""
    with open(os.path.join(GOLDEN, "ola_layout.json")) as f:
        cases = json.load(f)["cases"]
    for case in cases:
        views = [tuple(v) for v in case["view_sizes"]]
        assert [list(mt.native_patch_grid(v)) for v in views] == case["patch_grids"]
        assert mt.ola_native_image_tokens(views) == case["tokens"], views
        assert mt.ola_native_image_newlines(views) == case["newline_positions"], views
        assert [1 + mt.ola_tile_tokens(mt.ola_native_grid(views[0]))] == case["sep_positions"], views
    assert [c["tokens"] for c in cases] == [59, 68, 21]
    for size in [(48, 80), (96, 32), (150, 40), (17, 33)]:  # odd patch grids: the pooler's ceil
        assert mt.ola_native_grid(size) == pooled_grid(*mt.native_patch_grid(size))
    with pytest.raises(ValueError, match="at least one view"):
        mt.ola_native_image_tokens([])
