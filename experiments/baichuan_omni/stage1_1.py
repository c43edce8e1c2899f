"""Baichuan-Omni-1.5 stage 1.1, image-text pretraining: only the visual projector learns (LLM and vision
encoder frozen), on image captions (+ 40% text)."""

from experiments import common
from experiments.baichuan_omni.model import stage


def get_config(arg="tiny"):
    return stage(arg, "1.1", {"image_caption": 1.0}, [("vision_connector/.*", common.schedule(1e-3)), (".*", None)],
                 {"tiny": 30, "7b": 5000}, first=True)
