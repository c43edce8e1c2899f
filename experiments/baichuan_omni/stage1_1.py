"""Baichuan-Omni-1.5 stage 1.1, image-text pretraining: only the visual projector learns (LLM and vision
encoder frozen), on image captions (+ 40% text); the paper's numbers: ``paper.STAGES['1.1']``."""

from experiments.baichuan_omni.model import stage
from experiments.baichuan_omni.paper import STAGES


def get_config(arg="tiny"):
    return stage(arg, "1.1", {"image_caption": 1.0}, STAGES["1.1"], tiny, first=True)


def tiny(c):
    c.num_steps = 30
