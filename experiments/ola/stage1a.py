"""Ola stage 1a, image projector alignment: only the vision connector (Local-Global pooling + MLP)
learns, on image captions; LLM and both encoders are frozen (the paper's numbers: ``paper.STAGES['1a']``).

    python -m omnijax.recipe --recipe experiments/ola/recipe.py:tiny --workdir W   # the whole recipe
    python -m omnijax.train --config experiments/ola/stage1a.py:7b --workdir W     # this stage alone
    python -m omnijax.train --config experiments/ola/stage1a.py:tiny,steps=60 ...  # knobs: common.parse_arg
"""

from experiments import common
from experiments.ola.paper import STAGES

PAPER = STAGES["1a"]


def get_config(arg="tiny"):
    a = common.parse_arg(arg)
    c = common.stage_config(a.preset, "ola_1a", common.omni_model(a.preset), batch=PAPER.batch)
    c.init_from = common.pretrained(a.preset, ("llm", "vision", "audio"))  # both connectors start fresh
    common.set_data(c, a.preset, {"image_caption": 1.0})
    c.trainable = common.trainable(PAPER.lr)
    c.num_steps = PAPER.num_steps
    return common.finish(c, a, tiny)


def tiny(c):
    c.trainable = common.trainable({"vision_connector": 3e-3, "*": None})
    c.num_steps = 30
