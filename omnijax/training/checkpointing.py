"""Train-state checkpoints: Orbax ``CheckpointManager``, async, keep-N, restorable onto any mesh.

Layout: ``WORKDIR/checkpoints/<step>/`` with one Orbax item each for

    params     the parameter tree                       (``ocp.args.PyTreeSave``)
    opt_state  the optimizer state (frozen groups: none) (``ocp.args.PyTreeSave``)
    train      step, base RNG key, non-finite counters   (``ocp.args.PyTreeSave``)
    data       the data iterator's position              (the iterator's own handler and args:
                                                           JSON for ``RandomBatches``, Grain's
                                                           ``grain.checkpoint.CheckpointHandler`` /
                                                           ``CheckpointSave`` for a Grain iterator)

Orbax writes a step into a temporary directory and renames it when complete, so a run killed
mid-save leaves no step that ``latest_step`` would pick (the leftover is cleaned up on the next
start). A step that cannot be read (a file truncated or lost: a crash on a cluster's file system) is moved
aside to ``WORKDIR/damaged_checkpoints/`` -- kept for inspection, never deleted -- with one line saying
which step, which file and why, and the next older step is restored (``restore_newest``); when none can be
read, ``CheckpointError``. Restoring takes the *target* shardings (``ShapeDtypeStruct`` with ``sharding``), so a run
may resume on a different mesh. ``final_params`` reads only the params of a finished stage, which
is how the next stage starts (with a fresh optimizer); ``verify_final`` reads them whole first (the recipe
runner does, before it hands a stage on), and moves a damaged final step aside so that the stage finishes
again. ``loadable_params`` is what a model loaded from a stage workdir holds: the final step's params, or
those of the newest step that can be read, saying so.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import re
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from omnijax.training.stages import StageConfigError
from omnijax.training.step import TrainState

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # unreadable steps are moved here, not deleted
TREE_ITEMS = ("params", "opt_state", "train")
STAGE_FILE = "stage.json"  # written by the trainer: the stage's name and length
READ_PIECE_BYTES = 2**30  # checking that a step's params can be read holds at most this much of them at a time


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir that has some could be read."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _cause(err: BaseException) -> str:
    """The line of a restore error, or of the errors behind it, that names what is wrong (TensorStore's "Error
    reading <array> in OCDBT database at local file <path>: ..."), not Orbax's wrappers around it."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    lines = [line.strip() for e in chain for line in str(e).splitlines() if line.strip()]
    named = [line for line in lines if "Error reading" in line or "No such file" in line or "not found" in line]
    line = (named or lines or [type(chain[0]).__name__])[0]
    return re.sub(r" \[tensorstore_spec=.*", "", line)[:400]  # TensorStore appends its whole spec


def _train_meta(state: TrainState) -> dict:
    return {"step": state.step, "rng": state.rng, "nonfinite": state.nonfinite, "skipped": state.skipped}


def _type_handlers():
    """Orbax's array handling, except that arrays under 1 MiB per replica are not split for
    replica-parallel writes: the split costs one small device op (one compilation) per slice, which
    dominates saving small models (seconds on CPU) and buys nothing for small arrays."""
    th = ocp.type_handlers
    return th.create_type_handler_registry(
        (int, th.ScalarHandler()), (float, th.ScalarHandler()), (np.number, th.ScalarHandler()),
        (np.ndarray, th.NumpyHandler()), (str, th.StringHandler()),
        (jax.Array, th.ArrayHandler(min_slice_bytes_for_replica_parallel=2**20)))


def _manager(workdir: str, options: ocp.CheckpointManagerOptions, data_handler=None) -> ocp.CheckpointManager:
    registry = _type_handlers()
    handlers = {name: ocp.PyTreeCheckpointHandler(type_handler_registry=registry) for name in TREE_ITEMS}
    if data_handler is not None:
        handlers["data"] = data_handler
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def _reader(workdir: str) -> ocp.CheckpointManager:
    """A read-only manager of a stage's checkpoints. Orbax says at warning level, on every open, that a
    read-only manager saves nothing; generation and evaluation open checkpoints often, so that is dropped."""
    with _absl_errors_only():
        return _manager(workdir, ocp.CheckpointManagerOptions(read_only=True, create=False))


def _save(tree):
    return ocp.args.PyTreeSave(tree)


def _restore(target):
    return ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


class Checkpoints:
    """The checkpoints of one workdir. ``every``: save cadence in steps; ``keep``: newest kept;
    ``data_handler``: the Orbax handler of the data iterator's item (``data.checkpoint_handler()``)."""

    def __init__(self, workdir: str, *, every: int, keep: int | None, data_handler, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, create=True)
        self.manager = _manager(workdir, options, data_handler)
        self.workdir = workdir

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_newest(self, target: TrainState, data, say=print) -> tuple[int | None, TrainState | None]:
        """The newest step that can be read -> ``(step, state)``, or ``(None, None)`` when there is no step.
        Each unreadable step is moved aside (``DAMAGED_DIR``) with one line through ``say``; ``CheckpointError``
        when steps exist and none can be read."""
        steps, damaged = sorted(self.manager.all_steps(), reverse=True), False
        try:
            for step in steps:
                try:
                    with _absl_errors_only():
                        return step, self.restore(step, target, data)
                except Exception as err:  # noqa: BLE001 - Orbax and TensorStore raise many types for a damaged step
                    damaged = True
                    aside = move_aside(self.workdir, step)
                    self.manager.reload()
                    say(f"checkpoint step {step} of {self.workdir} cannot be read ({_cause(err)}); moved it to "
                        f"{aside} and trying the next older step")
        finally:
            if damaged:
                collect_abandoned_reads()
        if steps:
            raise _none_readable(self.workdir, steps)
        return None, None

    def save(self, step: int, state: TrainState, data, *, force: bool = False) -> bool:
        """Start saving ``state`` as ``step`` (when the cadence or ``force`` says so); returns once
        the arrays are copied off the devices, so the state may be donated right after."""
        args = ocp.args.Composite(params=_save(state.params), opt_state=_save(state.opt_state),
                                  train=_save(_train_meta(state)), data=data.save_args())
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, target: TrainState, data) -> TrainState:
        """The state saved as ``step``, laid out as ``target`` (abstract arrays with shardings);
        ``data`` is put back at its saved position."""
        args = ocp.args.Composite(params=_restore(target.params), opt_state=_restore(target.opt_state),
                                  train=_restore(_train_meta(target)), data=data.restore_args())
        out = self.manager.restore(step, args=args)
        data.restored(out.data)
        t = out.train
        return TrainState(step=t["step"], params=out.params, opt_state=out.opt_state, rng=t["rng"],
                          nonfinite=t["nonfinite"], skipped=t["skipped"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def move_aside(workdir: str, step: int) -> str:
    """Move step ``step`` out of the checkpoints to ``DAMAGED_DIR/<step>-<time>`` (process 0; every process
    waits) -> where it went."""
    name = os.path.join(os.path.abspath(workdir), DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    aside, n = name, 1
    while os.path.exists(aside):  # the same step moved aside twice in a second
        n += 1
        aside = f"{name}-{n}"
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(os.path.join(checkpoint_dir(workdir), str(step)), aside)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"omnijax_checkpoint_aside_{step}")
    return aside


def _none_readable(workdir: str, steps) -> CheckpointError:
    return CheckpointError(f"none of the checkpoints of {workdir} (steps {sorted(steps, reverse=True)}) can be "
                           f"read; they are in {os.path.join(os.path.abspath(workdir), DAMAGED_DIR)}: delete the "
                           "workdir's checkpoints to start the stage again")


def moved_aside(workdir: str) -> list[tuple[int, str]]:
    """The steps in ``DAMAGED_DIR`` (step, folder), newest step first."""
    folder = os.path.join(os.path.abspath(workdir), DAMAGED_DIR)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    found = [(int(n.split("-")[0]), os.path.join(folder, n)) for n in names if n.split("-")[0].isdigit()]
    return sorted(found, reverse=True)


def _read_params(manager: ocp.CheckpointManager, step: int) -> None:
    """Read every array of step ``step``'s params onto the host, at most ``READ_PIECE_BYTES`` at a time (whole
    arrays), and drop them; raises what a damaged file raises."""
    with _absl_errors_only():
        stored = manager.item_metadata(step)["params"]
    leaves = jax.tree_util.tree_flatten_with_path(stored)[0]
    if not leaves:
        raise CheckpointError(f"step {step} holds no params")
    pieces, size = [[]], 0
    for path, meta in leaves:
        nbytes = math.prod(meta.shape) * np.dtype(meta.dtype).itemsize
        if pieces[-1] and size + nbytes > READ_PIECE_BYTES:
            pieces.append([])
            size = 0
        pieces[-1].append((path, meta))
        size += nbytes
    for piece in pieces:
        tree = {}
        for path, meta in piece:
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key.key, {})
            node[path[-1].key] = meta
        args = ocp.args.PyTreeRestore(tree, partial_restore=True, restore_args=jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
        with _absl_errors_only():
            manager.restore(step, args=ocp.args.Composite(params=args))


def collect_abandoned_reads() -> None:
    """Orbax reads a step's arrays in concurrent asyncio tasks; when one fails, the errors of the others are never
    retrieved, and asyncio logs each ("Task exception was never retrieved"; "coroutine ... was never awaited")
    whenever the garbage collector reaches it -- later, inside whatever runs next. A damaged step is reported once,
    by the caller's line: after a failed read, collect those tasks here, asyncio's logger and warnings quiet."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()
    finally:
        logger.setLevel(level)


def _damage(manager: ocp.CheckpointManager, step: int) -> str | None:
    """Why step ``step``'s params cannot be read (``_read_params``), or None when they can."""
    try:
        _read_params(manager, step)
    except Exception as err:  # noqa: BLE001 - Orbax and TensorStore raise many types for a damaged step
        return _cause(err)
    return None


def latest_step(workdir: str) -> int | None:
    """The newest complete step of a stage workdir (None: none, or no checkpoints folder)."""
    if not is_stage_workdir(workdir):
        return None
    manager = _reader(workdir)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def is_stage_workdir(path: str) -> bool:
    return os.path.isdir(checkpoint_dir(path))


def final_step(workdir: str) -> int:
    """The last step of a finished stage's workdir; ``StageConfigError`` when it has no complete
    checkpoint or stopped before its last step."""
    manager = _reader(workdir)
    try:
        step = manager.latest_step()
    finally:
        manager.close()
    if step is None:
        raise StageConfigError(f"init_from {workdir}: the stage workdir has no complete checkpoint; run that stage "
                               "first")
    stage = _stage(workdir)
    if stage and step < stage["num_steps"]:
        raise StageConfigError(f"init_from {workdir}: stage {stage['name']!r} stopped at step {step} of "
                               f"{stage['num_steps']}; finish it first (run it again with the same workdir)")
    return step


def _stage(workdir: str) -> dict | None:
    """The workdir's ``STAGE_FILE`` (the stage's name and length), None when it has none."""
    stage_file = os.path.join(workdir, STAGE_FILE)
    if not os.path.exists(stage_file):
        return None
    with open(stage_file) as f:
        return json.load(f)


def verify_final(workdir: str, say=print) -> bool:
    """Whether the final step of a finished stage (``final_step``) can be handed on: every array of its params
    read (``_read_params``). When not, the step is moved aside with one line through ``say`` -> False: the stage
    must run again to finish, from its newest readable step; ``CheckpointError`` when it has no other step."""
    step = final_step(workdir)
    manager = _reader(workdir)
    try:
        cause = _damage(manager, step)
    finally:
        manager.close()
    if cause is None:
        return True
    collect_abandoned_reads()
    aside = move_aside(workdir, step)
    say(f"checkpoint step {step} of {workdir} cannot be read ({cause}); moved it to {aside}")
    if latest_step(workdir) is None:
        raise _none_readable(workdir, [step])
    return False


def stored_params(workdir: str, groups=None) -> dict:
    """The final step's params as stored (``final_step``): ``{group: tree of array metadata with .shape}``, only
    ``groups`` (those of them it holds) when given; read before restoring into a target of another shape."""
    step = final_step(workdir)
    manager = _reader(workdir)
    try:
        with _absl_errors_only():  # Orbax warns that it has no handler for the other items ('data')
            stored = dict(manager.item_metadata(step)["params"])
    finally:
        manager.close()
    return {g: t for g, t in stored.items() if groups is None or g in groups}


def final_params(workdir: str, target_params, groups=None):
    """The params of a finished stage (``final_step``), laid out as ``target_params``; with ``groups``
    (top-level group names) only those are read, so the other groups may differ in shape from the
    target's (``StageConfigError`` naming a group the stage does not hold). A final step that cannot be read is
    moved aside: ``CheckpointError`` saying so and that the stage must run again to finish."""
    step = final_step(workdir)
    manager = _reader(workdir)
    try:
        if groups is None:
            args = _restore(target_params)
        else:
            with _absl_errors_only():  # Orbax warns that it has no handler for the other items ('data')
                stored = list(manager.item_metadata(step)["params"].keys())
            missing = sorted(set(groups) - set(stored))
            if missing:
                raise StageConfigError(f"init_from {workdir} has no group {missing[0]!r} (it holds "
                                       f"{', '.join(stored)})")
            target = {g: target_params[g] for g in groups}
            args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                          partial_restore=True)
        try:
            return manager.restore(step, args=ocp.args.Composite(params=args)).params
        except Exception:
            cause = _damage(manager, step)  # None: the step is sound and the error is the caller's (a target's shape)
            if cause is None:
                raise
    finally:
        manager.close()
    collect_abandoned_reads()
    raise CheckpointError(f"init_from {workdir}: its final checkpoint, step {step}, cannot be read ({cause}); moved "
                          f"it to {move_aside(workdir, step)}; run that stage again with the same workdir to finish it "
                          "from its newest readable step")


def loadable_params(workdir: str, target_params, say=print):
    """The params of a finished stage for a model to load (laid out as ``target_params``): its final step's,
    or, when that cannot be read, the newest step's that can -- then one line through ``say`` names the step
    loaded and each step skipped and why (moved aside as ``restore_newest`` does; also a final step moved aside
    before). ``StageConfigError`` for a stage that stopped before its last step, as ``final_step``;
    ``CheckpointError`` when no step can be read."""
    manager, skipped = _reader(workdir), {}
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        length = (_stage(workdir) or {}).get("num_steps", 0)
        earlier = [(s, where) for s, where in moved_aside(workdir) if (not steps or s > steps[0]) and s >= length]
        if not earlier:
            final_step(workdir)
        skipped.update({s: f"step {s} was moved to {where} before, unreadable" for s, where in earlier})
        for step in steps:
            try:
                params = manager.restore(step, args=ocp.args.Composite(params=_restore(target_params))).params
            except Exception:
                cause = _damage(manager, step)
                if cause is None:
                    raise
                skipped[step] = f"step {step} cannot be read ({cause}), moved it to {move_aside(workdir, step)}"
                manager.reload()
                continue
            if skipped:
                say(f"{workdir}: loaded checkpoint step {step}, not the stage's final step: "
                    f"{'; '.join(skipped.values())}")
            return params
    finally:
        manager.close()
        if skipped:
            collect_abandoned_reads()
    raise _none_readable(workdir, skipped)


@contextlib.contextmanager
def _absl_errors_only():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def abstract_with_shardings(tree, shardings):
    """``ShapeDtypeStruct``s carrying the target shardings (what ``restore`` lays arrays out as)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
