"""Ola tiny only, stage 0: a stand-in for the pretrained checkpoints the paper starts from.

Ola begins from Qwen2.5-7B, SigLIP-so400m and Whisper-large-v3, all pretrained (SigLIP on image-text
pairs, Whisper on speech recognition). Tiny random towers cannot learn to see and hear within the
minutes the tiny recipe has, so it first trains the whole tiny model on omni-synth's image captions,
speech recognition and text instructions; the next stages take only its LLM and encoders (the
"pretrained" Qwen, SigLIP and Whisper) and start the connectors fresh, as Ola's do. No question-answer
task is in this stage. The `7b` recipe has no such stage.
"""

from experiments import common

STEPS = 700


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0_pretrain exists only in the tiny preset: the 7b recipe starts from HF checkpoints")
    c = common.stage_config("tiny", "ola_0_pretrain", common.omni_model("tiny"))
    common.set_data(c, "tiny", {"asr": 2.0, "image_caption": 1.0, "text_instruct": 0.5})
    c.trainable = [(".*", common.schedule(2e-3))]
    c.num_steps = STEPS
    return c
