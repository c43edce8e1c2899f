"""Baichuan-Omni-1.5 stage 2.2: the LLM and the visual projector learn with the audio bridge (both encoders
frozen), on speech recognition and images, so that vision is not forgotten (+ 40% text); the paper's numbers:
``paper.STAGES['2.2']``."""

from experiments.baichuan_omni.model import stage
from experiments.baichuan_omni.paper import STAGES


def get_config(arg="tiny"):
    return stage(arg, "2.2", {"asr": 2.0, "image_qa": 1.0}, STAGES["2.2"], tiny)


def tiny(c):
    c.num_steps = 30
