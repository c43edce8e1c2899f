"""Capybara-OMNI's architecture (arXiv 2504.12315): SigLIP + 2-layer MLP projector, a Qwen2-Audio encoder
(Whisper-large-v3 sized, with its stride-2 average pooling) + a 1-layer projector, Qwen2.5 LLM."""

from experiments import common


def model(preset: str):
    return common.omni_model(preset, vision_connector="mlp", audio_connector="linear", audio_variant="qwen2_audio")
