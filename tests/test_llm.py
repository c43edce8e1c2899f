"""The Qwen2 language tower against transformers (float32), sharded and not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_fixtures import QWEN2_CONFIGS, make_qwen2, rel_err, torch_logits

from omnijax import sharding
from omnijax.checkpoint import load_model
from omnijax.models.attention import attention
from omnijax.models.llm import CausalLM, LLMConfig, init_params

TOL = 1e-4  # max |diff| <= TOL * max |logit|


@pytest.fixture(scope="module", params=sorted(QWEN2_CONFIGS))
def hf_pair(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    model = make_qwen2(path, request.param)
    return request.param, path, model


def test_logits_match_transformers(hf_pair):
    name, path, hf = hf_pair
    loaded = load_model(path, progress=False)
    ids = np.random.RandomState(1).randint(0, 128, (3, 17))
    got, _ = jax.jit(loaded.module.apply)({"params": loaded.params}, jnp.asarray(ids))
    want = torch_logits(hf, ids)
    assert rel_err(got, want) <= TOL, name


def test_padded_batch_matches_transformers(hf_pair):
    """Right padding (segment id 0) and left padding with HF's cumsum positions."""
    name, path, hf = hf_pair
    loaded = load_model(path, progress=False)
    rng = np.random.RandomState(2)
    ids = rng.randint(0, 128, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # right-padded row
    mask[2, :5] = 0  # left-padded row
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    got, _ = loaded.module.apply({"params": loaded.params}, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask))
    want = torch_logits(hf, ids, attention_mask=mask, position_ids=positions)
    valid = mask.astype(bool)
    assert rel_err(np.asarray(got)[valid], want[valid]) <= TOL, name


def test_config_reads_both_rope_layouts():
    v5 = LLMConfig.from_hf(dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                num_attention_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
    legacy = LLMConfig.from_hf(dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, rope_theta=5e5))
    assert (v5.rope_theta, legacy.rope_theta) == (1e6, 5e5)
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        LLMConfig.from_hf(dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                               num_attention_heads=2, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6}))


def test_sharded_forward_equals_single_device(tmp_path, devices):
    """fsdp=2 x tensor=4 mesh with the FSDP+TP rules: same logits as one device."""
    path = str(tmp_path / "m")
    make_qwen2(path, "gqa4_tied_1e6")
    ids = jnp.asarray(np.random.RandomState(3).randint(0, 128, (4, 16)))
    single = load_model(path, progress=False)
    want, _ = jax.jit(single.module.apply)({"params": single.params}, ids)
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    rules = sharding.logical_rules("fsdp_tp")
    sharded = load_model(path, mesh=mesh, rules=rules, progress=False)
    q = sharded.params["llm"]["layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 2, 8)
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with sharding.activation_sharding(mesh, rules):
        got, _ = jax.jit(sharded.module.apply)({"params": sharded.params}, jax.device_put(ids, batch_sharding))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("remat,unroll", [("full", 1), ("dots", 2)])
def test_remat_and_unroll_keep_values_and_gradients(remat, unroll):
    cfg = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
    base = CausalLM(cfg)
    params = init_params(base, jax.random.key(0))
    variant = CausalLM(cfg.replace(remat=remat, scan_unroll=unroll))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 8)))

    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, ids)[0] ** 2)

    g0 = jax.jit(jax.grad(lambda p: loss(base, p)))(params)
    g1 = jax.jit(jax.grad(lambda p: loss(variant, p)))(params)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_close_to_f32():
    cfg = LLMConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2)
    params = init_params(CausalLM(cfg), jax.random.key(0))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 8)))
    f32, _ = CausalLM(cfg).apply({"params": params}, ids)
    bf16, _ = CausalLM(cfg.replace(dtype="bfloat16")).apply({"params": params}, ids)
    assert bf16.dtype == jnp.float32  # logits are produced in f32 for the loss
    assert rel_err(bf16, f32) < 5e-2


def test_every_param_has_logical_axes():
    from omnijax.models.llm import logical_specs
    for tie in (True, False):
        cfg = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                        num_kv_heads=2, tie_word_embeddings=tie)
        specs, shapes = logical_specs(CausalLM(cfg))
        flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        flat_shapes = jax.tree.leaves(shapes)
        assert len(flat_specs) == len(flat_shapes) == (14 if tie else 15)
        for spec, shape in zip(flat_specs, flat_shapes):
            assert len(spec) == len(shape.shape) and all(isinstance(n, str) for n in spec)


def _packed_case(seed=0):
    rng = np.random.RandomState(seed)
    b, t, n, k, h = 2, 128, 4, 2, 16
    q, kk, v = (jnp.asarray(rng.randn(b, t, heads, h), jnp.float32) for heads in (n, k, k))
    seg = np.ones((b, t), np.int32)
    seg[0, 50:] = 2
    seg[0, 90:] = 3
    seg[1, 100:] = 0
    return q, kk, v, jnp.asarray(seg)


def test_packed_segments_equal_separate_sequences():
    """Segment ids isolate packed examples: each segment equals attention over that segment alone."""
    q, k, v, seg = _packed_case()
    out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
    for lo, hi in [(0, 50), (50, 90), (90, 128)]:
        s = slice(lo, hi)
        ones = jnp.ones((1, hi - lo), jnp.int32)
        alone = attention(q[:1, s], k[:1, s], v[:1, s], q_segment_ids=ones, kv_segment_ids=ones)
        np.testing.assert_allclose(out[:1, s], alone, atol=1e-5)


def test_splash_attention_interpret_matches_xla():
    """The TPU splash kernel, run in the Pallas interpreter on CPU: values and gradients."""
    q, k, v, seg = _packed_case(1)
    valid = np.asarray(seg) != 0

    def run(impl):
        def f(q, k, v):
            out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation=impl,
                            splash_interpret=True)
            return jnp.sum(jnp.where(valid[:, :, None, None], out, 0.0) ** 2), out
        (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    ref_out, ref_grads = run("xla")
    out, grads = run("splash")
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref_out)[valid], atol=2e-5)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=2e-4)


def test_splash_attention_on_a_mesh_pads_rows_and_runs_under_shard_map(devices):
    """On a mesh the kernel runs under shard_map (rows over data x fsdp, heads over tensor; 2 kv heads on a
    4-way tensor axis are repeated to one per query head first), and a row of 100 tokens is padded to 128:
    values and gradients as the XLA reference's, through jit with sharded inputs."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    rng = np.random.RandomState(3)
    b, t, n, k, h = 4, 100, 8, 2, 16
    q, kk, v = (jnp.asarray(rng.randn(b, t, heads, h), jnp.float32) for heads in (n, k, k))
    seg = np.ones((b, t), np.int32)
    seg[0, 40:] = 2
    seg[2, 70:] = 0
    valid = seg != 0
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4}, devices)
    rules = sharding.logical_rules("fsdp_tp")

    def run(impl):
        def f(q, k, v, seg):
            out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation=impl,
                            splash_interpret=True)
            return jnp.sum(jnp.where(valid[:, :, None, None], out, 0.0) ** 2), out

        with sharding.activation_sharding(mesh, rules):
            args = [jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp")))) for x in (q, kk, v, jnp.asarray(seg))]
            step = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)
            (_, out), grads = jax.jit(step)(*args)
            program = str(jax.make_jaxpr(step)(*args))
        assert ("shard_map" in program) == (impl == "splash")
        return np.asarray(out), [np.asarray(g) for g in grads]

    ref_out, ref_grads = run("xla")
    out, grads = run("splash")
    assert out.shape == (b, t, n, h)
    np.testing.assert_allclose(out[valid], ref_out[valid], atol=2e-5)
    for g, rg in zip(grads, ref_grads):
        np.testing.assert_allclose(g, rg, atol=2e-4)
