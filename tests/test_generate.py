"""KV-cache generation against transformers' ``Qwen2ForCausalLM.generate`` (PyTorch, CPU, float32).

Tiny random models are initialised with ``initializer_range=0.2`` so logits are far from uniform
and greedy argmax has clear margins (each test asserts the margin it relies on).
"""

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import QWEN2_CONFIGS, make_qwen2
from transformers.generation.logits_process import TopPLogitsWarper

from omnijax.checkpoint import load_model
from omnijax.inference import generate, left_pad, top_p_filter
from omnijax.models.llm import init_cache

NEW = 32
PROMPTS = [[5, 17, 33, 2, 90, 64, 11], [7, 3], [100, 41, 41, 9, 120], [77]]  # left-padded to 7



@functools.lru_cache(maxsize=None)  # one model per config for the whole file
def build(name):
    path = tempfile.mkdtemp(prefix=f"gen-{name}-")
    hf = make_qwen2(path, name, attn_implementation="eager")
    loaded = load_model(path, progress=False)
    return hf, loaded.module, loaded.params


@pytest.fixture(scope="module", params=sorted(QWEN2_CONFIGS))
def tiny(request):
    return build(request.param)


@pytest.fixture(scope="module")
def mha():
    return build("mha_untied_1e4")


def hf_greedy(hf, prompts, new):
    """transformers greedy generation on the same left-padded block; returns (tokens, min top-2 margin)."""
    ids, mask, _ = left_pad(prompts)
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                          do_sample=False, max_new_tokens=new, min_new_tokens=new, eos_token_id=None,
                          pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(out.scores, 1).topk(2, dim=-1).values
    return out.sequences[:, ids.shape[1]:].numpy(), float((top2[..., 0] - top2[..., 1]).min())


def test_greedy_matches_transformers(tiny):
    hf, model, params = tiny
    want, margin = hf_greedy(hf, PROMPTS, NEW)
    # omnijax and transformers logits differ by <= 2e-5 on these models (measured over prompt +
    # generated tokens), so a 1e-4 margin makes every argmax unambiguous.
    assert margin > 1e-4, f"argmax margin {margin} too small for an exact comparison"
    got = generate(model, params, PROMPTS, max_new_tokens=NEW)
    assert got.tokens.shape == (len(PROMPTS), NEW) and got.tokens.dtype == np.int32
    np.testing.assert_array_equal(got.tokens, want)
    np.testing.assert_array_equal(got.lengths, [NEW] * len(PROMPTS))


def test_single_prompt_and_larger_cache(mha):
    """No padding at all, and a cache longer than needed (its empty slots are masked)."""
    hf, model, params = mha
    want, _ = hf_greedy(hf, PROMPTS[:1], 12)
    np.testing.assert_array_equal(generate(model, params, PROMPTS[:1], max_new_tokens=12, max_len=40).tokens, want)


def test_stop_tokens_stop_their_row_only(mha):
    _, model, params = mha
    full = generate(model, params, PROMPTS, max_new_tokens=NEW).tokens
    # A token row 0 emits early that some other row never emits, plus one no row emits.
    stop = next(int(t) for t in full[0, 2:] if not all(t in r for r in full[1:]))
    absent = next(t for t in range(128) if t not in full)
    pad = -1  # outside the vocabulary: must only ever appear in the output
    got = generate(model, params, PROMPTS, max_new_tokens=NEW, stop_token_ids=[absent, stop], pad_token_id=pad)
    stopped = 0
    for row, out, n in zip(full, got.tokens, got.lengths):
        hits = np.flatnonzero(row == stop)
        keep = hits[0] + 1 if hits.size else NEW
        stopped += hits.size > 0
        assert n == keep
        np.testing.assert_array_equal(out[:keep], row[:keep])  # the stop token itself is kept
        assert (out[keep:] == pad).all()
    assert 0 < stopped < len(PROMPTS), "the test needs some rows that stop and some that do not"
    # Every row stops at its first token: the loop ends at once, the rest is padding.
    first = generate(model, params, PROMPTS, max_new_tokens=NEW, stop_token_ids=sorted(set(full[:, 0])))
    np.testing.assert_array_equal(first.tokens[:, 0], full[:, 0])
    assert (first.tokens[:, 1:] == 0).all() and (first.lengths == 1).all()


def test_sampling_is_reproducible_and_top_p_tiny_is_greedy(mha):
    _, model, params = mha
    greedy = generate(model, params, PROMPTS, max_new_tokens=NEW).tokens
    kw = dict(max_new_tokens=NEW, temperature=1.0)
    a = generate(model, params, PROMPTS, rng=jax.random.key(1), **kw).tokens
    b = generate(model, params, PROMPTS, rng=jax.random.key(1), **kw).tokens
    c = generate(model, params, PROMPTS, rng=jax.random.key(2), **kw).tokens
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != greedy).any()
    nucleus = generate(model, params, PROMPTS, rng=jax.random.key(3), top_p=1e-6, **kw).tokens
    np.testing.assert_array_equal(nucleus, greedy)


def test_top_p_filter_matches_transformers():
    logits = np.random.RandomState(0).normal(size=(16, 128)).astype(np.float32) * 3
    for top_p in (0.05, 0.3, 0.7, 0.95, 1.0):
        want = TopPLogitsWarper(top_p)(None, torch.tensor(logits)).numpy()
        got = np.asarray(top_p_filter(jnp.asarray(logits), jnp.float32(top_p)))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"top_p={top_p}")
        np.testing.assert_array_equal(got[~np.isinf(got)], logits[~np.isinf(got)])


def test_kv_cache_decode_equals_full_forward(mha):
    """Prefill 7 left-padded prompt slots, then decode 12 tokens one at a time: each step's logits
    equal the full forward over the whole left-padded sequence."""
    _, model, params = mha
    seqs = [p + list(range(20, 32)) for p in PROMPTS]  # 12 continuation tokens per row
    ids, seg, pos = left_pad(seqs)
    width = len(PROMPTS[0])
    apply = jax.jit(model.apply)
    full, _ = apply({"params": params}, ids, pos, seg)
    cache = init_cache(model.cfg, len(seqs), ids.shape[1] + 4)  # spare empty slots must be ignored
    steps = [(0, width)] + [(i, i + 1) for i in range(width, ids.shape[1])]
    for lo, hi in steps:
        logits, cache = apply({"params": params}, ids[:, lo:hi], pos[:, lo:hi], seg[:, lo:hi], cache=cache, cache_index=lo)
        real = seg[:, lo:hi].astype(bool)
        np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full[:, lo:hi])[real], atol=1e-5, rtol=0)


def test_clear_errors(mha):
    _, model, params = mha
    with pytest.raises(ValueError, match="prompts is empty"):
        generate(model, params, [], max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, params, [[1, 2], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens must be positive"):
        generate(model, params, [[1]], max_new_tokens=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, params, [[1] * 240], max_new_tokens=25)
    with pytest.raises(ValueError, match="max_len"):
        generate(model, params, [[1] * 10], max_new_tokens=8, max_len=16)
    with pytest.raises(ValueError, match="rng"):
        generate(model, params, [[1]], max_new_tokens=4, temperature=0.7)


def test_generate_command_line_prints_transformers_tokens(tmp_path):
    """`python -m omnijax.tools.generate` on a HF directory: last line = transformers' greedy ids."""
    import os
    import subprocess
    import sys

    path = str(tmp_path / "hf")
    hf = make_qwen2(path, "gqa4_tied_1e6")
    prompt = [5, 17, 33, 2, 90]
    want, _ = hf_greedy(hf, [prompt], 16)
    r = subprocess.run([sys.executable, "-m", "omnijax.tools.generate", "--model", path, "--input-ids",
                        ",".join(map(str, prompt)), "--max-new-tokens", "16", "--stop-ids", ""],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == " ".join(map(str, want[0]))
