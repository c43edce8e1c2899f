"""Capybara-OMNI stage 1, visual alignment: only the vision projector learns, on image-caption pairs."""

from experiments import common
from experiments.capybara.model import model

STEPS = {"tiny": 40, "7b": 3000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "capybara_1_visual", model(preset))
    if preset == "7b":  # the paper's audio tower is Qwen2-Audio's encoder
        c.init_from = [*common.pretrained(preset, ("llm", "vision")), (common.qwen2_audio_dir(), ("audio",))]
    else:  # the tiny Whisper encoder, read with Qwen2-Audio's padding mask and pooling (the same weights)
        c.init_from = common.pretrained(preset, ("llm", "vision", "audio"))
    common.set_data(c, preset, {"image_caption": 1.0})
    c.trainable = [("vision_connector/.*", common.schedule(1e-3)), (".*", None)]
    c.num_steps = STEPS[preset]
    return c
