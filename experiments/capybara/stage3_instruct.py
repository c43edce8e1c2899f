"""Capybara-OMNI stage 3, cross-modal instruction tuning: everything learns, on image, video, audio and
video-audio instructions together with text."""

from experiments import common
from experiments.capybara.model import model

STEPS = {"tiny": 60, "7b": 20000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "capybara_3_instruct", model(preset))
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, {"image_qa": 1.0, "image_choice": 0.5, "video_visual_qa": 1.0, "video_audio_qa": 1.0,
                                "asr": 1.0, "text_instruct": 1.0})
    c.trainable = [(".*", common.schedule(2e-5 if preset == "7b" else 1e-3))]
    if preset == "7b":
        # Everything trains, SigLIP and Whisper too, on rows of 72 images or frames and 8 audio windows: compiled for
        # a v5p-64, a step of 256 rows needs 131 GiB a chip of 95; two microbatches of 128, 74.6 GiB, with the same
        # estimated step (python -m omnijax.compile; benchmarks/RESULTS.md section 8.2).
        c.microbatches = 2
    c.num_steps = STEPS[preset]
    return c
