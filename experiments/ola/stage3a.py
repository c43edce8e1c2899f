"""Ola stage 3a, speech projector alignment: only the audio connector (frame stacking + MLP) learns, on
speech recognition; LLM and both encoders are frozen (the paper's numbers: ``paper.STAGES['3a']``). Tiny
runs at other steps and learning rates: benchmarks/RESULTS.md, "Lab notes moved from stage configs"."""

from experiments import common
from experiments.ola.paper import STAGES

PAPER = STAGES["3a"]


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "ola_3a", common.omni_model(a.preset), batch=PAPER.batch)
    c.init_from = common.PREVIOUS
    common.set_data(c, a.preset, {"asr": 1.0})
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    # the projector starts fresh in front of an LLM that stages 1b and 2 moved; stage 3b decides the end
    # result more than this one: 150 steps at 1e-2, and the time to stage 3b
    c.trainable = common.trainable({"audio_connector": 1e-2, "*": None})
    c.num_steps = 150
    # omni-synth's non-speech sounds (instruments, melodies, rhythms), what audio=dual's music encoder adds, a third
    # as often as speech; tiny only: the `7b` mixture is the paper's data
    common.reweigh(c, "tiny", {"sound_qa": 0.35})
