"""Generation with media (``omnijax.inference.omni``) on a tiny random Ola-layout model (both towers,
float32) and the tiny omni-synth corpus with its tokenizer:

- KV-cache greedy generation of a left-padded batch with images, audio and video equals a no-cache
  oracle (the full ``OmniModel`` forward over prompt + generated tokens, each example alone);
- batched answers equal answers one by one; prompts are the training pipeline's examples cut at the
  assistant's answer (ids and media), the spoken form included;
- streaming: on a "planted" model whose next token is a fixed function of the current one (attention
  and MLP outputs zeroed, orthogonal embeddings), the answer "What. green! circle?" arrives sentence by
  sentence while it is generated, each sentence spoken into a 16 kHz WAV by eSpeak NG;
- the sentence splitter on token-by-token decodings; the command line.
"""

import collections
import contextlib
import io
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import soundfile as sf

from data_pipelines import schema, synth, tokenizer as tok
from data_pipelines.pipeline import PipelineConfig, Prepare, Source
from omnijax.batch import MediaItem, media_slots
from omnijax.checkpoint import save_model_dir
from omnijax.hf.importer import Loaded
from omnijax.hf.omni import OMNI
from omnijax.inference import chat
from omnijax.inference import omni as omni_gen
from omnijax.inference.omni import GENERATION_SLOTS, OmniGenerator, generation_config
from omnijax.inference.sentences import espeak_callback, sentences
from omnijax.models.audio import AudioConfig
from omnijax.models.connector_configs import FrameStack, LocalGlobalPool
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel, logical_specs
from omnijax.models.vision import VisionConfig
from omnijax.tools import generate as cli

IDS = {m: tok.SYNTH_TOKEN_IDS[tok.PLACEHOLDER_TOKENS[m]] for m in ("image", "video", "audio")}
# Ola's architecture at toy sizes: 32-pixel images (8-pixel patches, 2x2 pooled grid), 1 s audio windows
# (100 mel frames -> 50 encoder outputs -> 5 tokens), 4 frames per video.
CFG = OmniConfig(
    llm=LLMConfig(vocab_size=tok.DEFAULT_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, rope_theta=1e4),
    vision=VisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                        use_head=False),
    vision_connector=LocalGlobalPool(),
    audio=AudioConfig(num_mel_bins=80, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                      max_source_positions=50),
    audio_connector=FrameStack(hidden=32),
    image_token_id=IDS["image"], video_token_id=IDS["video"], audio_token_id=IDS["audio"],
    image_slots=1, video_slots=4, audio_slots=4)
FRAMES = 4
MAX_PROMPT = 128
NEW = 8
PLANTED = "What. green! circle?"  # the planted model's answer to anything


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tokenizer dir, the eval split's first example of each task, all eval examples by task)."""
    out = str(tmp_path_factory.mktemp("omni_synth"))
    synth.build(out, seed=0, size="tiny", progress=False)
    tok.build_synth_tokenizer(out)
    by_task = collections.defaultdict(list)
    for example in schema.read_shard(os.path.join(out, "eval.array_record-00000-of-00001")):
        by_task[example.task].append(example)
    return os.path.join(out, tok.SYNTH_TOKENIZER_DIR), {t: e[0] for t, e in by_task.items()}, by_task


def random_params(seed=0):
    """Random params of the model's shapes: norms' scales near 1, the rest N(0, 0.2) (clear argmax margins)."""
    _, shapes = logical_specs(OmniModel(CFG))
    rng = np.random.default_rng(seed)
    paths, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    return jax.tree_util.tree_unflatten(treedef, [
        (1 + 0.1 * rng.normal(size=s.shape) if p[-1].key == "scale" else 0.2 * rng.normal(size=s.shape)).astype(
            np.float32) for p, s in paths])


@pytest.fixture(scope="module")
def gen(corpus):
    return OmniGenerator(CFG, random_params(), corpus[0], max_prompt_len=MAX_PROMPT, batch_size=4,
                         video_frames=FRAMES)


@pytest.fixture(scope="module")
def planted(corpus, gen):
    """A generator whose model answers PLANTED to any prompt: attention and MLP outputs are zero, so
    each position's logits are lm_head(norm(embedding of its token)); the chain's tokens have
    orthonormal embeddings and each one's lm_head column points at its predecessor's."""
    params = jax.tree.map(np.array, gen.params)
    llm = params["llm"]
    llm["layers"]["attn"]["o_proj"]["kernel"][:] = 0
    llm["layers"]["mlp"]["down_proj"]["kernel"][:] = 0
    llm["norm"]["scale"][:] = 1
    answer = gen.tokenizer.encode(PLANTED, add_special_tokens=False)
    header = gen.tokenizer.encode(f"{tok.IM_START}assistant\n", add_special_tokens=False)
    chain = [header[-1], *answer, gen.tokenizer.convert_tokens_to_ids(tok.IM_END)]
    assert len(set(chain)) == len(chain), f"the chain needs distinct tokens: {chain}"
    basis, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(CFG.llm.hidden_size, len(chain))))
    llm["lm_head"]["kernel"][:] = 0
    for k, (token, successor) in enumerate(zip(chain, chain[1:])):
        llm["embed_tokens"]["embedding"][token] = basis[:, k]
        llm["lm_head"]["kernel"][:, successor] = 10 * basis[:, k]
    return OmniGenerator(CFG, params, corpus[0], max_prompt_len=MAX_PROMPT, batch_size=4, video_frames=FRAMES)


def oracle(gen, forward, example, new):
    """Greedy tokens by the full forward (no cache) over prompt + tokens so far, the example alone in a
    right-padded row with every modality's slots; and the smallest top-2 logit margin met."""
    ids, items = gen.prepare(example)
    width = MAX_PROMPT + new
    media = media_slots([[[MediaItem(f.kind, f.data, f.valid_frames, f.plan) for f in items]]], CFG.budget,
                        CFG.media_layout)
    seq, margin = list(ids), np.inf
    for _ in range(new):
        n = len(seq)
        batch = {"input_ids": np.zeros((1, width), np.int32), "segment_ids": np.zeros((1, width), np.int32),
                 "positions": np.zeros((1, width), np.int32), **media}
        batch["input_ids"][0, :n], batch["segment_ids"][0, :n], batch["positions"][0, :n] = seq, 1, np.arange(n)
        logits = np.asarray(forward(gen.params, batch))[0, n - 1]
        top2 = np.sort(logits)[-2:]
        margin = min(margin, top2[1] - top2[0])
        seq.append(int(np.argmax(logits)))
    return np.array(seq[len(ids):]), margin


def test_kv_cache_generation_with_media_equals_full_forward(corpus, gen):
    _, examples, _ = corpus
    batch = [examples["image_caption"], examples["asr"], examples["video_audio_qa"]]
    lengths = [len(gen.prepare(e)[0]) for e in batch]
    assert len(set(lengths)) == 3, lengths  # left padding differs per row
    out = gen.generate(batch, NEW)
    forward = jax.jit(lambda p, b: gen.model.apply({"params": p}, b, method="forward"))
    rows = []
    for r, example in enumerate(batch):
        want, margin = oracle(gen, forward, example, NEW)
        assert margin > 1e-4, f"argmax margin {margin} too small for an exact comparison"
        n = out.lengths[r]
        np.testing.assert_array_equal(out.tokens[r, :n], want[:n], err_msg=example.task)
        if n < NEW:  # stopped: at a stop token, padding after it
            assert want[n - 1] in gen.stop_token_ids and (out.tokens[r, n:] == gen.pad_token_id).all()
        rows.append(tuple(want))
    assert len(set(rows)) == 3  # the media make the answers differ


def test_batched_answers_equal_answers_one_by_one(corpus, gen):
    """Five image questions in two batches of 4 (prompt widths bucketed to 128 and 64; the second batch
    one row and three copies of it) equal each example alone (its own width and neighbours). Batches
    mixing modalities are checked against the oracle above, example by example."""
    _, _, by_task = corpus
    five = [by_task[t][0] for t in ("image_caption", "image_qa", "image_choice", "spoken_image_qa")]
    five.append(by_task["image_caption"][1])
    assert max(len(gen.prepare(e)[0]) for e in five[:4]) > 64 >= len(gen.prepare(five[4])[0])
    together = gen.generate(five, NEW)
    for r, example in enumerate(five):
        alone = gen.generate([example], NEW)
        np.testing.assert_array_equal(together.tokens[r], alone.tokens[0], err_msg=example.task)
        assert together.lengths[r] == alone.lengths[0]
    answers = gen.answer(five, NEW)
    assert answers == [gen.decode(t[:n]) for t, n in zip(together.tokens, together.lengths)]
    assert len(set(answers)) == 5 and all(isinstance(a, str) and a for a in answers)


@pytest.mark.parametrize("task, spoken", [("image_caption", False), ("asr", False), ("video_audio_qa", False),
                                          ("text_instruct", False), ("spoken_image_qa", True)])
def test_prompt_is_the_training_example_up_to_the_answer(corpus, gen, task, spoken):
    """The prompt's ids and media are the training pipeline's for the same example (the spoken form
    through ``Source(spoken=True)``), cut before the first token the training loss learns."""
    tokenizer_dir, examples, _ = corpus
    example = examples[task]
    config = PipelineConfig(sources=(Source("train", ("unused",), spoken=spoken),), tokenizer=tokenizer_dir,
                            batch_size=1, seq_len=512, budget=CFG.budget, layout=CFG.media_layout,
                            video_frames=FRAMES)
    train = Prepare(config, config.sources[0], None, gen.tokenizer)
    want = train.example(train.parse(example.to_bytes()))
    ids, items = gen.prepare(example, spoken=spoken)
    answer_start = int(np.argmax(want["loss_weights"] > 0)) + 1
    np.testing.assert_array_equal(ids, want["input_ids"][:answer_start])
    assert gen.tokenizer.decode(ids[-3:]) == f"{tok.IM_START}assistant\n"
    for m, field in (("image", "images"), ("video", "videos"), ("audio", "audio")):
        got = [f.data for f in items if f.kind == m]
        np.testing.assert_array_equal(np.concatenate(got) if got else np.zeros((0, *want[field].shape[1:])),
                                      want[field])
    text = gen.tokenizer.decode(ids)
    if spoken:
        assert example.spoken_question.text not in text and text.count("<|audio_pad|>") == items[-1].tokens
    else:
        assert example.turns[0].text.split("\n")[-1] in text


def test_stream_yields_sentences_while_generating(planted, corpus, monkeypatch):
    _, examples, _ = corpus
    example = examples["image_caption"]
    out = planted.generate([example], NEW)  # 6 answer tokens and <|im_end|>, then padding
    assert out.lengths.tolist() == [7] and out.tokens[0, 6] == tok.SYNTH_TOKEN_IDS[tok.IM_END]
    assert out.tokens[0, 7] == planted.pad_token_id and planted.answer([example], NEW) == [PLANTED]
    steps, seen = [], []
    real_step = omni_gen._step

    def counting_step(*args):
        steps.append(1)
        return real_step(*args)

    monkeypatch.setattr(omni_gen, "_step", counting_step)
    stream = planted.stream(example, NEW, on_sentence=lambda i, s: seen.append((i, s, len(steps))))
    first = next(stream)
    rest = list(stream)
    assert [first, *rest] == ["What. ", "green! ", "circle?"]
    assert "".join([first, *rest]) == PLANTED
    # The first sentence is out once " green" is decoded (2 steps after the prefill), before the
    # other 4 steps; each sentence reached on_sentence before the generator yielded it.
    assert [(i, s) for i, s, _ in seen] == [(0, "What. "), (1, "green! "), (2, "circle?")]
    assert seen[0][2] == 2 and len(steps) == 6


def test_stream_of_a_random_model_concatenates_to_its_answer(gen, corpus):
    _, examples, _ = corpus
    answer = gen.answer([examples["image_caption"]], NEW)[0]
    assert len(answer) > 8 and "".join(gen.stream(examples["image_caption"], NEW)) == answer


def test_espeak_callback_writes_16k_wavs_per_sentence(planted, corpus, tmp_path):
    _, examples, _ = corpus
    out = str(tmp_path / "speech")
    pieces = list(planted.stream(examples["image_caption"], NEW, on_sentence=espeak_callback(out)))
    assert sorted(os.listdir(out)) == [f"sentence_{i:03d}.wav" for i in range(len(pieces))] and len(pieces) == 3
    for name in os.listdir(out):
        info = sf.info(os.path.join(out, name))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        wave, _ = sf.read(os.path.join(out, name))
        assert info.frames > 0.2 * 16000 and np.abs(wave).max() > 0.05  # at least 0.2 s of sound
    assert espeak_callback(out)(7, " \n") is None and not os.path.exists(os.path.join(out, "sentence_007.wav"))


def test_sentence_splitter_on_token_by_token_text(gen):
    text = "What colour. It moves!\n\nYes? 3.5 done... (\"Sure.\") ok.  "
    ids = gen.tokenizer.encode(text, add_special_tokens=False)
    texts = [gen.tokenizer.decode(ids[:k]) for k in range(1, len(ids) + 1)]
    got = list(sentences(texts))
    assert got == ["What colour. ", "It moves!\n\n", "Yes? ", "3.5 done... ", "(\"Sure.\") ", "ok.  "]
    assert "".join(got) == text
    # Each sentence comes out as soon as the next one has begun: with the text that first holds its "I".
    read = []

    def feed():
        for t in texts:
            read.append(t)
            yield t

    assert next(sentences(feed())) == "What colour. " and read[-1] == "What colour. I" and read[-2] == "What colour. "
    assert list(sentences([])) == [] and list(sentences(["", "Hi"])) == ["Hi"]


def test_generation_config_gives_slots_to_the_modalities_a_stage_trained_without(corpus, gen):
    """A stage that trained on images only (no video or audio slots) still answers videos and speech at
    generation: the towers are there, the slots are shapes; answers equal the full budget's."""
    _, examples, _ = corpus
    image_only = CFG.replace(video_slots=0, audio_slots=0)
    cfg = generation_config(image_only, FRAMES)
    assert (cfg.image_slots, cfg.video_slots, cfg.audio_slots) == (1, FRAMES, GENERATION_SLOTS["audio"])
    assert generation_config(CFG, FRAMES) is CFG
    no_audio = image_only.replace(audio=None, audio_connector=None, audio_token_id=None)
    assert generation_config(no_audio, FRAMES).audio_slots == 0
    stage = OmniGenerator(cfg, gen.params, corpus[0], max_prompt_len=MAX_PROMPT, batch_size=4, video_frames=FRAMES)
    tasks = ("video_audio_qa", "asr", "image_qa")
    assert stage.answer([examples[t] for t in tasks], NEW) == gen.answer([examples[t] for t in tasks], NEW)


def test_slots_and_widths_grow_to_the_input_in_rounded_steps(corpus, gen):
    """8 frames per video on a model with video_slots=4: the batch's video slots grow to 8; slots and prompt
    widths are rounded up (powers of two; widths bucket * 2**k) so few shapes compile."""
    _, examples, _ = corpus
    eight = OmniGenerator(CFG, gen.params, corpus[0], max_prompt_len=MAX_PROMPT, batch_size=1)
    ids, items = eight.prepare(examples["video_audio_qa"])
    batch = eight.batch([(ids, items)], 1)
    assert [f.slots for f in items if f.kind == "video"] == [8] and batch["videos"].shape[1] == 8
    assert [omni_gen.grown_slots(n, 4) for n in (0, 3, 4, 5, 8, 9, 40, 180)] == [4, 4, 4, 8, 8, 16, 64, 256]
    wide = OmniGenerator(CFG, gen.params, corpus[0], max_prompt_len=1000, batch_size=1, bucket=64,
                         video_frames=FRAMES)
    widths = [wide.batch([(np.ones(n, np.int32), [])], 1)["input_ids"].shape[1] for n in (10, 64, 65, 129, 300, 999)]
    assert widths == [64, 64, 128, 256, 512, 1000]


def test_clear_errors(corpus, gen):
    tokenizer_dir, examples, _ = corpus
    with pytest.raises(ValueError, match="unknown prompt options .'seq_len'."):
        OmniGenerator(CFG, gen.params, tokenizer_dir, max_prompt_len=64, seq_len=3)
    no_audio = CFG.replace(audio=None, audio_connector=None, audio_token_id=None, audio_slots=0)
    deaf = OmniGenerator(no_audio, gen.params, tokenizer_dir, max_prompt_len=64, video_frames=FRAMES)
    with pytest.raises(ValueError, match="example .* has an audio, but the model has no audio tower"):
        deaf.answer([examples["asr"]])
    no_slots = OmniGenerator(CFG.replace(image_slots=0), gen.params, tokenizer_dir, max_prompt_len=64,
                             video_frames=FRAMES)
    with pytest.raises(ValueError, match=r"no image slots per row \(image_slots=0\).*cfg.replace\(image_slots=N\)"):
        no_slots.prepare(examples["image_qa"])
    short = OmniGenerator(CFG, gen.params, tokenizer_dir, max_prompt_len=20, video_frames=FRAMES)
    with pytest.raises(ValueError, match="text tokens for seq_len 20.*max_prompt_len=20"):
        short.prepare(examples["image_qa"])
    with pytest.raises(ValueError, match="has no spoken_question"):
        gen.answer([examples["image_qa"]], spoken=True)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        OmniGenerator(CFG, gen.params, tokenizer_dir, max_prompt_len=32760, video_frames=FRAMES).answer(
            [examples["image_qa"]], max_new_tokens=16)


# ---- command line ----

def media_files(example, folder):
    """The example's media written as files: [(kind, path)]."""
    paths = []
    for i, m in enumerate(example.media):
        paths.append((m.kind, str(folder / f"{m.kind}{i}.{m.format}")))
        with open(paths[-1][1], "wb") as f:
            f.write(m.data)
    return paths


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_command_line_example_is_the_corpus_example(corpus, tmp_path):
    """--video/--audio/--prompt give the corpus's user turn; --spoken-question its spoken view."""
    _, examples, _ = corpus
    written = examples["video_audio_qa"]
    files = media_files(written, tmp_path)
    question = written.turns[0].text.split("\n", 1)[1]
    built = cli.build_example(files, prompt=question)
    assert built.turns == written.turns[:1]
    assert [(m.kind, m.format, m.data) for m in built.media] == [(m.kind, m.format, m.data) for m in written.media]
    spoken = examples["spoken_image_qa"]
    files = media_files(spoken, tmp_path)
    with open(tmp_path / "q.flac", "wb") as f:
        f.write(spoken.spoken_question.data)
    view = spoken.spoken_view()
    built = cli.build_example(files, spoken_question=str(tmp_path / "q.flac"))
    assert built.turns == view.turns[:1] and [m.data for m in built.media] == [m.data for m in view.media]


def test_command_line_streams_and_speaks(planted, corpus, tmp_path, monkeypatch):
    """End to end on the planted model saved as an omnijax model directory with its tokenizer; then
    the errors, on stand-ins for ``load_model``."""
    tokenizer_dir, examples, _ = corpus
    files = media_files(examples["image_caption"], tmp_path)
    model_dir = str(tmp_path / "model")
    save_model_dir(model_dir, Loaded(OMNI, planted.model, CFG, planted.params, OMNI.hf_config(CFG)),
                   assets_dir=tokenizer_dir)
    args = ["--video-frames", str(FRAMES), "--max-new-tokens", str(NEW)]
    code, out, err = run_cli(["--model", model_dir, *args, "--image", files[0][1], "--prompt", "Describe it.",
                              "--speak-dir", str(tmp_path / "wav")])
    assert (code, out) == (0, PLANTED + "\n"), err
    assert sorted(os.listdir(tmp_path / "wav")) == ["sentence_000.wav", "sentence_001.wav", "sentence_002.wav"]
    loaded = SimpleNamespace(module=planted.model, params=planted.params)
    monkeypatch.setattr(chat, "load_params", lambda path, **kw: loaded)
    base = ["--model", "unused", "--tokenizer", tokenizer_dir, *args]
    code, _, err = run_cli([*base, "--image", str(tmp_path / "missing.png"), "--prompt", "Hi"])
    assert code == 2 and "--image" in err and "missing.png: no such file" in err
    code, _, err = run_cli([*base, "--audio", files[0][1], "--prompt", "Hi"])
    assert code == 2 and "--audio" in err and "audio files must be flac or wav, this one is png" in err
    code, _, err = run_cli([*base, "--image", files[0][1], "--prompt", "Hi", "--max-prompt-len", "24"])
    assert code == 2 and "max_prompt_len=24" in err
    code, _, err = run_cli([*base, "--prompt", "Hi", "--temperature", "0.5"])
    assert code == 2 and "--temperature" in err
    deaf = SimpleNamespace(module=OmniModel(CFG.replace(audio=None, audio_connector=None, audio_token_id=None,
                                                        audio_slots=0)), params=planted.params)
    monkeypatch.setattr(chat, "load_params", lambda path, **kw: deaf)
    code, _, err = run_cli([*base, "--spoken-question", str(tmp_path / "wav" / "sentence_000.wav")])
    assert code == 2 and "--spoken-question: the model has no audio tower; leave out --spoken-question" in err


# ---- long audio: the slots grow to the input, up to the model's limit in seconds ----

LONG_LIMIT = 200  # windows of 1 s (CFG's audio window): 200 s


def write_tone(path, seconds, rate=16000):
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="FLOAT")
    return str(path)


@pytest.fixture(scope="module")
def long_audio_model(planted, corpus, tmp_path_factory):
    """The planted model saved with a limit of LONG_LIMIT windows of 1 s (its params do not depend on it)."""
    cfg = CFG.replace(max_audio_windows=LONG_LIMIT)
    model_dir = str(tmp_path_factory.mktemp("long_audio") / "model")
    save_model_dir(model_dir, Loaded(OMNI, OmniModel(cfg), cfg, planted.params, OMNI.hf_config(cfg)),
                   assets_dir=corpus[0])
    return model_dir


@pytest.mark.parametrize("seconds", [40, 180])
def test_long_audio_is_answered_with_slots_grown_to_it(long_audio_model, tmp_path, seconds):
    """40 s and 3 min of audio (40 and 180 windows; the model's budget is audio_slots=4) are answered
    through the command line: the audio slots grow to the next power of two (64, 256)."""
    wav = write_tone(tmp_path / "long.wav", seconds)
    code, out, err = run_cli(["--model", long_audio_model, "--video-frames", str(FRAMES), "--max-new-tokens",
                              str(NEW), "--audio", wav, "--prompt", "What is said?"])
    assert (code, out) == (0, PLANTED + "\n"), err
    model = chat.Model(long_audio_model, video_frames=FRAMES)
    gen = model.generator(1, NEW)
    example = cli.build_example([("audio", wav)], prompt="What is said?")
    ids, items = gen.prepare(example)
    batch = gen.batch([(ids, items)], 1)
    assert items[0].slots == seconds and items[0].seconds == seconds
    assert batch["audio"].shape[1] == {40: 64, 180: 256}[seconds]
    assert (batch["audio_item"][0] == 0).sum() == seconds and batch["input_ids"].shape[1] in (512, 2048)


def test_audio_over_the_models_limit_is_refused_in_seconds(long_audio_model, tmp_path):
    too_long = write_tone(tmp_path / "too_long.wav", LONG_LIMIT + 40)
    model = ["--model", long_audio_model, "--video-frames", str(FRAMES)]
    args = [*model, "--prompt", "What is said?"]
    code, out, err = run_cli([*args, "--audio", too_long])
    assert (code, out) == (2, "")
    assert err == (f"error: audio {too_long!r} is 240.0 s; this model takes at most 200 s (200 windows of 1 s): "
                   "cut it or raise model.max_audio_windows\n")
    clip = write_tone(tmp_path / "clip.wav", 40)
    code, _, err = run_cli([*args, "--audio", clip, "--max-audio-windows", "30"])
    assert code == 2 and f"audio {clip!r} is 40.0 s; this model takes at most 30 s (30 windows of 1 s)" in err
    code, _, err = run_cli([*model, "--spoken-question", clip, "--max-audio-windows", "30"])
    assert code == 2 and f"spoken question {clip!r} is 40.0 s" in err
    code, _, err = run_cli([*args, "--audio", clip, "--max-prompt-len", "200"])
    assert code == 2 and "Traceback" not in err, err
    assert "item 0 (audio of 40.0 s) takes tokens" in err and "; 28 s of audio fit with the rest" in err
    assert "[the prompt's seq_len is max_prompt_len=200 tokens, of the model's 32768 positions]" in err
