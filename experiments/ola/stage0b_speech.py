"""Ola tiny only, stage 0b: a stand-in for the pretrained Whisper (and the LLM's text skills) the paper
starts from: from stage 0a, the LLM, the audio tower and a speech projector learn speech recognition of
omni-synth's sentences and its text instructions; the vision tower keeps what stage 0a taught it.

The audio tower starts from random weights, so besides the next-token loss it gets a direct signal: CTC
on the speech projector's output against the LLM's token embeddings (``omnijax.training.connector_ctc``),
weight 0.2. Held-out WER straight after this stage, single runs from the same stage 0a: 59.9% without
CTC, 50.3% with weight 0.2, 53.7% with 0.5 (a 128-wide audio tower with weight 0.3: 50.2%, not better,
and its steps slower: 0.66 s against 0.49 s by median, runs not isolated). Keeping image captions in
this stage's mix did not help the speech (63.9% with them).
"""

from experiments import common

STEPS = 700
CTC_WEIGHT = 0.2


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0b_speech exists only in the tiny preset: the 7b recipe starts from HF checkpoints")
    model = common.omni_model("tiny", ctc=dict(audio=dict(weight=CTC_WEIGHT, tasks=("asr",))))
    c = common.stage_config("tiny", "ola_0b_speech", model)
    c.init_from = common.PREVIOUS
    common.use_media(c, "audio")
    common.set_data(c, "tiny", {"asr": 2.0, "text_instruct": 0.5})
    c.trainable = [("(vision|vision_connector)/.*", None), (".*", common.schedule(2e-3))]
    c.num_steps = STEPS
    return c
