"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0b: the rest of the stand-in for the pretrained
Whisper (and the LLM's text skills)
the paper starts from: from stage 0a, the LLM and the speech projector learn speech recognition of
omni-synth's sentences and its text instructions, reading the audio tower that stage 0_speech_tower
pretrained (frozen here, as the vision tower is); the vision tower keeps what stages 0 and 0a taught it.
A share of 0a's image captions stays in the mixture: trained on speech and text alone, the LLM forgot
how to read the images (0a ended at a caption loss of 0.05; stage 1a's 30 steps then ended at 3.61
even from 0a's own vision connector). With the captions, stage 1a's fresh connector ends at 0.14-0.50
(three runs) and writes held-out captions with the right colour on each shape; held-out WER after 1a
29.5 and 29.9 (39.1 without them).

CTC on the speech projector's output (``omnijax.training.connector_ctc``, weight 0.2) stays on: stage 0a
moved the token embeddings the projector was aligned to. Before stage 0_speech_tower existed, this stage
trained the tower too, from random weights, 700 steps: held-out WER straight after it 59.9% without CTC,
50.3% with weight 0.2, 53.7% with 0.5 (single runs from the same stage 0a).
"""

from experiments import common

STEPS = 500
CTC_WEIGHT = 0.2


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0b_speech exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0b_speech", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective.ctc_audio = dict(weight=CTC_WEIGHT, tasks=("asr",))
    c.init_from = common.PREVIOUS
    common.set_data(c, "tiny", {"asr": 2.0, "image_caption": 0.5, "text_instruct": 0.5})
    c.trainable = [("(vision|vision_connector|audio)/.*", None), (".*", common.schedule(2e-3))]
    c.num_steps = STEPS
    return c
