"""Ola stage 3a, speech projector alignment: only the audio connector (frame stacking + MLP) learns, on
speech recognition; LLM and both encoders are frozen (paper: lr 1e-3, ASR data).

Tiny: the projector starts fresh (stage 1a made it, untrained) in front of an LLM that stages 1b and 2 moved.
Held-out ASR WER after this stage, by steps and learning rate (single runs from one stage 2): 150 steps at
3e-3 101.5, 400 at 3e-3 85.9, 150 at 1e-2 89.5 (another run 75.2), 400 at 1e-2 73.7, 800 at 1e-2 52.6, 150 at
3e-2 98.3. Stage 3b decides the end result more than this one: 3b for 600 steps from the 150-step 3e-3
projector ended at WER 43.3, from the 400-step 1e-2 one at 38.6, from the 800-step one also at 38.6. From the
shipped checkpoints, after stages 1b and 2 of the demo: 100 steps at 1e-2 103.6 (3b then 31.0), 150 steps
79.0, 88.9 and 87.0 (from three stage 2s; 3b then 25.6, 26.3 and 32.2 with different 3b mixtures,
benchmarks/RESULTS.md section 7.5). So: 150 steps at 1e-2, and the time to stage 3b."""

from experiments import common

STEPS = {"tiny": 150, "7b": 3000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "ola_3a", common.omni_model(preset))
    c.init_from = common.PREVIOUS
    common.set_data(c, preset, {"asr": 1.0})
    c.trainable = [("audio_connector/.*", common.schedule(1e-3 if preset == "7b" else 1e-2)), (".*", None)]
    c.num_steps = STEPS[preset]
    return c
