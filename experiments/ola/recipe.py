"""Ola's progressive modality alignment (arXiv 2502.04328): image (1a, 1b), then video (2), then speech
and video-audio (3a, 3b), each stage starting from the previous one's params; the first from the pretrained
LLM and towers (Qwen2.5-7B, SigLIP-so400m, Whisper-large-v3 for `7b`; the shipped tiny ones,
``checkpoints/tiny``, for `tiny`), with both connectors trained from scratch (1a the vision connector, 3a the
speech projector), as the paper does. The paper's numbers per stage (learning rates, frozen groups, batch,
samples, and the `7b` steps they make): ``paper.py``.

    python -m omnijax.recipe --recipe experiments/ola/recipe.py:tiny --workdir workdirs/ola_tiny

Knobs after the preset reach every stage (``common.parse_arg``): ``:tiny,audio=dual`` is the paper's dual audio
encoder, Whisper + BEATs (1a imports Whisper into ``audio/whisper``; `7b` BEATs from ``@hf/BEATs_iter3_plus_AS2M``).
"""

from experiments import common

_STAGES = (("1a", "stage1a.py"), ("1b", "stage1b.py"), ("2", "stage2.py"), ("3a", "stage3a.py"), ("3b", "stage3b.py"))
STAGES = {"tiny": _STAGES, "7b": _STAGES}
# What each stage is evaluated on (omnijax.evaluate task names): the skills it has trained so far (Ola's Table 5
# tracks image skills through every stage). 3a trains the speech projector alone (the LLM is stage 2's), so its
# row is ASR; 3b, every skill: also sounds (sound_qa: what ``audio=dual``'s music encoder adds; trained in 3a and
# 3b) and wide and tall pictures and videos (aspect_qa, aspect_video_qa: what ``vision=oryx``'s native resolution
# adds; trained in 1b, 2 and 3b), asked there only, so that their columns come after the demo table's others.
IMAGE = ("image_qa", "image_choice")
EVAL = {"tiny": {"1a": IMAGE, "1b": IMAGE, "2": (*IMAGE, "video_visual_qa"), "3a": ("asr",),
                 "3b": ("asr", *IMAGE, "video_visual_qa", "video_audio_qa", "spoken_image_qa", "sound_qa", "aspect_qa",
                        "aspect_video_qa")},
        "7b": ()}

prepare = common.prepare_synth
eval_data = common.synth_eval_data
