"""Baichuan-Omni-1.5 stage 3, omni-modal pretraining: everything but the encoders learns, on images, video
with its audio, speech and text (40%); the paper's numbers: ``paper.STAGES['3']``."""

from experiments import common
from experiments.baichuan_omni.model import stage
from experiments.baichuan_omni.paper import STAGES

WEIGHTS = {"image_caption": 1.0, "image_qa": 1.0, "video_visual_qa": 1.0, "video_audio_qa": 1.0, "asr": 1.0}


def get_config(arg="tiny"):
    return stage(arg, "3", WEIGHTS, STAGES["3"], tiny)


def tiny(c):
    c.trainable = common.trainable({"vision|audio": None, "*": 1e-3})
    c.num_steps = 40
