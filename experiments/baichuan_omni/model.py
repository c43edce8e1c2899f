"""Baichuan-Omni-1.5's understanding branch (arXiv 2501.15368): a vision tower + 2-layer MLP projector,
a Whisper-large-v3 encoder + the Conv-GMLP audio bridge (4x down-sampling, 50 Hz -> 12.5 Hz), and the
LLM. Every stage keeps 40% pure text in its data (``mixture``)."""

from experiments import common

TEXT_SHARE = 0.4


def model(preset: str):
    return common.omni_model(preset, vision_connector="mlp", audio_connector="conv_gmlp")


def mixture(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` scaled to 60% of the mixture, plus text_instruct at 40%."""
    total = sum(weights.values())
    return {**{k: (1 - TEXT_SHARE) * v / total for k, v in weights.items()}, "text_instruct": TEXT_SHARE}


def stage(preset: str, name: str, weights: dict[str, float], trainable, steps: dict[str, int], first: bool = False):
    """A stage: the previous stage's params (the first: the pretrained LLM and towers, fresh connectors)."""
    preset = common.check_preset(preset or "tiny")
    c = common.stage_config(preset, f"baichuan_omni_{name}", model(preset))
    if not first:
        c.init_from = common.PREVIOUS
    else:
        c.init_from = common.pretrained(preset, ("llm", "vision", "audio"))
    common.set_data(c, preset, mixture(weights))
    c.trainable = trainable
    c.num_steps = steps[preset]
    return c
