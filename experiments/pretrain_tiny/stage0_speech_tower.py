"""The tiny pretraining (``experiments/pretrain_tiny``), the speech half of the stand-in towers: the audio
tower and the speech projector learn
speech recognition alone, without the LLM's layers -- the stand-in for Whisper's own pretraining, as stage 0
is SigLIP's. The only loss is CTC on the speech projector's output against the LLM's token embeddings
(``omnijax.training.connector_ctc``; ``c.objective`` has no next-token term); the audio tower, the speech
projector and the token embeddings train, on omni-synth's ASR clips. Stage 0b then teaches the LLM to read
the tower, which it keeps frozen.

Why the tower learns alone, and what it learns: benchmarks/RESULTS.md, "Lab notes moved from stage configs".
"""

from experiments import common


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0_speech_tower exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0_speech_tower", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective = dict(ctc_audio=dict(weight=1.0, tasks=("asr",)))  # no next-token loss: no LLM layers
    c.init_from = common.PREVIOUS
    common.set_data(c, "tiny", {"asr": 1.0})
    c.trainable = common.trainable({"audio|audio_connector|llm/embed_tokens": 3e-3, "*": None})
    c.num_steps = 1500  # about 0.22 s a step
    c.log_every = 100
    return common.finish(c, a)
