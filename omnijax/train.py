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

A list or dict field takes a Python literal: ``--config.trainable="[('vision_connector/.*', {'lr': 1e-3}),
('.*', None)]"``, ``--config.data.sources="[{'name': 'asr', 'paths': '@data/asr/shards-*'}]"``,
``--config.data.pipeline="{'max_bad_fraction': 0.05}"`` (the whole field is replaced).

Multi-host: start one process per host; on TPU pods and SLURM/Open MPI GPU clusters JAX finds its
peers, elsewhere set ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
Exit status: 0 finished or preempted, 2 a config error or damaged input (a shard that does not read, too many
bad records; one line, ``OMNIJAX_DEBUG=1`` for the traceback), 3 non-finite loss.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull")
_CONFIG = config_flags.DEFINE_config_file("config", None, "stage config file, FILE[:arg] (calls get_config(arg))")
_WORKDIR = flags.DEFINE_string("workdir", None, "the stage's working directory (resumed if it has checkpoints)")
_ROOT_FLAGS = {"corpus": ("corpus", "OMNIJAX_CORPUS"), "hf": ("hf-root", "OMNIJAX_HF_ROOT"),
               "data": ("data-root", "OMNIJAX_DATA_ROOT")}
for _root, (_flag, _env) in _ROOT_FLAGS.items():
    flags.DEFINE_string(_flag, None, f"the '@{_root}' root of the config's paths (default ${_env}, else the built-in "
                                     "default)")


def usage() -> str:
    """The module docstring and this CLI's flags (``--help``)."""
    ours = ("config", "workdir", *(flag for flag, _ in _ROOT_FLAGS.values()))
    return __doc__ + "\nflags:\n" + "\n".join(f"  --{name}: {flags.FLAGS[name].help}" for name in ours)


def main(argv: list[str] | None = None) -> int:
    from omnijax.errors import DamagedFileError, report
    from omnijax.training.config import config_flag_error, literal_overrides, override_literal

    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(usage())
        return 0
    argv, literals = literal_overrides(argv)
    saved, sys.argv = sys.argv, argv  # config_flags finds the --config.* overrides in sys.argv
    try:
        flags.FLAGS.unparse_flags()  # a second main() in one process starts from the defaults
        flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:  # bad flag, or a --config.* field
        return report(e, message=config_flag_error(e, argv))
    finally:
        sys.argv = saved
    if _CONFIG.value is None or not _WORKDIR.value:
        print("error: --config and --workdir are required; see --help", file=sys.stderr)
        return 2
    try:
        for key, text in literals:
            override_literal(_CONFIG.value, key, text)
    except ValueError as e:
        return report(e)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from data_pipelines.pipeline_config import BadRecordsError
    from omnijax.launch import run
    from omnijax.training.config import ROOTS, resolve_roots
    from omnijax.training.checkpointing import CheckpointError
    from omnijax.training.stages import StageConfigError
    from omnijax.training.trainer import NonFiniteLossError

    roots = {root: flags.FLAGS[flag].value or os.environ.get(env) or ROOTS[root]
             for root, (flag, env) in _ROOT_FLAGS.items()}
    try:
        result = run(resolve_roots(_CONFIG.value, roots), _WORKDIR.value)
    except (StageConfigError, CheckpointError, DamagedFileError, BadRecordsError) as e:
        return report(e)
    except NonFiniteLossError as e:
        return report(e, 3)
    print(f"stage {_CONFIG.value.name!r}: {result.status} at step {result.step} ({_WORKDIR.value})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
