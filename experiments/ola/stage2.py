"""Ola stage 2, image + video: the vision encoder is frozen from here on; LLM, connectors and the layout
vectors learn on image and video questions (paper: lr 1e-5, video frames + images)."""

from experiments import common

STEPS = {"tiny": 200, "7b": 15000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "ola_2", common.omni_model(preset))
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, {"image_qa": 1.0, "image_choice": 1.0, "image_caption": 0.5, "video_visual_qa": 2.0,
                                "text_instruct": 0.5})
    c.trainable = [("(vision|audio)/.*", None), (".*", common.schedule(1e-5 if preset == "7b" else 1e-3))]
    c.num_steps = STEPS[preset]
    return c
