"""Ola stage 2, image + video: the vision encoder is frozen from here on; LLM, connectors and the layout
vectors learn on image and video questions (the paper's numbers: ``paper.STAGES['2']``)."""

from experiments import common
from experiments.ola.paper import STAGES

PAPER = STAGES["2"]
# Not given as weights in the paper (800k images and 1.9M video conversations, A.2): video questions twice.
WEIGHTS = {"image_qa": 1.0, "image_choice": 1.0, "image_caption": 0.5, "video_visual_qa": 2.0, "text_instruct": 0.5}


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "ola_2", common.omni_model(a.preset), batch=PAPER.batch)
    c.init_from = common.PREVIOUS
    common.set_data(c, a.preset, WEIGHTS)
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    c.trainable = common.trainable({"vision|audio": None, "*": 1e-3})
    c.num_steps = 100
    # the media slots a row's 256 tokens can fill: the towers no longer run on empty ones (0.30 s a step
    # instead of 0.37; benchmarks/RESULTS.md, "Lab notes moved from stage configs")
    c.media.update(image_slots=3, video_slots=4, audio_slots=2)
    common.reweigh(c, "tiny", {"aspect_qa": 0.5, "aspect_video_qa": 0.5})  # wide and tall pictures and videos (1b)
