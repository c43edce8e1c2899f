"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0_vision_binding: the vision tower learns
which colour goes with which shape.

Stage 0_vision_tower's bag of caption words teaches the tower which colours and shapes an image holds,
not which go together. Here the bag also scores each (colour, shape) pair on a single output token
(``connector_bow``'s ``pairs``) and the tower and its connector train on it. The token embeddings stay
frozen: the speech tower's stage before this one aligned its CTC output to them.

How well the pairs bind, here and with the pairs in stage 0_vision_tower: benchmarks/RESULTS.md, "Lab notes
moved from stage configs".
"""

from data_pipelines import synth
from experiments import common


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0_vision_binding exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    pairs = (tuple(synth.COLOURS), synth.SHAPES)
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0_vision_binding", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective = dict(bow_image=dict(weight=1.0, tasks=("image_caption",), pairs=pairs))  # no LLM layers
    c.init_from = common.PREVIOUS
    common.set_data(c, "tiny", {"image_caption": 1.0})
    c.trainable = common.trainable({"vision|vision_connector": 2e-3, "*": None})
    c.num_steps = 1500  # about 0.08 s a step
    c.log_every = 100
    return common.finish(c, a)
