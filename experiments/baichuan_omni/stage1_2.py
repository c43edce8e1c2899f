"""Baichuan-Omni-1.5 stage 1.2: the vision encoder and the LLM learn with the visual projector (the audio
side is untouched), on captions and image questions (+ 40% text)."""

from experiments import common
from experiments.baichuan_omni.model import stage


def get_config(arg="tiny"):
    return stage(arg, "1.2", {"image_caption": 1.0, "image_qa": 1.0},
                 [("(audio|audio_connector)/.*", None), ("vision/.*", common.schedule(1e-5)),
                  (".*", common.schedule(1e-4))],
                 {"tiny": 30, "7b": 5000})
