"""Baichuan-Omni-1.5's training section (arXiv 2501.15368), its understanding branch, as numbers: one row per
stage. The text we work from (the paper's summary) gives the stages, what each trains and the 40% of pure text
in every stage (``model.TEXT_SHARE``), but no learning rate, batch or sample count: those are our choices,
each said below ("lower learning rates" as more unfreezes is the paper's rule). The stage files take their `7b`
settings from here; the tiny preset's own are in each stage file's ``tiny(c)``.

Not rows of the table, and what the `7b` preset does instead: stage 3 trains at 64k context and reads videos
at 1 frame a second, at most 32 frames (§3.3.3); the preset packs rows of 4096 tokens and reads 64 frames.
"""

from experiments.common import PaperStage

# Not given in the paper: the steps of every stage. Our choice, a pod run's size; set them from your data as
# ceil(samples / batch). Likewise the batch: the preset's 256 rows (Ola's).
BATCH = 256

STAGES = {
    "1.1": PaperStage(  # image-text pretraining, "visual projector alignment"
        lr={"vision_connector": 1e-3,  # not given in the paper; our choice: Ola's projector alignment rate
            "*": None},  # "Stage 1.1 projector-only"
        steps=5000, batch=BATCH),
    "1.2": PaperStage(  # "Stage 1.2 full unfreeze" of the vision side
        lr={"audio|audio_connector": None,  # no audio in this stage (the audio side comes in stage 2)
            "vision": 1e-5,  # not given in the paper; our choice: a tenth of the LLM's for the pretrained tower
            "*": 1e-4},  # not given in the paper; our choice: below the projector's, the paper's "lower rates"
        steps=5000, batch=BATCH),
    "2.1": PaperStage(  # audio alignment: "Stage 2.1 audio adapters only"
        lr={"audio_connector": 1e-3,  # not given in the paper; our choice, as stage 1.1
            "*": None},  # "training audio adapters ... with frozen LLM"
        steps=5000, batch=BATCH),
    "2.2": PaperStage(  # "Stage 2.2 partial unfreeze"
        lr={"vision|audio": None,  # our reading of "partial": the encoders stay frozen
            "*": 1e-4},  # not given in the paper; our choice, as stage 1.2's LLM
        steps=5000, batch=BATCH),
    "3": PaperStage(  # omni-modal pretraining
        lr={"vision|audio": None,  # the summary says "all parameters"; our choice keeps the encoders frozen
                                   # (training them at 7b is not sized: python -m omnijax.compile first)
            "*": 1e-5},  # not given in the paper; our choice: lower again, as more trains together
        steps=10000, batch=BATCH),
    "4.1": PaperStage(  # omni-modal SFT of the understanding branch ("freeze audio head"; no head here)
        lr={"vision|audio": None,  # not given in the paper; our choice, as stage 3
            "*": 1e-5},  # not given in the paper; our choice, as stage 3
        steps=8000, batch=BATCH),
}
