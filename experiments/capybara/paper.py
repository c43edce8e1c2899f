"""Capybara-OMNI's training section (arXiv 2504.12315) as numbers: one row per stage. The text we work from
(the paper's summary) gives the stages, their data and what is frozen, but no learning rate, batch or sample
count: those are our choices, each said below. The stage files take their `7b` settings from here; the tiny
preset's own are in each stage file's ``tiny(c)``.

Not rows of the table: images are split at dynamic resolution up to 1344x1344 with 2x2 compression (the
`7b` preset takes one 384-pixel SigLIP image); audio tokens are pooled with stride 2 (the Qwen2-Audio encoder's
pooling, ``model.py``).
"""

from experiments.common import PaperStage

STAGES = {
    "1_visual": PaperStage(  # visual alignment: "SigLIP ... with a 2-layer MLP adapter ... using image-text pairs"
        lr={"vision_connector": 1e-3,  # not given in the paper; our choice: Ola's projector alignment rate
            "*": None},  # the adapter alone (the summary: "Train Visual Adapter, then Unfreeze All"; we keep
                         # the first half, the second is stage 3's)
        steps=3000,  # not given in the paper (no sample count); our choice, a pod run's size: set it from
                     # your data as ceil(samples / batch)
        batch=256),  # not given in the paper; our choice: the preset's 256 rows (Ola's batch)
    "2_audio": PaperStage(  # audio alignment: "initializes the audio encoder from Qwen2-Audio and trains it with a
                            # 1-layer MLP adapter while freezing the LLM and visual components"
        lr={"audio|audio_connector": 1e-4,  # not given in the paper; our choice: a pretrained encoder learns
                                            # with a fresh adapter, at a rate between the adapter's and SFT's
            "*": None},  # "the parameters of the LLM and the visual component are kept frozen" (§3.2)
        steps=5000,  # not given in the paper; our choice, as stage 1
        batch=256),  # not given in the paper; our choice, as stage 1
    "3_instruct": PaperStage(  # cross-modal instruction tuning: "unfreezes all parameters"
        lr={"*": 2e-5},  # not given in the paper; our choice: Ola's SFT rate (its A.2)
        steps=20000,  # not given in the paper; our choice, as stage 1
        batch=256),  # not given in the paper; our choice, as stage 1 (two microbatches of 128, stage file)
}
