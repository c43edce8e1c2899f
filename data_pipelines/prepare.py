"""`Prepare`, the pipeline's per-record transform: a record -> a tokenised example with its media features (the
packer's input), composed of the record parser (`records`), the chat template (`chat_template`), media
expansion (`media_expansion`) and, in a Self-KD source, the pairing (`self_kd`). `Prepare.prompt` prepares a
generation prompt the same way (`omnijax.inference.omni`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from data_pipelines import features as features_lib
from data_pipelines import records as records_lib
from data_pipelines import schema, self_kd
from data_pipelines.chat_template import ChatTemplate, token_fields
from data_pipelines.media_expansion import MediaExpansion
from omnijax.batch import KD_ORDINARY

if TYPE_CHECKING:
    from data_pipelines.pipeline_config import PipelineConfig, Source


class Prepare:
    """One record -> a tokenised example with its media features (the packer's input), or a skip
    marker `{"skip": reason, "where": ..., "detail": ...}`. Runs in the pipeline workers. `prompt`
    prepares a generation prompt the same way (inference; `records` may then be None)."""

    def __init__(self, config: PipelineConfig, source: Source, records: records_lib.Records | None, tokenizer):
        self.source, self.records = source, records
        self.task_names = config.task_names
        self.kd_part = config.self_kd  # every element carries kd_part
        self.expansion = MediaExpansion(config)
        self.chat = ChatTemplate(config, source.name, tokenizer)

    def __call__(self, item: tuple[int, bytes]) -> dict:
        index, data = item
        try:
            return self.example(self.parse(data))
        except records_lib.Skip as skip:
            return {"skip": skip.reason, "where": self.records.where(index), "detail": str(skip),
                    "source": self.source.name}

    def parse(self, data: bytes) -> schema.Example:
        """A record -> its example, in its spoken form when the source is `spoken`."""
        example = records_lib.parse(data)
        if self.source.spoken and example.spoken_question is not None:
            example = example.spoken_view()
        return example

    def task_id(self, task: str) -> int:
        return self.task_names.index(task) if task in self.task_names else len(self.task_names)

    def example(self, example: schema.Example) -> dict:
        if self.source.self_kd:
            out = self_kd.pair(example, self.chat, self.expansion, self.task_id(example.task))
        else:
            ids, learn, order = self.chat.tokens(example)
            items, trimmed = self.expansion.media(example, order)
            ids, learn, items, truncated = self.expansion.expand(ids, learn, items)
            out = token_fields(ids, learn, self.task_id(example.task), KD_ORDINARY if self.kd_part else None)
            out.update(self.expansion.slots(items), truncated=truncated or trimmed)
        out["source"] = self.source.name
        return out

    def prompt(self, example: schema.Example,
               names: Sequence[str] | None = None) -> tuple[np.ndarray, list[features_lib.Feature]]:
        """A generation prompt (inference), prepared as training prepares examples: the turns before the
        first assistant turn as ChatML, then the assistant's header `<|im_start|>assistant\\n`, each
        placeholder expanded to its item's tokens. Returns (input_ids int32 `[n]`, the media features in
        placeholder order). Raises `ValueError` when a media item does not decode or is longer than the model
        takes, or the prompt does not fit `seq_len` or the budget's slots (a `too_long='drop'` config), naming
        the example, or only the item when the caller names them (``names``: one per ``example.media``)."""
        try:
            ids, learn, order = self.chat.tokens(example, generation=True)
            items, _ = self.expansion.media(example, order, names)
            ids, _, items, _ = self.expansion.expand(ids, learn, items)
        except records_lib.Skip as skip:
            raise ValueError(str(skip) if names else f"example {example.id!r}: {skip} ({skip.reason})") from None
        return ids.astype(np.int32), items
