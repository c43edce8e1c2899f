"""OmniModel on the batch contract (tiny Ola-layout model, both towers, f32): the token layout the
shared count functions predict, packed rows equal to examples run one by one (losses and gradients),
the vocab-parallel loss equal to the plain one on a 2 x 4 mesh without full-vocabulary logits, host-side
batch checks, configurations and their parameter groups. (OmniModel configured as LLaVA-OneVision and as
Qwen2-Audio is checked against transformers in test_llava_onevision.py and test_qwen2_audio.py.)"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from omnijax import media_tokens as mt
from omnijax.batch import MediaItem, check_batch, media_slots
from omnijax.models import layouts
from omnijax.models.audio import AudioConfig
from omnijax.models.connector_configs import MLP, ConvGMLP, FrameStack, Linear, LocalGlobalPool
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel, logical_specs
from omnijax.models.vision import VisionConfig
from omnijax.sharding import activation_sharding, logical_rules, logical_to_sharding, make_mesh
from omnijax.training.losses import shift_targets
from omnijax.training.next_token import NextTokenCE
from omnijax.training.objective import loss_fn

IMAGE, VIDEO, AUDIO = 120, 121, 122
T = 96  # tokens per row
LLM = LLMConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                rope_theta=1e4)
VISION = VisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      use_head=False)
AUDIO_CFG = AudioConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                        max_source_positions=50)  # 100 mel frames (a 1 s window stands for Ola's 30 s)
OLA = OmniConfig(llm=LLM, vision=VISION, vision_connector=LocalGlobalPool(), audio=AUDIO_CFG,
                 audio_connector=FrameStack(hidden=64), image_token_id=IMAGE, video_token_id=VIDEO,
                 audio_token_id=AUDIO, image_slots=3, video_slots=6, audio_slots=3)


def random_params(model, seed=0):
    """Random params of the model's shapes (no init compilation): norms' scales near 1, the rest small."""
    _, shapes = logical_specs(model)
    rng = np.random.default_rng(seed)
    paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    leaves = []
    for path, s in paths:
        noise = rng.normal(size=s.shape).astype(np.float32)
        leaves.append(jnp.asarray(1 + 0.1 * noise if path[-1].key == "scale" else 0.2 * noise))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def media(kind, n, seed):
    rng = np.random.default_rng(seed)
    shape = (n, 80, 100) if kind == "audio" else (n, 16, 16, 3)
    return rng.normal(size=shape).astype(np.float32)


def example(parts, layout, seed=0):
    """(ids, loss mask, media items) of one example: ('text', n) / ('answer', n) tokens, or a media item
    ('image', views) / ('video', frames) / ('audio', chunks) expanded with the shared count functions."""
    rng = np.random.default_rng(seed)
    ids, mask, items = [], [], []
    for k, (kind, n) in enumerate(parts):
        if kind in ("text", "answer"):
            ids += rng.integers(3, 100, n).tolist()
            mask += [int(kind == "answer")] * n
            continue
        count = {"image": layout.image_tokens, "video": layout.video_tokens, "audio": layout.audio_tokens}[kind](n)
        ids += [layout.token_id(kind)] * count
        mask += [0] * count
        items.append(MediaItem(kind, media(kind, n, seed * 100 + k)))
    return ids, mask, items


def pack(rows, cfg, length=T):
    """A batch: ``rows[b]`` lists (example, task id) packed into row b."""
    b = len(rows)
    ids, mask, seg, pos, task = (np.zeros((b, length), np.int32) for _ in range(5))
    for r, row in enumerate(rows):
        t = 0
        for s, ((e_ids, e_mask, _), tid) in enumerate(row):
            n = len(e_ids)
            ids[r, t:t + n], mask[r, t:t + n], seg[r, t:t + n] = e_ids, e_mask, s + 1
            pos[r, t:t + n], task[r, t:t + n] = np.arange(n), tid
            t += n
    targets, weights = (np.asarray(a) for a in shift_targets(ids, mask, seg))
    batch = {"input_ids": ids, "segment_ids": seg, "positions": pos, "targets": targets, "loss_weights": weights,
             "task_ids": task}
    batch.update(media_slots([[e[2] for e, _ in row] for row in rows], cfg.budget, cfg.media_layout))
    check_batch(batch, cfg)
    return batch


@pytest.fixture(scope="module")
def ola():
    model = OmniModel(OLA)
    return model, random_params(model)


@pytest.fixture(scope="module")
def embed_and_features(ola):
    """jit: (params, batch) -> (embeddings, text embeddings, image / video / audio encoder outputs)."""
    model, _ = ola
    return jax.jit(lambda p, b: model.apply({"params": p}, b, method=lambda m, b: (
        m.embed(b), m.llm.embed(b["input_ids"]), m.encode_vision(b["images"]), m.encode_vision(b["videos"]),
        m.encode_audio(b["audio"], b["audio_valid_frames"]))))


# ---- layout ----

def expected_layout(kinds, feats, mm, grid):
    """Ola's layout written out from its description: (label, vector) per media token, in order."""
    rows, cols = grid
    out = []

    def view(f):
        for r in range(rows):
            out.extend(("feature", f[r * cols + c]) for c in range(cols))
            out.append(("newline", mm["newline"]))

    for kind in kinds:
        f = feats[kind]
        if kind == "image":
            out.append(("begin", mm["begin"]))
            view(f[0])
            out.append(("end", mm["end"]))
        elif kind == "video":
            out.append(("begin", mm["begin"]))
            for frame in f:
                view(frame)
                out.append(("sep", mm["sep"]))
            out.append(("end", mm["end"]))
        else:
            out.append(("speech_begin", mm["speech_begin"]))
            for chunk in f:
                out.extend(("feature", x) for x in chunk)
                out.append(("speech_newline", mm["speech_newline"]))
            out.append(("speech_end", mm["speech_end"]))
    return out


@pytest.mark.parametrize("order", [("audio", "image", "video"), ("video", "audio", "image")])
def test_ola_layout_of_image_audio_video_example(ola, embed_and_features, order):
    """One example: an image (one view), a clip of 2 audio windows (Ola: a 40 s clip = 2 x 30 s) and a 6-frame
    video in any order -> the begin/newline/sep/end and feature tokens land where Ola's layout puts them,
    and each item spans exactly the count of ``media_tokens``."""
    _, params = ola
    layout = OLA.media_layout
    sizes = {"image": 1, "video": 6, "audio": 2}
    parts = [("text", 3)]
    for kind in order:
        parts += [(kind, sizes[kind]), ("text", 2)]
    ex = example(parts + [("answer", 4)], layout, seed=1)
    assert (layout.image_tokens(1), layout.audio_tokens(2), layout.video_tokens(6)) == (8, 14, 44)
    batch = pack([[(ex, 0)]], OLA)
    # Distinguishable layout vectors: a large one-hot per name.
    mm = {name: jnp.zeros(48).at[i].set(100.0 + i) for i, name in enumerate(OLA.mm_embed_names)}
    params = {**params, "mm_embed": mm}
    embeds, text, images, videos, audio = (np.asarray(x[0]) for x in embed_and_features(params, batch))
    grid = OLA.image_grid
    per_slot = grid[0] * grid[1]
    feats = {"image": images.reshape(3, per_slot, 48)[:1], "video": videos.reshape(6, per_slot, 48),
             "audio": audio.reshape(3, OLA.audio_chunk_tokens, 48)[:2]}
    want = expected_layout(order, feats, {k: np.asarray(v) for k, v in mm.items()}, grid)
    ids = batch["input_ids"][0]
    media_pos = np.flatnonzero(np.isin(ids, [IMAGE, VIDEO, AUDIO]))
    assert len(media_pos) == len(want) == 8 + 14 + 44
    # Which vector landed at each media position: the nearest layout vector, else a feature.
    names = list(mm)
    table = np.stack([np.asarray(mm[n]) for n in names])
    got_labels = []
    for p in media_pos:
        hit = np.flatnonzero(np.abs(table - embeds[p]).max(-1) < 1e-6)
        got_labels.append(names[hit[0]] if len(hit) else "feature")
    assert got_labels == [label for label, _ in want]
    np.testing.assert_allclose(embeds[media_pos], np.stack([v for _, v in want]), rtol=0, atol=1e-6)
    text_pos = np.flatnonzero(~np.isin(ids, [IMAGE, VIDEO, AUDIO]))
    np.testing.assert_array_equal(embeds[text_pos], text[text_pos])
    # Each item's run: its placeholder count is the shared count, its tokens start with begin and end with end.
    starts = np.flatnonzero(np.diff(np.r_[-1, ids[media_pos]]) != 0)
    for kind, s in zip(order, starts):
        n = {"image": layout.image_tokens(1), "video": layout.video_tokens(6), "audio": layout.audio_tokens(2)}[kind]
        run_labels = got_labels[s:s + n]
        assert (ids[media_pos[s:s + n]] == layout.token_id(kind)).all()
        opener, closer = ("speech_begin", "speech_end") if kind == "audio" else ("begin", "end")
        assert run_labels[0] == opener and run_labels[-1] == closer and opener not in run_labels[1:-1]
    short = {"feature": ".", "begin": "B", "newline": "n", "sep": "|", "end": "E", "speech_begin": "[",
             "speech_newline": "/", "speech_end": "]"}
    print(f"order {order}: {''.join(short[label] for label in got_labels)}")


def test_slot_spans_sum_to_the_item_counts():
    """The model's per-slot spans (jax) add up to the pipeline's per-item counts (python) for any size."""
    layout = OLA.media_layout
    for n in (1, 2, 6):
        item = jnp.zeros((n,), jnp.int32)
        frames = jnp.full((n,), 100, jnp.int32)
        assert int(layouts.slot_spans(layout, "image", item).sum()) == layout.image_tokens(n) == 2 + n * 6 + n - 1
        assert int(layouts.slot_spans(layout, "video", item).sum()) == layout.video_tokens(n) == 2 + n * 7
        assert int(layouts.slot_spans(layout, "audio", item, valid_frames=frames).sum()) == \
            layout.audio_tokens(n) == 2 + n * 6
    # Ola's published numbers: 150 tokens per 30 s window after stacking 10 of 1500 Whisper frames.
    assert mt.ola_audio_tokens(25, chunk_tokens=150) == 2 + 25 * 151
    assert mt.ola_image_tokens(2, grid=(27, 27)) == 2 + 2 * 27 * 28 + 1  # lowres, sep, highres


# ---- packing ----

PACKED = [  # three examples in one row, each with its own media
    [("text", 5), ("image", 1), ("text", 3), ("answer", 6)],
    [("text", 3), ("audio", 1), ("text", 2), ("video", 2), ("answer", 5)],
    [("audio", 2), ("image", 2), ("text", 2), ("answer", 4)],
]


def test_packed_row_equals_examples_one_by_one(ola):
    model, params = ola
    layout = OLA.media_layout
    examples = [example(parts, layout, seed=10 + i) for i, parts in enumerate(PACKED)]

    @jax.jit
    def sums(p, b):  # per-example loss means (tasks = examples) and the gradient of the summed token loss
        def total(p):
            loss, aux = loss_fn(model, p, b, num_tasks=3)
            return aux["loss_sum"], aux
        return jax.grad(total, has_aux=True)(p)

    packed = pack([[(e, i) for i, e in enumerate(examples)]], OLA)
    assert packed["segment_ids"].max() == 3 and packed["input_ids"].shape == (1, T)
    grad, aux = sums(params, packed)
    one_by_one = [sums(params, pack([[(e, i)]], OLA)) for i, e in enumerate(examples)]
    alone = np.array([float(a["task_loss"][i]) for i, (_, a) in enumerate(one_by_one)])
    grad_alone = jax.tree.map(lambda *g: sum(g), *[g for g, _ in one_by_one])
    loss_diff = float(np.abs(np.asarray(aux["task_loss"]) - alone).max())
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grad, grad_alone)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad))
    worst = max(jax.tree.leaves(diffs))
    groups = {k: max(jax.tree.leaves(v)) for k, v in diffs.items()}
    print(f"per-example losses {alone}, max |diff| {loss_diff:.1e}; gradient max |diff| {worst:.1e} "
          f"(max |grad| {scale:.2f}), per group {groups}")
    assert loss_diff <= 1e-5
    assert worst <= 1e-5
    for g in ("vision", "vision_connector", "audio", "audio_connector", "mm_embed", "llm"):
        assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(grad[g])) > 0, g  # every group is trained


# ---- vocab-parallel loss ----

def _full_vocab_activations(hlo: str, vocab: int) -> list[str]:
    """f32 buffers of rank >= 3 with a full-vocabulary dimension ([batch, seq, vocab] logits and the like)."""
    shapes = set(re.findall(r"f32\[([0-9,]+)\]", hlo))
    return sorted(s for s in shapes if len(s.split(",")) >= 3 and str(vocab) in s.split(","))


def test_vocab_parallel_loss_equals_plain_without_full_vocab_logits(devices):
    """On a 2 (fsdp) x 4 (tensor) mesh, params laid out by the fsdp_tp rules: the vocab-parallel loss (fsdp_tp
    activation rules) and its gradient equal the plain loss's, and its compiled loss + grad holds no
    [batch, seq, vocab] f32 buffer; the plain loss, compiled with the fsdp activation rules, holds the logits
    whole on every device. (Under the fsdp_tp activation rules GSPMD keeps the plain logits vocab-sharded
    too.) Gradients are taken for the ``llm`` group (the CE's gradient reaches the towers only through it;
    test_packed_row_equals_examples_one_by_one covers every group)."""
    vocab = 8192
    cfg = OLA.replace(llm=LLM.replace(vocab_size=vocab))
    model = OmniModel(cfg)
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    specs, shapes = logical_specs(model)
    params = jax.device_put(random_params(model, seed=3), logical_to_sharding(specs, shapes, mesh,
                                                                               logical_rules("fsdp_tp")))
    examples = [example(parts, cfg.media_layout, seed=20 + i) for i, parts in enumerate(PACKED)]
    batch = pack([[(e, i) for i, e in enumerate(examples)], [(examples[2], 2), (examples[0], 0)]], cfg)
    batch = jax.device_put(batch, NamedSharding(mesh, P(("data", "fsdp"))))

    def compiled(vocab_parallel, rules):
        def f(p, b):
            def loss(llm):
                return loss_fn(model, {**p, "llm": llm}, b, (NextTokenCE(vocab_parallel=vocab_parallel),), mesh=mesh,
                               num_tasks=3)
            return jax.value_and_grad(loss, has_aux=True)(p["llm"])
        with activation_sharding(mesh, logical_rules(rules)):
            return jax.jit(f).lower(params, batch).compile()

    runs = {"vocab_parallel": compiled(True, "fsdp_tp"), "plain": compiled(False, "fsdp")}
    out = {k: c(params, batch) for k, c in runs.items()}
    temp = {k: c.memory_analysis().temp_size_in_bytes for k, c in runs.items()}
    full = {k: _full_vocab_activations(c.as_text(), vocab) for k, c in runs.items()}
    (l1, a1), g1 = out["vocab_parallel"]
    (l0, a0), g0 = out["plain"]
    grad_diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1)))
    task_diff = float(jnp.abs(a0["task_loss"] - a1["task_loss"]).max())
    print(f"loss {float(l0):.6f} / {float(l1):.6f}, task losses max |diff| {task_diff:.1e}, gradient max |diff| "
          f"{grad_diff:.1e}; temp bytes per device {temp}; rank >= 3 full-vocab f32 buffers {full}")
    assert abs(float(l0) - float(l1)) <= 1e-5 and task_diff <= 1e-5 and grad_diff <= 1e-5
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1)) > 1e-2
    assert full["vocab_parallel"] == [] and f"1,{T},{vocab}" in full["plain"]
    assert temp["plain"] - temp["vocab_parallel"] >= T * vocab * 4


# ---- host-side batch checks ----

def test_check_batch_rejects_bad_input_before_tracing():
    layout = OLA.media_layout
    ex = example([("text", 3), ("image", 1), ("audio", 1), ("answer", 3)], layout, seed=5)
    good = pack([[(ex, 0)], [(ex, 1)]], OLA)
    check_batch(good, OLA)
    # More media items than slots: four one-view images in a row that holds three.
    many = example([("image", 1)] * 4 + [("answer", 2)], layout, seed=6)
    with pytest.raises(ValueError, match=r"row 1, example 0 \(segment 1\): its image \(item 3 of the row\) needs 1 "
                                         r"image slots .* only 0 of the stage's image_slots=3 are left"):
        media_slots([[ex[2]], [many[2]]], OLA.budget)
    full = {k: v.copy() for k, v in good.items()}  # a fourth image's placeholders, its pixels nowhere
    full["input_ids"][1, 22:30], full["segment_ids"][1, 22:30] = IMAGE, 1
    with pytest.raises(ValueError, match=r"row 1, segment 1: 8 image placeholder token\(s\) \(id 120\) from position "
                                         r"22 on have no image .* More images than the stage's image_slots=3"):
        check_batch(full, OLA)
    # A placeholder count that disagrees with its media: one image placeholder too few in row 0.
    short = {k: v.copy() for k, v in good.items()}
    short["input_ids"][0, np.flatnonzero(short["input_ids"][0] == IMAGE)[-1]] = 7
    with pytest.raises(ValueError, match=r"row 0 \(segment 1\): image item 0 takes 8 tokens, but only 7 image "
                                         r"placeholder token\(s\) \(id 120\) are left for it"):
        check_batch(short, OLA)
    # An empty sequence.
    empty = {k: v.copy() for k, v in good.items()}
    empty["segment_ids"][1] = 0
    with pytest.raises(ValueError, match=r"row 1 of the batch is empty"):
        check_batch(empty, OLA)
    with pytest.raises(ValueError, match=r"input_ids has shape \[2, 0\]"):
        check_batch(dict(good, input_ids=np.zeros((2, 0), np.int32)), OLA)
    with pytest.raises(ValueError, match=r"batch field 'images' is float32\[2, 2, 16, 16, 3\]"):
        check_batch(dict(good, images=good["images"][:, :2]), OLA)
    no_video = OLA.replace(video_slots=0)
    text_only = {k: v.copy() for k, v in good.items() if not k.startswith("video")}
    text_only["input_ids"][0, 20] = VIDEO
    with pytest.raises(ValueError, match=r"row 0, segment 1: video placeholder tokens \(id 121\) but the stage's "
                                         r"budget has no video slots"):
        check_batch(text_only, no_video)


# ---- configurations ----

@pytest.mark.parametrize("name, cfg, groups, mm", [
    ("ola, both towers", OLA, {"llm", "vision", "vision_connector", "audio", "audio_connector", "mm_embed"},
     set(layouts.VISION_EMBEDS + layouts.SPEECH_EMBEDS)),
    ("ola, vision mlp", OmniConfig(llm=LLM, vision=VISION, vision_connector=MLP(), image_token_id=IMAGE),
     {"llm", "vision", "vision_connector", "mm_embed"}, set(layouts.VISION_EMBEDS)),
    ("ola, audio conv_gmlp", OmniConfig(llm=LLM, audio=AUDIO_CFG, audio_connector=ConvGMLP(), audio_token_id=AUDIO),
     {"llm", "audio", "audio_connector", "mm_embed"}, set(layouts.SPEECH_EMBEDS)),
    ("qwen2_audio, capybara mlp", OmniConfig(llm=LLM, audio=AUDIO_CFG.replace(variant="qwen2_audio"),
                                             audio_connector=MLP(), layout="qwen2_audio", audio_token_id=AUDIO),
     {"llm", "audio", "audio_connector"}, None),
    ("text only", OmniConfig(llm=LLM), {"llm"}, None),
])
def test_parameter_groups(name, cfg, groups, mm):
    _, shapes = logical_specs(OmniModel(cfg))
    assert set(shapes) == groups, name
    if mm is not None:
        assert set(shapes["mm_embed"]) == mm
    if cfg.audio is not None:
        want = {"conv_gmlp": 13, "frame_stack": 5, "mlp": 25}[cfg.audio_connector.name]  # 50 encoder steps (25 pooled)
        assert cfg.audio_chunk_tokens == want


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="vision and vision_connector come together"):
        OmniConfig(llm=LLM, vision=VISION, image_token_id=IMAGE)
    with pytest.raises(ValueError, match="layout 'qwen2_audio' lays out audio only, not images"):
        OmniConfig(llm=LLM, vision=VISION, vision_connector=MLP(), layout="qwen2_audio", image_token_id=IMAGE)
    with pytest.raises(ValueError, match="needs the variant='qwen2_audio' encoder"):
        OmniConfig(llm=LLM, audio=AUDIO_CFG, audio_connector=Linear(), layout="qwen2_audio", audio_token_id=AUDIO)
    with pytest.raises(ValueError, match="frame_stack_k=7 must divide the encoder's 50 outputs"):
        OmniConfig(llm=LLM, audio=AUDIO_CFG, audio_connector=FrameStack(k=7), audio_token_id=AUDIO)
    with pytest.raises(ValueError, match="placeholder token ids .* must differ"):
        OLA.replace(video_token_id=IMAGE)
    with pytest.raises(ValueError, match="video_slots=2: slots need a video_token_id"):
        OmniConfig(llm=LLM, vision=VISION, vision_connector=LocalGlobalPool(), image_token_id=IMAGE, video_slots=2)


def test_hf_architectures_build_omni_models():
    """transformers' LLaVA-OneVision and Qwen2-Audio load as OmniModel in those configurations (their
    logits against transformers: test_llava_onevision.py, test_qwen2_audio.py)."""
    from omnijax.hf import architectures
    from omnijax.hf.importer import abstract_model
    from omnijax.models.llava_onevision import LlavaOnevisionConfig
    from omnijax.models.qwen2_audio import Qwen2AudioConfig

    lo = LlavaOnevisionConfig(vision=VISION, text=LLM, image_token_index=IMAGE, image_grid_pinpoints=((16, 32),))
    qa = Qwen2AudioConfig(audio=AUDIO_CFG.replace(variant="qwen2_audio"), llm=LLM, audio_token_index=AUDIO)
    for cfg, layout, groups in ((lo, "llava_onevision", {"llm", "vision", "vision_connector", "mm_embed"}),
                                (qa, "qwen2_audio", {"llm", "audio", "audio_connector"})):
        arch = architectures.from_config(cfg.to_hf())
        module, built = arch.build(cfg.to_hf())
        assert isinstance(module, OmniModel) and module.cfg == cfg.omni() and module.cfg.layout == layout
        _, shapes = abstract_model(arch, module, built)
        assert set(shapes) == groups
