"""Baichuan-Omni-1.5 stage 1.2: the vision encoder and the LLM learn with the visual projector (the audio
side is untouched), on captions and image questions (+ 40% text); the paper's numbers: ``paper.STAGES['1.2']``."""

from experiments.baichuan_omni.model import stage
from experiments.baichuan_omni.paper import STAGES


def get_config(arg="tiny"):
    return stage(arg, "1.2", {"image_caption": 1.0, "image_qa": 1.0}, STAGES["1.2"], tiny)


def tiny(c):
    c.num_steps = 30
