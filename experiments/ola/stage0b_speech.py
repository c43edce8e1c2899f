"""Ola tiny only, stage 0b: a stand-in for the pretrained Whisper (and the LLM's text skills) the paper
starts from: from stage 0a, the LLM, the audio tower and a speech projector learn speech recognition of
omni-synth's sentences and its text instructions; the vision tower keeps what stage 0a taught it.
(Keeping image captions in this stage's mix did not help the speech: held-out WER 63.9% after it with
captions, 59.9% without; single runs of the demo.)"""

from experiments import common

STEPS = 700


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0b_speech exists only in the tiny preset: the 7b recipe starts from HF checkpoints")
    c = common.stage_config("tiny", "ola_0b_speech", common.omni_model("tiny"))
    c.init_from = common.PREVIOUS
    common.use_media(c, "audio")
    common.set_data(c, "tiny", {"asr": 2.0, "text_instruct": 0.5})
    c.trainable = [("(vision|vision_connector)/.*", None), (".*", common.schedule(2e-3))]
    c.num_steps = STEPS
    return c
