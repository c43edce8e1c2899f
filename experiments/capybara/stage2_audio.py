"""Capybara-OMNI stage 2, audio alignment: LLM and vision frozen; the audio encoder (initialised from a
Qwen2-Audio checkpoint in the 7b preset) and its 1-layer projector learn on speech recognition."""

from experiments import common
from experiments.capybara.model import model

STEPS = {"tiny": 40, "7b": 5000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "capybara_2_audio", model(preset))
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, {"asr": 1.0})
    lr = 1e-4 if preset == "7b" else 2e-3
    c.trainable = [("(audio|audio_connector)/.*", common.schedule(lr)), (".*", None)]
    c.num_steps = STEPS[preset]
    return c
