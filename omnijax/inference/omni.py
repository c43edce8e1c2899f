"""An omni model's answers to ``schema.Example``s: prompts prepared exactly as the training pipeline
prepares examples, batched KV-cache generation with media, and sentence-wise streaming.

    gen = OmniGenerator(cfg, params, tokenizer_dir, max_prompt_len=512, video_frames=8)
    gen.answer(examples, max_new_tokens=32)                    # -> list[str], greedy
    for sentence in gen.stream(example, 64, on_sentence=espeak_callback("out")):
        print(sentence, end="", flush=True)

Prompt. ``data_pipelines.pipeline.Prepare.prompt``: the example's turns before its first assistant
turn as ChatML (with the pipeline's system turn when it has none), then ``<|im_start|>assistant\\n``;
each placeholder expanded to its media item's tokens, the media decoded and featurised by
``features.MediaFeatures`` for the model's budget and layout. ``spoken=True`` answers the spoken
form (``Example.spoken_view``: the question as audio, Ola's Self-KD student input). The options that
shape a prompt (``PROMPT_OPTIONS``: system prompt, video frames, image tiling, audio windows) are
``PipelineConfig``'s: pass the training stage's (``c.data.pipeline``).

Batch. One example per row, left-padded (``generate.left_pad``: segment id 0 on padding, RoPE
positions from 0 at each prompt's first token, as in training), the row's media in the slots of the
model's budget (``cfg.budget``: ``image_slots``, ``video_slots``, ``audio_slots`` per row; a stage
trains with the slots of its own modalities only, so ``generation_config`` gives a modality the model
has a tower for but no slots ``GENERATION_SLOTS`` of them, ``video_frames`` for videos). The slots grow
to the input: a batch whose media need more (a 3-minute clip is 45 windows of 4 s) gets the next power
of two of them (``grown_slots``); what bounds an item is the model's limit (``max_audio_windows`` windows
per audio item, ``video_frames``, ``max_image_tiles``) and the prompt length. Rounded shapes, so that one
compilation serves many questions: ``batch_size`` rows (a short last batch is filled with copies of its
first row), the prompt width rounded up to ``bucket`` times a power of two (at most ``max_prompt_len``),
the slot fields of the modalities some row of the batch has (an image-only batch runs no audio tower).

Decoding. ``OmniModel.prefill`` runs the spliced embeddings into the KV cache; then greedy tokens by
``generate.decode_loop`` until ``<|im_end|>`` or ``<|endoftext|>``. ``stream`` decodes one token per
call (``OmniModel.decode_step``) and yields the answer sentence by sentence as it is written
(``sentences.sentences``). Shapes: ``b`` rows, prompt width ``P``, ``N = max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import functools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import schema
from data_pipelines.features import Feature, limit_blas_threads
from data_pipelines.pipeline import PipelineConfig, Prepare, Source
from data_pipelines.tokenizer import ENDOFTEXT, IM_END, load_tokenizer
from omnijax.batch import MediaItem, media_slots
from omnijax.inference.generate import GenerationResult, decode_loop, left_pad, stop_id_block
from omnijax.inference.sentences import sentences
from omnijax.media_tokens import MODALITIES
from omnijax.models.llm import init_cache
from omnijax.models.omni import NATIVE_PROCESSOR, OmniConfig, OmniModel

PROMPT_OPTIONS = ("system_prompt", "video_frames", "image_tiling", "max_image_tiles")


def stage_prompt_options(path: str) -> tuple[dict, int | None]:
    """The prompt options (``PROMPT_OPTIONS``) and the sequence length the stage in workdir ``path`` trained
    with (its ``stage.json``), so that prompts are prepared as its batches were; ``({}, None)`` elsewhere."""
    try:
        with open(os.path.join(path, "stage.json")) as f:
            config = json.load(f)["config"]
    except (OSError, KeyError, ValueError):
        return {}, None
    pipeline = (config.get("data") or {}).get("pipeline") or {}
    return {k: v for k, v in pipeline.items() if k in PROMPT_OPTIONS}, config.get("seq_len")


GENERATION_SLOTS = {"image": 4, "audio": 8}  # one image's views, 32 s of speech in 4 s windows (tiny)


def generation_config(cfg: OmniConfig, video_frames: int | None = None) -> OmniConfig:
    """``cfg`` with slots for every modality it has a tower and a placeholder token for: a modality without
    slots (the training stage had none of its media) gets ``GENERATION_SLOTS`` of them, or ``video_frames``
    (default: the pipeline's) for videos, and with a native-resolution tower the patch slots the other vision
    modality has. Slots are shapes only: the params are the same."""
    frames = video_frames or next(f.default for f in dataclasses.fields(PipelineConfig) if f.name == "video_frames")
    wanted = {"image": GENERATION_SLOTS["image"], "video": frames, "audio": GENERATION_SLOTS["audio"]}
    extra = {}
    for kind, slots in wanted.items():
        tower = cfg.audio if kind == "audio" else cfg.vision
        if tower is not None and getattr(cfg, f"{kind}_token_id") is not None and not cfg.budget.slots(kind):
            extra[f"{kind}_slots"] = slots
            if cfg.native and kind != "audio":  # patch slots as the other modality's; a batch grows them to its input
                extra[f"{kind}_patches"] = max(cfg.image_patches, cfg.video_patches)
    return cfg.replace(**extra) if extra else cfg


def grown_slots(needed: int, slots: int) -> int:
    """The slots of a batch whose rows need at most ``needed`` of a modality whose budget is ``slots``: the
    budget, or the next power of two above it when the input needs more (so that few shapes compile)."""
    return slots if needed <= slots else 1 << (needed - 1).bit_length()


def media_unsupported(cfg: OmniConfig, kind: str) -> str | None:
    """Why a model cannot take media of ``kind`` ('image', 'video', 'audio') in a prompt, or None if it can."""
    tower = "audio" if kind == "audio" else "vision"
    if getattr(cfg, tower) is None:
        return f"the model has no {tower} tower"
    if getattr(cfg, f"{kind}_token_id") is None:
        return f"the model has no {kind} placeholder token ({kind}_token_id=None)"
    if not cfg.budget.slots(kind):
        return (f"the model's config gives no {kind} slots per row ({kind}_slots=0); set them, e.g. "
                f"cfg.replace({kind}_slots=N)")
    return None


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def _prefill(model: OmniModel, params, batch, *, max_len: int):
    """Prompts ``[b, P]`` (with media) into a fresh cache of ``max_len`` slots -> (logits ``[b, vocab]``, cache)."""
    cache = init_cache(model.cfg.llm, batch["input_ids"].shape[0], max_len)
    return model.apply({"params": params}, batch, cache, 0, method="prefill")


@functools.partial(jax.jit, static_argnames=("model",))
def _step(model: OmniModel, params, ids, positions, cache, cache_index):
    """One token per row: ids / positions ``[b, 1]`` at cache slot ``cache_index`` -> (logits
    ``[b, 1, vocab]``, cache)."""
    return model.apply({"params": params}, ids, positions, jnp.ones_like(ids), cache, cache_index,
                       method="decode_step")


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "max_len"))
def _generate(model: OmniModel, params, batch, stop_ids, pad_token_id, *, max_new_tokens: int, max_len: int):
    """Greedy generation after a prefill -> (tokens int32 ``[b, N]``, lengths int32 ``[b]``)."""
    logits, cache = _prefill(model, params, batch, max_len=max_len)

    def step(ids, positions, cache, index):
        return _step(model, params, ids, positions, cache, index)

    return decode_loop(step, logits, cache, batch["positions"][:, -1] + 1, batch["input_ids"].shape[1], stop_ids,
                       pad_token_id, jnp.float32(1.0), jnp.float32(1.0), jax.random.key(0),
                       max_new_tokens=max_new_tokens, sample=False)


class OmniGenerator:
    """Greedy answers of an omni model to ``schema.Example``s (module docstring).

    Args:
      cfg, params: the model (``OmniConfig``, its param tree without the ``'params'`` key).
      tokenizer_dir: the HF tokenizer directory the model was trained with.
      max_prompt_len: most tokens in a prompt, placeholders expanded (the pipeline's ``seq_len``).
      batch_size: rows per generation call (``answer`` splits longer lists).
      bucket: prompt widths are rounded up to ``bucket`` times a power of two; ``bucket=max_prompt_len``
        compiles once.
      **prompt_options: ``PROMPT_OPTIONS`` fields of ``PipelineConfig`` (``system_prompt``,
        ``video_frames``, ...), as in training; the defaults are the pipeline's.
    """

    def __init__(self, cfg: OmniConfig, params, tokenizer_dir: str, *, max_prompt_len: int, batch_size: int = 8,
                 bucket: int = 64, **prompt_options):
        unknown = sorted(set(prompt_options) - set(PROMPT_OPTIONS))
        if unknown:
            raise ValueError(f"unknown prompt options {unknown}: a prompt takes these PipelineConfig fields: "
                             f"{', '.join(PROMPT_OPTIONS)}")
        if max_prompt_len < 2 or batch_size < 1 or bucket < 1:
            raise ValueError(f"max_prompt_len >= 2, batch_size >= 1 and bucket >= 1 are required, got "
                             f"{max_prompt_len}, {batch_size}, {bucket}")
        limit_blas_threads()  # the prompts' media are featurised here, next to the model's computation
        self.cfg, self.params, self.model = cfg, params, OmniModel(cfg)
        self.max_prompt_len, self.batch_size, self.bucket = max_prompt_len, batch_size, bucket
        self.tokenizer = load_tokenizer(tokenizer_dir)
        if len(self.tokenizer) > cfg.vocab_size:
            raise ValueError(f"the tokenizer {tokenizer_dir} has {len(self.tokenizer)} tokens, more than the model's "
                             f"vocabulary ({cfg.vocab_size}): it is not the model's tokenizer")
        # Slots grow to the input (``batch``): a prompt's media are bounded by the items' limits and its length.
        # Native-resolution views take at most 4 patches per token (2x2 pooling), so 4 * max_prompt_len bound them.
        budget = dataclasses.replace(cfg.budget, **{f"{m}_slots": max(cfg.budget.slots(m), max_prompt_len)
                                                    for m in MODALITIES if cfg.budget.slots(m)},
                                     **{f"{m}_patches": max(cfg.budget.patches(m), 4 * max_prompt_len)
                                        for m in MODALITIES if cfg.budget.patches(m)})
        config = PipelineConfig(sources=(Source("prompts", ("<examples>",)),), tokenizer=tokenizer_dir, batch_size=1,
                                seq_len=max_prompt_len, budget=budget, layout=cfg.media_layout,
                                **{k: getattr(cfg, k) for k in NATIVE_PROCESSOR}, **prompt_options)
        self._prepare = Prepare(config, config.sources[0], None, self.tokenizer)
        special = self.tokenizer.added_tokens_encoder
        self.stop_token_ids = tuple(sorted({special[t] for t in (IM_END, ENDOFTEXT) if t in special}))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = special[IM_END] if pad is None else pad

    def prepare(self, example: schema.Example, *, spoken: bool = False,
                names: Sequence[str] | None = None) -> tuple[np.ndarray, list[Feature]]:
        """The example's prompt as training prepares it -> (input_ids int32 ``[n]``, media features in
        placeholder order). ``spoken``: of its spoken form (it needs a ``spoken_question``). Raises
        ``ValueError`` naming the example (or the item, by ``names``, one per ``example.media``): media the
        model does not take, a media item that does not decode or is longer than the model takes (audio
        in seconds), a prompt over ``max_prompt_len`` tokens."""
        if spoken:
            example = example.spoken_view()
        for kind in sorted({m.kind for m in example.media}):
            reason = media_unsupported(self.cfg, kind)
            if reason:
                article = "an" if kind[0] in "aeiou" else "a"
                raise ValueError(f"example {example.id!r} has {article} {kind}, but {reason}")
        try:
            return self._prepare.prompt(example, names)
        except ValueError as e:
            if "seq_len" not in str(e):  # a media item: its own message names it and its limit
                raise
            raise ValueError(f"{e} [the prompt's seq_len is max_prompt_len={self.max_prompt_len} tokens, of the "
                             f"model's {self.cfg.llm.max_position_embeddings} positions]") from None

    def batch(self, prompts: Sequence[tuple[np.ndarray, list[Feature]]], rows: int) -> dict[str, np.ndarray]:
        """Prepared prompts as one left-padded batch of ``rows`` rows (the batch contract's ``input_ids``,
        ``segment_ids``, ``positions`` and the slot fields of the modalities present); rows past the
        prompts repeat the first."""
        prompts = list(prompts) + [prompts[0]] * (rows - len(prompts))
        longest = max(len(ids) for ids, _ in prompts)
        width = min(self.bucket << (-(-longest // self.bucket) - 1).bit_length(), self.max_prompt_len)
        ids, segment_ids, positions = left_pad([p for p, _ in prompts], self.pad_token_id, width)
        needed = {m: max(sum(f.slots for f in items if f.kind == m) for _, items in prompts) for m in MODALITIES}
        patches = {m: max(sum(f.patches for f in items if f.kind == m) for _, items in prompts)
                   for m in MODALITIES if self.cfg.budget.patches(m)}
        budget = dataclasses.replace(self.cfg.budget, **{
            f"{m}_slots": grown_slots(needed[m], self.cfg.budget.slots(m)) if needed[m] else 0 for m in MODALITIES},
            **{f"{m}_patches": grown_slots(n, self.cfg.budget.patches(m)) if needed[m] else 0
               for m, n in patches.items()})
        media = media_slots([[[MediaItem(f.kind, f.data, f.valid_frames, f.plan, f.fbank, f.grids) for f in items]]
                             for _, items in prompts], budget, self.cfg.media_layout)
        return {"input_ids": ids, "segment_ids": segment_ids, "positions": positions, **media}

    def _check_length(self, max_new_tokens: int) -> None:
        total = self.max_prompt_len + max_new_tokens
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if total > self.cfg.llm.max_position_embeddings:
            raise ValueError(f"max_prompt_len ({self.max_prompt_len}) + max_new_tokens ({max_new_tokens}) = {total} "
                             f"exceeds the model's max_position_embeddings ({self.cfg.llm.max_position_embeddings})")

    def generate(self, examples: Sequence[schema.Example], max_new_tokens: int = 32, *,
                 spoken: bool = False) -> GenerationResult:
        """Greedy token ids of the answers, ``batch_size`` examples per call: ``GenerationResult(tokens
        int32 [len(examples), N], lengths [len(examples)])``, a row's stop token included, padding after it."""
        self._check_length(max_new_tokens)
        tokens, lengths = [], []
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start:start + self.batch_size]
            batch = self.batch([self.prepare(e, spoken=spoken) for e in chunk], self.batch_size)
            width = batch["input_ids"].shape[1]
            out, n = _generate(self.model, self.params, batch, stop_id_block(self.stop_token_ids),
                               jnp.int32(self.pad_token_id), max_new_tokens=max_new_tokens,
                               max_len=width + max_new_tokens)
            tokens.append(np.asarray(out)[:len(chunk)])
            lengths.append(np.asarray(n)[:len(chunk)])
        if not tokens:
            return GenerationResult(np.zeros((0, max_new_tokens), np.int32), np.zeros(0, np.int32))
        return GenerationResult(np.concatenate(tokens).astype(np.int32), np.concatenate(lengths).astype(np.int32))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens (the stop token) left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def answer(self, examples: Sequence[schema.Example], max_new_tokens: int = 32, *,
               spoken: bool = False) -> list[str]:
        """The greedy answer to each example (module docstring), as text without special tokens and
        not stripped. ``spoken``: answer the spoken forms (every example needs a ``spoken_question``)."""
        out = self.generate(examples, max_new_tokens, spoken=spoken)
        return [self.decode(row[:n]) for row, n in zip(out.tokens, out.lengths, strict=True)]

    def stream(self, example: schema.Example, max_new_tokens: int = 32,
               on_sentence: Callable[[int, str], object] | None = None, *, spoken: bool = False,
               names: Sequence[str] | None = None) -> Iterator[str]:
        """The greedy answer to one example, sentence by sentence while it is generated
        (``sentences.sentences``); the sentences concatenate to ``answer([example])[0]``.
        ``on_sentence(index, sentence)`` is called on each before it is yielded (e.g. ``espeak_callback``).
        The prompt is prepared (and its errors raised, media items named by ``names``) before the first
        sentence."""
        self._check_length(max_new_tokens)
        batch = self.batch([self.prepare(example, spoken=spoken, names=names)], 1)
        texts = self._texts(batch, max_new_tokens)
        return self._emit(sentences(texts), on_sentence)

    @staticmethod
    def _emit(pieces: Iterator[str], on_sentence) -> Iterator[str]:
        for index, sentence in enumerate(pieces):
            if on_sentence is not None:
                on_sentence(index, sentence)
            yield sentence

    def _texts(self, batch: dict[str, np.ndarray], max_new_tokens: int) -> Iterator[str]:
        """The decoded answer after each generated token (held back while it ends inside a UTF-8
        character), then the whole answer."""
        width = batch["input_ids"].shape[1]
        logits, cache = _prefill(self.model, self.params, batch, max_len=width + max_new_tokens)
        position = int(batch["positions"][0, -1]) + 1
        ids = []
        for i in range(max_new_tokens):
            if i:
                logits, cache = _step(self.model, self.params, np.array([[ids[-1]]], np.int32),
                                      np.array([[position + i - 1]], np.int32), cache, width + i - 1)
            token = int(np.argmax(np.asarray(logits).reshape(-1)))
            if token in self.stop_token_ids:
                break
            ids.append(token)
            text = self.decode(ids)
            if not text.endswith("\ufffd"):
                yield text
        yield self.decode(ids)
