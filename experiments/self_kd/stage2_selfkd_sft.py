"""Self-KD stage 2, vision-audio SFT with Self-KD: the LLM, both connectors and the layout vectors learn,
both encoders are frozen. Each spoken image question is trained as a pair: the model answers it written
(teacher: vision + text, no gradient) and spoken (student: vision + speech), and the student learns

    alpha * KL(p_teacher || p_student) + (1 - alpha) * CE_student

on the response tokens (``omnijax.training.objective``). Written image questions and speech recognition
stay in the mixture so that neither the teacher nor the hearing fades. The paper's numbers:
``paper.STAGES['2_selfkd_sft']`` (50k instructions from llava-1.5-mix-665k with their questions spoken by TTS).

    --config.objective.self_kd.alpha=0     the paper's baseline: plain SFT on the spoken questions
"""

from experiments import common
from experiments.self_kd.paper import STAGES

PAPER = STAGES["2_selfkd_sft"]
ALPHA = 0.5  # KL and SFT weighed equally
# Response tokens of all pairs in a row (the KL's static slots); past it a student token gets plain CE.
MAX_RESPONSE_TOKENS = {"tiny": 64, "7b": 512}
# Not given in the paper (its 50k spoken instructions alone): spoken questions twice, with written ones and ASR.
WEIGHTS = {"spoken_image_qa": 2.0, "image_qa": 1.0, "asr": 0.5}


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    preset = a.preset
    c = common.stage_config(preset, "self_kd_2_selfkd_sft", common.omni_model(preset), batch=PAPER.batch)
    c.objective.self_kd = dict(alpha=ALPHA, max_response_tokens=MAX_RESPONSE_TOKENS[preset])
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, WEIGHTS)
    for source in c.data.sources:
        source["self_kd"] = source["name"] == "spoken_image_qa"  # written (teacher) + spoken (student) pairs
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    c.trainable = common.trainable({"vision|audio": None, "*": 1e-3})
    c.num_steps = 60
