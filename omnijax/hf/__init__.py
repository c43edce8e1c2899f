"""HF import/export. Importing this package registers every supported architecture."""

from omnijax.hf import beats  # noqa: F401  (registers BEATs)
from omnijax.hf import llava_onevision  # noqa: F401  (registers LlavaOnevisionForConditionalGeneration)
from omnijax.hf import ola  # noqa: F401  (registers OlaQwenForCausalLM)
from omnijax.hf import omni  # noqa: F401  (registers OmnijaxOmniModel)
from omnijax.hf import openai_whisper  # noqa: F401  (registers OpenAIWhisperEncoder)
from omnijax.hf import oryx_vit  # noqa: F401  (registers OryxViT)
from omnijax.hf import qwen2  # noqa: F401  (registers Qwen2ForCausalLM)
from omnijax.hf import qwen2_audio  # noqa: F401  (registers Qwen2AudioForConditionalGeneration)
from omnijax.hf import siglip  # noqa: F401  (registers SiglipVisionModel)
from omnijax.hf import whisper  # noqa: F401  (registers WhisperModel, WhisperForConditionalGeneration, Qwen2AudioEncoder)
