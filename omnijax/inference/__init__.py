"""Inference: KV-cache generation."""

from omnijax.inference.generate import GenerationResult, generate, left_pad, top_p_filter

__all__ = ["GenerationResult", "generate", "left_pad", "top_p_filter"]
