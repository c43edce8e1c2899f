"""The chat template: an example's turns -> ChatML token ids, which of them to learn, and its media in
placeholder order.

Each example is written as ChatML, `<|im_start|>{role}\\n{text}<|im_end|>\\n` per turn, with a system turn
(`system_prompt`, Ola's "You are a helpful assistant.") when it has none, and tokenised in one call with the
stage's tokenizer (the checkpoint's, or the omni-synth BPE of `data_pipelines.tokenizer`). Every
`<image>`/`<video>`/`<audio>` placeholder is written as the modality's placeholder token, one per media item
(`media_expansion` repeats it to the item's token count). Loss weights are 1 on the text and `<|im_end|>` of
assistant turns, never on placeholders; `targets` are the next token within the example (the last token
predicts nothing), so packing never crosses examples. A generation prompt (`generation=True`) is written the
same way up to the assistant's header.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines import schema
from data_pipelines.records import Skip
from data_pipelines.tokenizer import IM_END, IM_START
from omnijax.media_tokens import MODALITIES

if TYPE_CHECKING:
    from data_pipelines.pipeline_config import PipelineConfig


class ChatTemplate:
    """ChatML text and tokens of one source's examples under a stage's config (`PipelineConfig`): the
    modalities with slots, their placeholder tokens (special tokens of the tokenizer, checked here), the
    system prompt, and the sequence length (under `too_long='drop'`, text alone longer drops an example)."""

    def __init__(self, config: PipelineConfig, source_name: str, tokenizer):
        self.source_name = source_name
        self.system_prompt = config.system_prompt
        self.seq_len, self.truncate = config.seq_len, config.too_long == "truncate"
        self.backend = tokenizer.backend_tokenizer  # the Rust tokenizer: picklable, no transformers in workers
        self.modalities = tuple(m for m in MODALITIES if config.budget.slots(m))
        self.pad_ids = {m: config.layout.token_id(m) for m in self.modalities}
        self.pad_tokens = {}
        for m, tid in self.pad_ids.items():
            token = tokenizer.convert_ids_to_tokens(tid)
            if tid not in tokenizer.added_tokens_decoder:
                raise ValueError(f"{m} placeholder id {tid} ({token!r}) is not a special token of the tokenizer "
                                 f"{config.tokenizer}; the layout's {m}_token_id must name one")
            self.pad_tokens[m] = token

    def text(self, example: schema.Example, generation: bool = False) -> tuple[str, list[tuple[int, int]], list[int]]:
        """ChatML text with one placeholder token per media item, the assistant spans to learn
        (characters), and the media indices in placeholder order. `generation`: the prompt to answer
        instead, the turns before the first assistant turn and then the assistant's header."""
        turns = list(example.turns)
        if generation:
            turns = list(itertools.takewhile(lambda turn: turn.role != "assistant", turns))
        if self.system_prompt is not None and (not turns or turns[0].role != "system"):
            turns.insert(0, schema.Turn("system", self.system_prompt))
        parts, spans, order, length = [], [], [], 0
        for turn in turns:
            text = turn.text
            for ref in turn.media:
                kind = example.media[ref].kind
                if kind not in self.modalities:
                    raise ValueError(
                        f"source {self.source_name!r}, example {example.id!r}: it has a {kind} but the stage takes "
                        f"no {kind}s ({kind}_slots=0); give the stage {kind} slots or leave such examples out of "
                        "its sources")
            for m, token in self.pad_tokens.items():
                text = text.replace(schema.PLACEHOLDERS[m], token)
            order.extend(turn.media)
            head = f"{IM_START}{turn.role}\n"
            body = f"{text}{IM_END}"
            if turn.role == "assistant":
                spans.append((length + len(head), length + len(head) + len(body)))
            parts.append(f"{head}{body}\n")
            length += len(parts[-1])
        if generation:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts), spans, order

    def tokens(self, example: schema.Example, generation: bool = False) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Token ids with one placeholder token per media item, which tokens to learn, and the media
        indices in placeholder order (`generation`: of the prompt, `text`). Skips examples whose
        placeholder tokens do not match their media (e.g. a placeholder token written in the text) and,
        under `too_long='drop'`, examples whose text alone passes `seq_len` (before any media is decoded)."""
        text, spans, order = self.text(example, generation)
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, np.int64)
        starts = np.fromiter((o[0] for o in encoding.offsets), np.int64, len(ids))
        learn = np.zeros(len(ids), bool)
        for lo, hi in spans:
            learn |= (starts >= lo) & (starts < hi)
        kinds = [example.media[i].kind for i in order]
        for m, tid in self.pad_ids.items():
            found = int(np.count_nonzero(ids == tid))
            if found != kinds.count(m):
                raise Skip("placeholder_mismatch", f"the text holds {found} {m} placeholder token(s) "
                                                   f"for {kinds.count(m)} {m}(s)")
        if not self.truncate and len(ids) - len(order) > self.seq_len:
            raise Skip("dropped_too_long", f"{len(ids) - len(order)} text tokens for seq_len {self.seq_len}")
        return ids, learn, order


def token_fields(ids: np.ndarray, learn: np.ndarray, task_id: int, kd_part: int | None) -> dict[str, np.ndarray]:
    """An example's token fields: ids, next-token targets and weights inside the example, task ids, and
    (`kd_part` not None: a Self-KD pipeline's elements) its `kd_part`."""
    out = {
        "input_ids": ids.astype(np.int32),
        "targets": np.append(ids[1:], 0).astype(np.int32),
        "loss_weights": np.append(learn[1:], False).astype(np.float32),
        "task_ids": np.full(len(ids), task_id, np.int32),
    }
    if kd_part is not None:
        out["kd_part"] = np.full(len(ids), kd_part, np.int32)
    return out
