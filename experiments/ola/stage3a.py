"""Ola stage 3a, speech projector alignment: only the audio connector (frame stacking + MLP) learns, on
speech recognition; LLM and both encoders are frozen (paper: lr 1e-3, ASR data)."""

from experiments import common

STEPS = {"tiny": 50, "7b": 3000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "ola_3a", common.omni_model(preset))
    c.init_from = common.PREVIOUS
    common.use_media(c, "audio")
    common.set_data(c, preset, {"asr": 1.0})
    c.trainable = [("audio_connector/.*", common.schedule(1e-3 if preset == "7b" else 3e-3)), (".*", None)]
    c.num_steps = STEPS[preset]
    return c
