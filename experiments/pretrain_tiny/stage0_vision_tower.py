"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0: the stand-in for SigLIP's own pretraining
-- the vision tower learns from
omni-synth's image captions without the LLM: each image's vision-connector output tokens, read through
the LLM's token embeddings, say which words its caption holds (the bag-of-words term of
``omnijax.training.connector_bow``, the stage's only loss term, so the LLM's layers are not run).
Only the vision tower, the vision connector and the token embeddings train; stage 0_vision_binding
later trains the tower on which colour goes with which shape, and stage 0a keeps it frozen.

Trained through the LLM's caption loss alone (stage 0a as it was), the tower told colours apart but
hardly shapes: held-out captions after 0a named the right shape 31-38% of the time (chance 33%). After
3000 steps here (about 0.08 s a step), thresholded bag scores of held-out scenes say whether each shape
is present 78-83% right and each colour 100%; stage 0a from it, the tower frozen, named the right shape
44% and the (colour, shape) pairs 47% (33% before); with the tower trained at a constant learning rate
instead, 36% and 37%. In two demo runs with this stage, after stage 3b: "what colour is the <shape>?"
72% and 78% right (39% in the last run without it), "what shape moves across the video?" 44% and 44%
(25%); benchmarks/RESULTS.md section 5.
"""

from experiments import common

STEPS = 3000


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0_vision_tower exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0_vision_tower", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective = dict(bow_image=dict(weight=1.0, tasks=("image_caption",)))  # no next-token loss: no LLM layers
    common.set_data(c, "tiny", {"image_caption": 1.0})
    c.trainable = [("(vision|vision_connector|llm/embed_tokens)/.*", common.schedule(2e-3)), (".*", None)]
    c.num_steps = STEPS
    c.log_every = 100
    return c
