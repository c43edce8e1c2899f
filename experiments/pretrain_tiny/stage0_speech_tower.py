"""The tiny pretraining (``experiments/pretrain_tiny``), the speech half of the stand-in towers: the audio
tower and the speech projector learn
speech recognition alone, without the LLM's layers -- the stand-in for Whisper's own pretraining, as stage 0
is SigLIP's. The only loss is CTC on the speech projector's output against the LLM's token embeddings
(``omnijax.training.connector_ctc``; ``c.objective`` has no next-token term); the audio tower, the speech
projector and the token embeddings train, on omni-synth's ASR clips. Stage 0b then teaches the LLM to read
the tower, which it keeps frozen.

Trained through the LLM's next-token loss (with CTC weight 0.2, stage 0b as it was), the tower reached a
held-out WER of about 50% through the LLM: it heard a sentence's template and few of its content words.
Alone, the same tiny tower learns far more per second (a step here takes about 0.22 s, 0b's with the LLM
took 0.47 s). Greedy CTC decoding of the projector's tokens on 100 held-out clips after these 1500 steps
(412 s in the demo): 13.7% WER from stage 0's token embeddings; 30.7% from random ones, 39.3% with
stage 0a's frozen (single runs). After stage 3b, with this stage in the recipe: WER 51.5 -> 30.3,
questions about a video's narration 8% -> 41% right (benchmarks/RESULTS.md section 5).
"""

from experiments import common

STEPS = 1500


def get_config(arg="tiny"):
    if common.check_preset(arg or "tiny") != "tiny":
        raise ValueError("stage0_speech_tower exists only in the tiny preset: the 7b recipes start from HF "
                         "checkpoints")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0_speech_tower", model, tokenizer=common.CORPUS_TOKENIZER)
    c.objective = dict(ctc_audio=dict(weight=1.0, tasks=("asr",)))  # no next-token loss: no LLM layers
    c.init_from = common.PREVIOUS
    common.set_data(c, "tiny", {"asr": 1.0})
    c.trainable = [("(audio|audio_connector|llm/embed_tokens)/.*", common.schedule(3e-3)), (".*", None)]
    c.num_steps = STEPS
    c.log_every = 100
    return c
