"""Baichuan-Omni-1.5 stage 4.1, omni-modal supervised fine-tuning of the understanding branch: the
encoders stay frozen, the LLM and the connectors learn, on the instruction tasks of every modality (+ 40%
text). (Stage 4.2, the speech-generation head, is not part of omnijax.)"""

from experiments import common
from experiments.baichuan_omni.model import stage


def get_config(arg="tiny"):
    return stage(arg, "4.1", {"image_qa": 1.0, "image_choice": 1.0, "video_visual_qa": 1.0, "video_audio_qa": 1.0,
                              "spoken_image_qa": 1.0, "asr": 0.5},
                 [("(vision|audio)/.*", None), (".*", common.schedule(1e-5 if arg == "7b" else 1e-3))],
                 {"tiny": 40, "7b": 8000})
