"""Self-KD's training section (arXiv 2503.00059, ACL 2025) as numbers: one row per stage of the `7b` recipe.
The text we work from gives the data of each stage, the loss (``stage2_selfkd_sft.ALPHA``) and the audio side
(Whisper-large-v3 and a 1-layer projector, on InternVL2 and Qwen2-VL), but no learning rate, batch or number of
epochs: those are our choices, each said below. The stage files take their `7b` settings from here; the tiny
preset's own are in each stage file's ``tiny(c)``.
"""

from experiments.common import PaperStage

STAGES = {
    "1_audio_align": PaperStage(  # audio-text alignment
        lr={"audio_connector": 1e-3,  # not given in the paper; our choice: Ola's projector alignment rate
            "*": None},  # not given in the paper; our choice: the new projector alone, on a frozen VLM + Whisper
        samples=988_000,  # "ASR datasets such as LibriSpeech, Common Voice, GigaSpeech, and Libriheavy ... 988k"
        epochs=2,  # not given in the paper; our choice: two passes for a projector trained from scratch
        batch=256,  # not given in the paper; our choice: the preset's 256 rows of 4096 tokens
        per_row=20),  # our estimate: an utterance (a 30 s window's 150 tokens + its transcript) is about 200
                      # tokens; steps ceil(2 * 988_000 / (256 * 20)) = 386
    "2_selfkd_sft": PaperStage(  # vision-audio SFT with Self-KD
        lr={"vision|audio": None,  # not given in the paper; our choice: both encoders stay frozen
            "*": 2e-5},  # not given in the paper; our choice: Ola's SFT rate
        samples=50_000,  # "50k instruction-following samples are sampled from llava-1.5-mix-665k"
        epochs=2,  # not given in the paper; our choice, as stage 1
        batch=256,  # not given in the paper; our choice, as stage 1
        per_row=4),  # our estimate: a teacher-student pair is about 800 tokens, packed whole into 4096-token
                     # rows; steps ceil(2 * 50_000 / (256 * 4)) = 98
}
