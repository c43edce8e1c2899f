"""The tiny pretrained checkpoints the tiny presets start from, as the papers start from Qwen2.5, SigLIP and
Whisper: a vision tower, an audio tower and an LLM with its tokenizer, trained on omni-synth (no pretrained
model can be downloaded here). ``python -m experiments.pretrain_tiny.release`` runs this recipe and writes
what ships in ``checkpoints/tiny`` (``release.py``); the recipe alone:

    python -m omnijax.recipe --recipe experiments/pretrain_tiny/recipe.py:tiny --workdir workdirs/pretrain_tiny

Six stages, each from the previous one's params: 0_vision_tower (the vision tower alone, on bags of caption
words: SigLIP's own pretraining), 0_speech_tower (the audio tower alone, on CTC: Whisper's), 0_vision_binding
(the vision tower on which colour goes with which shape), 0a_vision (the LLM and a vision connector on
captions, towers frozen), 0b_speech (the LLM and a speech projector on speech recognition and text
instructions, captions kept), 0c_sound_tower (a BEATs beside that Whisper, alone on omni-synth's non-speech
sounds: the music encoder of Ola's ``audio=dual``). The connectors they train are scaffolding and do not ship: a paper's
recipe trains its own from scratch. The tokenizer is the omni-synth BPE of the corpus
(``data_pipelines.tokenizer``), trained before the first stage; it ships with the LLM.
"""

STAGES = {"tiny": (("0_vision_tower", "stage0_vision_tower.py"), ("0_speech_tower", "stage0_speech_tower.py"),
                   ("0_vision_binding", "stage0_vision_binding.py"), ("0a_vision", "stage0a_vision.py"),
                   ("0b_speech", "stage0b_speech.py"), ("0c_sound_tower", "stage0c_sound_tower.py"))}
SHIPPED_FROM = "0b_speech"  # the stage whose LLM and towers ship (the towers are frozen after their own stages)
BEATS_FROM = "0c_sound_tower"  # the stage whose BEATs ships (it trains BEATs alone; 0b's parts are unchanged in it)


def prepare(preset: str, roots: dict[str, str]) -> None:
    """omni-synth in the ``corpus`` root (default size), with the tokenizer these stages train with."""
    from data_pipelines import synth

    synth.prepare(roots["corpus"], size=synth.prepared_size(roots["corpus"]) or "default")
