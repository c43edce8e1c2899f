"""Self-KD tiny only, stage 0: a stand-in for the trained vision-language model the paper starts from.

The paper begins from a trained VLM and a pretrained Whisper encoder. The shipped tiny checkpoints
(``checkpoints/tiny``) give a pretrained LLM and towers but no VLM, so the `tiny` recipe first trains one
from them: a fresh vision connector, the LLM and the vision tower on image questions, captions and text
instructions, the audio tower (the "Whisper") frozen. The next stage keeps the VLM and the audio tower and
starts the audio connector fresh, as the paper adds a new projector. The `7b` recipe has no such stage.
"""

from experiments import common


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0_base exists only in the tiny preset: the 7b recipe starts from a trained VLM")
    c = common.stage_config("tiny", "self_kd_0_base", common.omni_model("tiny"))
    c.init_from = common.pretrained("tiny", ("llm", "vision", "audio"))
    common.set_data(c, "tiny", {"image_qa": 2.0, "image_choice": 1.0, "image_caption": 1.0, "text_instruct": 1.0})
    c.trainable = common.trainable({"audio": None, "*": 2e-3})
    c.num_steps = 300
    return common.finish(c, a)
