"""Capybara-OMNI stage 2, audio alignment: LLM and vision frozen; the audio encoder (initialised from a
Qwen2-Audio checkpoint in the 7b preset) and its 1-layer projector learn on speech recognition (the paper's
numbers: ``paper.STAGES['2_audio']``)."""

from experiments import common
from experiments.capybara.model import model
from experiments.capybara.paper import STAGES

PAPER = STAGES["2_audio"]


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "capybara_2_audio", model(a.preset), batch=PAPER.batch)
    c.init_from = common.PREVIOUS
    common.set_data(c, a.preset, {"asr": 1.0})
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    c.trainable = common.trainable({"audio|audio_connector": 2e-3, "*": None})
    c.num_steps = 40
