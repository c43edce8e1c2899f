"""Self-KD for vision-audio (arXiv 2503.00059): a vision-language model gets an audio encoder, learns to
hear (audio-text alignment on speech recognition), then learns to answer spoken questions about images
by distilling its own answers to the same questions written as text (vision-audio SFT + Self-KD). The
paper's numbers per stage, and our choices where it gives none: ``paper.py``.

    python -m omnijax.recipe --recipe experiments/self_kd/recipe.py:tiny --workdir workdirs/self_kd_tiny

The paper starts from a trained VLM (InternVL2, Qwen2-VL) plus Whisper-large-v3. The `7b` recipe starts
from Ola's image + video stage (``experiments/ola/recipe.py:7b``, stage 2), an Ola-architecture VLM
with Whisper; the `tiny` recipe first trains a stand-in for it on omni-synth (stage 0). Every stage is
evaluated on written and spoken image questions: ``spoken_image_qa/gap`` is the paper's text-vs-speech
gap, which Self-KD narrows.
"""

from experiments import common

_STAGES = (("1_audio_align", "stage1_audio_align.py"), ("2_selfkd_sft", "stage2_selfkd_sft.py"))
STAGES = {"tiny": (("0_base", "stage0_base.py"), *_STAGES), "7b": _STAGES}
# Stage 0's row is the teacher before any audio alignment: its text accuracy is what Self-KD distills.
EVAL = {"tiny": ("asr", "image_qa", "spoken_image_qa"), "7b": ()}

prepare = common.prepare_synth
eval_data = common.synth_eval_data
