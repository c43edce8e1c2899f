"""Tokenizers: the checkpoint's own for real recipes, a small byte-level BPE for the omni-synth corpus.

Real recipes tokenise with the HF tokenizer shipped with the checkpoint (`load_tokenizer(dir)` =
`transformers.AutoTokenizer.from_pretrained(dir)`, checked for ChatML). The omni-synth corpus comes
with its own tokenizer, trained on the corpus text by `train_synth_tokenizer` (byte-level BPE,
`tokenizers`, deterministic) and saved as an HF tokenizer directory, so the pipeline and the model
treat it exactly like a checkpoint's. Its special tokens have fixed ids, first in the vocabulary:

    0 <|endoftext|>   padding (pad_token)
    1 <|im_start|>    ChatML turn start
    2 <|im_end|>      ChatML turn end (eos_token)
    3 <|image_pad|>   image placeholder  (MediaLayout.image_token_id)
    4 <|video_pad|>   video placeholder  (MediaLayout.video_token_id)
    5 <|audio_pad|>   audio placeholder  (MediaLayout.audio_token_id)

then the 256 byte symbols, then the merges. Its chat template is ChatML with Ola's default system
turn ("You are a helpful assistant.") when the conversation has none.

    python -m data_pipelines.tokenizer --corpus DIR   # writes DIR/tokenizer (omni-synth train split)
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator

from data_pipelines import schema

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
PLACEHOLDER_TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>", "audio": "<|audio_pad|>"}
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, *PLACEHOLDER_TOKENS.values())  # ids 0, 1, 2, ... in this order
SYNTH_TOKEN_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # Ola's (and Qwen2's) system turn
DEFAULT_VOCAB_SIZE = 1024
SYNTH_TOKENIZER_DIR = "tokenizer"  # inside the corpus folder

# Qwen2's ChatML template: a default system turn when the conversation has none.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def conversation_text(example: schema.Example, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The words of an example as the tokenizer should learn them: ChatML without its special
    tokens (role name, newline, text per turn), placeholders left out, the spoken question's words
    included through the turns (they are written there)."""
    turns = [(t.role, t.text) for t in example.turns]
    if system_prompt is not None and turns[0][0] != "system":
        turns.insert(0, ("system", system_prompt))
    parts = []
    for role, text in turns:
        for placeholder in schema.PLACEHOLDERS.values():
            text = text.replace(placeholder, "")
        parts.append(f"{role}\n{text}\n")
    return "".join(parts)


def train_synth_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train a byte-level BPE on `texts` and save it as an HF tokenizer directory in `out_dir`
    (`tokenizer.json`, `tokenizer_config.json`, chat template). Returns the loaded tokenizer.

    Deterministic: the same texts in the same order give the same files. The vocabulary holds the
    special tokens (ids in the module docstring), the 256 bytes and up to `vocab_size` in all with
    merges (fewer when the texts run out of pairs seen at least twice).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size} cannot hold {len(SPECIAL_TOKENS)} special tokens and 256 bytes")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    for token, i in SYNTH_TOKEN_IDS.items():
        if bpe.token_to_id(token) != i:
            raise RuntimeError(f"BPE training put {token} at id {bpe.token_to_id(token)}, expected {i}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, *PLACEHOLDER_TOKENS.values()])
    tokenizer.chat_template = CHATML_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def _corpus_examples(corpus_dir: str, split: str = "train") -> Iterator[schema.Example]:
    with open(os.path.join(corpus_dir, "manifest.json")) as f:
        manifest = json.load(f)
    files = manifest["splits"][split]["files"]
    yield from schema.read_shards([os.path.join(corpus_dir, name) for name in files])


def build_synth_tokenizer(corpus_dir: str, out_dir: str | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """The omni-synth tokenizer, trained on the train split of the corpus in `corpus_dir` and saved
    into `out_dir` (default `corpus_dir/tokenizer`); returns the loaded tokenizer."""
    out_dir = out_dir or os.path.join(corpus_dir, SYNTH_TOKENIZER_DIR)
    texts = (conversation_text(example) for example in _corpus_examples(corpus_dir))
    return train_synth_tokenizer(texts, out_dir, vocab_size)


def load_tokenizer(path: str):
    """`AutoTokenizer.from_pretrained(path)`, checked for what the pipeline needs: a fast (Rust)
    backend and the ChatML tokens as single special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"the tokenizer at {path} has no fast (tokenizers) backend; the pipeline needs tokenizer.json")
    for token in (IM_START, IM_END):
        if token_id(tokenizer, token) is None:
            raise ValueError(f"the tokenizer at {path} has no special token {token}: the pipeline writes ChatML")
    return tokenizer


def token_id(tokenizer, token: str) -> int | None:
    """The id of `token` when it is one added (special) token of `tokenizer`, else None."""
    for i, added in tokenizer.added_tokens_decoder.items():
        if added.content == token:
            return int(i)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the omni-synth byte-level BPE tokenizer (HF format).")
    parser.add_argument("--corpus", required=True, help="omni-synth corpus folder (python -m data_pipelines.synth)")
    parser.add_argument("--out", help=f"output folder (default CORPUS/{SYNTH_TOKENIZER_DIR})")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    args = parser.parse_args(argv)
    tokenizer = build_synth_tokenizer(args.corpus, args.out, args.vocab_size)
    print(f"tokenizer: {len(tokenizer)} tokens -> {args.out or os.path.join(args.corpus, SYNTH_TOKENIZER_DIR)}")


if __name__ == "__main__":
    main()
