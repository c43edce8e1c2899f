"""Native-resolution images end to end (issue 21, item 3): images of any size and aspect ratio through the
data pipeline (Ola's processor: padded, or scaled down to the row's patch budget; packed into patch slots)
and the omni model with OryxViT, Ola's 2x2 local-global pooling and Ola's layout ('ola_native'); the token
counts and newline positions equal the shared layout functions (``media_tokens.ola_native_*``, checked
against Ola's ``OlaMLP`` in ``tests/test_oryx_vit.py``), each feature token equals the pooling connector on
the view's own patch map; and Ola's tiny stage 1a trains with the ``vision=oryx`` knob."""

import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from array_record.python import array_record_module
from PIL import Image
from safetensors import safe_open
from training_fixtures import compile_once, corpus  # noqa: F401

from data_pipelines import image_tiles, schema, tokenizer as tok
from data_pipelines.features import MediaFeatures
from data_pipelines.pipeline import Pipeline, PipelineConfig, Source
from experiments import common
from experiments.ola import stage1a
from omnijax import launch
from omnijax.checkpoint import load_model
from omnijax.hf import convert
from omnijax import media_tokens as mt
from omnijax.batch import check_batch
from omnijax.models.connector_configs import LocalGlobalPool
from omnijax.models.connectors import OlaVisionProjector
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel, init_params
from omnijax.models.oryx_vit import OryxViTConfig, OryxViTModel, example_inputs
from omnijax.training.config import resolve_roots
from omnijax.training.omni_task import omni_config

IMAGE_ID, VIDEO_ID = (tok.SYNTH_TOKEN_IDS[tok.PLACEHOLDER_TOKENS[m]] for m in ("image", "video"))
CFG = OmniConfig(
    llm=LLMConfig(vocab_size=tok.DEFAULT_VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                  num_kv_heads=1),
    vision=OryxViTConfig(hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, pos_grid=8),
    vision_connector=LocalGlobalPool(), layout="ola_native", image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
    image_slots=3, image_patches=96)
CODES = {"begin": 100.0, "newline": 200.0, "sep": 300.0, "end": 400.0}  # mm_embed vectors, easy to find
# Three aspect ratios -> the view Ola's processor makes of each within 96 patches of 16 pixels: 2.5:1 and 1:2.4
# padded (centred, grey) to multiples of 32 pixels; 3:5 over the budget, scaled to 96 patches of area, sides
# floored to multiples of 32.
VIEWS = {(40, 100): (64, 128), (120, 50): (128, 64), (300, 500): (96, 192)}
# Ola's low-resolution view of each (``native_lowres=64``): that view scaled to 64 x 64 pixels of area, sides floored
# to multiples of 32 (made from the padded image: the unpadded 40 x 100 and 120 x 50 would give 32 x 96 and 96 x 32).
LOWRES = {(40, 100): (32, 64), (120, 50): (64, 32), (300, 500): (32, 64)}


@pytest.fixture(scope="module")
def model():
    m = OmniModel(CFG)
    params = init_params(m, jax.random.key(0))
    params["mm_embed"] = {k: jnp.full_like(v, CODES[k]) for k, v in params["mm_embed"].items()}
    embed = jax.jit(lambda x: m.apply({"params": params}, x, method="embed"))
    patches = jax.jit(lambda x: m.apply({"params": params}, x, "image", method=OmniModel.encode_native))
    return params, embed, patches


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A shard of three examples, one image of each size of ``VIEWS`` (random pixels)."""
    rng = np.random.default_rng(0)
    path = schema.shard_paths(str(tmp_path_factory.mktemp("native") / "images"), 1)[0]
    writer = array_record_module.ArrayRecordWriter(path, schema.ARRAY_RECORD_OPTIONS)
    for i, (h, w) in enumerate(VIEWS):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(png, "png")
        writer.write(schema.Example(f"e{i}", "s", "t", [schema.Turn("user", "<image>\nWhat is it?", [0]),
                                                        schema.Turn("assistant", "noise")],
                                    [schema.Media("image", "png", png.getvalue())]).to_bytes())
    writer.close()
    return path


def _rows(path, n=3, **kw):
    """The first ``n`` batches of the pipeline over ``path`` (as many examples per row as fit), checked."""
    config = PipelineConfig(sources=(Source("s", (path,)),), tokenizer=common.tiny_dir("llm"), batch_size=2,
                            seq_len=128, budget=CFG.budget, layout=CFG.media_layout, process_index=0, process_count=1,
                            **kw)
    pipeline = Pipeline(config)
    try:
        out = []
        for _ in range(n):
            batch = next(pipeline)
            check_batch(batch, CFG)
            out.append(batch)
        return out
    finally:
        pipeline.close()


def _runs(ids, token_id=IMAGE_ID):
    where = np.flatnonzero(ids == token_id)
    return [(int(r[0]), len(r)) for r in np.split(where, np.flatnonzero(np.diff(where) > 1) + 1) if len(r)]


def _spatial(params, feats):
    """The connector on one view's patch map ``[1, rows, cols, D]`` (Ola's OlaMLP, no layout vectors)."""
    proj = OlaVisionProjector(CFG.llm.hidden_size, in_axis="vision_embed")
    return proj.apply({"params": params["vision_connector"]}, feats).reshape(-1, CFG.llm.hidden_size)


def _check_row(model, batch, b, seen):
    """Row b: each image's placeholder run = Ola's layout of its views (begin, rows + newline, sep between views,
    end) with the pooled features of each view's own patch map; adds each image's view sizes to ``seen``."""
    params, embed, encode = model
    embeds, patches = np.asarray(embed(batch))[b], np.asarray(encode(batch))[b]
    first_patch = 0
    for k, (start, length) in enumerate(_runs(batch["input_ids"][b])):
        grids = [tuple(int(x) for x in batch["image_grid"][b, s]) for s in np.flatnonzero(batch["image_item"][b] == k)]
        views = [(rows * 16, cols * 16) for rows, cols in grids]
        seen.append(tuple(views))
        assert length == mt.ola_native_image_tokens(views)
        run = embeds[start:start + length]
        code = {name: np.flatnonzero((run == v).all(axis=1)).tolist() for name, v in CODES.items()}
        assert code["newline"] == mt.ola_native_image_newlines(views)
        assert code["sep"] == [1 + mt.ola_tile_tokens(mt.ola_native_grid(v)) for v in views[:-1]]
        assert code["begin"] == [0] and code["end"] == [length - 1]
        feature_at = sorted(set(range(length)) - {i for v in code.values() for i in v})
        pooled = []
        for rows, cols in grids:
            pooled.append(_spatial(params, patches[first_patch:first_patch + rows * cols].reshape(1, rows, cols, -1)))
            first_patch += rows * cols
        np.testing.assert_allclose(run[feature_at], np.concatenate(pooled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lowres", [0, 64])
def test_three_aspect_ratios_through_pipeline_and_model(model, images, lowres):
    """Each image one view at its own size, or (``native_lowres``) Ola's low-resolution view, sep, then it."""
    rows = _rows(images, native_lowres=lowres)
    seen = []
    for batch in rows:
        for b in range(len(batch["input_ids"])):
            _check_row(model, batch, b, seen)
    want = {(LOWRES[size], view) if lowres else (view,) for size, view in VIEWS.items()}
    assert set(seen) == want, seen
    most = max(batch["image_item"].max() for batch in rows) + 1  # images in a row: 3 view slots hold one pair
    assert most == 1 if lowres else most >= 2


def test_odd_grids_pool_a_repeated_last_row_and_column(model):
    """A 48 x 80 view (3 x 5 patches, as OryxViT pads any size) beside a 2 x 2 one in one row: pooled 2 x 3 with
    the last row / column repeated (Ola's processor makes sides even; omnijax takes any)."""
    rng = np.random.default_rng(1)
    views = [rng.normal(size=(48, 80, 3)).astype(np.float32), rng.normal(size=(32, 32, 3)).astype(np.float32)]
    cut = [image_tiles.native_patches(v) for v in views]
    tokens = [mt.ola_native_image_tokens([v.shape[:2]]) for v in views]
    ids = np.full((1, 64), 5, np.int32)
    ids[0, 2:2 + tokens[0]] = IMAGE_ID
    ids[0, 30:30 + tokens[1]] = IMAGE_ID
    batch = dict(input_ids=ids, segment_ids=np.ones_like(ids), positions=np.arange(64, dtype=np.int32)[None],
                 targets=np.zeros_like(ids), loss_weights=np.zeros(ids.shape, np.float32), task_ids=np.zeros_like(ids),
                 image_patches=np.zeros((1, 96, 16, 16, 3), np.float32),
                 image_patch_slot=np.full((1, 96), -1, np.int32),
                 image_grid=np.zeros((1, 3, 2), np.int32), image_item=np.array([[0, 1, -1]], np.int32))
    batch["image_patches"][0, :15], batch["image_patches"][0, 15:19] = cut[0][0], cut[1][0]
    batch["image_patch_slot"][0, :19] = [0] * 15 + [1] * 4
    batch["image_grid"][0, :2] = [cut[0][1], cut[1][1]]
    check_batch(batch, CFG)
    assert tokens == [2 + 2 * 4, 2 + 1 * 2]
    seen = []
    _check_row(model, batch, 0, seen)
    assert seen == [((48, 80),), ((32, 32),)]

    batch["image_patch_slot"][0, 14] = 1
    with pytest.raises(ValueError, match=r"row 0: image_patch_slot\[14\] = 1, expected 0: each view's rows x cols"):
        check_batch(batch, CFG)


def test_video_frames_at_their_own_size(model, tmp_path):
    """A video of four 48 x 80 frames (JPEG frames): each padded to 64 x 96 (4 x 6 patches) in the patch slots,
    pooled 2 x 3; each frame's rows + newline then sep, the video in begin ... end (``ola_native_video_tokens``)."""
    params, _, _ = model
    cfg = CFG.replace(image_slots=0, image_patches=0, video_slots=4, video_patches=96)
    encode = jax.jit(lambda x: OmniModel(cfg).apply({"params": params}, x, "video", method=OmniModel.encode_native))
    embed = jax.jit(lambda x: OmniModel(cfg).apply({"params": params}, x, method="embed"))
    rng, frames = np.random.default_rng(2), []
    for _ in range(4):
        jpeg = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), np.uint8)).save(jpeg, "jpeg")
        frames.append(jpeg.getvalue())
    path = schema.shard_paths(str(tmp_path / "video"), 1)[0]
    writer = array_record_module.ArrayRecordWriter(path, schema.ARRAY_RECORD_OPTIONS)
    writer.write(schema.Example("v0", "s", "t", [schema.Turn("user", "<video>\nWhere does it go?", [0]),
                                                 schema.Turn("assistant", "left")],
                                [schema.Media("video", "jpeg_frames", frames)]).to_bytes())
    writer.close()
    config = PipelineConfig(sources=(Source("v", (path,)),), tokenizer=common.tiny_dir("llm"), batch_size=1,
                            seq_len=128, budget=cfg.budget, layout=cfg.media_layout, video_frames=4, process_index=0,
                            process_count=1)
    pipeline = Pipeline(config)
    try:
        batch = next(pipeline)
    finally:
        pipeline.close()
    check_batch(batch, cfg)
    assert batch["video_grid"][0].tolist() == [[4, 6]] * 4 and batch["video_item"][0].tolist() == [0] * 4
    (start, length), = _runs(batch["input_ids"][0], VIDEO_ID)
    assert length == mt.ola_native_video_tokens([(64, 96)] * 4) == 1 + 4 * (2 * 4 + 1) + 1
    run = np.asarray(embed(batch))[0, start:start + length]
    code = {name: np.flatnonzero((run == v).all(axis=1)).tolist() for name, v in CODES.items()}
    frame = [1 + 9 * f for f in range(4)]  # each frame: 2 rows of 3 features + newline, then sep
    assert code == dict(begin=[0], newline=[i + d for i in frame for d in (3, 7)], sep=[i + 8 for i in frame],
                        end=[length - 1])
    patches = np.asarray(encode(batch))[0]
    pooled = [_spatial(params, patches[24 * f:24 * f + 24].reshape(1, 4, 6, -1)) for f in range(4)]
    feature_at = [i + d for i in frame for d in (0, 1, 2, 4, 5, 6)]
    np.testing.assert_allclose(run[feature_at], np.concatenate(pooled), rtol=1e-5, atol=1e-5)


def test_ola_processor_pads_centred_or_scales_to_the_budget():
    assert mt.ola_native_size((40, 100), 96) == (64, 128, False)
    assert mt.ola_native_size((300, 500), 96) == (96, 192, True)
    assert mt.ola_native_size((1, 10000), 16) == (32, 128, True)  # too thin: the long side cut to fit
    assert mt.ola_lowres_size((300, 500), 384, max_patches=9216) == (288, 480)  # Ola's LOWRES_RESIZE='384x32'
    assert [mt.ola_lowres_size(size, 64, max_patches=96) for size in VIEWS] == list(LOWRES.values())
    image = Image.fromarray(np.full((40, 100, 3), 255, np.uint8))
    view = image_tiles.native_view(image, max_patches=96)
    grey = (127 / 255 - 0.5) / 0.5
    assert view.shape == (64, 128, 3)
    assert (view[12:52, 14:114] == 1.0).all() and np.allclose(view[:12], grey) and np.allclose(view[:, :14], grey)


def _ola_resize_images(size, patch_size, base_size, maxres=1536):
    """The size Ola's ``resize_images`` (Ola-Omni/Ola f681820, ``ola/mm_utils.py`` lines 100-143) gives an image of
    ``size`` (height, width) with ``inference/infer.py``'s settings (``PAD2STRIDE``, ``MINRES`` 0, ``MAXRES``
    1536). Ola calls PIL's (width, height) ``h, w`` (line 101); the rule treats both sides alike."""
    h, w = size
    if base_size == 0:  # lines 102-112: scaled only above MAXRES x MAXRES pixels
        scale = maxres / math.sqrt(h * w) if h * w > maxres * maxres else None
    else:  # lines 113-115: scaled to base_size x base_size pixels of area
        scale = base_size / math.sqrt(h * w)
    if scale is not None:  # lines 118-123: sides floored to patch multiples, at least one patch
        return max(int(h * scale / patch_size) * patch_size, patch_size), \
            max(int(w * scale / patch_size) * patch_size, patch_size)
    return -(-h // patch_size) * patch_size, -(-w // patch_size) * patch_size  # lines 124-134: padded (grey 127)


def _ola_views(size):
    """``process_anyres_highres_image`` (lines 193-218) with infer.py's ``HIGHRES_BASE='0x32'`` and
    ``LOWRES_RESIZE='384x32'``: the image resized first (line 199), the low-res view made from that (line 211)."""
    high = _ola_resize_images(size, 32, 0)
    return [_ola_resize_images(high, 32, 384), high]


def test_lowres_view_is_made_from_the_padded_image_as_olas():
    """At the 7b settings (9216 patch slots, ``native_lowres=384``), images whose low-res view, made from the
    unpadded image, would have another size and token count: the pipeline's views and tokens are Ola's."""
    cfg = CFG.replace(image_slots=2, image_patches=9216)
    features = MediaFeatures(cfg.budget, cfg.media_layout, native_lowres=384)
    for size in [(427, 640), (99, 141), (200, 90), (100, 1000), (720, 1280)]:
        views = _ola_views(size)
        got = features.image(Image.new("RGB", size[::-1], (200, 10, 90)))
        assert got.grids.tolist() == [list(mt.native_patch_grid(v)) for v in views], size
        unpadded = [_ola_resize_images(size, 32, 384), views[1]]
        assert got.tokens == mt.ola_native_image_tokens(views) != mt.ola_native_image_tokens(unpadded), size
    assert _ola_views((427, 640))[0] == mt.ola_lowres_size((427, 640), 384, max_patches=9216) == (320, 448)
    # over Ola's MAXRES (9216 patches of area): Ola scales the image first, and the low-res view comes from that
    assert mt.ola_lowres_size((1600, 2000), 384, max_patches=9216) == _ola_views((1600, 2000))[0]


def test_vision_knob_swaps_the_tower_in_both_presets():
    """``vision=oryx``: OryxViT (Ola's sizes for 7b), the 'ola_native' layout, patch slots, no SigLIP import."""
    for preset, patches, lowres, params in (("tiny", 256, 32, 95_680), ("7b", 9216, 384, 431_226_864)):
        c = stage1a.get_config(f"{preset},vision=oryx")
        cfg = omni_config(c)
        assert cfg.native and cfg.media_layout.native and cfg.image_patches == patches
        assert c.data.pipeline.native_lowres == lowres  # Ola's low-resolution view before each image
        assert all("vision" not in groups for _, groups in c.init_from)
        shapes = jax.eval_shape(OryxViTModel(cfg.vision).init, jax.random.key(0), *example_inputs(cfg.vision))
        assert sum(x.size for x in jax.tree.leaves(shapes)) == params  # 7b: Ola's tower, pos_embed 128 x 128
    assert not omni_config(stage1a.get_config("tiny")).native
    with pytest.raises(ValueError, match="layout 'ola' lays out fixed-size views; an OryxViT tower's images keep"):
        CFG.replace(layout="ola")
    with pytest.raises(ValueError, match="'ola_native' .* needs a native-resolution tower"):
        omni_config(stage1a.get_config("tiny")).replace(layout="ola_native")
    with pytest.raises(ValueError, match="image_slots=3 of a native-resolution tower need image_patches > 0"):
        CFG.replace(image_patches=0)
    with pytest.raises(ValueError, match="vision='vit' is not one of siglip, oryx"):
        stage1a.get_config("tiny,vision=vit")


def test_ola_tiny_stage_trains_with_native_resolution_vision(corpus, tmp_path):  # noqa: F811
    c = resolve_roots(stage1a.get_config("tiny,vision=oryx,steps=2"), {"corpus": corpus})
    c.log_every = 1
    assert c.model.layout == "ola_native" and c.media.image_patches == 256
    assert [groups for _, groups in c.init_from] == [("llm",), ("audio",)]  # no OryxViT checkpoint: fresh
    start = launch.setup(c).init_params()
    result = launch.run(c, str(tmp_path / "w"))
    assert result.status == "finished" and result.step == 2
    losses = [r["loss"] for r in result.metrics]
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(r["grad_norm"] > 0 for r in result.metrics)
    end = result.state.params
    moved = jax.tree.leaves(jax.tree.map(lambda a, z: float(jnp.abs(a - z).max()), start["vision_connector"],
                                         end["vision_connector"]))
    assert min(moved) > 0, moved  # every connector tensor learned
    assert all(jax.tree.leaves(jax.tree.map(lambda a, z: bool((a == z).all()), start["vision"], end["vision"])))

    # The workdir is a model directory; its HF-style export names OryxViT's tensors and re-imports bit-exact.
    convert.main(["export", "--ckpt", str(tmp_path / "w"), "--out", str(tmp_path / "hf")])
    loaded = load_model(str(tmp_path / "hf"), progress=False)
    assert loaded.module.cfg.native and loaded.module.cfg.image_patches == 256
    same = jax.tree.map(lambda a, z: bool((np.asarray(a) == np.asarray(z)).all()), end, loaded.params)
    assert all(jax.tree.leaves(same))
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["vision_config"]["model_type"] == "oryx_vit"
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "np") as f:
        assert {"vision_tower.pos_embed", "vision_tower.patch_embed.proj.weight",
                "vision_tower.blocks.1.mlp.fc2.bias"} <= set(f.keys())
