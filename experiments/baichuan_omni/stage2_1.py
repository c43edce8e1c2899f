"""Baichuan-Omni-1.5 stage 2.1, audio alignment: only the audio embedding side -- the Conv-GMLP bridge --
learns (LLM, vision and the audio encoder frozen), on speech recognition (+ 40% text); the paper's numbers:
``paper.STAGES['2.1']``."""

from experiments.baichuan_omni.model import stage
from experiments.baichuan_omni.paper import STAGES


def get_config(arg="tiny"):
    return stage(arg, "2.1", {"asr": 1.0}, STAGES["2.1"], tiny)


def tiny(c):
    c.num_steps = 30
