"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0b: the rest of the stand-in for the pretrained
Whisper (and the LLM's text skills) the paper starts from: from stage 0a, the LLM and the speech projector
learn speech recognition of omni-synth's sentences and its text instructions, reading the audio tower that
stage 0_speech_tower pretrained (frozen here, as the vision tower is); the vision tower keeps what stages 0
and 0a taught it. A share of 0a's image captions stays in the mixture: trained on speech and text alone, the
LLM forgot how to read the images. CTC on the speech projector's output (``omnijax.training.connector_ctc``,
weight 0.2) stays on: stage 0a moved the token embeddings the projector was aligned to.

Runs without the captions, without CTC and at other CTC weights: benchmarks/RESULTS.md, "Lab notes moved from
stage configs".
"""

from experiments import common

CTC_WEIGHT = 0.2


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0b_speech exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0b_speech", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective.ctc_audio = dict(weight=CTC_WEIGHT, tasks=("asr",))
    c.init_from = common.PREVIOUS
    common.set_data(c, "tiny", {"asr": 2.0, "image_caption": 0.5, "text_instruct": 0.5})
    c.trainable = common.trainable({"vision|vision_connector|audio": None, "*": 2e-3})
    c.num_steps = 500
    return common.finish(c, a)
