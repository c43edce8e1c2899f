"""Capybara-OMNI stage 3, cross-modal instruction tuning: everything learns, on image, video, audio and
video-audio instructions together with text (the paper's numbers: ``paper.STAGES['3_instruct']``)."""

from experiments import common
from experiments.capybara.model import model
from experiments.capybara.paper import STAGES

PAPER = STAGES["3_instruct"]
# Not given in the paper (GPT-4o video dialogues, image, audio and text instructions): every kind of question
# at weight 1, multiple choice at half.
WEIGHTS = {"image_qa": 1.0, "image_choice": 0.5, "video_visual_qa": 1.0, "video_audio_qa": 1.0, "asr": 1.0,
           "text_instruct": 1.0}


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "capybara_3_instruct", model(a.preset), batch=PAPER.batch)
    c.init_from = common.PREVIOUS
    common.set_data(c, a.preset, WEIGHTS)
    c.trainable = common.trainable(PAPER.lr)
    # Everything trains, SigLIP and Whisper too, on rows of 72 images or frames and 8 audio windows: compiled for
    # a v5p-64, a step of 256 rows needs 131 GiB a chip of 95; two microbatches of 128, 74.6 GiB, with the same
    # estimated step (python -m omnijax.compile; benchmarks/RESULTS.md section 8.2).
    c.microbatches = 2
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    c.trainable = common.trainable({"*": 1e-3})
    c.microbatches = 1
    c.num_steps = 60
    # the MLP connector does not pool: a 4-frame video takes 294 tokens (64 a frame and the layout's), more than the
    # preset's 256-token rows, which dropped every video example; its narration's audio adds 100 (qwen2_audio)
    c.seq_len = 512
