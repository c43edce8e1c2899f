"""The media layouts (``omnijax.media_layouts``): the registry, the protocol's token counts for the
three layouts, their model-side decoders (``omnijax.models.layouts``), and that no module outside the
registry picks a layout by comparing its name."""

from __future__ import annotations

import ast
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omnijax import media_tokens as mt
from omnijax.media_layouts import (LAYOUTS, AnyResLayout, MediaLayout, OlaLayout, OlaNativeLayout, Qwen2AudioLayout,
                                   layout_class, register)
from omnijax.models import layouts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("omnijax", "data_pipelines", "experiments")
REGISTRY = (os.path.join("omnijax", "media_layouts.py"),)  # the only modules that may compare layout names
IMAGE, VIDEO, AUDIO = 3, 4, 5
OLA = OlaLayout(IMAGE, VIDEO, AUDIO, grid=(2, 2), chunk_tokens=5)
ANYRES = AnyResLayout(image_token_id=IMAGE, base_image_size=384, patch_size=14,
                      pinpoints=mt.LLAVA_ONEVISION_GRID_PINPOINTS, max_num_patches=9)
QWEN2_AUDIO = Qwen2AudioLayout(audio_token_id=AUDIO)


def _is_layout_name(node) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in LAYOUTS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_layout_name(e) for e in node.elts)
    return False


def _is_layout_field(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "layout") or (isinstance(node, ast.Name)
                                                                             and node.id == "layout")


def _is_audio_variant(node) -> bool:
    """``<x>.variant``: the audio encoder's variant, whose values share the name 'qwen2_audio'."""
    return isinstance(node, ast.Attribute) and node.attr == "variant"


def layout_name_comparisons(path: str) -> list[int]:
    """Lines of ``path`` comparing a layout name (``== 'ola'``, ``in ('ola', ...)``, ``.layout == ...``)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, a, b in zip(node.ops, operands, operands[1:]):
            if not isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)):
                continue
            named = any(_is_layout_name(x) and not _is_audio_variant(y) for x, y in ((a, b), (b, a)))
            # ``layout == x`` or ``layout in ('a', 'b')``; ``type(layout) in TABLE`` is a table keyed by class
            field = any(_is_layout_field(x) and (isinstance(op, (ast.Eq, ast.NotEq))
                                                 or isinstance(y, (ast.Tuple, ast.List, ast.Set)))
                        for x, y in ((a, b), (b, a)))
            if named or field:
                lines.append(node.lineno)
    return lines


def test_no_module_outside_the_registry_compares_layout_names():
    found = []
    for top in SCANNED:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                if name.endswith(".py") and rel not in REGISTRY:
                    found += [f"{rel}:{line}" for line in layout_name_comparisons(os.path.join(ROOT, rel))]
    assert not found, ("layout picked by name outside omnijax/media_layouts.py (ask the layout object instead: "
                       f"image_plans, takes, slot_tokens, ...): {found}")


def test_the_check_sees_comparisons(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("a = cfg.layout == 'x'\nb = name in ('ola', 'y')\nc = 'qwen2_audio' != m\n"
                    "d = cfg.audio.variant == 'qwen2_audio'\ne = layout is None\nf = layout not in TABLE\n"
                    "g = x.layout in [a, b]\n")
    assert layout_name_comparisons(str(path)) == [1, 2, 3, 7]


def test_registry():
    assert LAYOUTS == {"ola": OlaLayout, "ola_native": OlaNativeLayout, "llava_onevision": AnyResLayout,
                       "qwen2_audio": Qwen2AudioLayout}
    assert set(layouts.DECODERS) == set(LAYOUTS.values())
    with pytest.raises(ValueError, match=r"layout 'olla' is not one of \('ola', 'ola_native', 'llava_onevision', "
                                         r"'qwen2_audio'\)"):
        layout_class("olla")


def test_a_layout_without_a_decoder_is_named():
    @register
    class Bare(MediaLayout):
        name = "bare_test_layout"
        takes = ("audio",)

    try:
        with pytest.raises(ValueError, match="'bare_test_layout' .*Bare.* has no decoder.*DECODERS"):
            layouts.decoder(Bare(audio_token_id=AUDIO), "audio", 4)
    finally:
        del LAYOUTS["bare_test_layout"]


def test_ola_counts():
    # a 2 x 2 view is 2 rows of 2 + newline = 6 tokens; a window 5 tokens + speech_newline
    assert OLA.image_tokens(1) == 1 + 6 + 1 and OLA.image_tokens(2) == 1 + 6 + 1 + 6 + 1
    assert OLA.image_tokens(2) == mt.ola_image_tokens(2, grid=(2, 2))
    assert OLA.video_tokens(3) == (1 + 7) + 7 + (7 + 1) == mt.ola_video_tokens(3, grid=(2, 2))
    assert OLA.audio_tokens(2) == (1 + 6) + (6 + 1) == mt.ola_audio_tokens(2, chunk_tokens=5)
    assert OLA.audio_tokens(1, valid_frames=[10]) == 8  # whole windows: valid frames are not read
    first, last = np.array([True, False, False]), np.array([False, False, True])
    assert OLA.slot_tokens("video", first, last).tolist() == [8, 7, 8]
    assert OLA.slot_tokens("image", first, last).tolist() == [8, 7, 7]
    assert OLA.slot_tokens("audio", first, last).tolist() == [7, 6, 7]
    assert OLA.mm_embed_names == ("begin", "newline", "sep", "end", "speech_begin", "speech_newline", "speech_end")
    assert OlaLayout(audio_token_id=AUDIO, chunk_tokens=5).mm_embed_names == ("speech_begin", "speech_newline",
                                                                             "speech_end")
    assert OLA.table_names("audio") == layouts.SPEECH_EMBEDS and OLA.table_names("video") == layouts.VISION_EMBEDS
    assert OLA.modalities == ("image", "video", "audio") and not OLA.image_plans
    with pytest.raises(ValueError, match="'ola' has no grid for images"):
        OlaLayout(image_token_id=IMAGE).image_tokens(1)


def test_ola_native_counts():
    """Each view / frame its own patch grid pooled 2x2: slot tokens from the grids sum to the item counts."""
    native = OlaNativeLayout(IMAGE, VIDEO, AUDIO, chunk_tokens=5, patch_size=16)
    assert native.image_tokens(image_size=(64, 160)) == 1 + 2 * 6 + 1 == mt.ola_native_image_tokens([(64, 160)])
    assert native.image_tokens(image_size=(48, 80)) == 1 + 2 * 4 + 1  # 3 x 5 patches pool to 2 x 3
    assert native.video_tokens(3, frame_size=(32, 64)) == (1 + 3 + 1) + (3 + 1) + (3 + 1 + 1)
    assert native.video_tokens(3, frame_size=(32, 64)) == mt.ola_native_video_tokens([(32, 64)] * 3)
    first, last = np.array([True, False, True]), np.array([False, True, True])
    grid = (np.array([4, 8, 3]), np.array([10, 2, 5]))  # one image of two views, one of a 3 x 5 view
    assert native.slot_tokens("image", first, last, grid=grid).tolist() == [1 + 2 * 6 + 1, 4 * 2 + 1, 1 + 2 * 4 + 1]
    assert native.slot_tokens("image", first, last, grid=grid)[:2].sum() == mt.ola_native_image_tokens(
        [(64, 160), (128, 32)])
    assert native.slot_tokens("audio", first, last).tolist() == OLA.slot_tokens("audio", first, last).tolist()
    assert native.mm_embed_names == OLA.mm_embed_names and native.native and not OLA.native
    assert native.image_tokens(2, view_sizes=[(64, 160), (128, 320)]) == 59  # Ola's OlaMLP (ola_layout.json)
    with pytest.raises(ValueError, match=r"'ola_native' counts views of their own sizes: pass view_sizes=\[\(h, w\)"):
        native.image_tokens(2, image_size=(64, 64))
    with pytest.raises(ValueError, match="'ola_native': each image slot's tokens need the slot's patch grid"):
        native.slot_tokens("image", first, last)


def test_anyres_counts():
    plan = np.array(mt.anyres_plan((500, 900), **ANYRES.anyres_kw))
    n = mt.anyres_num_tokens((500, 900))
    assert ANYRES.image_tokens(image_size=(500, 900)) == n
    assert ANYRES.image_tokens(image_size=(500, 500), multi_image=True) == 729 + 1
    tiles = 1 + plan[0] * plan[1]
    first = np.arange(tiles) == 0
    spans = ANYRES.slot_tokens("image", first, first[::-1], np.broadcast_to(plan, (tiles, 8)))
    assert spans.tolist() == [n] + [0] * (tiles - 1)
    assert ANYRES.image_plans and ANYRES.modalities == ("image",) and ANYRES.mm_embed_names == ("newline",)
    assert ANYRES.tile_side == 27
    with pytest.raises(ValueError, match="pass image_size"):
        ANYRES.image_tokens(1)
    with pytest.raises(ValueError, match="'llava_onevision' lays out image only, not audios"):
        AnyResLayout(audio_token_id=AUDIO, base_image_size=384, patch_size=14, pinpoints=((384, 384),),
                     max_num_patches=9)
    with pytest.raises(ValueError, match="needs base_image_size, patch_size, pinpoints, max_num_patches"):
        AnyResLayout(image_token_id=IMAGE)


def test_qwen2_audio_counts():
    assert QWEN2_AUDIO.audio_tokens(valid_frames=[3000, 1000]) == 750 + 250
    spans = QWEN2_AUDIO.slot_tokens("audio", True, True, valid_frames=np.array([3000, 1, 1000]))
    assert spans.tolist() == [750, 0, 250]
    assert QWEN2_AUDIO.mm_embed_names == () and QWEN2_AUDIO.modalities == ("audio",)
    with pytest.raises(ValueError, match="pass valid_frames"):
        QWEN2_AUDIO.audio_tokens(1)
    with pytest.raises(ValueError, match=r"takes no images; it takes audio"):
        QWEN2_AUDIO.image_tokens(1)
    with pytest.raises(ValueError, match="'qwen2_audio' lays out audio only, not images"):
        Qwen2AudioLayout(image_token_id=IMAGE, audio_token_id=AUDIO)


def test_features_layout_equals_masked_scatter():
    """Qwen2-Audio's layout (every placeholder takes the next feature) is transformers' ``masked_scatter``."""
    rng = np.random.RandomState(0)
    text = rng.randn(2, 10, 4).astype(np.float32)
    mask = np.zeros((2, 10), bool)
    mask[0, [1, 2, 6]] = True
    mask[1, [0, 9]] = True
    media = rng.randn(2, 3, 4).astype(np.float32)
    item = jnp.asarray([[0], [0]])
    _, first, last = layouts.slot_flags(item)
    spans = jnp.asarray([[3], [2]])
    decode = layouts.decoder(QWEN2_AUDIO, "audio", 3)
    got = np.asarray(layouts.splice(jnp.asarray(text), jnp.asarray(mask), spans, jnp.asarray(media), decode,
                                    first=first, last=last))
    flat = np.concatenate([media[0, :3], media[1, :2]])  # transformers scatters in row-major order
    want = torch.tensor(text).masked_scatter(torch.tensor(mask)[..., None], torch.tensor(flat)).numpy()
    np.testing.assert_array_equal(got, want)
