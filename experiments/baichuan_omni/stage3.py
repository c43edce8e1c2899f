"""Baichuan-Omni-1.5 stage 3, omni-modal pretraining: everything but the encoders learns, on images, video
with its audio, speech and text (40%)."""

from experiments import common
from experiments.baichuan_omni.model import stage


def get_config(arg="tiny"):
    return stage(arg, "3", {"image_caption": 1.0, "image_qa": 1.0, "video_visual_qa": 1.0, "video_audio_qa": 1.0,
                            "asr": 1.0}, [("(vision|audio)/.*", None), (".*", common.schedule(1e-5 if arg == "7b" else 1e-3))],
                 {"tiny": 40, "7b": 10000})
