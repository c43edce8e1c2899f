"""The shipped tiny BEATs (``checkpoints/tiny/beats``, stage 0c of ``experiments/pretrain_tiny``) is the tower stage 0c
trained: a linear probe on its time-pooled outputs (mean and spread over the patches) tells a held-out melody's
direction far better than the same probe on BEATs at its initialisation, and names the instrument (5) and a rhythm's
count of beats (2-6) well above chance; and its outputs still vary from patch to patch and clip to clip, so that a
fresh projector downstream has something to read. Measured on the BEATs of 2026-12-08 (240 clips to fit, 160 held
out): direction 1.00 (fresh 0.68), instrument 0.75 (fresh 0.76), beats 0.45 (fresh 0.40) -- pooling over time loses
the count, which the speech projector, reading the patches in order, keeps; the outputs' variance 73% of their mean
square (fresh 47%). The BEATs shipped before it, trained beside Whisper on a bag of answer words, had 4%: nearly one
vector for every patch, which the LLM never learnt to read (``benchmarks/RESULTS.md`` §9.7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.audio import beats_fbank
from data_pipelines.synth import sounds
from experiments import common
from omnijax.hf.beats import load_beats
from omnijax.models.beats import BEATsConfig, BEATsEncoder

QUESTIONS = {"instrument": lambda c: c["instrument"], "direction": lambda c: c.get("direction"),
             "beats": lambda c: c.get("beats")}


def _clips(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)  # omni-synth's corpus streams are keyed otherwise: these clips are new
    return [sounds.sample_clip(rng, sounds.CLIP_KINDS[i % len(sounds.CLIP_KINDS)]) for i in range(n)]


def _outputs(cfg: BEATsConfig, params, clips: list[dict]) -> np.ndarray:
    """Each clip zero-padded to 4 s -> BEATs -> ``[clips, patches, D]``."""
    samples = int(sounds.MAX_SECONDS * sounds.RATE)
    fbank = np.stack([beats_fbank(np.pad(w, (0, samples - w.size))) for w in map(sounds.render_clip, clips)])
    return np.asarray(jax.jit(BEATsEncoder(cfg).apply)({"params": params}, jnp.asarray(fbank)), np.float64)


def _pooled(out: np.ndarray) -> np.ndarray:
    """Mean and standard deviation over each clip's patches."""
    return np.concatenate([out.mean(1), out.std(1)], axis=-1)


def _spread(out: np.ndarray) -> float:
    """The variance of the output rows over every patch and clip, as a share of their mean square: 0 when BEATs
    says the same vector whatever it hears."""
    rows = out.reshape(-1, out.shape[-1])
    return float(rows.var(0).sum() / (rows ** 2).sum(1).mean())


def _probe(train: np.ndarray, train_y: list, test: np.ndarray, test_y: list) -> float:
    """Ridge regression onto one-hot classes (features standardised on the train clips): held-out accuracy."""
    keep, held = [i for i, y in enumerate(train_y) if y is not None], [i for i, y in enumerate(test_y) if y is not None]
    classes = sorted({train_y[i] for i in keep}, key=str)
    mean, std = train[keep].mean(0), train[keep].std(0) + 1e-6
    a = np.c_[(train[keep] - mean) / std, np.ones(len(keep))]
    b = np.c_[(test[held] - mean) / std, np.ones(len(held))]
    onehot = np.array([[train_y[i] == c for c in classes] for i in keep], np.float64)
    w = np.linalg.solve(a.T @ a + np.eye(a.shape[1]), a.T @ onehot)
    return float(np.mean([classes[j] == test_y[i] for j, i in zip((b @ w).argmax(1), held)]))


@pytest.fixture(scope="module")
def probes():
    loaded = load_beats(common.tiny_dir("beats"))
    cfg = BEATsConfig(**common.BEATS["tiny"])
    assert loaded.cfg == cfg, "the shipped tiny BEATs is not the tiny preset's BEATs"
    fresh = BEATsEncoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 398, 128)))["params"]
    train, test = _clips(1, 240), _clips(2, 160)
    out = {}
    for name, params in (("shipped", loaded.params["beats"]), ("fresh", fresh)):
        fit, held = _outputs(cfg, params, train), _outputs(cfg, params, test)
        x, y = _pooled(fit), _pooled(held)
        out[name] = {q: _probe(x, [f(c) for c in train], y, [f(c) for c in test]) for q, f in QUESTIONS.items()}
        out[name]["spread"] = _spread(fit)
    return out


def test_the_shipped_tiny_beats_hears_omni_synth_sounds(probes):
    shipped, fresh = probes["shipped"], probes["fresh"]
    assert shipped["direction"] >= 0.8 and shipped["direction"] >= fresh["direction"] + 0.1, probes
    assert shipped["instrument"] >= 0.6 and shipped["beats"] >= 0.3, probes  # chance 0.2 and 0.2
    assert shipped["spread"] >= 0.3, probes  # the BEATs shipped before 2026-12-08: 0.04
