"""SigLIP vision tower, its HF map, and image layouts / token counts against transformers (float32)."""

import json
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

from data_pipelines import image_tiles
from omnijax import media_tokens as mt
from omnijax import sharding
from omnijax.checkpoint import load_model
from omnijax.hf import architectures
from omnijax.hf.exporter import save_hf
from omnijax.models.image_layout import pack_anyres, resize_matrix
from omnijax.models.vision import VisionConfig, VisionModel, VisionTower, logical_specs

TOL = 1e-4  # max |diff| <= TOL * max |value|

# Two tiny towers: patch 4 / image 16 without the head, patch 7 / image 28 with it (head_dim 8).
TOWERS = {
    "p4_i16": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   image_size=16, patch_size=4, vision_use_head=False),
    "p7_i28_head": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                        image_size=28, patch_size=7, vision_use_head=True),
}


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def nhwc(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def run_tower(cfg, params, pixels):
    """``VisionTower(cfg)`` outputs for NHWC ``pixels``, jitted (eager Flax is slow on a busy CPU)."""
    return jax.jit(VisionTower(cfg).apply)({"params": params["vision"]}, pixels)


def hf_run(model, pixels_nchw, **kw):
    with torch.no_grad():
        return model(torch.from_numpy(pixels_nchw), output_hidden_states=True, **kw)


@pytest.fixture(scope="module", params=sorted(TOWERS))
def tower(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**TOWERS[request.param])).eval()
    model.save_pretrained(path)
    return request.param, path, model, load_model(path, progress=False)


def test_outputs_match_transformers(tower):
    name, _, hf, loaded = tower
    s = loaded.cfg.image_size
    x = np.random.RandomState(1).randn(3, 3, s, s).astype(np.float32)
    want = hf_run(hf, x)
    last, pooled = jax.jit(loaded.module.apply)({"params": loaded.params}, nhwc(x))
    assert rel_err(last, want.last_hidden_state) <= TOL, name
    dumped = loaded.arch.hf_forward(loaded.module, loaded.params, {"pixel_values": x})  # dump_logits' path (NCHW)
    assert rel_err(dumped, want.last_hidden_state) <= TOL, name
    if loaded.cfg.use_head:
        assert pooled.shape == (3, loaded.cfg.hidden_size)
        assert rel_err(pooled, want.pooler_output) <= TOL, name
    else:
        assert pooled is None


def test_feature_layer_selects_hf_hidden_states(tower):
    """features = hidden_states[k] (0 = embeddings, -1 = last layer before post_layernorm, LLaVA-OV's
    choice); feature_layer=None = last_hidden_state (after post_layernorm)."""
    name, _, hf, loaded = tower
    cfg, s = loaded.cfg, loaded.cfg.image_size
    x = np.random.RandomState(2).randn(2, 3, s, s).astype(np.float32)
    want = hf_run(hf, x)
    assert cfg.feature_layer == -1 and len(want.hidden_states) == cfg.num_layers + 1
    for k in [-1, 0, -2, None]:  # -2 is an inner layer for both towers
        out = run_tower(cfg.replace(feature_layer=k), loaded.params, nhwc(x))
        ref = want.last_hidden_state if k is None else want.hidden_states[k]
        assert rel_err(out["features"], ref) <= TOL, (name, k)
    assert not np.allclose(want.hidden_states[-1].numpy(), want.last_hidden_state.numpy(), atol=1e-3)


@pytest.mark.parametrize("hw", [(24, 20), (12, 12), (17, 23)])  # larger non-square, smaller, not divisible
def test_position_interpolation_matches_transformers(tower, hw):
    """Other image sizes: bicubic position interpolation == HF's interpolate_pos_encoding=True."""
    name, _, hf, loaded = tower
    cfg = loaded.cfg.replace(interpolate_pos_encoding=True)
    h, w = (v * cfg.patch_size // 4 for v in hw)
    x = np.random.RandomState(3).randn(2, 3, h, w).astype(np.float32)
    want = hf_run(hf, x, interpolate_pos_encoding=True)
    last, pooled = jax.jit(VisionModel(cfg).apply)({"params": loaded.params}, nhwc(x))
    assert last.shape == (2, (h // cfg.patch_size) * (w // cfg.patch_size), cfg.hidden_size)
    assert rel_err(last, want.last_hidden_state) <= TOL, (name, hw)
    if cfg.use_head:
        assert rel_err(pooled, want.pooler_output) <= TOL


def test_export_loads_in_transformers(tower, tmp_path):
    name, src, hf, loaded = tower
    out = str(tmp_path / "export")
    save_hf(out, loaded.arch, loaded.cfg, loaded.params, progress=False)
    back, info = SiglipVisionModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ours, theirs = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(src, "model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    x = np.random.RandomState(4).randn(2, 3, loaded.cfg.image_size, loaded.cfg.image_size).astype(np.float32)
    got, want = hf_run(back.eval(), x), hf_run(hf, x)
    assert rel_err(got.last_hidden_state, want.last_hidden_state) == 0.0


def test_sharded_forward_equals_single_device(tower, devices):
    """fsdp=2 x tensor=4 mesh with the FSDP+TP rules: same outputs as one device."""
    name, src, _, loaded = tower
    s = loaded.cfg.image_size
    x = jnp.asarray(np.random.RandomState(12).randn(4, s, s, 3).astype(np.float32))
    want = jax.jit(loaded.module.apply)({"params": loaded.params}, x)
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    rules = sharding.logical_rules("fsdp_tp")
    sharded = load_model(src, mesh=mesh, rules=rules, progress=False)
    q = sharded.params["vision"]["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec[1:3] == ("fsdp", None if loaded.cfg.num_heads % 4 else "tensor")
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with sharding.activation_sharding(mesh, rules):
        got = jax.jit(sharded.module.apply)({"params": sharded.params}, jax.device_put(x, batch))
    for a, b in zip(got, want):
        if b is not None:
            assert rel_err(a, b) <= 1e-5, name


def test_legacy_prefixed_checkpoint_loads(tower, tmp_path):
    """Pre-v5 checkpoints keep the ``vision_model.`` prefix: read through the architecture's aliases."""
    name, src, hf, loaded = tower
    tensors = load_file(os.path.join(src, "model.safetensors"))
    save_file({f"vision_model.{k}": v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f, open(tmp_path / "config.json", "w") as g:
        json.dump(json.load(f), g)
    legacy = load_model(str(tmp_path), progress=False)
    for a, b in zip(jax.tree.leaves(legacy.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


SMALL = VisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4)


def random_params(cfg: VisionConfig, seed: int = 0):
    """Random params from the abstract shapes (``init`` compiles slowly on a busy CPU)."""
    rng = np.random.RandomState(seed)
    _, shapes = logical_specs(VisionModel(cfg))
    return jax.tree.map(lambda a: jnp.asarray(0.2 * rng.randn(*a.shape), jnp.float32), shapes)


def test_video_frames_fold_into_batch():
    params = random_params(SMALL)
    video = jnp.asarray(np.random.RandomState(5).randn(2, 3, 16, 16, 3).astype(np.float32))
    per_video = run_tower(SMALL, params, video)
    per_frame = run_tower(SMALL, params, video.reshape(6, 16, 16, 3))
    assert set(per_video) == {"features", "last_hidden_state", "pooler_output"}
    for k, v in per_video.items():
        assert v.shape[:2] == (2, 3)
        np.testing.assert_allclose(np.asarray(v).reshape(per_frame[k].shape), per_frame[k], rtol=1e-5, atol=1e-5)


def test_remat_and_unroll_keep_values():
    params = random_params(SMALL)
    x = jnp.asarray(np.random.RandomState(6).randn(2, 16, 16, 3).astype(np.float32))
    base = run_tower(SMALL.replace(feature_layer=2), params, x)
    for kw in ({"remat": "full"}, {"scan_unroll": 2}):
        out = run_tower(SMALL.replace(feature_layer=2, **kw), params, x)
        for k in base:
            np.testing.assert_allclose(out[k], base[k], rtol=1e-6, atol=1e-6)


def test_bad_pixel_shapes_name_the_expected_shape():
    cfg = VisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4)
    _, shapes = logical_specs(VisionModel(cfg))

    def trace(c, shape):  # shapes only: the check runs before any compute
        return jax.eval_shape(VisionModel(c).apply, {"params": shapes}, jax.ShapeDtypeStruct(shape, jnp.float32))

    trace(cfg, (2, 16, 16, 3))
    for shape in [(1, 3, 16, 16), (1, 16, 20, 3), (16, 16, 3)]:
        with pytest.raises(ValueError, match=r"expected \[batch, 16, 16, 3\]"):
            trace(cfg, shape)
    with pytest.raises(ValueError, match="H >= 4, W >= 4"):
        trace(cfg.replace(interpolate_pos_encoding=True), (1, 2, 16, 3))
    with pytest.raises(ValueError, match="splash attention is causal-only"):
        cfg.replace(attention="splash")
    with pytest.raises(ValueError, match="feature_layer 3 is outside"):
        cfg.replace(feature_layer=3)


@pytest.mark.parametrize("use_head", [False, True])
def test_every_param_has_logical_axes(use_head):
    cfg = VisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       use_head=use_head)
    specs, shapes = logical_specs(VisionModel(cfg))
    flat_specs = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
    assert len(flat_specs) == len(flat_shapes) == len(architectures.get("SiglipVisionModel").table(cfg))
    for (path, spec), (_, shape) in zip(flat_specs, flat_shapes):
        name = jax.tree_util.keystr(path)
        assert len(spec) == len(shape.shape) and all(isinstance(a, str) for a in spec), (name, spec, shape.shape)
        assert ("layers" in spec) == ("encoder" in name), name


# ---- AnyRes layout (LLaVA-OneVision) ----

def hf_processor(num_image_tokens=729, **image_kw) -> LlavaOnevisionProcessor:
    """The processor's counting pieces, offline and without torchvision (no tokenizer, no video processor)."""
    proc = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    proc.image_processor = LlavaOnevisionImageProcessorPil(**image_kw)
    proc.num_image_tokens = num_image_tokens
    proc.vision_aspect_ratio = "anyres_max_9"
    return proc


# square, landscape, portrait, extreme strips, tiny, huge, odd
SIZES = [(384, 384), (480, 640), (1000, 200), (50, 3000), (3000, 40), (1, 4000), (10, 10), (2304, 2304),
         (333, 1999), (1080, 1920), (7000, 5000)]


def test_anyres_token_counts_match_hf_processor():
    proc = hf_processor()
    for h, w in SIZES:
        assert mt.anyres_num_tokens((h, w)) == proc._get_number_of_features(h, w, 384, 384), (h, w)
    rng = np.random.RandomState(7)
    for h, w in rng.randint(1, 4000, size=(300, 2)):
        assert mt.anyres_num_tokens((h, w)) == proc._get_number_of_features(int(h), int(w), 384, 384), (h, w)
    assert mt.anyres_num_tokens((500, 500), multi_image=True) == 729 + 1


def test_anyres_counts_for_a_tiny_preset_match_hf_processor():
    pins = [list(p) for p in mt.grid_pinpoints(16)]
    proc = hf_processor(num_image_tokens=16, size={"height": 16, "width": 16}, image_grid_pinpoints=pins)
    for h, w in [(16, 16), (20, 64), (80, 64), (96, 96), (5, 90), (90, 5), (33, 47)]:
        got = mt.anyres_num_tokens((h, w), base_image_size=16, patch_size=4, pinpoints=mt.grid_pinpoints(16))
        assert got == proc._get_number_of_features(h, w, 16, 16), (h, w)


def hf_pack(features, image_size, newline, base, patch, pinpoints):
    fake = types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(image_size=base, patch_size=patch),
        image_grid_pinpoints=[list(p) for p in pinpoints]))
    with torch.no_grad():
        packed, lens = LlavaOnevisionModel.pack_image_features(
            fake, [torch.from_numpy(features)], torch.tensor([image_size]), torch.from_numpy(newline))
    return packed[0].numpy()


@pytest.mark.parametrize("size", [(384, 384), (480, 640), (1000, 200), (50, 3000), (2304, 2304), (1080, 1920)])
def test_pack_anyres_matches_hf(size):
    """Grid reshape, unpad, bilinear shrink (2304x2304: 6x6 grid -> 81 rows) and newlines == HF."""
    layout = mt.anyres_layout(size)
    rng = np.random.RandomState(8)
    feats = rng.randn(layout.num_tiles, 729, 8).astype(np.float32)
    newline = rng.randn(8).astype(np.float32)
    want = hf_pack(feats, size, newline, 384, 14, mt.LLAVA_ONEVISION_GRID_PINPOINTS)
    got = jax.jit(pack_anyres, static_argnums=1)(jnp.asarray(feats), size, jnp.asarray(newline))
    assert got.shape == want.shape == (mt.anyres_num_tokens(size), 8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert layout.shrunk == (size in [(2304, 2304), (1080, 1920)])


def test_resize_matches_torch_interpolate():
    x = np.random.RandomState(9).randn(7, 11, 3).astype(np.float32)
    t = torch.from_numpy(x.transpose(2, 0, 1))[None]
    for mode in ("bilinear", "bicubic"):
        for size in [(3, 5), (7, 11), (13, 4), (20, 30)]:
            want = torch.nn.functional.interpolate(t, size=size, mode=mode, align_corners=False)[0].numpy()
            got = np.einsum("ph,hwc,qw->pqc", resize_matrix(7, size[0], mode), x, resize_matrix(11, size[1], mode))
            np.testing.assert_allclose(got, want.transpose(1, 2, 0), rtol=1e-5, atol=1e-5)


def rgb(h, w, seed=0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(500, 900), (900, 300), (100, 100)])
def test_anyres_pixel_tiles_match_hf_image_processor(size):
    image = rgb(*size)
    want = LlavaOnevisionImageProcessorPil()(image, return_tensors="np")
    got = image_tiles.anyres_pixel_tiles(image, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    assert got.shape == (mt.anyres_layout(size).num_tiles, 384, 384, 3)
    np.testing.assert_allclose(got, want["pixel_values"][0].transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
    assert tuple(want["image_sizes"][0]) == size


def test_anyres_end_to_end_tiny_tower_matches_hf(tower):
    """PIL image -> our tiles -> our tower features -> pack == HF processor -> HF tower hidden_states[-1]
    -> HF pack_image_features (tiny preset: base 16 / patch 4, or base 28 / patch 7)."""
    _, _, hf, loaded = tower
    base, patch = loaded.cfg.image_size, loaded.cfg.patch_size
    pins = mt.grid_pinpoints(base)
    proc = LlavaOnevisionImageProcessorPil(size={"height": base, "width": base},
                                           image_grid_pinpoints=[list(p) for p in pins])
    rng = np.random.RandomState(10)
    newline = rng.randn(loaded.cfg.hidden_size).astype(np.float32)
    sizes = [(5 * base, 3 * base + 3), (base // 2, 4 * base)]
    images = [rgb(*size, seed=size[0]) for size in sizes]
    tiles = [image_tiles.anyres_pixel_tiles(im, base_image_size=base, pinpoints=pins, mean=OPENAI_CLIP_MEAN,
                                            std=OPENAI_CLIP_STD) for im in images]
    # Tiles are encoded independently: both images' tiles go through the tower in one batch.
    feats = run_tower(loaded.cfg, loaded.params, jnp.asarray(np.concatenate(tiles)))["features"]
    for size, image, part in zip(sizes, images, np.split(np.asarray(feats), [len(tiles[0])])):
        pixels = proc(image, return_tensors="np")["pixel_values"][0]
        want = hf_pack(hf_run(hf, pixels).hidden_states[-1].numpy(), size, newline, base, patch, pins)
        got = pack_anyres(jnp.asarray(part), size, jnp.asarray(newline), base_image_size=base, patch_size=patch,
                          pinpoints=pins)
        assert got.shape[0] == mt.anyres_num_tokens(size, base_image_size=base, patch_size=patch, pinpoints=pins)
        assert rel_err(got, want) <= TOL, size


def test_pack_anyres_rejects_wrong_tile_count():
    with pytest.raises(ValueError, match=r"expected \[7, 729, C\]: a base tile plus a 2x3 grid"):
        pack_anyres(jnp.zeros((5, 729, 4)), (480, 640 + 320), jnp.zeros(4))


# ---- dynamic-resolution tiling (Capybara-OMNI / MiniCPM-V rule) ----

@pytest.mark.parametrize("size, max_tiles, grid", [
    ((448, 448), 9, (1, 1)),      # ratio 1: not split
    ((1344, 1344), 9, (3, 3)),    # the paper's 1344x1344 = 3x3 tiles of 448
    ((448, 1344), 9, (1, 3)),     # 3:1 landscape
    ((2000, 500), 9, (4, 1)),     # 1:4 portrait, multiple 5 -> 4 tiles fit the aspect exactly
    ((10, 5000), 9, (1, 1)),      # extreme strip but small area: not split
    ((1000, 1000), 4, (2, 2)),    # capped by max_tiles
    ((900, 1000), 9, (2, 2)),     # ratio 4.48 -> multiple 5, candidates 4/5/6 -> 2x2 (closest aspect)
])
def test_dynamic_tiling_grid(size, max_tiles, grid):
    assert image_tiles.dynamic_tiling_grid(size, base_size=448, max_tiles=max_tiles) == grid


def test_dynamic_tiling_properties():
    rng = np.random.RandomState(11)
    for h, w in rng.randint(1, 5000, size=(300, 2)):
        rows, cols = image_tiles.dynamic_tiling_grid((h, w), base_size=448, max_tiles=9)
        multiple = min(math.ceil(h * w / 448 ** 2), 9)
        assert rows * cols <= 9
        assert (rows * cols == 1) == (multiple <= 1), (h, w)
        if multiple > 1:
            assert abs(rows * cols - multiple) <= 1


def test_dynamic_pixel_tiles():
    image = rgb(100, 300)
    tiles = image_tiles.dynamic_pixel_tiles(image, base_size=32, max_tiles=9)
    rows, cols = image_tiles.dynamic_tiling_grid((100, 300), base_size=32, max_tiles=9)
    assert tiles.shape == (1 + rows * cols, 32, 32, 3) and tiles.dtype == np.float32
    assert image_tiles.dynamic_pixel_tiles(image, base_size=32, max_tiles=9, thumbnail=False).shape[0] == rows * cols
    thumb = (np.asarray(image.resize((32, 32), Image.BICUBIC), np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(tiles[0], thumb, atol=1e-6)
    assert image_tiles.dynamic_pixel_tiles(rgb(20, 20), base_size=32).shape == (1, 32, 32, 3)


def test_bad_images_are_rejected():
    for bad in [(0, 10), (10, 0), (-1, 5)]:
        with pytest.raises(ValueError, match="zero or negative side"):
            mt.anyres_num_tokens(bad)
        with pytest.raises(ValueError, match="zero or negative side"):
            image_tiles.dynamic_tiling_grid(bad)
    for mode in ("L", "RGBA", "P"):
        with pytest.raises(ValueError, match=f"mode 'RGB', got mode '{mode}'.*convert\\('RGB'\\)"):
            image_tiles.anyres_pixel_tiles(rgb(8, 8).convert(mode))
        with pytest.raises(ValueError, match="mode 'RGB'"):
            image_tiles.dynamic_pixel_tiles(rgb(8, 8).convert(mode))
