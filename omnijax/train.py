"""Train one stage.

    python -m omnijax.train --config experiments/examples/tiny_connectors.py[:arg] --workdir W \\
        [--config.num_steps=20 --config.mesh.fsdp=2 ...] [--corpus DIR] [--hf-root DIR] [--data-root DIR]

The config file's ``get_config(arg)`` gives the stage (``omnijax.training.config``); ``--config.*``
flags override its fields. Paths in it that start at a root (``'@corpus/...'``, ``'@hf/...'``,
``'@data/...'``) are read under ``--corpus``, ``--hf-root``, ``--data-root`` (defaults
``$OMNIJAX_CORPUS``, ``$OMNIJAX_HF_ROOT``, ``$OMNIJAX_DATA_ROOT``, else ``workdirs/omni-synth``,
``checkpoints/hf``, ``data``). The run resumes from the newest complete checkpoint in W, writes
``W/metrics.jsonl``, ``W/param_groups.json``, ``W/stage.json``, TensorBoard events in
``W/tensorboard`` and checkpoints in ``W/checkpoints``. On SIGTERM it saves and exits 0.

Multi-host: start one process per host; on TPU pods and SLURM/Open MPI GPU clusters JAX finds its
peers, elsewhere set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
Exit status: 0 finished or preempted, 2 config error, 3 non-finite loss.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "stage config file, FILE[:arg] (calls get_config(arg))")
_WORKDIR = flags.DEFINE_string("workdir", None, "the stage's working directory (resumed if it has checkpoints)")
_ROOT_FLAGS = {"corpus": ("corpus", "OMNIJAX_CORPUS"), "hf": ("hf-root", "OMNIJAX_HF_ROOT"),
               "data": ("data-root", "OMNIJAX_DATA_ROOT")}
for _root, (_flag, _env) in _ROOT_FLAGS.items():
    flags.DEFINE_string(_flag, None, f"the '@{_root}' root of the config's paths (default ${_env}, else the built-in "
                                     "default)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    try:
        flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:  # bad flag, or a --config.* field
        print(f"error: {type(e).__name__}: {e} (a --config.* flag must name a field of the stage config, with a "
              f"value of its type)\n\n{__doc__}", file=sys.stderr)
        return 2
    if _CONFIG.value is None or not _WORKDIR.value:
        print(f"error: --config and --workdir are required\n\n{__doc__}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from omnijax.launch import run
    from omnijax.training.config import ROOTS, resolve_roots
    from omnijax.training.checkpointing import CheckpointError
    from omnijax.training.stages import StageConfigError
    from omnijax.training.trainer import NonFiniteLossError

    roots = {root: flags.FLAGS[flag].value or os.environ.get(env) or ROOTS[root]
             for root, (flag, env) in _ROOT_FLAGS.items()}
    try:
        result = run(resolve_roots(_CONFIG.value, roots), _WORKDIR.value)
    except StageConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(f"stage {_CONFIG.value.name!r}: {result.status} at step {result.step} ({_WORKDIR.value})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
