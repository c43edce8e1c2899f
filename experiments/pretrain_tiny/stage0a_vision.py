"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0a: the rest of the stand-in for the pretrained
SigLIP the papers start from.

Ola begins from Qwen2.5-7B, SigLIP-so400m and Whisper-large-v3, all pretrained. No pretrained tower
exists offline, so the tiny pretraining makes its own: stage 0 the vision tower alone (a bag of
caption words, no LLM), stage 0_speech_tower the audio tower alone (CTC on speech recognition, Whisper's
task), stage 0_vision_binding the vision tower again (which colour goes with which shape), here the LLM
and a vision connector on omni-synth's image captions -- SigLIP's image-text pairs -- with both towers
frozen, then stage 0b the LLM on speech recognition. No question-answer task is in the
stages 0*; what ships (``checkpoints/tiny``) is 0b's LLM and the two towers, and the papers' recipes start
their connectors fresh.
"""

from experiments import common


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0a_vision exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    c = common.stage_config("tiny", "pretrain_tiny_0a_vision", common.omni_model("tiny"),
                            tokenizer=common.CORPUS_TOKENIZER)
    common.set_data(c, "tiny", {"image_caption": 1.0})
    c.init_from = common.PREVIOUS
    c.trainable = common.trainable({"vision|audio|audio_connector": None, "*": 2e-3})
    c.num_steps = 700
    return common.finish(c, a)
