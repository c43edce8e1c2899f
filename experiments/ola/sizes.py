"""Parameters per component of the Ola recipe's model, counted as Ola's release holds them
(``omnijax.hf.ola.COMPONENTS``: the LLM, OryxViT, mm_projector, the Whisper-large-v3 encoder, BEATs, the speech
projector), shapes only (nothing allocated):

    python -m experiments.ola.sizes [ARG]      # ARG default '7b,vision=oryx,audio=dual', as the stage files read it

The same counts of Ola's reference modules at the release's sizes, and where each size comes from: RESULTS.md.
"""

import sys

import jax

from experiments.ola import stage3b
from omnijax.hf import ola
from omnijax.models.omni import logical_specs, OmniModel
from omnijax.training.omni_task import omni_config


def sizes(arg: str = "7b,vision=oryx,audio=dual") -> dict[str, int]:
    """Parameters per Ola component of stage 3b's model (every stage has the same model) at ``arg``."""
    cfg = omni_config(stage3b.get_config(arg), platform="cpu")
    _, abstract = logical_specs(OmniModel(cfg))
    return ola.component_sizes(cfg, abstract)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    counts = sizes(*args[:1])
    for name, n in counts.items():
        print(f"{name:18s} {n:>15,d}")
    print(f"{'total':18s} {sum(counts.values()):>15,d}")
    return 0


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    sys.exit(main())
