"""Ola tiny only, stage 0a: the rest of the stand-in for the pretrained SigLIP the paper starts from.

Ola begins from Qwen2.5-7B, SigLIP-so400m and Whisper-large-v3, all pretrained. No pretrained tower
exists offline, so the tiny recipe first pretrains its own: stage 0 the vision tower alone (a bag of
caption words, no LLM), stage 0_speech_tower the audio tower alone (CTC on speech recognition, Whisper's
task), stage 0_vision_binding the vision tower again (which colour goes with which shape), here the LLM
and a vision connector on omni-synth's image captions -- SigLIP's image-text pairs -- with both towers
frozen, then stage 0b the LLM on speech recognition. 700 steps of captions with image
slots only take about 3 minutes and end at a caption loss of about 0.3. No question-answer task is in the
stages 0*; the Ola stages take the LLM and the encoders from 0b and start the vision connector fresh, as
Ola's do. The `7b` recipe has no such stage.
"""

from experiments import common

STEPS = 700


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0a_vision exists only in the tiny preset: the 7b recipe starts from HF checkpoints")
    c = common.stage_config("tiny", "ola_0a_vision", common.omni_model("tiny"))
    common.use_media(c, "image")
    common.set_data(c, "tiny", {"image_caption": 1.0})
    c.init_from = common.PREVIOUS
    c.trainable = [("(vision|audio|audio_connector)/.*", None), (".*", common.schedule(2e-3))]
    c.num_steps = STEPS
    return c
