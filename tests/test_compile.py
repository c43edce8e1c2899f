"""``python -m omnijax.compile``: stages compiled by the real TPU compiler (libtpu, installed by the test extra)
for a TPU slice that is not here, with splash attention under ``shard_map``; memory, FLOPs and the verdict."""

import importlib.util
import re

import pytest

from omnijax import compile as tpu_compile
from omnijax.hlo_cost import matmul_flops

STAGE_1B = "experiments/ola/stage1b.py"
SLICE = "v5p-8"  # 4 chips: a 2 x 2 mesh of fsdp x tensor
MESH = {"data": 1, "fsdp": 2, "tensor": 2}


def stage_config(path: str = STAGE_1B, preset: str = "tiny", **llm):
    spec = importlib.util.spec_from_file_location("stage_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(preset)
    c.model.llm.update(llm)
    return tpu_compile.prepare(c, MESH, "fsdp_tp")


@pytest.fixture(scope="module")
def slice_v5p():
    return tpu_compile.topology(SLICE)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return str(tmp_path_factory.mktemp("executable") / "step.bin")


@pytest.fixture(scope="module")
def stage_1b(slice_v5p, saved):
    return tpu_compile.compile_stage(stage_config(), slice_v5p, save=saved, log=lambda _: None)


def test_topologies():
    t = tpu_compile.topology("v5p-64")  # Cloud TPU names count TensorCores: v5p-64 is 32 chips, 2x4x4
    assert (t.jax_name, len(t.devices), t.chip.hbm_bytes) == ("v5p:2x4x4", 32, 95 * 2**30)
    assert len(tpu_compile.topology("v6e-64").devices) == 64
    assert tpu_compile.topology("v5litepod-16").jax_name == "v5e:4x4"
    assert len(tpu_compile.topology("v5p:2x2x2").devices) == 8
    with pytest.raises(tpu_compile.TopologyError, match=r"unknown slice 'v5p-63'.*v5p-8, v5p-16"):
        tpu_compile.topology("v5p-63")
    with pytest.raises(tpu_compile.TopologyError, match="unknown topology 'h100'"):
        tpu_compile.topology("h100")


def test_tiny_stage_compiles_for_a_tpu_slice_with_splash_attention(stage_1b, saved):
    """Attention 'auto' is splash for a TPU: the Mosaic kernels (forward, dq, dkv) are in the program, which
    they can only be under shard_map; the report's bytes are the compiler's; the executable is saved whole."""
    import os
    import pickle

    r = stage_1b
    with open(saved, "rb") as f:
        payload, in_tree, out_tree = pickle.load(f)
    assert len(payload) > 2**20 and in_tree.num_leaves > 0 and out_tree.num_leaves > 0
    assert not os.path.exists(saved + ".tmp")
    assert r.attention == {"llm": "splash", "vision": "xla", "audio": "xla"}
    assert r.kernels == ("splash_mha_dkv_segmented_no_residuals", "splash_mha_dq_segmented_no_residuals",
                         "splash_mha_fwd_segmented_residuals")
    assert r.mesh == MESH and r.chips == 4 and r.fits
    assert 0 < r.argument_bytes < 2**26 and 0 < r.temp_bytes < 2**30
    assert r.loop_factor > 1.5 and r.unknown_loops == 0  # the LLM's 4 layers and the vision tower's 2 run in loops
    assert 0 < r.model_flops / r.chips < 1e10 and r.compiler_flops > 0 and r.compiler_seconds > 0
    # the kernels' attention, which the compiler's estimate does not see, is added at peak
    assert r.kernel_flops > 0 and r.step_seconds == pytest.approx(
        r.compiler_seconds * r.loop_factor + r.kernel_flops / 4 / 459e12)
    text = r.text()
    assert "attention llm=splash vision=xla audio=xla" in text and "for the Pallas kernels' attention at peak" in text
    assert re.search(r"peak 0\.\d\d GiB of 95\.00 GiB", text) and "verdict          fits" in text


def test_loop_bodies_are_counted_by_their_trip_counts(stage_1b, slice_v5p):
    """The oracle is XLA itself: the same stage with every layer unrolled (no loops) has the FLOPs that the
    scanned program's count reaches once its loop bodies are multiplied by their trip counts."""
    twin = stage_config(scan_unroll=4)
    twin.model.vision.scan_unroll = twin.model.vision.num_layers
    unrolled = tpu_compile.compile_stage(twin, slice_v5p, log=lambda _: None)
    assert unrolled.loop_factor == pytest.approx(1.0)
    assert stage_1b.compiler_flops * stage_1b.loop_factor == pytest.approx(unrolled.compiler_flops, rel=0.03)
    assert stage_1b.compiler_flops < 0.6 * unrolled.compiler_flops


def test_matmul_flops_of_a_dot_in_a_loop():
    hlo = """HloModule m

%body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %w = f32[16,16]{1,0} constant({...})
  %d = f32[8,16]{1,0} dot(f32[8,16]{1,0} %x, f32[16,16]{1,0} %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[8,16]) tuple(%i, %d)
}

%cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(28)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8,16]) -> (s32[], f32[8,16]) {
  %a = f32[8,16]{1,0} parameter(0)
  %z = s32[] constant(0)
  %t = (s32[], f32[8,16]) tuple(%z, %a)
  ROOT %w = (s32[], f32[8,16]) while(%t), condition=%cond, body=%body
}
"""
    r = matmul_flops(hlo)
    assert (r.once, r.total, r.loops, r.unknown_trip_counts) == (2 * 8 * 16 * 16, 28 * 2 * 8 * 16 * 16,
                                                                 (("body", 28),), 0)


def test_a_stage_whose_mixture_has_no_audio_runs_no_audio_tower(stage_1b, slice_v5p):
    """Stage 1b reads images and text: no audio or video slots, so its step holds no audio tower; the same
    stage made to keep audio slots (``c.media.always``) compiles to more FLOPs and memory."""
    from omnijax.training.omni_task import omni_config

    plain = stage_config()
    assert (omni_config(plain).audio_slots, omni_config(plain).video_slots) == (0, 0)
    widened = stage_config()
    widened.media.always = ("audio",)
    assert omni_config(widened).audio_slots == 4
    more = tpu_compile.compile_stage(widened, slice_v5p, log=lambda _: None)
    flops = lambda r: r.compiler_flops * r.loop_factor  # noqa: E731
    assert flops(more) > 1.15 * flops(stage_1b), (flops(more), flops(stage_1b))
    assert more.model_flops > stage_1b.model_flops and more.argument_bytes > stage_1b.argument_bytes


def test_cli_report_and_a_stage_too_big_for_the_chip(capsys):
    """A 4-layer LLM of hidden size 8192 (3.4B parameters, AdamW) on one v5e chip of 16 GiB: the TPU compiler
    refuses the step, the exit status is 3 and the message names what is missing and the knobs."""
    code = tpu_compile.main(["--config", f"{STAGE_1B}:tiny", "--topology", "v5e-1", "--mesh", "data=1",
                             "--config.model.llm.hidden_size=8192", "--config.model.llm.intermediate_size=28672",
                             "--config.model.llm.num_heads=64", "--config.model.llm.num_kv_heads=8"])
    out, err = capsys.readouterr()
    assert code == tpu_compile.DOES_NOT_FIT, (out, err)
    assert re.search(r"the TPU compiler refused the step after \d+ s: RESOURCE_EXHAUSTED: .*HBM", out), out
    verdict = re.search(r"does not fit: at least ([\d.]+) GiB per chip, a TPU v5e has 16\.0 GiB \(([\d.]+) GiB "
                        r"missing\); try model\.llm\.remat=full \(now 'none'.*microbatches=2 \(now 1\)", out)
    assert verdict, out
    assert float(verdict.group(1)) > 16 and float(verdict.group(2)) == pytest.approx(float(verdict.group(1)) - 16,
                                                                                      abs=0.11)


def test_cli_errors(capsys):
    assert tpu_compile.main(["--config", f"{STAGE_1B}:tiny", "--topology", "v5p-7"]) == 2
    assert "unknown slice 'v5p-7'" in capsys.readouterr().err
    assert tpu_compile.main(["--config", f"{STAGE_1B}:tiny", "--topology", "v5p-8", "--mesh", "data=3"]) == 2
    assert re.search(r"c\.mesh: .*4 devices are not divisible by 3|c\.mesh: .*needs 3 devices, 4 are available",
                     capsys.readouterr().err)
    assert tpu_compile.main(["--topology", "v5p-8"]) == 2
    assert "give --topology and one of --config" in capsys.readouterr().err
    assert tpu_compile.main(["--config", f"{STAGE_1B}:tiny", "--topology", "v5p-8", "--mesh", "pods=2"]) == 2
    assert "give axis=size pairs over data, fsdp, tensor" in capsys.readouterr().err


def test_a_negative_compiler_estimate_is_not_reported_as_a_time():
    """XLA's optimal_seconds came out negative for the 7b Self-KD stage (-3.56): no estimate, no MFU from it;
    the compiled FLOPs at the chip's peak still bound the step from below."""
    gib = 2**30
    r = tpu_compile.Report(
        stage="s", topology="v5p-64", chip=tpu_compile.CHIPS["v5p"], chips=32, mesh=dict(MESH), rules="fsdp",
        attention={"llm": "splash"}, compile_seconds=1.0, argument_bytes=3 * gib, output_bytes=2 * gib,
        alias_bytes=2 * gib, temp_bytes=45 * gib, model_flops=32 * 1.69e15, compiler_flops=1.32e14, loop_factor=19.3,
        compiler_seconds=-3.56, kernels=("splash_mha_fwd",), kernel_flops=32 * 1e14)
    text = r.text()
    assert "no compiler estimate (XLA's optimal_seconds is -3.56, not a time)" in text and "MFU nan" not in text
    bound = 1.32e14 * 19.3 / 459e12 + 1e14 / 459e12
    assert r.roofline_seconds == pytest.approx(bound)
    assert f"at least {bound:.3g} s a step" in text and r.fits
    assert r.row().endswith(f"| 1.69e+15 | 2.55e+15 | -- | {bound:.3g} | -- | yes |"), r.row()


def test_the_slices_are_tried_smallest_first_until_one_fits(monkeypatch, capsys):
    """``--topology A,B,C``: each stage is compiled on A, then B, ... and the search stops at the first slice that
    fits; a stage that fits none makes the exit status 3 (the compiler is stood in for by the chips' HBM)."""
    gib = 2**30
    tried = []

    def fake_compile(c, topo, save=None, log=print):
        tried.append((c.name, topo.name))
        need = {"ola_1b": 40 * gib, "ola_3b": 200 * gib}[c.name]
        return tpu_compile.Report(
            stage=c.name, topology=topo.name, chip=topo.chip, chips=len(topo.devices), mesh=dict(MESH), rules="fsdp",
            attention={"llm": "splash"}, compile_seconds=1.0, argument_bytes=0, output_bytes=0, alias_bytes=0,
            temp_bytes=need * 8 // len(topo.devices), model_flops=1e15, compiler_flops=1e14, loop_factor=1.0,
            compiler_seconds=1.0)

    monkeypatch.setattr(tpu_compile, "compile_stage", fake_compile)
    topos = [tpu_compile.topology(name) for name in ("v5e-1", "v5p-8", "v5p-16")]
    reports = tpu_compile.smallest_fit(stage_config(), topos, log=lambda _: None)
    assert [(r.topology, r.fits) for r in reports] == [("v5e-1", False), ("v5p-8", True)]
    assert tried == [("ola_1b", "v5e-1"), ("ola_1b", "v5p-8")]
    code = tpu_compile.main(["--config", "experiments/ola/stage3b.py:tiny", "--topology", "v5p-8,v5p-16",
                             "--mesh", "data=1,fsdp=-1"])
    assert code == tpu_compile.DOES_NOT_FIT
    table = re.findall(r"^\| ola_3b \| (v5p-\d+) \| .* \| (yes|no) \|$", capsys.readouterr().out, re.M)
    assert table == [("v5p-8", "no"), ("v5p-16", "no")]
