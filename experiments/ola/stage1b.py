"""Ola stage 1b, image-text supervised fine-tuning: everything learns (paper: lr 2e-5 for the LLM and
connector, 2e-6 for the vision encoder) on image captions, image questions and text instructions.

Tiny: 450 steps, what the demo's 15 minutes leave (77% of the held-out image questions; 500 steps 75%, 600 steps
82%; single runs from one stage 1a, benchmarks/RESULTS.md section 7.5). Before the tiny checkpoints were shipped
(stage 1a after the stand-in pretraining), 250 steps answered 68% of the held-out image questions ("which shape
is <colour>?" 38%), 750 steps 82% (79%); 250 steps with the vision tower frozen, 68% (and no faster: 0.70 s a
step against 0.67). From the shipped checkpoints, 300 steps 68%, 350 steps 69% ("which shape is <colour>?" 33%;
single runs, benchmarks/RESULTS.md section 7)."""

from experiments import common

STEPS = {"tiny": 450, "7b": 20000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "ola_1b", common.omni_model(preset))
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, {"image_caption": 1.0, "image_qa": 2.0, "image_choice": 1.0, "text_instruct": 1.0})
    if preset == "7b":
        c.trainable = [("vision/.*", common.schedule(2e-6)), (".*", common.schedule(2e-5))]
    else:  # the stand-in tower is no SigLIP: it learns at the LLM's rate
        c.trainable = [(".*", common.schedule(2e-3))]
    c.num_steps = STEPS[preset]
    return c
