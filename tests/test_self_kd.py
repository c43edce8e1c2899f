"""Self-KD (arXiv 2503.00059) end to end: teacher-student pairs from the Grain pipeline on the tiny
omni-synth corpus (whole, own segments, equal responses), the Self-KD objective against a NumPy oracle
that pairs the responses by hand (value, alpha = 0, equal sides, no gradient into the teacher), and the
`experiments/self_kd` recipe on the trainer."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from training_fixtures import compile_once, corpus

from data_pipelines import synth, tokenizer as tok
from data_pipelines.pipeline import Pipeline, PipelineConfig, Source
from omnijax import recipe as recipe_lib
from omnijax.batch import KD_ORDINARY, KD_STUDENT, KD_TEACHER, batch_spec, check_batch
from omnijax.models.audio import AudioConfig
from omnijax.models.connector_configs import FrameStack, LocalGlobalPool
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig, OmniModel, init_params
from omnijax.models.vision import VisionConfig
from omnijax.sharding import make_mesh
from omnijax.training import objective
from omnijax.launch import grain_pipeline_config
from omnijax.training.losses import masked_cross_entropy
from omnijax.training.next_token import NextTokenCE, SelfKD, self_kd_sums
from omnijax.training.omni_task import objective_terms
from omnijax.training.stages import StageConfigError
from omnijax.training.term import TermValue

pytestmark = pytest.mark.usefixtures("compile_once")

IMAGE_ID, AUDIO_ID = (tok.SYNTH_TOKEN_IDS[tok.PLACEHOLDER_TOKENS[m]] for m in ("image", "audio"))
TASKS = ("spoken_image_qa", "image_qa")
# Ola's architecture at toy sizes: 32-pixel images (2x2 pooled grid), 1 s audio windows (5 tokens each).
MODEL = OmniConfig(
    llm=LLMConfig(vocab_size=tok.DEFAULT_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                  num_kv_heads=2),
    vision=VisionConfig(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                        use_head=False),
    vision_connector=LocalGlobalPool(),
    audio=AudioConfig(num_mel_bins=80, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                      max_source_positions=50),
    audio_connector=FrameStack(hidden=32), layout="ola",
    image_token_id=IMAGE_ID, audio_token_id=AUDIO_ID, image_slots=4, audio_slots=4)


def kd_config(corpus: str, sources=None, **kw) -> PipelineConfig:
    shards = synth.task_shards(corpus, "train")
    sources = sources or (Source("spoken_image_qa", (shards["spoken_image_qa"] + ".array_record-00000-of-00001",),
                                 self_kd=True),
                          Source("image_qa", (shards["image_qa"] + ".array_record-00000-of-00001",)))
    base = dict(sources=sources, tokenizer=os.path.join(corpus, tok.SYNTH_TOKENIZER_DIR), batch_size=4, seq_len=256,
                budget=MODEL.budget, layout=MODEL.media_layout, task_names=TASKS, too_long="truncate",
                process_index=0, process_count=1)
    return PipelineConfig(**(base | kw))


def batches(config: PipelineConfig, n: int) -> tuple[list[dict], dict]:
    with Pipeline(config) as pipeline:
        return [next(pipeline) for _ in range(n)], pipeline.metrics


@pytest.fixture(scope="module")
def kd_batches(corpus):
    return batches(kd_config(corpus), 2)[0]


def pairs_of(batch: dict, b: int) -> list[tuple[int, int]]:
    """Row b's (teacher segment, student segment) pairs."""
    seg, kd = batch["segment_ids"][b], batch["kd_part"][b]
    return [(int(s) - 1, int(s)) for s in np.unique(seg[kd == KD_STUDENT])]


def test_pairs_are_whole_with_their_own_segments_and_equal_responses(kd_batches):
    n_pairs = n_ordinary = 0
    for batch in kd_batches:
        assert batch["kd_part"].dtype == np.int32 and set(np.unique(batch["kd_part"])) <= {0, 1, 2}
        check_batch(batch, MODEL, self_kd=True)
        for b in range(batch["input_ids"].shape[0]):
            seg, kd, pos = batch["segment_ids"][b], batch["kd_part"][b], batch["positions"][b]
            ids, targets, learn = batch["input_ids"][b], batch["targets"][b], batch["loss_weights"][b] > 0
            n_ordinary += len(np.unique(seg[(kd == KD_ORDINARY) & (seg > 0)]))
            for t, s in pairs_of(batch, b):
                teacher, student = seg == t, seg == s
                assert (kd[teacher] == KD_TEACHER).all() and (kd[student] == KD_STUDENT).all()
                # The student follows its teacher directly, as a segment of its own whose positions restart at 0.
                assert np.flatnonzero(student)[0] == np.flatnonzero(teacher)[-1] + 1
                np.testing.assert_array_equal(pos[teacher], np.arange(teacher.sum()))
                np.testing.assert_array_equal(pos[student], np.arange(student.sum()))
                # Teacher: image + written question; student: image + spoken question (audio placeholders).
                assert (ids[teacher] == IMAGE_ID).any() and not (ids[teacher] == AUDIO_ID).any()
                assert (ids[student] == IMAGE_ID).any() and (ids[student] == AUDIO_ID).any()
                assert student.sum() != teacher.sum()  # different questions, ...
                response_t, response_s = targets[teacher & learn], targets[student & learn]
                assert len(response_t) > 0
                np.testing.assert_array_equal(response_t, response_s)  # ... the same response, token for token
                n_pairs += 1
    assert n_pairs >= 2 and n_ordinary >= 2, (n_pairs, n_ordinary)


def test_ordinary_stages_batches_do_not_change(corpus):
    config = kd_config(corpus, sources=kd_config(corpus).sources[1:])  # image_qa alone
    assert not config.self_kd
    (batch,), _ = batches(config, 1)
    assert set(batch) == set(batch_spec(4, 256, MODEL.budget)) and "kd_part" not in batch
    check_batch(batch, MODEL)


def test_pairs_that_do_not_fit_a_row_are_dropped_never_cut(corpus):
    # A pair is ~80 tokens, each of its parts ~40: with 64 tokens a row, under 'truncate', no pair is cut.
    got, metrics = batches(kd_config(corpus, seq_len=64), 2)
    for batch in got:
        assert (batch["kd_part"] == KD_ORDINARY).all()
        check_batch(batch, MODEL, self_kd=True)
    assert metrics["dropped_too_long"] >= 1 and metrics["truncated"] == 0, metrics


def test_a_self_kd_source_without_spoken_questions_is_an_error(corpus):
    shards = synth.task_shards(corpus, "train")
    source = Source("image_qa", (shards["image_qa"] + ".array_record-00000-of-00001",), self_kd=True)
    with pytest.raises(ValueError, match="no spoken_question"):
        batches(kd_config(corpus, sources=(source,)), 1)
    with pytest.raises(ValueError, match="set only self_kd"):
        Source("x", ("p",), spoken=True, self_kd=True)


def test_check_batch_refuses_broken_pairs(kd_batches):
    batch = kd_batches[0]
    b = next(b for b in range(4) if pairs_of(batch, b))
    _, s = pairs_of(batch, b)[0]
    broken = {k: v.copy() for k, v in batch.items()}
    t = np.flatnonzero((broken["segment_ids"][b] == s) & (broken["loss_weights"][b] > 0))[0]
    broken["targets"][b, t] += 1
    with pytest.raises(ValueError, match="not the same tokens"):
        check_batch(broken, MODEL, self_kd=True)
    broken = {k: v.copy() for k, v in batch.items()}
    broken["kd_part"][b, np.flatnonzero(broken["segment_ids"][b] == s)] = KD_ORDINARY
    with pytest.raises(ValueError, match="directly followed by its student part"):
        check_batch(broken, MODEL, self_kd=True)
    broken["kd_part"][b, 0] = 3
    with pytest.raises(ValueError, match="kd_part"):
        check_batch(broken, MODEL, self_kd=True)
    with pytest.raises(ValueError, match="missing"):
        check_batch({k: v for k, v in batch.items() if k != "kd_part"}, MODEL, self_kd=True)


# -- the objective --------------------------------------------------------------------------------------


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def oracle(logits, batch, alpha, r, num_tasks):
    """The Self-KD objective in NumPy from full logits ``[B, T, V]``, pairing each row's k-th teacher and
    k-th student response token by hand; student tokens past the row's first r get plain CE."""
    logp = np_log_softmax(logits)
    ce_tok = -np.take_along_axis(logp, batch["targets"][..., None].astype(np.int64), -1)[..., 0]
    w, kd, tasks = batch["loss_weights"], batch["kd_part"], batch["task_ids"]
    loss_sum, tokens, kl_sum, ce_sum, n_kd = 0.0, 0.0, 0.0, 0.0, 0
    task_sum, task_n = np.zeros(num_tasks), np.zeros(num_tasks)

    def add(value, b, t):
        nonlocal loss_sum, tokens
        loss_sum, tokens = loss_sum + value, tokens + 1
        if tasks[b, t] < num_tasks:
            task_sum[tasks[b, t]] += value
            task_n[tasks[b, t]] += 1

    for b in range(w.shape[0]):
        for t in np.flatnonzero((w[b] > 0) & (kd[b] == KD_ORDINARY)):
            add(ce_tok[b, t], b, t)
        teacher = np.flatnonzero((w[b] > 0) & (kd[b] == KD_TEACHER))
        student = np.flatnonzero((w[b] > 0) & (kd[b] == KD_STUDENT))
        assert len(teacher) == len(student)
        for k, (ti, si) in enumerate(zip(teacher, student)):
            if k >= r:
                add(ce_tok[b, si], b, si)
                continue
            pt = np.exp(logp[b, ti])
            kl = float(np.sum(pt * (logp[b, ti] - logp[b, si])))
            add(alpha * kl + (1 - alpha) * ce_tok[b, si], b, si)
            kl_sum, ce_sum, n_kd = kl_sum + kl, ce_sum + ce_tok[b, si], n_kd + 1
    return loss_sum / tokens, task_sum / np.maximum(task_n, 1), kl_sum / max(n_kd, 1), ce_sum / max(n_kd, 1)


@pytest.fixture(scope="module")
def model_and_params():
    """The toy model, its final norm scaled up: logits far from uniform, so KL and CE carry signal."""
    model = OmniModel(MODEL)
    params = init_params(model, jax.random.key(0))
    params["llm"]["norm"]["scale"] = params["llm"]["norm"]["scale"] * 30.0
    return model, params


@pytest.mark.parametrize("alpha, r, vocab_parallel", [(0.3, 64, False), (0.0, 64, False), (0.7, 1, True)])
def test_loss_fn_matches_the_numpy_oracle(kd_batches, model_and_params, alpha, r, vocab_parallel, devices):
    """r = 1: every row's student tokens after its first one fall back to the plain CE."""
    model, params = model_and_params
    batch = kd_batches[0]
    terms = (NextTokenCE(vocab_parallel=vocab_parallel), SelfKD(alpha=alpha, max_response_tokens=r))
    mesh = make_mesh({"fsdp": 2, "tensor": 4}, devices)

    def loss_fn(p, bt):
        return objective.loss_fn(model, p, bt, terms, mesh=mesh, num_tasks=2)

    loss, aux = jax.jit(loss_fn)(params, batch)
    logits = np.asarray(jax.jit(lambda p, bt: model.apply({"params": p}, bt))(params, batch))
    want, task_loss, kl, ce = oracle(logits, batch, alpha, r, 2)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(aux["task_loss"]), task_loss, rtol=2e-5)
    means, counts = aux["means"], aux["counts"]
    np.testing.assert_allclose([float(means["kd/kl"]), float(means["kd/ce_student"])], [kl, ce], rtol=2e-4, atol=1e-7)
    per_row = [int(((batch["loss_weights"][b] > 0) & (batch["kd_part"][b] == KD_STUDENT)).sum()) for b in range(4)]
    assert int(counts["kd/overflow_tokens"]) == sum(max(n - r, 0) for n in per_row)
    assert r > 1 or int(counts["kd/overflow_tokens"]) > 0
    if alpha == 0.0:  # the paper's SFT baseline: the plain CE of everything but the teacher
        not_teacher = batch["loss_weights"] * (batch["kd_part"] != KD_TEACHER)
        sft, _ = masked_cross_entropy(logits, batch["targets"], not_teacher)
        np.testing.assert_allclose(float(loss), float(sft), rtol=2e-5)


def pair_loss(hidden, head, batch, cfg):
    """The objective from the hidden states, with ``hidden @ head`` as the LM head (as ``loss_fn``)."""
    next_token = NextTokenCE()
    weights = cfg.next_token_weights(batch, batch["loss_weights"])
    _, ce = masked_cross_entropy(hidden @ head, batch["targets"], weights)
    pairs = cfg.value(self_kd_sums(lambda h: h @ head, hidden, batch, cfg))
    return objective.combine((next_token, cfg), (TermValue(ce["loss_sum"], ce["tokens"]), pairs))


def test_equal_sides_have_zero_kl_and_the_teacher_gets_no_gradient(kd_batches):
    batch = {k: jnp.asarray(v) for k, v in kd_batches[0].items()}
    r = np.random.default_rng(0)
    hidden = r.normal(size=(*batch["input_ids"].shape, 8)).astype(np.float32)
    head = jnp.asarray(r.normal(size=(8, tok.DEFAULT_VOCAB_SIZE)), jnp.float32)
    learn = np.asarray(batch["loss_weights"]) > 0
    kd = np.asarray(batch["kd_part"])
    teacher, student = learn & (kd == KD_TEACHER), learn & (kd == KD_STUDENT)
    cfg = SelfKD(alpha=0.5, max_response_tokens=64)

    same = hidden.copy()
    for b in range(hidden.shape[0]):
        same[b, np.flatnonzero(student[b])] = hidden[b, np.flatnonzero(teacher[b])]
    loss_of = jax.jit(lambda h: pair_loss(h, head, batch, cfg))
    _, aux = loss_of(jnp.asarray(same))
    assert int(aux["counts"]["kd/tokens"]) == teacher.sum() > 0
    assert abs(float(aux["means"]["kd/kl"])) < 1e-6, float(aux["means"]["kd/kl"])

    # The gradient: zero on every teacher position, and on the student the one of a hand-made oracle
    # whose teacher distributions are constants.
    grad = np.asarray(jax.jit(jax.grad(lambda h: loss_of(h)[0]))(jnp.asarray(hidden)))
    assert not grad[kd == KD_TEACHER].any()
    assert (np.abs(grad[student]).sum(axis=-1) > 0).all()  # every student response position learns
    rows = [(b, np.flatnonzero(teacher[b]), np.flatnonzero(student[b])) for b in range(4)]
    const = [np.asarray(jax.nn.softmax(jnp.asarray(hidden[b, ti]) @ head)) for b, ti, _ in rows]
    ordinary = learn & (kd == KD_ORDINARY)
    n = ordinary.sum() + student.sum()

    def by_hand(h):
        logits = h @ head
        logp = jax.nn.log_softmax(logits)
        tgt = batch["targets"]
        total = -jnp.sum(jnp.where(ordinary, jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0], 0.0))
        for (b, _, si), pt in zip(rows, const):
            lps = logp[b, si]
            kl = jnp.sum(pt * (jnp.log(pt) - lps))
            ce = -jnp.sum(jnp.take_along_axis(lps, tgt[b, si][:, None], -1))
            total += cfg.alpha * kl + (1 - cfg.alpha) * ce
        return total / n

    want = np.asarray(jax.jit(jax.grad(by_hand))(jnp.asarray(hidden)))
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-8)


def test_self_kd_config_errors(corpus):
    with pytest.raises(ValueError, match="alpha"):
        SelfKD(alpha=1.5)
    c = mlc.ConfigDict(dict(name="s", model=dict(name="omni"), objective=dict(next_token={},
                                                                             self_kd=dict(alpha=0.5, max_tokens=3))))
    with pytest.raises(StageConfigError, match=r"c.objective.self_kd has no setting \['max_tokens'\]; its settings "
                                               r"are alpha, max_response_tokens"):
        objective_terms(c, MODEL)
    recipe = recipe_lib.load_recipe("experiments/self_kd/recipe.py:tiny")
    c = recipe_lib._module(recipe.stages[2][1], "stage2").get_config("tiny")
    c.data.sources = [dict(s, paths=os.path.join(corpus, "tasks", "train", s["name"]) + "*") for s in c.data.sources]
    assert grain_pipeline_config(c).self_kd
    c.objective.self_kd = None
    with pytest.raises(StageConfigError, match="c.objective.self_kd is None"):
        grain_pipeline_config(c)
    c.objective.self_kd = dict(alpha=0.5, max_response_tokens=8)
    c.data.sources = [dict(s, self_kd=False) for s in c.data.sources]
    with pytest.raises(StageConfigError, match="no c.data.sources entry has self_kd=True"):
        grain_pipeline_config(c)


# -- the recipe -----------------------------------------------------------------------------------------


def test_tiny_recipe_runs_every_stage(corpus, tmp_path):
    recipe = recipe_lib.load_recipe("experiments/self_kd/recipe.py:tiny")  # prepare keeps the tiny corpus
    rows = recipe_lib.run(recipe, str(tmp_path), steps=2, evaluate=False, log=lambda _: None, roots={"corpus": corpus})
    assert [r["stage"] for r in rows] == ["0_base", "1_audio_align", "2_selfkd_sft"]
    assert all(r["status"] == "trained" for r in rows), rows
    for name, _ in recipe.stages:
        losses = [float(line.split('"loss": ')[1].split(",")[0])
                  for line in open(tmp_path / name / "metrics.jsonl") if '"loss": ' in line]
        assert losses and np.all(np.isfinite(losses)), (name, losses)
    last = open(tmp_path / "2_selfkd_sft" / "metrics.jsonl").read()
    assert '"task_loss/spoken_image_qa"' in last  # the pairs' student tokens are in the loss
    row = json.loads(last.strip().splitlines()[-1])
    assert row["kd/tokens"] > 0 and row["kd/kl"] >= 0 and np.isfinite(row["kd/ce_student"]), row
    assert '"kd/kl"' not in open(tmp_path / "1_audio_align" / "metrics.jsonl").read()  # no Self-KD there
