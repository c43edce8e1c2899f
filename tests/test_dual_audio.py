"""Ola's dual audio encoder (Whisper + BEATs, ``omnijax.models.dual_audio``) against golden outputs of Ola's
``DualWrappedEncoder`` and ``EncoderProjectorConcat`` (``tests/golden/README.md``), its batch field
``audio_fbank`` from the data side, and a stage that trains BEATs with Whisper frozen."""

import dataclasses
import io
import os

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
import soundfile

from data_pipelines import schema
from data_pipelines import tokenizer as tok
from data_pipelines.audio import beats_fbank
from data_pipelines.features import MediaFeatures
from data_pipelines.pipeline import Pipeline
from data_pipelines.record import Media
from omnijax import launch
from omnijax.compile import model_flops
from omnijax.batch import MediaBudget, MediaItem, check_batch, media_slots
from omnijax.checkpoint import save_model_dir
from omnijax.hf.beats import load_beats
from omnijax.hf.importer import Loaded
from omnijax.hf.omni import OMNI
from omnijax.hf.openai_whisper import load_openai_whisper
from omnijax.inference.omni import OmniGenerator
from omnijax.models.connectors import FrameStackProjector
from omnijax.models.dual_audio import DualAudioEncoder, align_frames
from omnijax.models.omni import OmniConfig, OmniModel, init_params
from omnijax.training.config import base_config
from omnijax.training.stages import StageConfigError
from omnijax.training.omni_task import omni_config
from test_pipeline import AUDIO_ID, model_cfg, task_shards
from test_pipeline import omni_config as omni_config_of
from training_fixtures import corpus  # noqa: F401  (fixture)

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
TOL = 1e-4  # max |diff| <= TOL * max |value|, float32
LLM = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2)
WHISPER = dict(num_mel_bins=80, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
               max_source_positions=50)  # 1 s windows: 100 mel frames -> 50 outputs
BEATS = dict(embed_dim=8, encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
             conv_pos=8, conv_pos_groups=4, num_buckets=32, max_distance=64)  # 98 fbank frames -> 48 patches
AUDIO = 100


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(os.path.join(GOLDEN, "ola_dual_encoder.npz")))


def test_dual_encoder_and_frame_stack_equal_ola(golden):
    """Whisper (openai-whisper naming) + BEATs on 2 s windows: Whisper's 100 frames beside BEATs' 96 patches padded
    with 4 zero rows equal ``DualWrappedEncoder.forward``; ``FrameStackProjector`` on the 64 channels equals
    ``EncoderProjectorConcat``'s 10 stacked tokens (between its speech_begin and speech_newline)."""
    whisper, beats = load_openai_whisper(os.path.join(GOLDEN, "openai_whisper_tiny")), \
        load_beats(os.path.join(GOLDEN, "beats_tiny"))
    wav = np.load(os.path.join(GOLDEN, "beats_encoder.npz"))["waveform"].astype(np.float32) / 32768
    fbank = np.stack([beats_fbank(w) for w in wav])[:, None]  # [2 clips, 1 window, 198, 128]
    mel = golden["mel"][:, None]  # [2, 1, 128, 200]
    params = {"whisper": whisper.params["audio"], "beats": beats.params["beats"]}
    enc = DualAudioEncoder(whisper.cfg, beats.cfg)
    got = np.asarray(enc.apply({"params": params}, jnp.asarray(mel), jnp.asarray(fbank), method="encode_chunks"))
    want = golden["dual_output"]
    assert got.shape == (2, 1, 100, 64) and want.shape == (2, 100, 64)
    assert rel_err(got[:, 0], want) < TOL
    assert not got[:, 0, 96:, 32:].any()  # BEATs' padding rows

    proj = {"linear1": {"kernel": golden["projector.linear1.weight"].T, "bias": golden["projector.linear1.bias"]},
            "linear2": {"kernel": golden["projector.linear2.weight"].T, "bias": golden["projector.linear2.bias"]}}
    tokens = FrameStackProjector(24, k=10, hidden_dim=16).apply({"params": proj}, jnp.asarray(want))
    ola = golden["projector_output"]  # [2, begin + 10 + newline + end, 24]
    np.testing.assert_array_equal(ola[:, 0], np.broadcast_to(golden["projector.speech_begin"], (2, 24)))
    assert rel_err(tokens, ola[:, 1:11]) < TOL


def test_align_frames_pads_the_shorter_side_with_zero_rows():
    """Ola pads whichever sequence is shorter (speech_encoder.py lines 68-71), then concatenates speech first."""
    speech, audio = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) + 1, np.ones((2, 5, 1), np.float32)
    got = np.asarray(align_frames(jnp.asarray(speech), jnp.asarray(audio)))
    want = np.concatenate([np.pad(speech, ((0, 0), (0, 2), (0, 0))), audio], -1)
    np.testing.assert_array_equal(got, want)
    got = np.asarray(align_frames(jnp.asarray(audio), jnp.asarray(speech[:, :2])))
    np.testing.assert_array_equal(got[:, 2:, 1:], 0)
    assert got.shape == (2, 5, 3)


def dual_config(**kw) -> OmniConfig:
    c = base_config()
    model = dict(name="omni", llm=LLM, audio=WHISPER, beats=BEATS, audio_connector="frame_stack",
                 frame_stack_hidden=32, layout="ola", audio_token_id=AUDIO)
    c.model = mlc.ConfigDict({**model, **kw})
    c.media.update(audio_slots=2)
    return omni_config(c)


def test_dual_config_budget_and_param_groups():
    """The audio path, its rows per window (Whisper's 50; BEATs' 48 padded), tokens (50 / 10 + newline), the batch
    field audio_fbank of 98 frames per 1 s window, and the audio group's whisper/ and beats/ sub-trees."""
    cfg = dual_config()
    assert cfg.audio_encoders == ("whisper", "beats")
    assert (cfg.audio_length, cfg.audio_chunk_tokens, cfg.budget.audio_fbank_frames) == (50, 5, 98)
    params = init_params(OmniModel(cfg), jax.random.key(0))
    assert sorted(params["audio"]) == ["beats", "whisper"]
    assert params["audio"]["beats"]["encoder"]["relative_attention_bias"]["embedding"].shape == (32, 2)
    assert params["audio_connector"]["linear1"]["kernel"].shape == (10 * (16 + 16), 32)
    assert OmniConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="beats .* takes the windows of a Whisper audio config .* speech_encoder=False "
                                         "for BEATs alone"):
        cfg.replace(audio=None, audio_connector=None, audio_token_id=None, audio_slots=0)
    with pytest.raises(ValueError, match="speech_encoder=False leaves no audio encoder: set beats"):
        cfg.replace(beats=None, speech_encoder=False)


def test_beats_alone_equals_olas_beats_and_reads_no_log_mel(golden, tmp_path):
    """BEATs alone (``speech_encoder=False``): the audio path, BEATs' 48 patches per 1 s window padded to Whisper's
    50 as in the dual encoder (5 tokens of 10 stacked + newline), batches of 0 mel bins, an audio group of beats/
    only; on the reference's 2 s windows its output is the BEATs half of Ola's dual output (96 patches, 4 zero
    rows) with no log-mel given.
    The model directory and the HF directory keep it (BEATs' tensors only, no Whisper); Ola's release layout,
    which has no BEATs-only speech encoder, is refused by name."""
    from omnijax.checkpoint import load_model
    from omnijax.hf.exporter import save_hf
    from omnijax.hf.ola import check_ola
    from omnijax.hf.safetensors_io import SafetensorsDir

    cfg = dual_config(speech_encoder=False)
    assert cfg.audio_encoders == ("beats",)
    budget = cfg.budget
    assert (cfg.audio_length, cfg.audio_chunk_tokens, budget.n_mels, budget.audio_fbank_frames) == (50, 5, 0, 98)
    params = init_params(OmniModel(cfg), jax.random.key(0))
    assert sorted(params["audio"]) == ["beats"]
    assert params["audio_connector"]["linear1"]["kernel"].shape == (10 * 16, 32)
    assert OmniConfig.from_dict(cfg.to_dict()) == cfg

    beats = load_beats(os.path.join(GOLDEN, "beats_tiny"))
    wav = np.load(os.path.join(GOLDEN, "beats_encoder.npz"))["waveform"].astype(np.float32) / 32768
    fbank = np.stack([beats_fbank(w) for w in wav])[:, None]  # [2 clips, 1 window, 198, 128]
    whisper_cfg = load_openai_whisper(os.path.join(GOLDEN, "openai_whisper_tiny")).cfg
    enc = DualAudioEncoder(whisper_cfg, beats.cfg, speech=False)
    no_mel = jnp.zeros((2, 1, 0, whisper_cfg.frames))
    got = np.asarray(enc.apply({"params": {"beats": beats.params["beats"]}}, no_mel, jnp.asarray(fbank),
                               method="encode_chunks"))
    want = golden["dual_output"][:, :, whisper_cfg.d_model:]
    assert got.shape == (2, 1, 100, 32) and rel_err(got[:, 0], want) < TOL
    assert not got[:, 0, 96:].any()

    hf_dir = str(tmp_path / "hf")
    save_hf(hf_dir, OMNI, cfg, params, progress=False)
    names = set(SafetensorsDir(hf_dir).keys())
    assert any(n.startswith("beats_tower.") for n in names) and not any(n.startswith("audio_tower.") for n in names)
    back = load_model(hf_dir, progress=False)
    assert back.cfg == cfg
    restored = _leaves(back.params)
    assert restored.keys() == _leaves(params).keys()
    assert all(np.array_equal(a, restored[k]) for k, a in _leaves(params).items())
    with pytest.raises(ValueError, match="Ola's release layout .* needs .*a Whisper audio tower"):
        check_ola(cfg)


def test_features_and_slots_carry_beats_fbank_of_the_padded_window():
    """A 1.5 s clip in 1 s windows: two log-mel windows and two fbank windows, the second the fbank of the
    remaining 0.5 s zero-padded to 1 s (as Ola pads its chunks); ``media_slots`` puts them in audio_fbank."""
    cfg = dual_config()
    rs = np.random.RandomState(0)
    wav = (0.3 * rs.randn(24000)).clip(-1, 1).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, wav, 16000, format="WAV", subtype="FLOAT")
    feat = MediaFeatures(cfg.budget, cfg.media_layout).audio(Media("audio", "wav", buf.getvalue(), sampling_rate=16000))
    assert feat.data.shape == (2, 80, 100) and feat.fbank.shape == (2, 98, 128)
    np.testing.assert_allclose(feat.fbank[1], beats_fbank(np.pad(wav[16000:], (0, 8000))), atol=1e-5)
    out = media_slots([[[MediaItem("audio", feat.data, feat.valid_frames, fbank=feat.fbank)]]], cfg.budget,
                      cfg.media_layout)
    np.testing.assert_array_equal(out["audio_fbank"][0], feat.fbank)
    with pytest.raises(ValueError, match=r"row 0, example 0: the model's BEATs needs each audio window's fbank "
                                         r"\[2, 98, 128\] .*got None"):
        media_slots([[[MediaItem("audio", feat.data, feat.valid_frames)]]], cfg.budget, cfg.media_layout)
    alone = dual_config(speech_encoder=False)  # BEATs alone: the same fbank windows, no log-mel
    only = MediaFeatures(alone.budget, alone.media_layout).audio(Media("audio", "wav", buf.getvalue(),
                                                                       sampling_rate=16000))
    assert only.data.shape == (2, 0, 100) and only.tokens == alone.media_layout.audio_tokens(2)
    np.testing.assert_array_equal(only.fbank, feat.fbank)


def _leaves(tree) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(x, np.float32) for p, x in flat}


def test_stage_trains_beats_with_whisper_frozen(tmp_path):
    """A tiny Ola stage with the dual encoder, from a saved model directory, trained 3 steps on random rows by
    the trainer with rules that train BEATs and the connector and freeze the rest: the loss is finite, every
    Whisper and LLM parameter is unchanged bit for bit, BEATs' and the connector's moved."""
    c = base_config()
    c.name = "dual_audio"
    c.model = mlc.ConfigDict(dict(name="omni", llm=LLM, audio=WHISPER, beats=BEATS, audio_connector="frame_stack",
                                  frame_stack_hidden=32, layout="ola", audio_token_id=AUDIO))
    sched = dict(lr=1e-2, warmup_steps=0, decay="constant")
    c.trainable = [("audio/beats/.*", sched), ("audio_connector/.*", sched), (".*", None)]
    c.batch_size, c.seq_len, c.num_steps = 8, 32, 3
    c.media.update(audio_slots=1)
    c.checkpoint.update(every=3, keep=1, async_save=False)
    cfg = omni_config(c)
    module = OmniModel(cfg)
    init = init_params(module, jax.random.key(1))
    init_dir = str(tmp_path / "init")
    save_model_dir(init_dir, Loaded(OMNI, module, cfg, init, OMNI.hf_config(cfg)))
    c.init_from = init_dir
    result = launch.run(c, str(tmp_path / "run"))
    assert result.status == "finished" and result.step == 3
    losses = [row["loss"] for row in result.metrics if "loss" in row]
    assert losses and np.isfinite(losses).all()
    before, after = _leaves(init), _leaves(result.state.params)
    assert before.keys() == after.keys()
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    beats = {k for k in before if k.startswith("['audio']['beats']")}
    trained = beats | {k for k in before if k.startswith("['audio_connector']")}
    assert beats and moved == trained
    assert any(k.startswith("['audio']['whisper']") for k in before)


@pytest.mark.parametrize("n_mels", [80, 0], ids=["dual", "beats_alone"])
def test_pipeline_batches_carry_each_windows_fbank(corpus, n_mels):  # noqa: F811
    """The grain pipeline of a budget with BEATs packs audio_fbank beside the log-mel windows (BEATs alone: windows
    of 0 mel bins): the batches pass ``check_batch``, every used window's fbank is BEATs' (finite, non-zero), every
    empty slot's zero."""
    budget = MediaBudget(audio_slots=8, n_mels=n_mels, audio_frames=100, audio_fbank_frames=98)
    config = omni_config_of(corpus, tasks=("asr", "text_instruct"), budget=budget)
    with Pipeline(config) as pipeline:
        batch = next(pipeline)
    check_batch(batch, model_cfg(config))
    used = batch["audio_item"] >= 0
    assert used.any() and batch["audio_fbank"].shape == (4, 8, 98, 128) and batch["audio"].shape == (4, 8, n_mels, 100)
    fbank = batch["audio_fbank"]
    assert np.isfinite(fbank).all() and (np.abs(fbank[used]).reshape(used.sum(), -1).max(-1) > 0).all()
    assert not fbank[~used].any()


def test_model_flops_count_beats_attention():
    """``compile.model_flops`` adds BEATs' attention products (forward only when nothing trains): 4 x windows x
    rows^2 x width x layers = 4 x (2 rows x 2 slots) x 50^2 x 16 x 1; BEATs alone drops Whisper's, as many (its
    width is 16 too, one layer, 50 positions), over the same weights and tokens."""
    cfg = dual_config()
    abstract = jax.eval_shape(lambda: init_params(OmniModel(cfg), jax.random.key(0)))
    frozen = dict.fromkeys(abstract, False)
    dual = model_flops(cfg, abstract, frozen, batch_size=2, seq_len=16)
    assert dual - model_flops(cfg.replace(beats=None), abstract, frozen, batch_size=2, seq_len=16) == 4 * 4 * 50**2 * 16
    alone = model_flops(cfg.replace(speech_encoder=False), abstract, frozen, batch_size=2, seq_len=16)
    assert dual - alone == 4 * 4 * 50**2 * 16


def test_generator_feeds_beats_the_fbank_of_each_window(corpus):  # noqa: F811
    """Generation with the dual encoder: the prompt's audio comes with its windows' fbank in the batch, the fbank
    reaches the logits, and greedy generation runs. (BEATs alone generates in the smoke run of
    experiments/notebooks/ola_dual_audio.ipynb, which evaluates its arm.)"""
    cfg = dual_config(llm=dict(LLM, vocab_size=tok.DEFAULT_VOCAB_SIZE), audio_token_id=AUDIO_ID)
    example = next(iter(schema.read_shard(task_shards(corpus, "asr")[0])))
    tokenizer = os.path.join(corpus, tok.SYNTH_TOKENIZER_DIR)
    params = jax.tree.map(np.asarray, init_params(OmniModel(cfg), jax.random.key(2)))
    gen = OmniGenerator(cfg, params, tokenizer, max_prompt_len=128, batch_size=1)
    ids, items = gen.prepare(example)
    batch = gen.batch([(ids, items)], 1)
    windows = items[0].slots
    np.testing.assert_array_equal(batch["audio_fbank"][0, :windows], items[0].fbank)
    forward = jax.jit(lambda b: gen.model.apply({"params": params}, b, method="forward")[:, -1])
    silent = dict(batch, audio_fbank=np.zeros_like(batch["audio_fbank"]))
    assert np.abs(np.asarray(forward(batch)) - np.asarray(forward(silent))).max() > 1e-4
    assert gen.generate([example], 4).tokens.shape == (1, 4)


def test_audio_knob_gives_the_dual_encoder_in_both_presets():
    """``audio=dual``: BEATs beside Whisper (7b: BEATs_iter3+, 768 wide, 12 layers), the frame-stacking connector
    k x (Whisper + BEATs) wide, the pretrained Whisper imported into audio/whisper (7b: BEATs from @hf/); a later
    stage keeps '@previous'; ``audio=whisper`` (the default) leaves Whisper alone; other values are refused."""
    from experiments import common
    from experiments.ola import stage1a, stage3a
    from omnijax.models.omni import logical_specs

    for preset, k, width, hidden in (("tiny", 4, 64 + 64, 256), ("7b", 10, 1280 + 768, 2048)):
        c = stage1a.get_config(f"{preset},audio=dual")
        cfg = omni_config(c)
        assert cfg.audio_encoders == ("whisper", "beats")
        _, abstract = logical_specs(OmniModel(cfg))  # jax.eval_shape: nothing allocated
        assert sorted(abstract["audio"]) == ["beats", "whisper"]
        assert abstract["audio_connector"]["linear1"]["kernel"].shape == (k * width, hidden)
        audio = [(src, groups) for src, groups in c.init_from if any(g.startswith(("audio", "beats")) for g in groups)]
        tiny = preset == "tiny"
        want = [(common.tiny_dir("audio") if tiny else "@hf/whisper-large-v3", ("audio->audio/whisper",)),
                (common.tiny_dir("beats") if tiny else "@hf/BEATs_iter3_plus_AS2M", ("beats->audio/beats",))]
        assert [(s, tuple(g)) for s, g in audio] == want
        assert stage3a.get_config(f"{preset},audio=dual").init_from == common.PREVIOUS
        assert omni_config(stage3a.get_config(f"{preset},audio=dual")).beats == cfg.beats
    seven = omni_config(stage1a.get_config("7b,audio=dual")).beats
    assert (seven.encoder_embed_dim, seven.encoder_layers, seven.embed_dim, seven.num_buckets) == (768, 12, 512, 320)
    assert omni_config(stage1a.get_config("tiny")).beats is None
    assert omni_config(stage1a.get_config("tiny,audio=whisper")).beats is None
    with pytest.raises(ValueError, match="config argument 'tiny,audio=wav2vec': audio='wav2vec' is not one of "
                                         "whisper, dual, beats"):
        stage1a.get_config("tiny,audio=wav2vec")


def test_audio_knob_gives_beats_alone():
    """``audio=beats``: BEATs alone, its pretrained checkpoint imported into audio/beats and no Whisper imported;
    the frame-stacking connector k x BEATs wide; the batches' windows carry no log-mel."""
    from experiments import common
    from experiments.ola import stage1a
    from omnijax.models.omni import logical_specs

    for preset, k, width in (("tiny", 4, 64), ("7b", 10, 768)):
        c = stage1a.get_config(f"{preset},audio=beats")
        cfg = omni_config(c)
        assert cfg.audio_encoders == ("beats",) and cfg.budget.n_mels == 0
        _, abstract = logical_specs(OmniModel(cfg))
        assert sorted(abstract["audio"]) == ["beats"]
        assert abstract["audio_connector"]["linear1"]["kernel"].shape[0] == k * width
        imports = [(src, g) for src, groups in c.init_from for g in groups if g.startswith(("audio", "beats"))]
        beats = common.tiny_dir("beats") if preset == "tiny" else "@hf/BEATs_iter3_plus_AS2M"
        assert imports == [(beats, "beats->audio/beats")]


def test_init_from_moves_whisper_and_beats_checkpoints_into_the_dual_audio_group():
    """The `7b` dual stage's imports at tiny sizes: an openai-whisper checkpoint's ``audio`` lands at audio/whisper
    and a BEATs checkpoint's ``beats`` at audio/beats (``'SRC->DEST'`` init_from items), the other groups fresh;
    a source path it lacks and a destination the model lacks are named."""
    whisper_dir, beats_dir = os.path.join(GOLDEN, "openai_whisper_tiny"), os.path.join(GOLDEN, "beats_tiny")
    whisper, beats = load_openai_whisper(whisper_dir), load_beats(beats_dir)
    c = base_config()
    c.name = "dual_import"
    c.model = mlc.ConfigDict(dict(name="omni", llm=LLM, audio=dataclasses.asdict(whisper.cfg),
                                  beats=dataclasses.asdict(beats.cfg), audio_connector="frame_stack",
                                  frame_stack_hidden=32, layout="ola", audio_token_id=AUDIO))
    c.batch_size, c.seq_len = 8, 32
    c.media.update(audio_slots=1)
    c.init_from = [(whisper_dir, ("audio->audio/whisper",)), (beats_dir, ("beats->audio/beats",))]
    params = launch.setup(c).init_params()
    for got, want in ((params["audio"]["whisper"], whisper.params["audio"]),
                      (params["audio"]["beats"], beats.params["beats"])):
        got, want = _leaves(got), _leaves(want)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    for items, error in ((("audio/whisper->audio/whisper",), r"init_from .*openai_whisper_tiny has no "
                                                            r"'audio/whisper' \(it holds conv1, conv2, "),
                         (("audio->audio/speech",), r"'audio->audio/speech' lands at 'audio/speech', which the "
                                                    r"model does not have \(it holds beats, whisper\)")):
        c.init_from = [(whisper_dir, items)]
        with pytest.raises(StageConfigError, match=error):
            launch.setup(c).init_params()
