"""Inference: KV-cache generation (``generate``: token ids of a text LLM); ``omni``: an omni model's
answers to ``schema.Example``s with media, batched or streamed sentence by sentence (``sentences``:
the splitter and the eSpeak NG speech callback)."""

from omnijax.inference.generate import GenerationResult, generate, left_pad, top_p_filter

__all__ = ["GenerationResult", "generate", "left_pad", "top_p_filter"]
