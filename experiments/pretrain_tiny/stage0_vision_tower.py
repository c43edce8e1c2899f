"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0: the stand-in for SigLIP's own pretraining
-- the vision tower learns from
omni-synth's image captions without the LLM: each image's vision-connector output tokens, read through
the LLM's token embeddings, say which words its caption holds (the bag-of-words term of
``omnijax.training.connector_bow``, the stage's only loss term, so the LLM's layers are not run).
Only the vision tower, the vision connector and the token embeddings train; stage 0_vision_binding
later trains the tower on which colour goes with which shape, and stage 0a keeps it frozen.

Why the tower learns alone, and what it learns: benchmarks/RESULTS.md, "Lab notes moved from stage configs".
"""

from experiments import common


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0_vision_tower exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0_vision_tower", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective = dict(bow_image=dict(weight=1.0, tasks=("image_caption",)))  # no next-token loss: no LLM layers
    common.set_data(c, "tiny", {"image_caption": 1.0})
    c.trainable = common.trainable({"vision|vision_connector|llm/embed_tokens": 2e-3, "*": None})
    c.num_steps = 3000  # about 0.08 s a step
    c.log_every = 100
    return common.finish(c, a)
