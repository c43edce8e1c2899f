"""Ola stage 3b, joint omni training: both encoders frozen; LLM, both connectors and the layout vectors
learn on images, videos, speech and videos with their audio -- images are kept so that image skills do not
fade, Table 5 (the paper's numbers: ``paper.STAGES['3b']``). Tiny runs with other steps, mixtures and
learning rates: benchmarks/RESULTS.md, "Lab notes moved from stage configs"."""

from experiments import common
from experiments.ola.paper import STAGES

PAPER = STAGES["3b"]
# Not given as weights in the paper (1.1M audio, 243k video-audio and 600k image examples, A.2): speech and
# videos with their audio twice.
WEIGHTS = {"asr": 2.0, "video_audio_qa": 2.0, "video_visual_qa": 1.0, "image_qa": 1.5, "image_choice": 0.5,
           "image_caption": 0.5, "text_instruct": 0.5}


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "ola_3b", common.omni_model(a.preset), batch=PAPER.batch)
    c.init_from = common.PREVIOUS
    common.set_data(c, a.preset, WEIGHTS)
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    # Twice the frame questions (the CTC-trained stand-in speech tower hands the LLM text-like tokens, and with
    # weight 1 it answered questions about a moving shape with the narrator's colour), and speech recognition
    # at 6: the fresh speech projector's ASR is learnt here, in rows mostly of video tokens.
    # Sounds (3a) and wide and tall pictures and videos (1b, 2) join.
    common.set_data(c, "tiny", {**WEIGHTS, "video_visual_qa": 2.5, "asr": 6.0, "image_qa": 2.5, "sound_qa": 1.0,
                                "aspect_qa": 0.5, "aspect_video_qa": 0.5})
    # the tiny speech projector, fresh from stage 3a, learns at ten times the LLM's rate
    c.trainable = common.trainable({"vision|audio": None, "audio_connector": 1e-2, "*": 1e-3})
    c.num_steps = 750
    c.media.update(image_slots=2, video_slots=4, audio_slots=2)  # the media slots rows fill (see stage 2)
