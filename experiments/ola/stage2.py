"""Ola stage 2, image + video: the vision encoder is frozen from here on; LLM, connectors and the layout
vectors learn on image and video questions (paper: lr 1e-5, video frames + images)."""

from experiments import common

STEPS = {"tiny": 100, "7b": 15000}
# tiny: the media slots a row's 256 tokens can fill. Packed at the preset's 4 image, 8 video and 4 audio slots,
# 20 batches of this stage held at most 3 images, 4 videos and 1 audio clip a row (stage 3b: 2, 4, 2), so
# these slots pack the same rows and the towers no longer run on empty ones: a step with 2 image, 4 video and
# 2 audio slots took 0.30 s instead of 0.37 (12 steps each, side by side, 2 CPU cores).
TINY_SLOTS = dict(image_slots=3, video_slots=4, audio_slots=2)


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "ola_2", common.omni_model(preset))
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, {"image_qa": 1.0, "image_choice": 1.0, "image_caption": 0.5, "video_visual_qa": 2.0,
                                "text_instruct": 0.5})
    c.trainable = [("(vision|audio)/.*", None), (".*", common.schedule(1e-5 if preset == "7b" else 1e-3))]
    if preset == "tiny":
        c.media.update(TINY_SLOTS)
    c.num_steps = STEPS[preset]
    return c
