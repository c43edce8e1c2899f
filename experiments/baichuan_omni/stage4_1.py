"""Baichuan-Omni-1.5 stage 4.1, omni-modal supervised fine-tuning of the understanding branch: the
encoders stay frozen, the LLM and the connectors learn, on the instruction tasks of every modality (+ 40%
text); the paper's numbers: ``paper.STAGES['4.1']``. (Stage 4.2, the speech-generation head, is not part of
omnijax.)"""

from experiments import common
from experiments.baichuan_omni.model import stage
from experiments.baichuan_omni.paper import STAGES

WEIGHTS = {"image_qa": 1.0, "image_choice": 1.0, "video_visual_qa": 1.0, "video_audio_qa": 1.0,
           "spoken_image_qa": 1.0, "asr": 0.5}


def get_config(arg="tiny"):
    return stage(arg, "4.1", WEIGHTS, STAGES["4.1"], tiny)


def tiny(c):
    c.trainable = common.trainable({"vision|audio": None, "*": 1e-3})
    c.num_steps = 40
