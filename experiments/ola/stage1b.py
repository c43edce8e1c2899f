"""Ola stage 1b, image-text supervised fine-tuning: everything learns, the vision encoder at a lower rate, on
image captions, image questions and text instructions (the paper's numbers: ``paper.STAGES['1b']``). Tiny
runs at other step counts: benchmarks/RESULTS.md, "Lab notes moved from stage configs"."""

from experiments import common
from experiments.ola.paper import STAGES

PAPER = STAGES["1b"]
# Not given in the paper (7.3M examples of its own sources, §3.3): the omni-synth tasks of this stage, image
# questions twice.
WEIGHTS = {"image_caption": 1.0, "image_qa": 2.0, "image_choice": 1.0, "text_instruct": 1.0}


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "ola_1b", common.omni_model(a.preset), batch=PAPER.batch)
    c.init_from = common.PREVIOUS
    common.set_data(c, a.preset, WEIGHTS)
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    c.trainable = common.trainable({"*": 2e-3})  # the stand-in tower is no SigLIP: it learns at the LLM's rate
    c.num_steps = 450  # what the demo's 15 minutes leave
    # omni-synth's wide and tall pictures, whose answers a squash to a square loses (what vision=oryx's native
    # resolution adds); tiny only: the `7b` mixture is the paper's data
    common.reweigh(c, "tiny", {"aspect_qa": 0.5})
