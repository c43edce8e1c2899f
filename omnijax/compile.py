"""Compile a stage's train step for a TPU slice on this machine: does it compile, does it fit, how fast.

    python -m omnijax.compile --config experiments/ola/stage3b.py:7b [--config.KEY=VALUE ...] --topology v5p-64
           [--mesh data=1,fsdp=-1,tensor=1] [--rules fsdp] [--save FILE]
    python -m omnijax.compile --recipe experiments/ola/recipe.py:7b --topology v5p-64 [--markdown FILE]
           [--set model.llm.attention=xla ...]   (--set KEY=VALUE: every stage, with --config or --recipe)
    python -m omnijax.compile --recipe ... --topology v5p-32,v5p-64,v5p-128   (the smallest that fits)

With ``libtpu`` installed (the ``tpu`` and ``test`` extras: ``pip install -e '.[tpu]'``) JAX describes the
devices of any TPU slice without one (``jax.experimental.topologies``), and ``jax.jit(step).lower(...)
.compile()`` over a mesh of them runs the real TPU compiler on this CPU. The stage is built exactly as
training builds it (``trainer.setup``: mesh, rules, frozen groups, optimizer, attention ``'auto'`` for
the slice's platform), from shapes alone: no checkpoint, tokenizer or data is read. Per chip the report
gives the argument / output / temporary bytes and the peak against the chip's HBM, the compile time,
the model FLOPs of a step (analytic: ``model_flops``), the compiler's FLOPs and its time estimate --
XLA counts a loop body once and every tower runs its layers in a loop, so both are also given with
loop bodies counted by their trip counts (``omnijax.hlo_cost``) -- and the MFU that estimate implies.

Topologies (``omnijax.tpu_slices``): ``v5p-N`` and ``v4-N`` (N TensorCores, two per chip: v5p-64 is 32 chips),
``v5e-N`` / ``v5litepod-N`` and ``v6e-N`` (N chips), or a JAX topology string such as ``v5p:2x4x4``. Several,
comma-separated and smallest first: each stage is compiled on them in turn until one fits (the rows that did
not fit stay in the table, with what they missed) -- which slice to book.

Exit status: 0 every stage fits, 3 a stage does not fit (the message says how much is missing and which knobs
would help), 2 a usage or config error (an unknown topology, a mesh the slice cannot hold), in one line
(``OMNIJAX_DEBUG=1`` for the traceback). A list or dict field takes a Python literal, as in ``omnijax.train``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import sys
import time

from omnijax.tpu_slices import CHIPS, GIB, Chip, Topology, TopologyError, topology  # noqa: F401 (public here)

DOES_NOT_FIT = 3


@dataclasses.dataclass
class Report:
    stage: str
    topology: str
    chip: Chip
    chips: int
    mesh: dict
    rules: str
    attention: dict
    compile_seconds: float
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    model_flops: float  # per step, whole slice (analytic)
    compiler_flops: float  # per chip, loop bodies once (XLA's cost analysis)
    loop_factor: float  # matmul FLOPs with loop bodies x trip counts / with bodies once
    compiler_seconds: float  # XLA's estimate, loop bodies once
    kernels: tuple[str, ...] = ()  # Pallas kernels in the program (their work is opaque to the FLOP counts)
    kernel_flops: float = 0.0  # per step, whole slice: the LLM attention those kernels run (``kernel_flops``)
    unknown_loops: int = 0  # while loops whose trip count could not be read (counted once)
    advice: tuple[str, ...] = ()
    compiler_message: str | None = None  # the compiler refused the program (out of HBM): its words

    @property
    def peak_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.chip.hbm_bytes

    @property
    def kernel_seconds(self) -> float:
        """The Pallas kernels' attention at the chip's peak: what the compiler's estimate leaves out, at least."""
        return self.kernel_flops / self.chips / self.chip.peak_flops if self.kernels else 0.0

    @property
    def step_seconds(self) -> float:
        """The compiler's time estimate with loop bodies counted by their trip counts, plus ``kernel_seconds``;
        NaN when XLA's estimate is not a time (it can come out negative: the Self-KD stage's did)."""
        if not self.compiler_seconds > 0:
            return float("nan")
        return self.compiler_seconds * self.loop_factor + self.kernel_seconds

    @property
    def roofline_seconds(self) -> float:
        """The compiled program's FLOPs (loop bodies x trip counts, and the kernels') at the chip's peak."""
        return self.compiler_flops * self.loop_factor / self.chip.peak_flops + self.kernel_seconds

    @property
    def mfu(self) -> float:
        seconds = self.step_seconds
        return self.model_flops / self.chips / (seconds * self.chip.peak_flops) if seconds > 0 else float("nan")

    def verdict(self) -> str:
        peak, hbm = self.peak_bytes / GIB, self.chip.hbm_bytes / GIB
        if self.fits:
            return f"fits: {peak:.1f} of {hbm:.1f} GiB per chip"
        if self.compiler_message:
            peak = f"at least {peak:.1f}"  # the compiler stopped at the first buffer that did not fit
        else:
            peak = f"{peak:.1f}"
        missing = self.peak_bytes / GIB - hbm
        return (f"does not fit: {peak} GiB per chip, a {self.chip.name} has {hbm:.1f} GiB ({missing:.1f} GiB "
                "missing); try " + "; ".join(self.advice))

    def text(self) -> str:
        gib = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
        if self.compiler_message:
            return (f"stage {self.stage!r} on {self.topology} ({self.chips} x {self.chip.name}): the TPU compiler "
                    f"refused the step after {self.compile_seconds:.0f} s: {self.compiler_message}\n"
                    f"  memory per chip  arguments {gib(self.argument_bytes)}, temporaries {gib(self.temp_bytes)}\n"
                    f"  verdict          {self.verdict()}")
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        kernel = (f"; with {self.kernel_seconds:.3g} s for the Pallas kernels' attention at peak, which the "
                  "compiler does not see" if self.kernels else "")
        attention = " ".join(f"{k}={v}" for k, v in self.attention.items())
        lines = [
            f"stage {self.stage!r} on {self.topology} ({self.chips} x {self.chip.name}, "
            f"{self.chip.hbm_bytes / GIB:.0f} GiB HBM each): mesh {mesh}, rules {self.rules}, attention {attention}",
            f"  compile          {self.compile_seconds:.1f} s",
            f"  memory per chip  arguments {gib(self.argument_bytes)}, outputs {gib(self.output_bytes)} (aliased "
            f"{gib(self.alias_bytes)}), temporaries {gib(self.temp_bytes)}; peak {gib(self.peak_bytes)} of "
            f"{gib(self.chip.hbm_bytes)} ({100 * self.peak_bytes / self.chip.hbm_bytes:.0f}%)",
            f"  FLOPs per chip   model {self.model_flops / self.chips:.3g} (analytic); compiler "
            f"{self.compiler_flops:.3g}"
            f" with loop bodies once, {self.compiler_flops * self.loop_factor:.3g} with them x trip counts"
            + (f" ({self.unknown_loops} loops of unread trip count counted once: a lower bound)"
               if self.unknown_loops else ""),
            (f"  step time        compiler estimate {self.step_seconds:.3g} s ({self.compiler_seconds:.3g} s with loop "
             f"bodies once{kernel}): MFU {100 * self.mfu:.1f}% at {self.chip.peak_flops / 1e12:.0f} TFLOP/s a chip"
             if self.step_seconds > 0 else
             f"  step time        no compiler estimate (XLA's optimal_seconds is {self.compiler_seconds:.3g}, "
             "not a time)"),
            f"  at peak          the compiled FLOPs take at least {self.roofline_seconds:.3g} s a step at "
            f"{self.chip.peak_flops / 1e12:.0f} TFLOP/s a chip (MFU at most "
            f"{100 * self.model_flops / self.chips / (self.roofline_seconds * self.chip.peak_flops):.0f}%)",
            f"  Pallas kernels   {', '.join(self.kernels) or 'none'}",
            f"  verdict          {self.verdict()}",
        ]
        return "\n".join(lines)

    def row(self) -> str:
        """The table row; a figure the compiler did not give (no estimate, or no program: out of memory) is '--'."""
        def cell(value: float, fmt: str) -> str:
            return "--" if math.isnan(value) else format(value, fmt)

        return (f"| {self.stage} | {self.topology} | {'x'.join(str(v) for v in self.mesh.values())} | "
                f"{self.attention.get('llm', '') or '--'} | {self.compile_seconds:.0f} | {self.peak_bytes / GIB:.1f} | "
                f"{cell(self.model_flops / self.chips, '.3g')} | {cell(self.compiler_flops * self.loop_factor, '.3g')}"
                f" | {cell(self.step_seconds, '.3g')} | {cell(self.roofline_seconds, '.3g')} | "
                f"{cell(100 * self.mfu, '.0f')}{'' if math.isnan(self.mfu) else '%'} | "
                f"{'yes' if self.fits else 'no'} |")


TABLE_HEADER = ("| stage | slice | mesh (data x fsdp x tensor) | LLM attention | compile s | peak GiB / chip | "
                "model FLOPs / chip | compiler FLOPs / chip | est. s / step | s / step at peak | MFU | fits |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


# Model FLOPs: which groups feed which (gradients flow back along these edges).
_INPUTS = {"llm": ("vision_connector", "audio_connector", "mm_embed"), "vision_connector": ("vision",),
           "audio_connector": ("audio",), "vision": (), "audio": (), "mm_embed": ()}


def _upstream_trainable(group: str, trainable: dict[str, bool]) -> bool:
    return any(trainable.get(g, False) or _upstream_trainable(g, trainable) for g in _INPUTS.get(group, ()))


def model_flops(cfg, abstract_params, trainable: dict[str, bool], batch_size: int, seq_len: int) -> float:
    """Matmul FLOPs one step needs (whole batch, no recomputation): each group's weight matrices x the
    tokens it sees, x 2 forward; backward x 2 more for the input gradients where a gradient passes through
    (a trainable group below it) and x 2 for the weight gradients of trainable groups; attention's
    products likewise (causal in the LLM: half the square). Token counts: LLM ``batch x seq_len``, vision
    ``(image slots + video frames) x patches``, audio ``audio slots x encoder positions`` per row; the
    connectors counted at their tower's output length (an upper bound). Embedding lookups and position
    tables are not matmuls."""
    import jax
    import numpy as np

    def matmul_params(tree) -> int:
        n = 0
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = [str(getattr(p, "key", "")) for p in path]
            if leaf.ndim >= 2 and keys[-1] != "bias" and not any(
                    k in ("embed_tokens", "position_embedding", "embed_positions") for k in keys):
                n += int(np.prod(leaf.shape))
        return n

    rows = batch_size
    tokens, attention = {"llm": rows * seq_len}, {}
    llm = cfg.llm
    attention["llm"] = 4 * rows * seq_len**2 * llm.num_heads * llm.head_dim * llm.num_layers / 2
    if cfg.vision is not None:
        v = cfg.vision
        patches = (v.image_size // v.patch_size) ** 2
        items = rows * (cfg.image_slots + cfg.video_slots)
        tokens["vision"] = tokens["vision_connector"] = items * patches
        attention["vision"] = 4 * items * patches**2 * v.hidden_size * v.num_layers
    if cfg.audio is not None:
        a = cfg.audio
        items = rows * cfg.audio_slots
        whisper = a.max_source_positions if cfg.speech_encoder else 0  # Whisper's positions (BEATs alone: none)
        tokens["audio"] = tokens["audio_connector"] = items * (whisper or cfg.audio_length)
        attention["audio"] = 4 * items * whisper**2 * a.d_model * a.encoder_layers
        if cfg.beats is not None:  # BEATs (beside Whisper or alone): about as many patches per window as Whisper steps
            bt = cfg.beats
            attention["audio"] += 4 * items * cfg.audio_length**2 * bt.encoder_embed_dim * bt.encoder_layers
    if getattr(llm, "tie_word_embeddings", False):
        tokens["llm_head"] = rows * seq_len  # the tied embedding is also the output projection
    total = 0.0
    for group, tree in abstract_params.items():
        trains, passes = trainable.get(group, False), _upstream_trainable(group, trainable)
        factor = 2 + 2 * (trains or passes) + 2 * trains
        total += factor * matmul_params(tree) * tokens.get(group, 0)
        total += (1 + 2 * (trains or passes)) * attention.get(group, 0)
        if group == "llm" and "llm_head" in tokens:
            total += factor * llm.vocab_size * llm.hidden_size * tokens["llm_head"]
    return float(total)


def kernel_flops(cfg, trainable: dict[str, bool], batch_size: int, seq_len: int) -> float:
    """FLOPs of the LLM's attention products in a step, as its kernels run them: forward, the backward's two
    passes where a gradient flows through the LLM, and the forward again under ``remat='full'`` (causal:
    half the square). With splash they run inside Pallas kernels, which the compiler's FLOPs and time
    estimate do not see; ``Report`` adds them at the chip's peak, a lower bound on their time."""
    llm = cfg.llm
    forward = 4 * batch_size * seq_len**2 * llm.num_heads * llm.head_dim * llm.num_layers / 2
    backward = trainable.get("llm", False) or _upstream_trainable("llm", trainable)
    return forward * (1 + 2 * backward + (backward and llm.remat == "full"))


def _advice(c, stage) -> tuple[str, ...]:
    """Knobs that lower a stage's per-chip memory, with their current values."""
    import jax
    import numpy as np

    out = []
    llm = c.model.get("llm") or {}
    if llm.get("remat", "none") != "full":
        out.append(f"model.llm.remat=full (now {llm.get('remat', 'none')!r}: recompute each layer in the backward)")
    frozen = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x, t in
                 zip(jax.tree.leaves(stage.abstract_params), jax.tree.leaves(stage.trainable)) if not t)
    if c.frozen_param_dtype is None and frozen:
        out.append(f"frozen_param_dtype='bfloat16' (frozen groups are {frozen / GIB:.1f} GiB in their dtype over the "
                   "slice)")
    sizes = dict(stage.mesh.shape)
    if sizes.get("fsdp", 1) < stage.mesh.size:
        out.append(f"a mesh that shards parameters over more chips (now {sizes}): --mesh fsdp=-1 or "
                   "--mesh fsdp=..,tensor=.. with --rules fsdp_tp")
    out.append(f"microbatches={2 * c.microbatches} (now {c.microbatches}) or a smaller batch_size (now {c.batch_size}):"
               " activations scale with batch_size / microbatches")
    out.append("a slice with more chips")
    return tuple(out)


def save_executable(compiled, path: str) -> None:
    """``compiled`` as a pickle of ``jax.experimental.serialize_executable.serialize``'s (payload, in_tree,
    out_tree): ``deserialize_and_load(*pickle.load(f))`` on a host of that slice loads it without compiling.
    Written to a temporary name first: never a half-written file under ``path``."""
    import pickle

    from jax.experimental import serialize_executable

    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(serialize_executable.serialize(compiled), f)
    os.replace(tmp, path)


def prepare(c, mesh: dict | None = None, rules: str | None = None):
    """A copy of stage config ``c`` to compile: its init sources and data are not read, only shapes."""
    from omnijax.training.config import resolve_roots

    c = copy.deepcopy(c)
    c.init_from = None  # parameters are abstract: nothing is loaded
    if mesh:
        c.mesh = dict(mesh)
    if rules:
        c.rules = rules
    return resolve_roots(c, {})  # paths of data that is not read: the default roots


def compile_stage(c, topo: Topology, save: str | None = None, log=print) -> Report:
    """Compile stage ``c``'s train step for ``topo``; ``save``: write the serialized executable there."""
    import jax

    from omnijax.hlo_cost import matmul_flops
    from omnijax.training import trainer
    from omnijax.training.checkpointing import abstract_with_shardings
    from omnijax.training.omni_task import omni_config

    stage = trainer.setup(c, devices=list(topo.devices))
    state = abstract_with_shardings(stage.abstract_state, stage.state_shardings)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=stage.batch_shardings[k])
             for k, v in stage.task.batch_spec.items()}
    log(f"stage {c.name!r}: compiling the train step for {topo.name} ({len(topo.devices)} x {topo.chip.name}) ...")
    start = time.perf_counter()
    try:
        with stage.context():
            compiled = stage.train_step().lower(state, batch).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return _out_of_memory(c, stage, topo, state, batch, str(e), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if save:
        save_executable(compiled, save)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    matmuls = matmul_flops(compiled.as_text())
    cfg = omni_config(c, "tpu") if c.model.name == "omni" else None
    groups = {g: any(jax.tree.leaves(t)) for g, t in stage.trainable.items()}
    flops = (model_flops(cfg, stage.abstract_params, groups, c.batch_size, c.seq_len) if cfg is not None
             else float("nan"))
    hidden = kernel_flops(cfg, groups, c.batch_size, c.seq_len) if cfg is not None and matmuls.kernels else 0.0
    attention = {}
    if cfg is not None:
        attention = {name: sub.attention for name, sub in (("llm", cfg.llm), ("vision", cfg.vision),
                                                           ("audio", cfg.audio)) if sub is not None}
    report = Report(
        stage=c.name, topology=topo.name, chip=topo.chip, chips=len(topo.devices), mesh=dict(stage.mesh.shape),
        rules=c.rules, attention=attention, compile_seconds=seconds, argument_bytes=mem.argument_size_in_bytes,
        output_bytes=mem.output_size_in_bytes, alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
        model_flops=flops, compiler_flops=float(cost.get("flops", 0.0)),
        loop_factor=matmuls.total / matmuls.once if matmuls.once else 1.0,
        compiler_seconds=float(cost.get("optimal_seconds", 0.0)), kernels=matmuls.kernels, kernel_flops=hidden,
        unknown_loops=matmuls.unknown_trip_counts)
    if not report.fits:
        report.advice = _advice(c, stage)
    return report


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _shard_bytes(tree) -> int:
    """Bytes of one device's shards of a tree of ``ShapeDtypeStruct``s with shardings."""
    import jax
    import numpy as np

    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _out_of_memory(c, stage, topo: Topology, state, batch, message: str, seconds: float) -> Report:
    """The report of a step the TPU compiler refused for want of HBM ("RESOURCE_EXHAUSTED: Ran out of memory
    ... the total memory required for HLO temporaries (68.43G) exceeds available HBM (15.75G)")."""
    m = re.search(r"temporaries \(([\d.]+)([KMGT])\)", message) or re.search(r"Used ([\d.]+)([KMGT]) of", message)
    temp = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else topo.chip.hbm_bytes
    state_bytes = _shard_bytes(state)
    args = state_bytes + _shard_bytes(batch)
    report = Report(stage=c.name, topology=topo.name, chip=topo.chip, chips=len(topo.devices),
                    mesh=dict(stage.mesh.shape), rules=c.rules, attention={}, compile_seconds=seconds,
                    argument_bytes=args, output_bytes=state_bytes, alias_bytes=state_bytes, temp_bytes=temp,
                    model_flops=float("nan"), compiler_flops=float("nan"), loop_factor=float("nan"),
                    compiler_seconds=float("nan"), compiler_message=message.splitlines()[0][:400])
    report.advice = _advice(c, stage)
    return report


def parse_mesh(text: str) -> dict[str, int]:
    """``'data=1,fsdp=-1,tensor=2'`` -> sizes (ValueError naming the axes otherwise)."""
    from omnijax.sharding import MESH_AXES

    out = {}
    for part in filter(None, text.split(",")):
        axis, _, value = part.partition("=")
        if axis.strip() not in MESH_AXES or not re.fullmatch(r"-?\d+", value.strip()):
            raise ValueError(f"--mesh {text!r}: give axis=size pairs over {', '.join(MESH_AXES)}, e.g. "
                             "data=1,fsdp=-1,tensor=2")
        out[axis.strip()] = int(value)
    return out


def _value(text: str):
    """A ``--set`` value: a Python literal where it is one (``2``, ``'x'``, ``None``, ``(1, 2)``), else the text."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _stage_configs(flags_config, recipe_spec: str | None, sets: list[str]):
    """The stages to compile, each with the ``--set KEY=VALUE`` overrides applied."""
    from omnijax import recipe as recipe_lib

    overrides = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: give KEY=VALUE, e.g. --set model.llm.attention=xla")
        overrides[key.strip()] = _value(value.strip())
    if recipe_spec is None:
        configs = [flags_config]
    else:
        recipe = recipe_lib.load_recipe(recipe_spec)
        configs = [recipe_lib.stage_config(recipe, i, "/nonexistent-recipe-workdir") for i in range(len(recipe.stages))]
    for c in configs:
        recipe_lib.apply_overrides(c, c.name, {recipe_lib.ALL_STAGES: overrides})
    return configs


def smallest_fit(c, topos: list[Topology], save: str | None = None, log=print) -> list[Report]:
    """Compile stage ``c`` on ``topos`` in turn until it fits -> the reports of every slice tried (the last fits,
    unless none did). Each report is printed as it comes."""
    reports = []
    for topo in topos:
        try:
            report = compile_stage(c, topo, save=save, log=log)
        except ValueError as e:
            raise ValueError(f"on {topo.name}: {e}") from None
        log(report.text())
        reports.append(report)
        if report.fits:
            break
    return reports


def main(argv: list[str] | None = None) -> int:
    from absl import flags
    from ml_collections import config_flags

    from omnijax.errors import report
    from omnijax.training.config import config_flag_error, literal_overrides, override_literal

    argv, literals = literal_overrides(list(sys.argv if argv is None else [sys.argv[0], *argv]))
    saved, sys.argv = sys.argv, argv  # config_flags finds the --config.* overrides in sys.argv
    fv = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "stage config FILE[:arg]", flag_values=fv)
    recipe_flag = flags.DEFINE_string("recipe", None, "every stage of a recipe, FILE:preset", flag_values=fv)
    topo_flag = flags.DEFINE_string("topology", None, "v5p-64, v5e-256, v6e-64, v4-128 or v5p:2x4x4; several, "
                                    "comma-separated, smallest first: the first that fits", flag_values=fv)
    mesh_flag = flags.DEFINE_string("mesh", None, "data=..,fsdp=..,tensor=.. (default: the config's)", flag_values=fv)
    rules_flag = flags.DEFINE_string("rules", None, "logical-axis rules preset (default: the config's)", flag_values=fv)
    save_flag = flags.DEFINE_string("save", None, "write the serialized executable here (--config only)",
                                    flag_values=fv)
    markdown_flag = flags.DEFINE_string("markdown", None, "write the table of the stages here", flag_values=fv)
    set_flag = flags.DEFINE_multi_string("set", [], "KEY=VALUE for every stage (e.g. model.llm.attention=xla)",
                                         flag_values=fv)
    if any(a in ("--help", "-help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
        sys.argv = saved
        print(f"{__doc__}\nflags:\n{fv.get_help(include_special_flags=False)}")
        return 0
    try:
        fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        return report(e, message=config_flag_error(e, argv))
    finally:
        sys.argv = saved
    try:
        for key, text in literals:
            if config.value is None:
                raise ValueError(f"--config.{key} needs --config FILE:PRESET (a recipe's stages take --set KEY=VALUE)")
            override_literal(config.value, key, text)
        if (config.value is None) == (recipe_flag.value is None) or not topo_flag.value:
            raise ValueError("give --topology and one of --config FILE:PRESET or --recipe FILE:PRESET; see --help")
        if save_flag.value and recipe_flag.value:
            raise ValueError("--save takes one stage (--config)")
        mesh = parse_mesh(mesh_flag.value) if mesh_flag.value else None
    except ValueError as e:
        return report(e)

    import jax

    from omnijax.training.stages import StageConfigError

    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")  # this host compiles; the TPU slice is described, not used
    try:
        topos = [topology(name.strip()) for name in topo_flag.value.split(",")]
        configs = [prepare(c, mesh, rules_flag.value)
                   for c in _stage_configs(config.value, recipe_flag.value, set_flag.value)]
    except (TopologyError, StageConfigError, ValueError, FileNotFoundError) as e:
        return report(e)
    reports, all_fit = [], True
    for c in configs:
        try:
            tried = smallest_fit(c, topos, save=save_flag.value, log=lambda *a: print(*a, flush=True))
        except (StageConfigError, ValueError) as e:
            return report(e, message=f"stage {c.name!r}: {e}")
        reports += tried
        all_fit &= tried[-1].fits
    table = "\n".join([TABLE_HEADER] + [r.row() for r in reports])
    if len(reports) > 1 or markdown_flag.value:
        print("\n" + table)
    if markdown_flag.value:
        with open(markdown_flag.value, "w") as f:
            f.write(table + "\n")
    return 0 if all_fit else DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
