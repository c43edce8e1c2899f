"""Ola's training section (arXiv 2502.04328) as numbers: one row per stage, each number with where the paper
gives it -- "A.2" is the appendix's Training Details (per stage), "§" the main text; where the two differ, A.2's
figure, the other named. The stage files take their `7b` settings from here; the tiny preset's own are in each
stage file's ``tiny(c)``.

Not rows of the table, and what the `7b` preset does instead:
- maximum length: 16384 tokens an example (§4.1; A.2 stage 2 "16k"); the preset packs examples into rows of
  4096 tokens (``common.stage_config``).
- video: at most 64 frames (A.2 stage 2), the preset's ``video_frames``; audio: at most 25 chunks of 30 s
  (§4.1; A.2 stage 3: 20), the preset's 8 audio slots a row.
"""

from experiments.common import PaperStage

STAGES = {
    "1a": PaperStage(  # image projector alignment (§3.2 "MLP alignment")
        lr={"vision_connector": 1e-3,  # A.2 "the overall learning rate to 1e-3" (§4.1 the same)
            "*": None},  # A.2 "we unfreeze the parameters for the connector while keeping other parameters frozen"
        samples=808_000,  # A.2 "808k image captioning data collected from the LAION datasets" (§3.3: 800k)
        batch=256),  # A.2 "We set the training batch size to 256"; steps ceil(808_000 / 256) = 3157
    "1b": PaperStage(  # image-text supervised fine-tuning
        lr={"vision": 2e-6,  # not given in the paper (one "overall" rate); our choice: a tenth for the pretrained
                             # SigLIP, as LLaVA-style recipes give the vision tower its own lower rate
            "*": 2e-5},  # A.2 "the overall learning rate to 2e-5"; §3.2 "we unfreeze all the parameters"
        samples=7_300_000,  # A.2 "7.3 million image-text data pairs" (§3.3 "7.3M image training data")
        batch=128),  # A.2 "We set the batch size to 128" (§4.1: 256 "for fine-tuning"); steps ceil(7.3M / 128) = 57032
    "2": PaperStage(  # image + video
        lr={"vision|audio": None,  # §3.2 "freezing the vision encoder in this stage"; no audio in this stage
            "*": 2e-5},  # A.2 "the overall learning rate to 2e-5" (§4.1: 2e-5 for "multi-image training")
        samples=2_700_000,  # A.2 "2.7 million, comprising 800k image-text pairs ... and 1.9M video data"
        batch=256),  # A.2 "We set the training batch size to 256"; steps ceil(2_700_000 / 256) = 10547
    "3a": PaperStage(  # speech projector alignment
        lr={"audio_connector": 1e-3,  # A.2 "the overall learning rate to 1e-3"
            "*": None},  # A.2 "we unfreeze the parameters of the speech adapter while freezing the other parameters"
        samples=370_000,  # A.2 "conducted on the 370k LibriTTS dataset"
        batch=256),  # A.2 "We set the batch size to 256"; steps ceil(370_000 / 256) = 1446
    "3b": PaperStage(  # joint video-audio training
        lr={"vision|audio": None,  # not given for stage 3; our choice: SigLIP stays frozen as in stage 2 (§3.2),
                                   # and so does Whisper, as in 3a
            "*": 1e-5},  # A.2 "the overall learning rate is set to 1e-5" (§4.1 "1e-5 for video-audio training")
        samples=600_000 + 1_100_000 + 243_000,  # A.2 "600k image data, 1.1M audio data, and 243k video-audio"
                                                # (§3.3: 400k image, 1.1M audio, 324k video-audio, 200k spoken)
        batch=128),  # A.2 "The training batch size is set to 128"; steps ceil(1_943_000 / 128) = 15180
}
