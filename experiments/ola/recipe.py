"""Ola's progressive modality alignment (arXiv 2502.04328): image (1a, 1b), then video (2), then speech
and video-audio (3a, 3b), each stage starting from the previous one's params.

    python -m omnijax.recipe --recipe experiments/ola/recipe.py:tiny --workdir workdirs/ola_tiny
"""

from experiments import common

STAGES = {
    "tiny": (("0_vision_tower", "stage0_vision_tower.py"), ("0_speech_tower", "stage0_speech_tower.py"),
             ("0_vision_binding", "stage0_vision_binding.py"), ("0a_vision", "stage0a_vision.py"),
             ("0b_speech", "stage0b_speech.py"), ("1a", "stage1a.py"), ("1b", "stage1b.py"), ("2", "stage2.py"),
             ("3a", "stage3a.py"), ("3b", "stage3b.py")),
    "7b": (("1a", "stage1a.py"), ("1b", "stage1b.py"), ("2", "stage2.py"), ("3a", "stage3a.py"),
           ("3b", "stage3b.py")),
}
# What each stage is evaluated on (omnijax.evaluate task names); the stages 0* are stand-ins, not Ola's.
EVAL = {"tiny": ("asr", "image_qa", "image_choice", "video_visual_qa", "video_audio_qa", "spoken_image_qa"),
        "7b": ()}
SKIP_EVAL = ("0_vision_tower", "0_speech_tower", "0_vision_binding", "0a_vision", "0b_speech")

prepare = common.prepare_synth
eval_data = common.synth_eval_data
