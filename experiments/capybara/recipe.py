"""Capybara-OMNI (arXiv 2504.12315): visual alignment, audio alignment, cross-modal instruction tuning. The
paper's numbers per stage, and our choices where it gives none: ``paper.py``.

    python -m omnijax.recipe --recipe experiments/capybara/recipe.py:tiny --workdir workdirs/capybara_tiny
"""

from experiments import common

_STAGES = (("1_visual", "stage1_visual.py"), ("2_audio", "stage2_audio.py"), ("3_instruct", "stage3_instruct.py"))
STAGES = {"tiny": _STAGES, "7b": _STAGES}
# each stage on the skills it has trained (stage 3's rows are the first that hold a video: stage3_instruct.tiny)
EVAL = {"tiny": {"1_visual": ("image_qa",), "2_audio": ("asr", "image_qa"),
                 "3_instruct": ("asr", "image_qa", "video_audio_qa")}, "7b": ()}

prepare = common.prepare_synth
eval_data = common.synth_eval_data
