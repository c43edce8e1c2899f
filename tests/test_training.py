"""The training core on the toy omni model (``training_fixtures``), in this process (8 CPU devices):
freezing and optimizer state, sharded = single-device step, non-finite steps, exact resume,
restore onto another mesh, stage chaining, config errors."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training_fixtures import SCHED, compile_once, toy_config

from omnijax import launch
from omnijax import recipe as recipe_lib
from omnijax.training import checkpointing, trainer
from omnijax.training.stages import FROZEN, StageConfigError, path_str

pytestmark = pytest.mark.usefixtures("compile_once")

# Stage B of the chaining test, and the step the mesh test compares: LLM + connectors + mm_embed.
LLM_STAGE = [("(vision|audio)/.*", None), (".*", SCHED)]


def flat(tree) -> dict:
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b, paths=None):
    fa, fb = flat(a), flat(b)
    for k in paths if paths is not None else fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


@pytest.fixture(scope="module")
def connectors_run(tmp_path_factory):
    """10 steps of the connectors-only toy stage on an fsdp 2 x tensor 4 mesh."""
    workdir = str(tmp_path_factory.mktemp("connectors"))
    c = toy_config()
    stage = trainer.setup(c)
    init = jax.device_get(stage.init_params())
    result = trainer.run(c, workdir)
    return c, stage, init, result, workdir


def test_connectors_stage_freezes_everything_else(connectors_run):
    c, stage, init, result, workdir = connectors_run
    assert result.status == "finished" and result.step == 10 and len(result.metrics) == 10
    labels = flat(stage.labels)
    final = flat(jax.device_get(result.state.params))
    init = flat(init)
    frozen = [k for k, label in labels.items() if label == FROZEN]
    trained = [k for k, label in labels.items() if label != FROZEN]
    assert {k.split("/")[0] for k in trained} == {"vision_connector", "audio_connector"}
    for k in frozen:  # bitwise, after 10 updates of the rest
        assert final[k].dtype == init[k].dtype and np.array_equal(final[k], init[k]), k
    assert all(not np.array_equal(final[k], init[k]) for k in trained)

    # The optimizer state holds leaves for the connectors only: Adam's mu and nu = 2x their bytes.
    groups = {r["group"]: r for r in json.load(open(os.path.join(workdir, "param_groups.json")))}
    for g in ("llm", "vision", "audio", "mm_embed"):
        assert groups[g]["trainable"] == "no" and groups[g]["opt_state_bytes"] == 0, groups[g]
    for g in ("vision_connector", "audio_connector"):
        assert groups[g]["trainable"] == "yes" and groups[g]["opt_state_bytes"] == 2 * groups[g]["param_bytes"]
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(result.state.opt_state))
    assert opt_bytes == sum(r["opt_state_bytes"] for r in groups.values())

    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 11))
    for key in ("loss", "grad_norm", "tokens_per_s", "step_seconds", "task_loss/caption", "task_loss/asr",
                "lr/(vision|audio)_connector"):
        assert all(isinstance(r[key], float) for r in rows), key
    lr = [r["lr/(vision|audio)_connector"] for r in rows]
    assert lr[0] == 0.0 and lr[1] == pytest.approx(5e-3) and lr[2] == pytest.approx(1e-2) and lr[9] < lr[3]
    assert os.listdir(os.path.join(workdir, "tensorboard"))

    # The logged grad norm of step 1 is the norm of the trainable gradients alone.
    batch = stage.random_batches().batch_at(0)
    params = jax.tree.map(jnp.asarray, connectors_run[2])
    grads = flat(jax.jit(jax.grad(lambda p: stage.task.loss(p, batch, None)[0]))(params))
    trainable_norm = np.sqrt(sum(np.sum(grads[k].astype(np.float64) ** 2) for k in trained))
    full_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    np.testing.assert_allclose(rows[0]["grad_norm"], trainable_norm, rtol=1e-5)
    assert full_norm > 1.5 * trainable_norm  # the frozen gradients are far from zero, and not counted


def test_sharded_step_equals_single_device_and_skips_nonfinite(devices):
    """One step (LLM + connectors) on fsdp 2 x tensor 4, also with 2 microbatches, = on one device."""
    out = {}
    init = None
    for name, mesh, micro in (("2x4", {"fsdp": 2, "tensor": 4}, 1), ("2x4/2mb", {"fsdp": 2, "tensor": 4}, 2),
                              ("single", {"data": 1}, 1)):
        c = toy_config(trainable=LLM_STAGE, microbatches=micro)
        c.mesh = {"data": 1, "fsdp": 1, "tensor": 1, **mesh}
        stage = trainer.setup(c, devices=devices[:1] if name == "single" else devices)
        init = init if init is not None else jax.device_get(stage.init_params())  # the same on any mesh
        state = jax.jit(stage.new_state, out_shardings=stage.state_shardings)(
            jax.device_put(init, stage.param_shardings))
        with stage.context():
            step = stage.train_step()
            batch = stage.random_batches().batch_at(0)
            new, metrics = step(state, stage.global_batch(batch))
            out[name] = jax.device_get((new.params, metrics["loss"]))
            if name == "2x4":
                before = jax.device_get((new.params, new.opt_state))
                bad = dict(batch, images=np.full_like(batch["images"], np.nan))
                after, m = step(new, stage.global_batch(bad))
                assert bool(m["skipped"]) and not np.isfinite(m["loss"]) and int(m["nonfinite_in_a_row"]) == 1
                assert int(after.step) == 2 and int(after.skipped) == 1 and int(after.nonfinite) == 1
                assert_trees_equal(before, jax.device_get((after.params, after.opt_state)))
    ref_params, ref_loss = out["single"]
    for name in ("2x4", "2x4/2mb"):
        params, loss = out[name]
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=name)
        for k, v in flat(params).items():
            np.testing.assert_allclose(v, flat(ref_params)[k], rtol=1e-5, atol=1e-5, err_msg=f"{name}: {k}")


def test_resume_is_exact(tmp_path):
    """20 steps straight = 10 steps, a new run in the same workdir, 10 more: bitwise."""
    cfg = lambda n: toy_config(num_steps=n, **{"checkpoint.every": 10, "checkpoint.async_save": True})  # noqa: E731
    straight = trainer.run(cfg(20), str(tmp_path / "straight"))
    first = trainer.run(cfg(10), str(tmp_path / "resumed"))
    second = trainer.run(cfg(20), str(tmp_path / "resumed"))
    assert [r["step"] for r in second.metrics] == list(range(11, 21))
    losses = [r["loss"] for r in straight.metrics]
    assert losses == [r["loss"] for r in first.metrics + second.metrics]
    assert_trees_equal(jax.device_get(straight.state.params), jax.device_get(second.state.params))
    assert_trees_equal(jax.device_get(straight.state.opt_state), jax.device_get(second.state.opt_state))
    rows = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [r["loss"] for r in rows] == losses


def test_restore_onto_another_mesh(connectors_run, tmp_path):
    """The fsdp 2 x tensor 4 checkpoint restores onto a 4-way data-parallel mesh, bitwise."""
    c, _, _, result, workdir = connectors_run
    c2 = toy_config(rules="dp")
    c2.mesh = {"data": 4, "fsdp": 1, "tensor": 2}  # batch over data only, params replicated
    stage = trainer.setup(c2)
    data = stage.random_batches()
    ckpt = checkpointing.Checkpoints(workdir, every=5, keep=3, data_handler=data.checkpoint_handler())
    target = checkpointing.abstract_with_shardings(stage.abstract_state, stage.state_shardings)
    state = ckpt.restore(10, target, data)
    ckpt.close()
    assert data.step == 10 and int(state.step) == 10
    kernel = state.params["llm"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert all(a is None for a in kernel.sharding.spec) and len(kernel.sharding.device_set) == 8
    assert_trees_equal(jax.device_get(result.state.params), jax.device_get(state.params))
    assert_trees_equal(jax.device_get(result.state.opt_state), jax.device_get(state.opt_state))


def test_next_stage_starts_from_the_previous_one(connectors_run, tmp_path):
    """Stage B (LLM + connectors, towers frozen) from stage A's workdir: A's final params, a fresh
    optimizer, and B's frozen groups end bitwise equal to A's."""
    _, stage_a, _, result_a, workdir_a = connectors_run
    a_final = jax.device_get(result_a.state.params)
    c = toy_config(name="toy_llm", init_from=workdir_a, num_steps=3, trainable=LLM_STAGE)
    result = trainer.run(c, str(tmp_path / "b"))
    b_final = flat(jax.device_get(result.state.params))
    frozen = [k for k in b_final if k.split("/")[0] in ("vision", "audio")]
    assert frozen
    assert_trees_equal(a_final, result.state.params, frozen)
    assert all(not np.array_equal(b_final[k], flat(a_final)[k]) for k in b_final if k not in frozen)
    counts = [x for x in jax.tree.leaves(result.state.opt_state) if x.ndim == 0]
    assert counts and all(int(x) == 3 for x in counts)  # B's 3 updates: the optimizer started fresh
    batch = trainer.setup(c).random_batches().batch_at(0)
    loss = jax.jit(lambda p: stage_a.task.loss(p, batch, None)[0])(a_final)
    np.testing.assert_allclose(result.metrics[0]["loss"], loss, rtol=1e-5)


def test_reading_a_finished_stage_warns_nothing(connectors_run, caplog):
    """Generation and evaluation open a stage's checkpoints read-only, often: Orbax's warnings that a
    read-only manager saves nothing are not shown each time."""
    c, stage, _, _, workdir = connectors_run
    with caplog.at_level(logging.WARNING):
        assert checkpointing.final_step(workdir) == c.num_steps
        checkpointing.final_params(workdir, stage.abstract_params)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_init_from_named_groups_reads_only_those(connectors_run, tmp_path):
    """A stage that takes some groups from a stage workdir and starts a group of another shape fresh (here
    an audio input twice as wide): only the named groups are read from the checkpoint."""
    _, _, _, result_a, workdir_a = connectors_run
    c = toy_config(name="toy_new_audio", init_from=[(workdir_a, ("llm", "vision", "vision_connector"))],
                   num_steps=1, trainable=[("audio/.*", SCHED), (".*", None)], **{"model.n_mels": 8})
    result = trainer.run(c, str(tmp_path / "b"))
    a_final = jax.device_get(result_a.state.params)
    assert_trees_equal(a_final, result.state.params, [k for k in flat(a_final) if k.split("/")[0] in
                                                      ("llm", "vision", "vision_connector")])
    assert result.state.params["audio"]["kernel"].shape[0] == 2 * a_final["audio"]["kernel"].shape[0]


class NaNImagesAt:
    """RandomBatches whose images are NaN at the given (0-based) steps."""

    def __init__(self, data, steps):
        self.data, self.steps = data, set(steps)

    def __next__(self):
        step = self.data.step
        batch = next(self.data)
        if step in self.steps:
            batch["images"] = np.full_like(batch["images"], np.nan)
        return batch

    def __getattr__(self, name):
        return getattr(self.data, name)


def test_nonfinite_steps_are_skipped_and_k_in_a_row_stop(tmp_path):
    c = toy_config(num_steps=10, max_nonfinite_in_a_row=3, **{"checkpoint.every": 2})
    data = NaNImagesAt(trainer.setup(c).random_batches(), steps=[2, 5, 6, 7])
    with pytest.raises(trainer.NonFiniteLossError, match=r"not finite 3 steps in a row \(steps 6\.\.8"):
        trainer.run(c, str(tmp_path), data=data)
    rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "metrics.jsonl"))}
    assert [s for s, r in rows.items() if r["skipped"]] == [3, 6, 7, 8]
    assert rows[3]["loss"] is None and rows[4]["nonfinite_in_a_row"] == 0 and rows[8]["nonfinite_in_a_row"] == 3
    ckpts = checkpointing.Checkpoints(str(tmp_path), every=2, keep=3, data_handler=data.checkpoint_handler())
    assert ckpts.manager.all_steps() == [2, 4, 6] and ckpts.latest_step() == 6  # nothing saved at or after 8
    ckpts.close()


def test_config_errors_before_compiling(tmp_path, monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("compiled before the config error")

    monkeypatch.setattr(trainer, "make_train_step", no_compile)
    monkeypatch.setattr(trainer.Stage, "init_state", no_compile)
    cases = [
        (dict(trainable=[("vision_conector/.*", SCHED), (".*", None)]),
         r"rule 'vision_conector/\.\*' matches no parameter.*groups are: audio, audio_connector, llm, mm_embed, "
         r"vision, vision_connector"),
        (dict(trainable=[("llm/.*", SCHED)]), r"no rule matches these parameters: .*\(\d+ in all\); add a rule"),
        (dict(mesh={"data": 1, "fsdp": 2, "model": 4}), r"unknown mesh axis \['model'\].*data, fsdp, tensor"),
        (dict(batch_size=3), r"global batch 3 is not divisible by the data-parallel size 2 .*multiple of 2"),
        (dict(init_from=str(tmp_path / "nothing")), r"init_from .*nothing' does not exist; point it at"),
        (dict(init_from=str(tmp_path)), r"neither a model directory .* nor a stage workdir"),
    ]
    for overrides, message in cases:
        c = toy_config(**overrides)
        with pytest.raises(StageConfigError, match=message):
            trainer.run(c, str(tmp_path / "w"))
    shutil.rmtree(tmp_path / "w", ignore_errors=True)


def test_init_from_hf_directory(tmp_path):
    """A HF Qwen2 directory fills the llm group (frozen here: it ends bitwise equal to the import);
    a source whose shapes differ is refused, naming the parameter and both shapes."""
    from hf_fixtures import make_qwen2

    from omnijax.checkpoint import load_model

    hf = str(tmp_path / "qwen2")
    make_qwen2(hf, "mha_untied_1e4", vocab_size=64, hidden_size=32, intermediate_size=64, num_key_value_heads=2)
    result = launch.run(toy_config(init_from=hf, num_steps=2), str(tmp_path / "w"))
    assert_trees_equal(jax.device_get(load_model(hf).params["llm"]), jax.device_get(result.state.params["llm"]))

    wide = str(tmp_path / "qwen2_wide")
    make_qwen2(wide, "mha_untied_1e4", vocab_size=64, hidden_size=48, intermediate_size=64, num_key_value_heads=2)
    with pytest.raises(StageConfigError, match=r"init_from .*qwen2_wide: llm/.* has shape \(.*48.*\), the model "
                                               r"wants \(.*32.*\)"):
        launch.run(toy_config(init_from=wide), str(tmp_path / "w2"))


def test_frozen_params_stored_in_compute_dtype():
    c = toy_config(frozen_param_dtype="bfloat16")
    stage = trainer.setup(c)
    params = flat(jax.device_get(stage.init_params()))
    labels = flat(stage.labels)
    assert all(params[k].dtype == (np.float32 if labels[k] != FROZEN else jnp.bfloat16) for k in params)
    table = {r["group"]: r for r in trainer.opt_lib.group_table(stage.abstract_params, stage.labels,
                                                                stage.abstract_state.opt_state)}
    assert table["llm"]["param_bytes"] == 2 * table["llm"]["params"]
    assert table["vision_connector"]["opt_state_bytes"] == 2 * 4 * table["vision_connector"]["params"]


@pytest.mark.parametrize("name", ["tiny_connectors", "tiny_full"])
def test_example_stage_configs_set_up(name):
    """The example stages build the omni model and label every parameter (no compilation)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stage = trainer.setup(module.get_config())
    groups = {k.split("/")[0]: label for k, label in flat(stage.labels).items()}
    assert set(groups) == {"llm", "vision", "vision_connector", "audio", "audio_connector", "mm_embed"}
    trained = {g for g, label in groups.items() if label != FROZEN}
    assert trained == ({"vision_connector", "audio_connector"} if name == "tiny_connectors" else
                       {"llm", "vision_connector", "audio_connector", "mm_embed"})
    stage.task.check_batch(stage.random_batches().batch_at(0))  # synthetic batches fit the omni layout


def test_schedules_and_weight_decay_mask():
    from omnijax.training import optimizer, stages

    lr = lambda spec, steps: [float(stages.make_schedule(spec, 10)(s)) for s in steps]  # noqa: E731
    assert lr(dict(lr=1.0, warmup_steps=2, decay="constant"), [0, 1, 2, 9]) == [0.0, 0.5, 1.0, 1.0]
    assert lr(dict(lr=1.0, warmup_fraction=0.2, decay="linear", end_factor=0.5), [2, 6, 10]) == [1.0, 0.75, 0.5]
    assert lr(dict(lr=1.0, decay="cosine"), [0, 5, 10]) == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)

    c = toy_config(trainable=LLM_STAGE)
    stage = trainer.setup(c)
    mask = flat(stages.decay_mask(stage.abstract_params))
    assert not any(v for k, v in mask.items() if k.endswith(("/bias", "/scale")) or k.startswith("mm_embed/"))
    assert mask["llm/layers/mlp/up_proj/kernel"] and mask["llm/embed_tokens/embedding"]
    labels = flat(optimizer.optimizer_labels(stage.labels, stages.decay_mask(stage.abstract_params), 0.1))
    assert labels["llm/norm/scale"] == "all/no_decay" and labels["llm/lm_head/kernel"] == "all"
    assert labels["vision/norm/scale"] == FROZEN


def truncate_params(step_dir) -> None:
    """Cut the largest file of a checkpoint step's params to half its length (a crash during a save)."""
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, capsys):
    """One file of the newest of two checkpoints truncated (a crash during a save on a cluster's file system): the
    next run says so in one line, moves that step aside (kept, not deleted), resumes from the older step and
    trains on bit for bit as an undisturbed run does from there."""
    cfg = lambda n: toy_config(num_steps=n, **{"checkpoint.every": 5, "checkpoint.keep": 2,  # noqa: E731
                                               "checkpoint.async_save": True})
    straight = trainer.run(cfg(20), str(tmp_path / "straight"))
    trainer.run(cfg(10), str(tmp_path / "damaged"))
    step10 = tmp_path / "damaged" / "checkpoints" / "10"
    assert sorted(os.listdir(step10.parent)) == ["10", "5"]
    truncate_params(step10)
    capsys.readouterr()
    resumed = trainer.run(cfg(20), str(tmp_path / "damaged"))
    out = capsys.readouterr()
    assert [r["step"] for r in resumed.metrics] == list(range(6, 21))
    assert [r["loss"] for r in resumed.metrics] == [r["loss"] for r in straight.metrics][5:]
    assert_trees_equal(jax.device_get(straight.state.params), jax.device_get(resumed.state.params))
    told = [line for line in out.out.splitlines() if "cannot be read" in line]
    assert len(told) == 1 and told[0].startswith(f"checkpoint step 10 of {tmp_path / 'damaged'} cannot be read ("), out
    assert "Error reading" in told[0] and "OCDBT database at local file" in told[0], told[0]
    assert "resumed" in out.out and "from step 5" in out.out
    aside = os.listdir(tmp_path / "damaged" / checkpointing.DAMAGED_DIR)
    assert len(aside) == 1 and aside[0].startswith("10-")
    assert "Traceback" not in out.err, out.err


def test_no_readable_checkpoint_is_one_error(tmp_path):
    """Every checkpoint of the workdir damaged: one error naming the steps and the fix (the CLIs exit 2 on it)."""
    cfg = toy_config(num_steps=5, **{"checkpoint.every": 5, "checkpoint.keep": 1, "checkpoint.async_save": False})
    trainer.run(cfg, str(tmp_path / "w"))
    for p in (tmp_path / "w" / "checkpoints" / "5").rglob("*"):
        if p.is_file() and p.stat().st_size > 100:
            p.write_bytes(b"")
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"none of the checkpoints of .* \(steps \[5\]\) can be read"):
        trainer.run(toy_config(num_steps=10, **{"checkpoint.every": 5}), str(tmp_path / "w"))


def toy_recipe(keep: int = 2) -> recipe_lib.Recipe:
    """Stage 'a' (10 steps, checkpoints at 5 and 10) and stage 'b' (2 steps from 'a''s final params)."""
    a = toy_config(name="a", num_steps=10, **{"checkpoint.every": 5, "checkpoint.keep": keep})
    b = toy_config(name="b", num_steps=2, init_from="@previous")
    return recipe_lib.from_stages([("a", a), ("b", b)], eval_data=None)


def stage_params(workdir):
    """The final params of a toy stage workdir, as the next stage reads them."""
    stage = trainer.setup(toy_config())
    target = checkpointing.abstract_with_shardings(stage.abstract_params, stage.param_shardings)
    return jax.device_get(checkpointing.final_params(str(workdir), target))


def losses(workdir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, open(workdir / "metrics.jsonl"))]


def test_recipe_verifies_a_stage_before_the_next_starts_from_it(tmp_path, monkeypatch, capsys):
    """Stage 'a''s final checkpoint damaged right after it was written, and again when the recipe is run again
    with 'b' to do: each time one line names it, it is moved aside, 'a' finishes again from step 5 (to the same
    params, bit for bit) and only then does 'b' start. When nothing reads it again, it is not read."""
    work, lines = tmp_path / "recipe", []
    run = lambda **kw: recipe_lib.run(toy_recipe(), str(work), evaluate=False, log=lines.append,  # noqa: E731
                                      progress=False, **kw)
    train, trained = launch.run, []

    def damage_after_first(c, workdir, **kw):  # the file system loses a file of 'a''s final step once
        result = train(c, workdir, **kw)
        trained.append(c.name)
        if trained == ["a"]:
            reference.update(params=stage_params(work / "a"), losses=losses(work / "a"))
            truncate_params(work / "a" / "checkpoints" / "10")
        return result

    reference = {}
    monkeypatch.setattr(launch, "run", damage_after_first)
    capsys.readouterr()
    assert [r["status"] for r in run()] == ["trained", "trained"]
    assert trained == ["a", "a", "b"]
    aside = work / "a" / checkpointing.DAMAGED_DIR
    told = [line for line in lines if "cannot be read" in line]
    assert len(told) == 1 and told[0].startswith(f"checkpoint step 10 of {work / 'a'} cannot be read ("), lines
    assert "Error reading" in told[0] and told[0].endswith(f"moved it to {aside / os.listdir(aside)[0]}"), told[0]
    assert any(line.endswith("-> " + str(work / "a") + "; again, from its newest readable checkpoint")
               for line in lines), lines
    assert f"resumed {work / 'a'} from step 5" in capsys.readouterr().out
    assert_trees_equal(reference["params"], stage_params(work / "a"))
    assert losses(work / "a") == reference["losses"] and len(reference["losses"]) == 10

    shutil.rmtree(work / "b")  # run again with 'b' to do: 'a' is done, but its final step is damaged
    truncate_params(work / "a" / "checkpoints" / "10")
    lines.clear()
    assert [r["status"] for r in run()] == ["trained", "trained"]
    assert trained == ["a", "a", "b", "a", "b"] and len(os.listdir(aside)) == 2
    assert sum("checkpoint step 10 of" in line and "cannot be read" in line for line in lines) == 1, lines
    assert_trees_equal(reference["params"], stage_params(work / "a"))

    truncate_params(work / "a" / "checkpoints" / "10")  # both stages done: nothing reads 'a' again
    lines.clear()
    assert [r["status"] for r in run()] == ["done before", "done before"]
    assert not any("cannot be read" in line for line in lines) and len(os.listdir(aside)) == 2


def test_recipe_with_no_readable_final_checkpoint_is_one_error(tmp_path, monkeypatch):
    """A damaged final step with no other step (keep=1), handed on by the recipe or read by the trainer of the
    next stage directly; a final step damaged as often as it is written: one ``CheckpointError`` each (the CLIs
    exit 2 on it)."""
    quiet = dict(evaluate=False, log=lambda _: None, progress=False)
    work = tmp_path / "keep1"
    recipe_lib.run(toy_recipe(keep=1), str(work), only=("a",), **quiet)
    truncate_params(work / "a" / "checkpoints" / "10")
    with pytest.raises(checkpointing.CheckpointError, match=r"none of the checkpoints of .*a \(steps \[10\]\) can "
                                                            r"be read; they are in .*damaged_checkpoints"):
        recipe_lib.run(toy_recipe(keep=1), str(work), **quiet)
    assert checkpointing.CheckpointError in recipe_lib.USER_ERRORS and not os.path.exists(work / "b")

    aside = work / "a" / checkpointing.DAMAGED_DIR
    os.replace(aside / os.listdir(aside)[0], work / "a" / "checkpoints" / "10")  # the damaged step, back in place
    b = toy_config(name="b", num_steps=2, init_from=str(work / "a"))
    with pytest.raises(checkpointing.CheckpointError, match=r"init_from .*a: its final checkpoint, step 10, cannot "
                                                            r"be read \(.*Error reading.*\); moved it to .*; run that "
                                                            r"stage again with the same workdir"):
        trainer.run(b, str(tmp_path / "b"))
    assert len(os.listdir(aside)) == 1 and not os.path.exists(work / "a" / "checkpoints" / "10")

    train = launch.run

    def damage_always(c, workdir, **kw):
        result = train(c, workdir, **kw)
        truncate_params(tmp_path / "always" / "a" / "checkpoints" / "10")
        return result

    monkeypatch.setattr(launch, "run", damage_always)
    with pytest.raises(checkpointing.CheckpointError, match=r"stage a: its final checkpoint cannot be read although "
                                                            r"it was just written .*; check the file system of"):
        recipe_lib.run(toy_recipe(), str(tmp_path / "always"), **quiet)
    assert len(os.listdir(tmp_path / "always" / "a" / checkpointing.DAMAGED_DIR)) == 2
