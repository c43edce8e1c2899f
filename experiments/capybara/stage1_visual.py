"""Capybara-OMNI stage 1, visual alignment: only the vision projector learns, on image-caption pairs."""

from experiments import common
from experiments.capybara.model import model

STEPS = {"tiny": 40, "7b": 3000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "capybara_1_visual", model(preset))
    if preset == "7b":
        c.init_from = [*common.hf_init(("llm", "vision")), (common.qwen2_audio_dir(), ("audio",))]
    common.set_data(c, preset, {"image_caption": 1.0})
    c.trainable = [("vision_connector/.*", common.schedule(1e-3)), (".*", None)]
    c.num_steps = STEPS[preset]
    return c
