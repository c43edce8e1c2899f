"""Ola stage 3b, joint omni training: both encoders frozen; LLM, both connectors and the layout vectors
learn on images, videos, speech and videos with their audio (paper: lr 1e-5; 1.1M speech, 324k
video-audio and 400k image samples -- images are kept so that image skills do not fade, Table 5)."""

from experiments import common

STEPS = {"tiny": 400, "7b": 30000}
WEIGHTS = {"asr": 2.0, "video_audio_qa": 2.0, "video_visual_qa": 1.0, "image_qa": 1.5, "image_choice": 0.5,
           "image_caption": 0.5, "text_instruct": 0.5}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "ola_3b", common.omni_model(preset))
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, WEIGHTS)
    c.trainable = [("(vision|audio)/.*", None), (".*", common.schedule(1e-5 if preset == "7b" else 1e-3))]
    c.num_steps = STEPS[preset]
    return c
