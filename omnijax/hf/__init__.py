"""HF import/export. Importing this package registers every supported architecture."""

from omnijax.hf import qwen2  # noqa: F401  (registers Qwen2ForCausalLM)
