"""Self-KD stage 2, vision-audio SFT with Self-KD: the LLM, both connectors and the layout vectors learn,
both encoders are frozen. Each spoken image question is trained as a pair: the model answers it written
(teacher: vision + text, no gradient) and spoken (student: vision + speech), and the student learns

    alpha * KL(p_teacher || p_student) + (1 - alpha) * CE_student

on the response tokens (``omnijax.training.objective``). Written image questions and speech recognition
stay in the mixture so that neither the teacher nor the hearing fades. Paper: 50k instructions from
llava-1.5-mix-665k with their questions spoken by TTS.

    --config.objective.self_kd.alpha=0     the paper's baseline: plain SFT on the spoken questions
"""

from experiments import common

STEPS = {"tiny": 60, "7b": 100}  # 7b: ~1k pairs (~800 tokens each) a step in 256 rows of 4k, ~2 epochs of 50k
ALPHA = 0.5  # KL and SFT weighed equally
# Response tokens of all pairs in a row (the KL's static slots); past it a student token gets plain CE.
MAX_RESPONSE_TOKENS = {"tiny": 64, "7b": 512}
WEIGHTS = {"spoken_image_qa": 2.0, "image_qa": 1.0, "asr": 0.5}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "self_kd_2_selfkd_sft", common.omni_model(preset))
    c.objective.self_kd = dict(alpha=ALPHA, max_response_tokens=MAX_RESPONSE_TOKENS[preset])
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, WEIGHTS)
    for source in c.data.sources:
        source["self_kd"] = source["name"] == "spoken_image_qa"  # written (teacher) + spoken (student) pairs
    c.trainable = [("(vision|audio)/.*", None), (".*", common.schedule(2e-5 if preset == "7b" else 1e-3))]
    c.num_steps = STEPS[preset]
    return c
