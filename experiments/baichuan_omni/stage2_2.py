"""Baichuan-Omni-1.5 stage 2.2: the LLM and the visual projector learn with the audio bridge (both encoders
frozen), on speech recognition and images, so that vision is not forgotten (+ 40% text)."""

from experiments import common
from experiments.baichuan_omni.model import stage


def get_config(arg="tiny"):
    return stage(arg, "2.2", {"asr": 2.0, "image_qa": 1.0},
                 [("(vision|audio)/.*", None), (".*", common.schedule(1e-4))],
                 {"tiny": 30, "7b": 5000})
