"""Self-KD tiny only, stage 0: a stand-in for the pretrained models the paper starts from.

The paper begins from a trained vision-language model and a pretrained Whisper encoder. omni-synth has
neither, so the `tiny` recipe first trains the whole tiny model on image questions, captions, text
instructions and speech recognition; the next stage keeps its LLM, vision side and audio encoder (the
"VLM" and "Whisper") and starts the audio connector fresh, as the paper adds a new projector. The `7b`
recipe has no such stage.
"""

from experiments import common

STEPS = 300


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0_base exists only in the tiny preset: the 7b recipe starts from a trained VLM")
    c = common.stage_config("tiny", "self_kd_0_base", common.omni_model("tiny"))
    c.media.video_slots = 0  # no video anywhere in this recipe
    common.set_data(c, "tiny", {"image_qa": 2.0, "image_choice": 1.0, "image_caption": 1.0, "asr": 2.0,
                                "text_instruct": 1.0})
    c.trainable = [(".*", common.schedule(2e-3))]
    c.num_steps = STEPS
    return c
