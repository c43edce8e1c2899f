"""Capybara-OMNI stage 1, visual alignment: only the vision projector learns, on image-caption pairs (the
paper's numbers: ``paper.STAGES['1_visual']``)."""

from experiments import common
from experiments.capybara.model import model
from experiments.capybara.paper import STAGES

PAPER = STAGES["1_visual"]


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "capybara_1_visual", model(a.preset), batch=PAPER.batch)
    # the paper's audio tower is Qwen2-Audio's encoder
    c.init_from = [*common.pretrained(a.preset, ("llm", "vision")), (common.qwen2_audio_dir(), ("audio",))]
    common.set_data(c, a.preset, {"image_caption": 1.0})
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    # the tiny Whisper encoder, read with Qwen2-Audio's padding mask and pooling (the same weights)
    c.init_from = common.pretrained("tiny", ("llm", "vision", "audio"))
    c.num_steps = 40
