"""Self-KD stage 1, audio-text alignment: only the audio connector learns, on speech recognition; the
LLM and both encoders are frozen (the paper's numbers: ``paper.STAGES['1_audio_align']``: 988k utterances of
LibriSpeech, Common Voice, GigaSpeech and Libriheavy into a new projector on Whisper-large-v3).

    python -m omnijax.train --config experiments/self_kd/stage1_audio_align.py:7b,vlm=PATH --workdir W
"""

from experiments import common
from experiments.self_kd.paper import STAGES

PAPER = STAGES["1_audio_align"]
# The paper's starting VLM: Ola's image + video stage (its audio tower is Whisper-large-v3, its audio
# connector untrained). The knob vlm=PATH starts from another Ola-architecture omnijax model directory.
VLM_7B = "workdirs/ola_7b/2"


def get_config(arg="tiny"):
    a = common.parse_arg(arg, vlm=VLM_7B)
    c = common.stage_config(a.preset, "self_kd_1_audio_align", common.omni_model(a.preset), batch=PAPER.batch)
    c.init_from = a.vlm
    common.set_data(c, a.preset, {"asr": 1.0})
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    with c.ignore_type():  # the stand-in's "VLM" and "Whisper" (stage 0_base); a fresh audio connector
        c.init_from = [(common.stage_ref("0_base"), ("llm", "vision", "vision_connector", "audio", "mm_embed"))]
    c.trainable = common.trainable({"audio_connector": 3e-3, "*": None})
    c.num_steps = 60
