"""Baichuan-Omni-1.5's understanding branch (arXiv 2501.15368): stages 1.1, 1.2 (image), 2.1, 2.2 (audio),
3 (omni-modal pretraining), 4.1 (omni SFT), each with 40% pure text. The speech-generation branch
(audio tokenizer and flow-matching decoder, stage 4.2) is not part of omnijax. The paper's numbers per
stage, and our choices where it gives none: ``paper.py``.

    python -m omnijax.recipe --recipe experiments/baichuan_omni/recipe.py:tiny --workdir workdirs/baichuan_tiny
"""

from experiments import common

_STAGES = (("1.1", "stage1_1.py"), ("1.2", "stage1_2.py"), ("2.1", "stage2_1.py"), ("2.2", "stage2_2.py"),
           ("3", "stage3.py"), ("4.1", "stage4_1.py"))
STAGES = {"tiny": _STAGES, "7b": _STAGES}
EVAL = {"tiny": ("asr", "image_qa", "video_audio_qa"), "7b": ()}
prepare = common.prepare_synth
eval_data = common.synth_eval_data
