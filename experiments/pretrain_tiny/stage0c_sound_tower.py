"""The tiny pretraining (``experiments/pretrain_tiny``), stage 0c: the stand-in for the BEATs Ola starts from
(BEATs_iter3+ fine-tuned on AudioSet-2M: a music and sound encoder that learnt to tag sounds). From stage 0b, a
fresh tiny BEATs beside the pretrained Whisper (``audio=dual``, ``experiments.common.use_dual``) learns to tell
omni-synth's non-speech clips apart without the LLM's layers: the speech projector's output, read through the
LLM's token embeddings, says which words the answer to a question about the clip holds (the bag-of-words term
of ``omnijax.training.connector_bow`` on ``sound_qa``, the stage's only loss) -- an instrument, a count of
beats, rising or falling, one note or a chord, high or low: a sound tagger whose classifier is the embedding
matrix, as AudioSet's labels are BEATs'. Only BEATs and the speech projector (scaffolding, not shipped) train;
Whisper and the token embeddings stay as stage 0b left them, so the shipped LLM and towers are 0b's and BEATs
is this stage's (``recipe.BEATS_FROM``). A recipe with ``audio=dual`` at `tiny` then starts from it, frozen,
as Ola's BEATs is.
"""

from experiments import common

KEPT = ("llm", "vision", "vision_connector", "mm_embed", "audio->audio/whisper")  # from stage 0b


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    if a.preset != "tiny":
        raise ValueError("stage0c_sound_tower exists only in the tiny preset: the 7b recipes import BEATs_iter3+")
    model = common.omni_model("tiny")
    c = common.stage_config("tiny", "pretrain_tiny_0c_sound_tower", model, tokenizer=common.CORPUS_TOKENIZER)
    c.init_from = [(common.PREVIOUS, KEPT)]
    common.use_dual(c, "tiny")  # its init_from names no "audio": BEATs starts fresh here
    c.objective = dict(bow_audio=dict(weight=1.0, tasks=("sound_qa",), max_label_tokens=8))  # no LLM layers
    common.set_data(c, "tiny", {"sound_qa": 1.0})
    c.trainable = common.trainable({"audio/beats|audio_connector": 3e-3, "*": None})
    c.num_steps = 1000
    c.log_every = 100
    return common.finish(c, a)
