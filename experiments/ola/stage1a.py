"""Ola stage 1a, image projector alignment: only the vision connector (Local-Global pooling + MLP)
learns, on image captions; LLM and both encoders are frozen (paper: lr 1e-3, 1 epoch of captions).

    python -m omnijax.recipe --recipe experiments/ola/recipe.py:tiny --workdir W   # the whole recipe
    python -m omnijax.train --config experiments/ola/stage1a.py:7b --workdir W     # this stage alone
"""

from experiments import common

STEPS = {"tiny": 30, "7b": 2000}


def get_config(arg="tiny"):
    preset = common.check_preset(arg or "tiny")
    c = common.stage_config(preset, "ola_1a", common.omni_model(preset))
    c.init_from = common.pretrained(preset, ("llm", "vision", "audio"))  # both connectors start fresh
    common.set_data(c, preset, {"image_caption": 1.0})
    c.trainable = [("vision_connector/.*", common.schedule(1e-3 if preset == "7b" else 3e-3)), (".*", None)]
    c.num_steps = STEPS[preset]
    return c
