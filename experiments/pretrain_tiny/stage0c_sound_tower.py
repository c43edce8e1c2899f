"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0c: the stand-in for the BEATs Ola starts from
(BEATs_iter3+ fine-tuned on AudioSet-2M: a music and sound encoder that learnt to tag sounds). A fresh tiny BEATs
alone (``audio=beats``, ``experiments.common.use_beats``: no Whisper beside it to lean on) and a scaffolding speech
projector learn to answer omni-synth's questions about non-speech clips -- an instrument, a count of beats, rising
or falling, one note or a chord, high or low -- through stage 0b's LLM, frozen (the next-token loss on ``sound_qa``'s
answers, the stage's only data): a sound tagger whose classifier is the LLM, as AudioSet's labels are BEATs'. Only
BEATs and the projector (scaffolding, not shipped) train, so the shipped LLM and towers are 0b's and BEATs is this
stage's (``recipe.BEATS_FROM``). A recipe with ``audio=dual`` or ``audio=beats`` at `tiny` then starts from it,
frozen, as Ola's BEATs is.

Trained before 2026-12-08 beside 0b's Whisper on a bag of the answer's words read through the token embeddings,
BEATs learnt little Whisper did not already hear, and its outputs collapsed to nearly one vector (2% of their energy
varied): a fresh projector downstream read nothing from it (``benchmarks/RESULTS.md`` §9.7).
"""

from experiments import common

KEPT = ("llm",)  # from stage 0b: the LLM the answers are read through; BEATs and the projector start fresh


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0c_sound_tower exists only in the tiny preset: the 7b recipes import BEATs_iter3+")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0c_sound_tower", model, tokenizer=common.CORPUS_TOKENIZER)
    c.init_from = [(common.PREVIOUS, KEPT)]
    common.use_beats(c, "tiny")  # its init_from names no "audio": BEATs starts fresh here
    common.set_data(c, "tiny", {"sound_qa": 1.0})
    c.trainable = common.trainable({"audio/beats|audio_connector": 3e-3, "*": None})
    c.num_steps = 1000
    c.log_every = 100
    return common.finish(c, a)
