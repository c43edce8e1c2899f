"""A tiny omni-shaped model for the trainer tests: every parameter group of the real one
(``llm``, ``vision``, ``vision_connector``, ``audio``, ``audio_connector``, ``mm_embed``), the batch
contract of ``omnijax.batch``, the masked CE of ``omnijax.training.losses``, logical axes on every
weight, and small enough to compile in seconds.

    images [B, I, S, S, 3] -> patches -> vision (Dense + LayerNorm) -> vision_connector (MLP) -> + newline
    audio [B, A, mels, frames] -> frames stacked by 4 -> audio (Dense) -> audio_connector (Linear)
    -> scattered into the token embeddings at the placeholder ids -> Qwen2 (``LLM``) -> CE
"""

from __future__ import annotations

import contextlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import pytest

from omnijax.batch import MediaBudget, batch_spec
from omnijax.models.connectors import LinearProjector, MLPProjector, MMEmbed
from omnijax.models.layers import DenseGeneral
from omnijax.models.llm import LLM, LLMConfig
from omnijax.training import losses
from omnijax.training.config import base_config
from omnijax.training.task import Task, from_module

IMAGE_ID, AUDIO_ID = 3, 4
PATCH, STACK = 4, 4
# One schedule for every toy stage (its length fixed, not the stage's), so stages that train the
# same groups compile to the same step and share the persistent compilation cache.
SCHED = dict(lr=1e-2, warmup_steps=2, decay="cosine", steps=20)


def merge_embeddings(text_embeds, media_embeds, is_placeholder):
    """Row i's placeholders ``is_placeholder [b, t]`` take ``media_embeds [b, m, d]`` in order -> ``[b, t, d]``."""

    def one(text, media, mask):
        idx = jnp.clip(jnp.cumsum(mask) - 1, 0, media.shape[0] - 1)
        return jnp.where(mask[:, None], media[idx].astype(text.dtype), text)

    return jax.vmap(one)(text_embeds, media_embeds, is_placeholder)


class ToyVision(nn.Module):
    """Patch embedding + LayerNorm: ``[n, patches, p*p*3] -> [n, patches, dim]``."""

    dim: int

    @nn.compact
    def __call__(self, x):
        x = DenseGeneral((self.dim,), (None, "vision_embed"), name="patch_embed")(x)
        axes = ("vision_embed",)
        return nn.LayerNorm(scale_init=nn.with_logical_partitioning(nn.initializers.ones, axes),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes), name="norm")(x)


class ToyOmni(nn.Module):
    llm_cfg: LLMConfig
    vision_dim: int = 16
    audio_dim: int = 16

    def setup(self):
        d = self.llm_cfg.hidden_size
        self.llm = LLM(self.llm_cfg)
        self.vision = ToyVision(self.vision_dim)
        self.vision_connector = MLPProjector(d, in_axis="vision_embed")
        self.audio = DenseGeneral((self.audio_dim,), (None, "audio_embed"))
        self.audio_connector = LinearProjector(d)
        self.mm_embed = MMEmbed(d, names=("newline",))

    def image_tokens(self, images):
        """[B, I, S, S, 3] -> [B, I * (patches + 1), d]: each image's patches, then the newline."""
        b, i, s, _, c = images.shape
        g = s // PATCH
        x = images.reshape(b * i, g, PATCH, g, PATCH, c).transpose(0, 1, 3, 2, 4, 5).reshape(b * i, g * g, -1)
        x = self.vision_connector(nn.gelu(self.vision(x)))
        newline = jnp.broadcast_to(self.mm_embed()["newline"], (b * i, 1, x.shape[-1]))
        return jnp.concatenate([x, newline], axis=1).reshape(b, -1, x.shape[-1])

    def audio_tokens(self, audio):
        """[B, A, mels, frames] -> [B, A * frames / STACK, d]."""
        b, a, m, f = audio.shape
        x = audio.transpose(0, 1, 3, 2).reshape(b * a, f // STACK, STACK * m)
        return self.audio_connector(nn.gelu(self.audio(x))).reshape(b, -1, self.llm_cfg.hidden_size)

    def __call__(self, batch):
        ids = batch["input_ids"]
        x = self.llm.embed(ids)
        x = merge_embeddings(x, self.image_tokens(batch["images"]), ids == IMAGE_ID)
        x = merge_embeddings(x, self.audio_tokens(batch["audio"]), ids == AUDIO_ID)
        hidden, _ = self.llm.decode(x, batch["positions"], batch["segment_ids"])
        return self.llm.logits(hidden)


def build_toy_task(c, mesh=None) -> Task:
    """Task builder (``c.model.name = 'training_fixtures:build_toy_task'``)."""
    del mesh
    m = c.model
    llm_cfg = LLMConfig(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=2 * m.hidden, num_layers=2,
                        num_heads=4, num_kv_heads=2, param_dtype=m.get("param_dtype", "float32"))
    model = ToyOmni(llm_cfg)
    budget = MediaBudget(image_slots=c.media.image_slots, image_size=m.image_size, audio_slots=c.media.audio_slots,
                         n_mels=m.n_mels, audio_frames=m.audio_frames)
    spec = batch_spec(c.batch_size, c.seq_len, budget)

    def loss(params, batch, rng):
        del rng
        logits = model.apply({"params": params}, batch)
        return losses.masked_cross_entropy(logits, batch["targets"], batch["loss_weights"], batch["task_ids"],
                                           c.num_tasks)

    image_tokens = (m.image_size // PATCH) ** 2 + 1
    return from_module(model, [spec], loss, batch_spec=spec, vocab_size=m.vocab, num_tasks=c.num_tasks,
                       media_tokens={"image": ("images", IMAGE_ID, image_tokens),
                                     "audio": ("audio", AUDIO_ID, m.audio_frames // STACK)},
                       reserved_ids=(0, 1, 2))


def toy_config(**overrides) -> mlc.ConfigDict:
    """A 'connectors only' stage of the toy model on the 8 CPU devices (fsdp 2 x tensor 4)."""
    c = base_config()
    c.name = "toy_connectors"
    c.model = mlc.ConfigDict(dict(name="training_fixtures:build_toy_task", vocab=64, hidden=32, image_size=8, n_mels=4,
                                  audio_frames=16))
    c.trainable = [("(vision|audio)_connector/.*", SCHED), (".*", None)]
    c.optimizer.weight_decay = 0.1
    c.mesh = mlc.ConfigDict({"data": 1, "fsdp": 2, "tensor": 4})
    c.batch_size, c.seq_len = 4, 48
    c.media.update(image_slots=2, audio_slots=1)
    c.num_tasks, c.task_names = 2, ("caption", "asr")
    c.num_steps = 10
    c.checkpoint.every = 5
    c.checkpoint.async_save = False
    for k, v in overrides.items():
        target = c
        *parents, leaf = k.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


def cache_dir(tmp_path_factory) -> str:
    """One compilation cache per test session, shared by the trainer test modules, by the pytest-xdist
    workers (their base temp dirs are siblings) and by the subprocesses the tests start."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_compilation_cache"
    path.mkdir(exist_ok=True)
    return str(path)


# A size limit turns on the cache's file lock: workers and subprocesses then never read a half-written entry.
CACHE_MAX_BYTES = 2**30


@contextlib.contextmanager
def compilation_cache(directory: str):
    """JAX's persistent compilation cache in ``directory`` for the block: a program compiled once
    (the same stage run twice, a restart) is loaded, not compiled again. XLA on CPU takes seconds
    per program here; the cache is what keeps the trainer tests short."""
    from jax._src import compilation_cache as cc

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")
    old = {n: getattr(jax.config, n) for n in names}
    for n, v in zip(names, (directory, 0, 0, CACHE_MAX_BYTES)):
        jax.config.update(n, v)
    cc.reset_cache()  # the cache may have been checked (and found off) before this block
    try:
        yield
    finally:
        for n, v in old.items():
            jax.config.update(n, v)
        cc.reset_cache()


@pytest.fixture(scope="module")
def compile_once(tmp_path_factory):
    """The module's programs in the session's compilation cache (``pytestmark = pytest.mark.usefixtures``)."""
    with compilation_cache(cache_dir(tmp_path_factory)):
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny omni-synth corpus as recipes read it: tokenizer and one shard per task and split."""
    from data_pipelines import synth

    out = str(tmp_path_factory.mktemp("omni_synth"))
    synth.prepare(out, size="tiny", progress=False)
    return out


def get_config(arg: str = "connectors") -> mlc.ConfigDict:
    """For ``python -m omnijax.train --config tests/training_fixtures.py:ARG`` (``tests`` on
    PYTHONPATH): ``connectors`` (the toy stage) or ``llm`` (LLM + connectors + mm_embed trained)."""
    if arg == "llm":
        return toy_config(name="toy_llm", trainable=[("(vision|audio)/.*", None), (".*", SCHED)])
    return toy_config()
