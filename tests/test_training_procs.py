"""The trainer as separate processes: ``python -m omnijax.train`` on 2 processes x 4 CPU devices
(jax.distributed, gloo) = one process with 8 devices; SIGKILL during an async save, restart from the
newest complete checkpoint, SIGTERM saves and exits 0; SIGKILL at chosen points of an async save (before it,
while its items are finalized, at and after its commit), and the next run resumes from a complete checkpoint
and ends bit for bit where an undisturbed run ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from training_fixtures import CACHE_MAX_BYTES, cache_dir, compilation_cache, get_config, toy_config

from omnijax.training import checkpointing, trainer

TESTS = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(TESTS, "training_fixtures.py")


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    path = cache_dir(tmp_path_factory)
    with compilation_cache(path):
        yield path


def env(cache: str, devices: int, **extra) -> dict:
    # LLVM at -O0 halves XLA's CPU compile time; it changes no float semantics (no fast-math), so the
    # subprocesses compute what this process computes.
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""),
             XLA_FLAGS=flags, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             JAX_COMPILATION_CACHE_MAX_SIZE=str(CACHE_MAX_BYTES))
    e.update(extra)
    return e


def train_cmd(arg: str, workdir, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "omnijax.train", f"--config={CONFIG}:{arg}", f"--workdir={workdir}", *overrides]


def rows(workdir) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, jax_cache):
    """2 processes x 4 devices (each feeding its half of the batch) give the losses of 1 x 8."""
    workdir = tmp_path / "multi"
    port = free_port()
    procs = [subprocess.Popen(train_cmd("llm", workdir, "--config.num_steps=3"), cwd=os.path.dirname(TESTS),
                              env=env(jax_cache, 4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                      JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
    assert "parameter groups" in outs[0] and "parameter groups" not in outs[1]  # only process 0 reports
    multi = rows(workdir)
    c = get_config("llm")
    c.num_steps = 3
    single = trainer.run(c, str(tmp_path / "single"))
    assert [r["step"] for r in multi] == [1, 2, 3]
    for m, s in zip(multi, single.metrics):
        assert m["loss"] == pytest.approx(s["loss"], rel=1e-6) and m["tokens"] == s["tokens"]
        assert m["grad_norm"] == pytest.approx(s["grad_norm"], rel=1e-5)


def _wait(predicate, timeout: float, what: str, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_save_restarts_from_last_complete_then_sigterm_saves(tmp_path, jax_cache):
    workdir = tmp_path / "w"
    ckpt_dir = workdir / checkpointing.CHECKPOINT_DIR
    cmd = train_cmd("connectors", workdir, "--config.num_steps=200", "--config.checkpoint.every=1",
                    "--config.checkpoint.keep=2")

    def saving() -> bool:  # a complete step exists and a newer one is being written
        names = os.listdir(ckpt_dir) if ckpt_dir.exists() else []
        return any(n.isdigit() for n in names) and any("tmp" in n for n in names)

    run1 = subprocess.Popen(cmd, env=env(jax_cache, 8), cwd=os.path.dirname(TESTS), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait(saving, 240, "an async save in progress", run1)
        run1.send_signal(signal.SIGKILL)
    finally:
        run1.wait(timeout=60)
    assert run1.returncode == -signal.SIGKILL
    complete = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
    assert complete and any("tmp" in n for n in os.listdir(ckpt_dir)), os.listdir(ckpt_dir)
    last = complete[-1]
    before = {r["step"]: r for r in rows(workdir)}

    run2 = subprocess.Popen(cmd, env=env(jax_cache, 8), cwd=os.path.dirname(TESTS), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: any(r["step"] >= last + 3 for r in rows(workdir)), 240, f"step {last + 3}", run2)
        run2.send_signal(signal.SIGTERM)
        out = run2.communicate(timeout=120)[0]
    finally:
        if run2.poll() is None:
            run2.kill()
    assert run2.returncode == 0, out[-3000:]
    assert f"resumed {workdir} from step {last}" in out
    stopped = int(out.split("preempted at step ")[1].split()[0])
    assert stopped >= last + 3 and not any("tmp" in n for n in os.listdir(ckpt_dir))
    assert max(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) == stopped
    after = {r["step"]: r for r in rows(workdir)}
    assert sorted(after) == list(range(1, stopped + 1))  # rows logged past `last` before the kill were redone
    for step in range(last + 1, stopped + 1):
        if step in before:  # the same step recomputed after the restart: the same loss, bitwise
            assert after[step]["loss"] == before[step]["loss"] and after[step]["tokens"] == before[step]["tokens"]


# The fault-injection runs: 8 steps, an async save every 2, the newest 2 kept; the kill comes at the save of step 4.
FAULT_RUN = {"num_steps": 8, "checkpoint.every": 2, "checkpoint.keep": 2, "checkpoint.async_save": True}
KILLED_AT = 4

# Trains the toy stage (FAULT_RUN) in WORKDIR and SIGKILLs itself at POINT of the async save of step STEP, through
# Orbax's own steps of a save: the step's temporary folder created; each item (params, opt_state, ...) finalized
# in it; the step's commit (the rename of the temporary folder to the step's name).
DRIVER = """
import os
import signal
import sys

import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity
from training_fixtures import toy_config

from omnijax.training import trainer

point, step, workdir = sys.argv[1:]
Path = atomicity.AtomicRenameTemporaryPath
create, commit, finalize_item = Path.create, Path.finalize, ocp.PyTreeCheckpointHandler.finalize
finalized = []


def kill(where):
    print(f"SIGKILL {where}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


async def create_(self):
    if point == "before" and self.get_final().name == step:
        kill("before the save")
    return await create(self)


def finalize_item_(self, directory):
    if point == "writing" and directory.parent.name.startswith(step + "."):
        finalized.append(directory.name.split(".")[0])
        if len(finalized) == 2:
            kill(f"with {finalized[0]} finalized, {finalized[1]} not")
    return finalize_item(self, directory)


async def commit_(self):
    if point == "commit" and self.get_final().name == step:
        kill("at the commit")
    await commit(self)
    if point == "after" and self.get_final().name == step:
        kill("after the commit")


Path.create, Path.finalize, ocp.PyTreeCheckpointHandler.finalize = create_, commit_, finalize_item_
trainer.run(toy_config(**%r), workdir)
print("not killed")
""" % FAULT_RUN


def listing(folder) -> list[str]:
    """The entries of ``folder``, an Orbax temporary folder (``4.orbax-checkpoint-tmp``) as ``4 (uncommitted)``."""
    return sorted(n.split(".")[0] + (" (uncommitted)" if ".orbax-checkpoint-tmp" in n else "")
                  for n in os.listdir(folder))


@pytest.fixture(scope="module")
def undisturbed(jax_cache, tmp_path_factory):
    return trainer.run(toy_config(**FAULT_RUN), str(tmp_path_factory.mktemp("undisturbed")))


@pytest.mark.parametrize("point, said, left, resumed_from", [
    ("before", "before the save", ["2"], 2),
    ("writing", "with params finalized, opt_state not", ["2", "4 (uncommitted)"], 2),
    ("commit", "at the commit", ["2", "4 (uncommitted)"], 2),
    ("after", "after the commit", ["2", "4"], 4),
], ids=["before", "writing", "commit", "after"])
def test_killed_during_an_async_save_resumes_from_a_complete_checkpoint(point, said, left, resumed_from, undisturbed,
                                                                       jax_cache, tmp_path, capsys):
    """SIGKILL at one point of the async save of step 4: the next run resumes from the newest complete step (2, or
    4 once committed), clears what the killed save left, says nothing of damage, and ends with the losses and
    params of an undisturbed run, bit for bit."""
    driver, workdir = tmp_path / "driver.py", tmp_path / "w"
    driver.write_text(DRIVER)
    killed = subprocess.run([sys.executable, str(driver), point, str(KILLED_AT), str(workdir)], env=env(jax_cache, 8),
                            cwd=os.path.dirname(TESTS), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert f"SIGKILL {said}\n" in killed.stdout
    ckpt_dir = workdir / checkpointing.CHECKPOINT_DIR
    assert listing(ckpt_dir) == left
    if point == "writing":  # in step 4's temporary folder, params is complete and the other items are not
        (tmp,) = [n for n in os.listdir(ckpt_dir) if n.startswith(f"{KILLED_AT}.")]
        assert listing(ckpt_dir / tmp) == ["_CHECKPOINT_METADATA", "data (uncommitted)", "opt_state (uncommitted)",
                                           "params", "train (uncommitted)"]

    capsys.readouterr()
    resumed = trainer.run(toy_config(**FAULT_RUN), str(workdir))
    out = capsys.readouterr()
    assert f"stage 'toy_connectors': resumed {workdir} from step {resumed_from}\n" in out.out
    assert [r["step"] for r in resumed.metrics] == list(range(resumed_from + 1, FAULT_RUN["num_steps"] + 1))
    assert [r["loss"] for r in resumed.metrics] == [r["loss"] for r in undisturbed.metrics][resumed_from:]
    for a, b in zip(*(jax.tree.leaves(jax.device_get(r.state.params)) for r in (undisturbed, resumed)), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert sorted(os.listdir(ckpt_dir)) == ["6", "8"]  # keep=2; nothing of the killed save left
    assert not (workdir / checkpointing.DAMAGED_DIR).exists()
    assert "cannot be read" not in out.out and out.err == "", out
