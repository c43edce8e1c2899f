"""The trainer: one stage, top to bottom.

``setup(config)``: check the config, build the mesh and the task, label every parameter by the
stage's rules, lay out shardings and the optimizer -- every config error surfaces here, before
anything compiles. ``run(config, workdir)``: resume from the newest complete checkpoint, or start
from a fresh init (+ ``init_from``) with a fresh optimizer; write the param-group table; then step:
feed this process's rows of the global batch, log (process 0), checkpoint; save the last step.

The trainer knows stage workdirs, tasks and the random in-memory source, nothing above them: what a
layer above gives it comes in as arguments -- ``load_init`` reads an ``init_from`` model directory (HF
or omnijax), ``data`` is the stage's batches (the Grain pipeline). ``omnijax.launch`` wires them.

SIGTERM (preemption) makes the loop save at the current step and return ``status='preempted'``
(the CLI then exits 0). ``max_nonfinite_in_a_row`` skipped steps in a row raise
``NonFiniteLossError`` before anything of that step is saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from omnijax import sharding
from omnijax.training import optimizer as opt_lib
from omnijax.training.checkpointing import (STAGE_FILE, Checkpoints, abstract_with_shardings, final_params,
                                            is_stage_workdir, stored_params)
from omnijax.training.config import batch_axes, check_config, init_sources
from omnijax.training.data_source import RandomBatches
from omnijax.training.metrics import MetricsLogger, format_group_table
from omnijax.training.stages import FROZEN, StageConfigError, assign_labels, decay_mask, path_str
from omnijax.training.step import TrainState, make_train_step, state_shardings
from omnijax.training.task import Task, build_task


class NonFiniteLossError(RuntimeError):
    pass


@dataclasses.dataclass
class Result:
    status: str  # 'finished' | 'preempted'
    step: int
    state: TrainState
    metrics: list[dict]  # the rows logged by this call (process 0; empty elsewhere)


def _cast_frozen(tree, trainable, dtype):
    if dtype is None:
        return tree

    def cast(x, t):
        if t:
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree.map(cast, tree, trainable)


MOVE = "->"  # an init_from item 'SOURCE/PATH->MODEL/PATH': a sub-tree of the source lands at another path


def _paths(tree) -> dict:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _sub(tree, path: str):
    for key in path.split("/"):
        tree = tree[key] if isinstance(tree, dict) and key in tree else None
    return tree


def _children(tree, path: str) -> str:
    sub = _sub(tree, path.rpartition("/")[0]) if "/" in path else tree
    return ", ".join(sub) if isinstance(sub, dict) else "no sub-trees"


def _check_groups_in_model(src, groups, abstract, stage: str) -> None:
    for group in groups:
        if group not in abstract:
            raise StageConfigError(f"stage {stage!r}: init_from {src} holds group {group!r}, which the model "
                                   f"does not have (groups: {', '.join(abstract)})")


def _moves(src: str, groups, tree, abstract, stage: str) -> dict[str, Any]:
    """``{model path: sub-tree of the source}`` of an init_from entry: each group under its own name, or an item
    ``'a/b->c/d'`` the source's ``a/b`` at the model's ``c/d`` (Ola's dual audio: ``'audio->audio/whisper'``)."""
    items = groups if groups is not None else tuple(tree)
    pairs = [tuple(p.strip("/ ") for p in item.split(MOVE)) if MOVE in item else (item, item) for item in items]
    _check_groups_in_model(src, [to.partition("/")[0] for _, to in pairs], abstract, stage)
    out = {}
    for item, (frm, to) in zip(items, pairs):
        sub = _sub(tree, frm)
        if sub is None:
            what = f"{frm!r}" if "/" in frm else f"group {frm!r}"
            raise StageConfigError(f"stage {stage!r}: init_from {src} has no {what} (it holds {_children(tree, frm)})")
        if _sub(abstract, to) is None:
            raise StageConfigError(f"stage {stage!r}: init_from {src}: {item!r} lands at {to!r}, which the model "
                                   f"does not have (it holds {_children(abstract, to)})")
        out[to] = sub
    return out


def _check_group(src: str, group: str, tree, target, stage: str) -> None:
    """``tree`` (the source's, for the model's ``group``, a top-level group or a ``MOVE`` destination) against the
    model's ``target``; a source whose tree is the model's one level down or up (a Whisper checkpoint for Ola's
    dual audio, or the reverse) is told the ``MOVE`` item that imports it."""
    got, want = _paths(tree), _paths(target)
    if set(got) != set(want):
        missing, extra = sorted(set(want) - set(got))[:3], sorted(set(got) - set(want))[:3]
        fix = "the source is a different architecture"
        down = [k for k, t in target.items() if set(_paths(t)) == set(got)] if isinstance(target, dict) else []
        up = [k for k, t in tree.items() if set(_paths(t)) == set(want)] if isinstance(tree, dict) else []
        if down:
            fix = (f"the source's {group} is the model's {group}/{down[0]}: import it with "
                   f"({src!r}, ('{group}{MOVE}{group}/{down[0]}',))")
        elif up:
            fix = (f"the model's {group} is the source's {group}/{up[0]}: import it with "
                   f"({src!r}, ('{group}/{up[0]}{MOVE}{group}',))")
        raise StageConfigError(f"stage {stage!r}: init_from {src}: {group!r} does not match the model "
                               f"(missing {missing}, unexpected {extra}); {fix}")
    bad = [(k, tuple(got[k].shape), tuple(want[k].shape)) for k in want if tuple(got[k].shape) != tuple(want[k].shape)]
    if bad:
        k, g, w = bad[0]
        raise StageConfigError(f"stage {stage!r}: init_from {src}: {group}/{k} has shape {g}, the model wants {w} "
                               f"({len(bad)} mismatched); set the model's sizes to the source's")


def _put(tree: dict, path: str, value) -> dict:
    """``tree`` with ``value`` at ``path`` (dicts along it copied, ``tree`` left as it was)."""
    key, _, rest = path.partition("/")
    return {**tree, key: _put(tree[key], rest, value) if rest else value}


# Reads an ``init_from`` source that is not a stage workdir (a model directory) -> its params:
# ``load_init(path, mesh, rules)``.
LoadInit = Callable[[str, Any, Any], Any]


def initial_params(c, task: Task, abstract, shardings, mesh, rules, key: jax.Array, load_init: LoadInit | None = None):
    """Params at the start of a stage: the groups (or ``MOVE`` sub-trees) ``init_from`` sources hold, the rest
    freshly initialised (only the groups not loaded whole are computed). A source that is not a stage workdir, or
    whose sub-trees move, is read by ``load_init`` (a finished omni stage's workdir is a model directory too)."""
    loaded: dict[str, Any] = {}  # model path -> params
    for src, groups in init_sources(c):
        moved = any(MOVE in g for g in groups or ())
        if is_stage_workdir(src) and not moved:
            target = abstract_with_shardings(abstract, shardings)
            if groups is not None:
                _check_groups_in_model(src, groups, abstract, c.name)
            for group, meta in stored_params(src, groups).items():
                if group in abstract:
                    _check_group(src, group, meta, abstract[group], c.name)
            tree = final_params(src, target, groups)
        elif load_init is None:
            raise StageConfigError(f"stage {c.name!r}: init_from {src} is not a stage workdir (or moves sub-trees, "
                                   f"{MOVE}), and this trainer was given no reader of model directories (load_init); "
                                   "run the stage with omnijax.launch.run, which reads HF and omnijax model "
                                   "directories")
        else:
            tree = load_init(src, mesh, rules)
        tree = _moves(src, groups, tree, abstract, c.name)
        for path, sub in tree.items():
            target = _sub(abstract, path)
            _check_group(src, path, sub, target, c.name)
            loaded[path] = jax.tree.map(lambda x, a: x.astype(a.dtype), sub, target)
        if jax.process_index() == 0:
            items = groups if groups is not None else tuple(tree)
            print(f"stage {c.name!r}: init_from {src}: groups {', '.join(items)}", flush=True)
    fresh_groups = [g for g in abstract if g not in loaded]
    fresh = {}
    if fresh_groups:
        if jax.process_index() == 0:
            kept = {g: [p for p in loaded if p.startswith(f"{g}/")] for g in fresh_groups}
            names = [f"{g} (but {', '.join(kept[g])})" if kept[g] else g for g in fresh_groups]
            print(f"stage {c.name!r}: fresh init: groups {', '.join(names)}", flush=True)
        def init_fresh(k):  # the model's init traced once; the groups loaded are left out of the program
            every = task.init(k)
            return {g: every[g] for g in fresh_groups}

        fresh = jax.jit(init_fresh, out_shardings={g: shardings[g] for g in fresh_groups})(key)
    params = {g: loaded[g] if g in loaded else fresh[g] for g in abstract}
    for path, sub in loaded.items():
        if "/" in path:
            params = _put(params, path, sub)
    return params


def process_rows(batch_sharding: NamedSharding, batch: int) -> tuple[int, int]:
    """The contiguous rows of the global batch this process's devices hold."""
    spans = {(s[0].start or 0, batch if s[0].stop is None else s[0].stop)
             for s in batch_sharding.addressable_devices_indices_map((batch,)).values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError(f"this process's batch rows {sorted(spans)} are not contiguous; use a mesh whose batch "
                         "axes put each process's devices next to each other")
    return lo, hi


def _host(x) -> np.ndarray:
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


class _Preemption:
    """SIGTERM sets a flag the loop reads between steps (all processes agree on it)."""

    def __init__(self):
        self.flag = threading.Event()
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda *_: self.flag.set())
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def requested(self) -> bool:
        local = self.flag.is_set()
        if jax.process_count() == 1:
            return local
        return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


@dataclasses.dataclass
class Stage:
    """Everything about a stage decided before its first step (``setup``)."""

    config: Any
    task: Task
    labels: Any  # tree of rule labels
    trainable: Any  # tree of bools
    mesh: Any
    rules: Any
    abstract_params: Any  # as stored (frozen groups in c.frozen_param_dtype)
    param_shardings: Any
    tx: Any
    lr_fns: dict
    abstract_state: TrainState
    state_shardings: TrainState
    batch_shardings: dict
    load_init: LoadInit | None = None  # reads init_from model directories (``initial_params``)

    @property
    def seed_key(self) -> jax.Array:
        return jax.random.key(self.config.seed)

    def new_state(self, params) -> TrainState:
        """Step 0 with ``params`` and a fresh optimizer."""
        rng = jax.random.key_data(jax.random.fold_in(self.seed_key, 1))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), rng=rng,
                          nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32))

    def init_params(self):
        """Params at the start of the stage (fresh init + ``init_from``), sharded and stored."""
        c = self.config
        params = initial_params(c, self.task, self.task.abstract_params, self.param_shardings, self.mesh, self.rules,
                                jax.random.fold_in(self.seed_key, 0), self.load_init)
        return jax.jit(lambda p: _cast_frozen(p, self.trainable, c.frozen_param_dtype),
                       out_shardings=self.param_shardings)(params)

    def init_state(self) -> TrainState:
        return jax.jit(self.new_state, out_shardings=self.state_shardings, donate_argnums=0)(self.init_params())

    def train_step(self):
        """The jitted ``train_step(state, batch) -> (state, metrics)``; call it under ``self.context()``."""
        c = self.config
        fn = make_train_step(self.task.loss, self.tx, self.labels, self.lr_fns, microbatches=c.microbatches,
                             mesh=self.mesh, batch_axes=batch_axes(c.rules))
        replicated = NamedSharding(self.mesh, P())  # metrics: every process reads them
        return jax.jit(fn, in_shardings=(self.state_shardings, self.batch_shardings),
                       out_shardings=(self.state_shardings, replicated), donate_argnums=0)

    def context(self):
        return sharding.activation_sharding(self.mesh, self.rules)

    def global_batch(self, local: dict) -> dict:
        """This process's rows -> global arrays laid out on the mesh."""
        spec = self.task.batch_spec
        return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], v, spec[k].shape)
                for k, v in local.items()}

    @property
    def rows(self) -> tuple[int, int]:
        """This process's rows of the global batch."""
        return process_rows(self.batch_shardings["input_ids"], self.config.batch_size)

    def random_batches(self) -> RandomBatches:
        """The in-memory source (``c.data.source = 'random'``) of this process's rows."""
        t, c = self.task, self.config
        return RandomBatches(t.batch_spec, vocab_size=t.vocab_size, media_tokens=t.media_tokens,
                             num_tasks=t.num_tasks, reserved_ids=t.reserved_ids, seed=c.data.seed, rows=self.rows)


def setup(c, task: Task | None = None, devices=None, load_init: LoadInit | None = None) -> Stage:
    """Check the config, build the task, label the params, lay out the mesh (over ``devices``,
    default all) and the optimizer. Every config error surfaces here, before anything compiles.
    ``load_init``: reads ``init_from`` model directories (``initial_params``)."""
    devices = list(jax.devices() if devices is None else devices)
    check_config(c, len(devices), jax.process_count())
    mesh = sharding.make_mesh(dict(c.mesh), devices)
    rules = sharding.logical_rules(c.rules)
    task = task or build_task(c, mesh)
    if tuple(task.batch_spec["input_ids"].shape) != (c.batch_size, c.seq_len):
        raise StageConfigError(f"stage {c.name!r}: the task's batch is {task.batch_spec['input_ids'].shape}, the "
                               f"config's ({c.batch_size}, {c.seq_len}); build the task from this config")
    labels, schedules = assign_labels(task.abstract_params, c.trainable, c.name)
    trainable = jax.tree.map(lambda label: label != FROZEN, labels)
    abstract = _cast_frozen(task.abstract_params, trainable, c.frozen_param_dtype)
    param_shardings = sharding.logical_to_sharding(task.logical_specs, abstract, mesh, rules)
    o = c.optimizer
    tx, lr_fns = opt_lib.build_optimizer(labels, schedules, decay_mask(abstract, o.no_decay), c.num_steps,
                                         b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                                         clip_norm=o.clip_norm)
    stage = Stage(c, task, labels, trainable, mesh, rules, abstract, param_shardings, tx, lr_fns,
                  abstract_state=None, state_shardings=None,
                  batch_shardings={k: NamedSharding(mesh, P(batch_axes(c.rules))) for k in task.batch_spec},
                  load_init=load_init)
    stage.abstract_state = jax.eval_shape(stage.new_state, abstract)
    stage.state_shardings = state_shardings(stage.abstract_state, param_shardings, mesh)
    return stage


def run(c, workdir: str, *, stage: Stage | None = None, data=None, progress: bool | None = None) -> Result:
    """Train one stage in ``workdir`` (resuming from its newest complete checkpoint). ``stage``: ``setup(c)``'s
    (default: set up here); ``data``: this process's batches (default: the random source, ``c.data.source =
    'random'``); ``progress``: a progress bar (process 0; default: when stderr is a terminal)."""
    sharding.init_distributed()
    main = jax.process_index() == 0
    say = (lambda msg: print(msg, flush=True)) if main else (lambda msg: None)
    stage = setup(c) if stage is None else stage
    if data is None and c.data.source != "random":
        raise StageConfigError(f"stage {c.name!r}: c.data.source {c.data.source!r} is not built by the trainer, "
                               "which reads no data formats; run the stage with omnijax.launch.run, or give "
                               "run() its data")
    data = data if data is not None else stage.random_batches()
    os.makedirs(workdir, exist_ok=True)
    if main:
        with open(os.path.join(workdir, STAGE_FILE), "w") as f:
            json.dump({"name": c.name, "num_steps": c.num_steps, "config": json.loads(c.to_json())}, f, indent=1)
    ckpt = Checkpoints(workdir, every=c.checkpoint.every, keep=c.checkpoint.keep,
                       data_handler=data.checkpoint_handler(), async_save=c.checkpoint.async_save)
    logger = None
    try:
        start, state = ckpt.restore_newest(abstract_with_shardings(stage.abstract_state, stage.state_shardings),
                                           data, say)
        if start is not None:
            say(f"stage {c.name!r}: resumed {workdir} from step {start}")
        else:
            start = 0
            state = stage.init_state()  # says which groups come from init_from
            say(f"stage {c.name!r}: starting at step 0 with a fresh optimizer")
        table = opt_lib.group_table(stage.abstract_params, stage.labels, stage.abstract_state.opt_state)
        if main:
            with open(os.path.join(workdir, "param_groups.json"), "w") as f:
                json.dump(table, f, indent=1)
            say(format_group_table(c.name, table))
        logger = MetricsLogger(workdir, active=main, resume_step=start, log_every=c.log_every,
                               task_names=tuple(c.task_names), total=c.num_steps,
                               progress=main and (sys.stderr.isatty() if progress is None else progress))
        with stage.context(), _Preemption() as preemption:
            status, step, state = _loop(stage, state, start, data, ckpt, logger, preemption)
        if status == "preempted":
            say(f"stage {c.name!r}: SIGTERM, saved step {step} in {workdir}")
        return Result(status, step, state, logger.rows)
    finally:
        if logger is not None:
            logger.close()
        ckpt.wait()
        ckpt.close()


def _loop(stage: Stage, state: TrainState, step: int, data, ckpt: Checkpoints, logger: MetricsLogger,
          preemption: _Preemption) -> tuple[str, int, TrainState]:
    """Steps until the stage's last step or a SIGTERM. A step's metrics are read one step late (the
    host does not wait for the device), except before a checkpoint: a step is checked, then saved."""
    c = stage.config
    step_fn = stage.train_step()
    pending = None

    def check(p):
        done, metrics = p
        row = logger.log(done, jax.tree.map(_host, metrics), force=done == c.num_steps)
        k = row["nonfinite_in_a_row"]
        if k >= c.max_nonfinite_in_a_row:
            raise NonFiniteLossError(
                f"stage {c.name!r}: the loss or gradient norm was not finite {k} steps in a row (steps "
                f"{done - k + 1}..{done}; each update was skipped); stopped without saving them. Lower the "
                "learning rate or check the data; the last checkpoint holds finite params")

    first = True
    while step < c.num_steps:
        local = next(data)
        if first and stage.task.check_batch is not None:
            stage.task.check_batch(local)  # a pipeline/model mismatch, named before the step compiles
        first = False
        state, metrics = step_fn(state, stage.global_batch(local))
        step += 1
        if pending is not None:
            check(pending)
        pending = (step, metrics)
        stop = preemption.requested()
        if stop or step == c.num_steps or step % c.checkpoint.every == 0:
            check(pending)
            pending = None
            ckpt.save(step, state, data, force=stop or step == c.num_steps)
        if stop:
            ckpt.wait()
            return "preempted", step, state
    ckpt.wait()
    return "finished", step, state
