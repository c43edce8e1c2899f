"""Baichuan-Omni-1.5's understanding branch (arXiv 2501.15368): a vision tower + 2-layer MLP projector,
a Whisper-large-v3 encoder + the Conv-GMLP audio bridge (4x down-sampling, 50 Hz -> 12.5 Hz), and the
LLM. Every stage keeps 40% pure text in its data (``mixture``)."""

from experiments import common

TEXT_SHARE = 0.4  # the paper: "maintaining 40% pure text ratio" in every stage (the summary)


def model(preset: str):
    return common.omni_model(preset, vision_connector="mlp", audio_connector="conv_gmlp")


def mixture(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` scaled to 60% of the mixture, plus text_instruct at 40%."""
    total = sum(weights.values())
    return {**{k: (1 - TEXT_SHARE) * v / total for k, v in weights.items()}, "text_instruct": TEXT_SHARE}


def stage(arg: str | None, name: str, weights: dict[str, float], paper: common.PaperStage, tiny,
          first: bool = False):
    """A stage (``paper``: its row of ``paper.STAGES``; ``tiny(c)``: the tiny preset's own settings): the previous
    stage's params (the first: the pretrained LLM and towers, fresh connectors)."""
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, f"baichuan_omni_{name}", model(a.preset), batch=paper.batch)
    c.init_from = common.pretrained(a.preset, ("llm", "vision", "audio")) if first else common.PREVIOUS
    common.set_data(c, a.preset, mixture(weights))
    c.trainable = common.trainable(paper.lr)
    c.num_steps = paper.num_steps
    return common.finish(c, a, tiny)
