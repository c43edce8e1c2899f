"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0_vision_binding: the vision tower learns
which colour goes with which shape.

Stage 0_vision_tower's bag of caption words teaches the tower which colours and shapes an image holds,
not which go together: scoring a held-out scene's true (colour, shape) pairs against its swapped pairs
("a red circle and a blue square" against "a blue circle and a red square") on the connector's output
tokens, the true pairs won 66% of the time (chance 50%). Here the bag also scores each pair on a single
output token (``connector_bow``'s ``pairs``) and the tower and its connector train on it: 95% after these
1500 steps (about 0.08 s a step).

The token embeddings stay frozen: the speech tower's stage before this one aligned its CTC output to
them. With the pairs in stage 0_vision_tower instead (the embeddings training), the tower bound 99% of
the pairs, but stage 0_speech_tower, from those embeddings, decoded held-out clips at 34.6% WER
(greedy CTC; 13.7% from the bag's embeddings), and after stage 3b ASR stood at WER 44.8
(benchmarks/RESULTS.md section 5).
"""

from data_pipelines import synth
from experiments import common

STEPS = 1500


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0_vision_binding exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    pairs = (tuple(synth.COLOURS), synth.SHAPES)
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0_vision_binding", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective = dict(bow_image=dict(weight=1.0, tasks=("image_caption",), pairs=pairs))  # no LLM layers
    c.init_from = common.PREVIOUS
    common.set_data(c, "tiny", {"image_caption": 1.0})
    c.trainable = [("(vision|vision_connector)/.*", common.schedule(2e-3)), (".*", None)]
    c.num_steps = STEPS
    c.log_every = 100
    return c
