"""Self-KD stage 1, audio-text alignment: only the audio connector learns, on speech recognition; the
LLM and both encoders are frozen (paper: 988k utterances of LibriSpeech, Common Voice, GigaSpeech and
Libriheavy into a new projector on Whisper-large-v3)."""

from experiments import common

STEPS = {"tiny": 60, "7b": 400}  # 7b: ~5k utterances a step (256 rows of 4k tokens), ~2 epochs of 1M
# The paper's starting VLM: Ola's image + video stage (its audio tower is Whisper-large-v3, its audio
# connector untrained). Point this at another Ola-architecture omnijax model directory to start elsewhere.
VLM_7B = "workdirs/ola_7b/2"


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "self_kd_1_audio_align", common.omni_model(preset))
    if preset == "tiny":  # the stand-in's "VLM" and "Whisper"; a fresh audio connector
        c.init_from = [(common.stage_ref("0_base"), ("llm", "vision", "vision_connector", "audio", "mm_embed"))]
    else:
        c.init_from = VLM_7B
    common.set_data(c, preset, {"asr": 1.0})
    c.trainable = [("audio_connector/.*", common.schedule(1e-3 if preset == "7b" else 3e-3)), (".*", None)]
    c.num_steps = STEPS[preset]
    return c
