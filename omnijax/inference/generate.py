"""Batched autoregressive generation with a static-shape KV cache, one ``jax.jit`` per shape.

Prompts of different lengths are LEFT-padded into one block (as transformers' ``generate`` does), so
every row's next token is at the same cache slot. Padding has segment id 0 (masked as a key), and
RoPE positions are ``cumsum(mask) - 1`` clipped at 0, so a padded row computes exactly what the same
prompt alone would. The whole block is prefilled in one call; then one token per step is decoded in
a ``jax.lax.while_loop`` that ends when every row has emitted a stop token or ``max_new_tokens``
tokens exist. Decoding is greedy at ``temperature == 0``, else temperature + nucleus (top-p)
sampling with ``jax.random``. ``decode_loop`` is that loop alone, after any prefill
(``omnijax.inference.omni`` prefills over the media-spliced embeddings of an omni model).

Shapes: ``b`` = number of prompts, ``P`` = longest prompt, ``N`` = ``max_new_tokens``, cache length
``max_len`` (default ``P + N``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnijax.models.llm import init_cache


class GenerationResult(NamedTuple):
    """``tokens`` int32 ``[b, N]``: generated ids, ``pad_token_id`` after a row's stop token (the stop
    token itself included, as in transformers). ``lengths`` int32 ``[b]``: tokens generated per row."""

    tokens: np.ndarray
    lengths: np.ndarray


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int = 0, width: int | None = None):
    """Left-pad prompts into a block of ``width`` tokens (default: the longest prompt). Returns numpy
    int32 (ids, segment_ids, positions), each ``[b, width]``: segment id 1 on real tokens and 0 on
    padding, positions ``cumsum(mask) - 1`` clipped at 0."""
    longest = max(len(p) for p in prompts)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is shorter than the longest prompt ({longest} tokens)")
    ids = np.full((len(prompts), width), pad_token_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = np.asarray(p, np.int32)
        mask[i, width - len(p):] = 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return ids, mask, positions


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Nucleus filter: keep the smallest set of highest-probability tokens whose mass reaches
    ``top_p`` (always at least the top token); the rest become ``-inf``. ``top_p >= 1`` keeps all
    (a float cumsum can reach 1 before the last token). ``[b, vocab] -> [b, vocab]``."""
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1), 1)
    threshold = jnp.take_along_axis(sorted_logits, (n_keep - 1)[:, None], axis=-1)
    return jnp.where((logits >= threshold) | (top_p >= 1.0), logits, -jnp.inf)


def _next_token(logits, rng, temperature, top_p, sample: bool):
    """``logits [b, vocab]`` (float32) -> int32 ``[b]``."""
    if not sample:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = top_p_filter(logits / temperature, top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def stop_id_block(stop_token_ids: Sequence[int]) -> np.ndarray:
    """Stop ids as int32 ``[s]``, padded with -1 (never emitted) to a multiple of 8, so that changing
    the stop list rarely recompiles."""
    stop_ids = np.full(-(-len(stop_token_ids) // 8) * 8, -1, np.int32)
    stop_ids[:len(stop_token_ids)] = list(stop_token_ids)
    return stop_ids


def decode_loop(step, logits, cache, next_pos, cache_index, stop_ids, pad_token_id, temperature, top_p, rng, *,
                max_new_tokens: int, sample: bool):
    """The token loop after a prefill, traced inside a jit: the first token from the prefill's last
    logits, then one ``step`` per token in a ``jax.lax.while_loop`` until every row has emitted a stop
    token or ``max_new_tokens`` tokens exist.

    ``step(ids [b, 1], positions [b, 1], cache, cache_index) -> (logits [b, 1, vocab], cache)`` runs one
    token per row through the model at cache slot ``cache_index``. ``logits`` f32 ``[b, vocab]``: the
    prefill's last position; ``next_pos`` int32 ``[b]``: RoPE position of the first generated token;
    ``cache_index``: the cache slot after the prefill. Returns (tokens int32 ``[b, N]``, lengths int32 ``[b]``).
    """
    b = logits.shape[0]

    def is_stop(tok):
        return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)

    rng, step_rng = jax.random.split(rng)
    tok = _next_token(logits, step_rng, temperature, top_p, sample)
    tokens = jnp.full((b, max_new_tokens), pad_token_id, jnp.int32).at[:, 0].set(tok)
    done = is_stop(tok)
    lengths = jnp.ones((b,), jnp.int32)

    def cond(state):
        i, done = state[0], state[3]
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        # `last` is the raw previous choice (always a valid id), fed even to finished rows so that
        # an out-of-vocabulary pad_token_id never reaches the embedding.
        i, cache, tokens, done, lengths, last, rng = state
        logits, cache = step(last[:, None], (next_pos + i - 1)[:, None], cache, cache_index + i - 1)
        rng, step_rng = jax.random.split(rng)
        tok = _next_token(logits[:, -1], step_rng, temperature, top_p, sample)
        out = jnp.where(done, pad_token_id, tok)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, out[:, None], i, axis=1)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | is_stop(tok)
        return i + 1, cache, tokens, done, lengths, tok, rng

    state = (jnp.int32(1), cache, tokens, done, lengths, tok, rng)
    _, _, tokens, _, lengths, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens, lengths


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "max_len", "sample"))
def _generate(model: nn.Module, params, ids, segment_ids, positions, stop_ids, pad_token_id,
              temperature, top_p, rng, *, max_new_tokens: int, max_len: int, sample: bool):
    """Jitted core. ids/segment_ids/positions int32 ``[b, P]``, stop_ids int32 ``[s]``.
    Returns (tokens int32 ``[b, N]``, lengths int32 ``[b]``)."""
    b, width = ids.shape
    cache = init_cache(model.cfg, b, max_len)
    logits, cache = model.apply({"params": params}, ids, positions, segment_ids, cache=cache, cache_index=0)

    def step(last, pos, cache, index):
        return model.apply({"params": params}, last, pos, jnp.ones_like(last), cache=cache, cache_index=index)

    return decode_loop(step, logits[:, -1], cache, positions[:, -1] + 1, width, stop_ids, pad_token_id, temperature,
                       top_p, rng, max_new_tokens=max_new_tokens, sample=sample)


def _checked_max_len(cfg, prompts, max_new_tokens, temperature, top_p, rng, max_len) -> int:
    """``generate``'s arguments checked (``ValueError`` naming the one that is wrong and the fix); returns the
    KV-cache length (``max_len``, default the longest prompt + ``max_new_tokens``)."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty: pass at least one prompt (a list of token ids)")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature > 0 and rng is None:
        raise ValueError("temperature > 0 samples tokens: pass rng=jax.random.key(seed)")
    longest = max(len(p) for p in prompts)
    total = longest + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(
            f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
            f"max_position_embeddings ({cfg.max_position_embeddings}): shorten the prompt or max_new_tokens")
    if max_len is None:
        return total
    if total > max_len:
        raise ValueError(
            f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
            f"max_len ({max_len}): raise max_len or lower max_new_tokens")
    return max_len


def generate(
    model: nn.Module,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
    max_len: int | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens after each prompt.

    Args:
      model: a Flax module with ``cfg`` (an ``LLMConfig``) whose ``__call__(ids, positions,
        segment_ids, cache, cache_index)`` returns ``(logits [b, t, vocab], cache)``, e.g.
        ``omnijax.models.llm.CausalLM``. ``params`` is its param tree (without the ``'params'`` key).
      prompts: ``b`` non-empty lists of token ids, any lengths; left-padded into ``[b, P]``.
      stop_token_ids: a row stops after emitting one of these (kept in the output).
      pad_token_id: fills the prompt padding and the output after a row stops.
      temperature: 0 for greedy decoding; > 0 scales the logits before nucleus sampling.
      top_p: nucleus mass kept when sampling (1.0 = plain sampling).
      rng: ``jax.random`` key, required when ``temperature > 0``.
      max_len: KV-cache length (default ``P + max_new_tokens``); a fixed value lets calls with
        different prompt widths share the cache shape.

    Returns:
      ``GenerationResult(tokens int32 [b, max_new_tokens], lengths int32 [b])``.
    """
    max_len = _checked_max_len(model.cfg, prompts, max_new_tokens, temperature, top_p, rng, max_len)
    sample = temperature > 0
    cfg = model.cfg
    # Prompt padding is masked out; it only has to be a valid embedding row.
    ids, segment_ids, positions = left_pad(prompts, pad_token_id if 0 <= pad_token_id < cfg.vocab_size else 0)
    rng = jax.random.key(0) if rng is None else rng
    tokens, lengths = _generate(
        model, params, ids, segment_ids, positions, stop_id_block(stop_token_ids), jnp.int32(pad_token_id),
        jnp.float32(temperature if sample else 1.0), jnp.float32(top_p), rng,
        max_new_tokens=int(max_new_tokens), max_len=int(max_len), sample=sample)
    return GenerationResult(np.asarray(tokens, np.int32), np.asarray(lengths, np.int32))
