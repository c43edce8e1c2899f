"""Losses against hand-written NumPy, and the vocab-parallel CE against the plain one (value,
gradient, and the compiled program: no full-vocabulary f32 buffer on any device)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from omnijax.sharding import make_mesh
from omnijax.training.losses import (align_responses, masked_cross_entropy, self_kd_loss, shift_targets,
                                     vocab_parallel_cross_entropy)


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def np_ce(logits, targets):
    return -np.take_along_axis(np_log_softmax(logits), np.asarray(targets)[..., None], -1)[..., 0]


def _case(seed, b, t, v, num_tasks=3, scale=3.0):
    r = np.random.default_rng(seed)
    logits = (r.normal(size=(b, t, v)) * scale).astype(np.float32)
    targets = r.integers(0, v, (b, t)).astype(np.int32)
    weights = (r.random((b, t)) > 0.3).astype(np.float32)
    task_ids = r.integers(0, num_tasks, (b, t)).astype(np.int32)
    return logits, targets, weights, task_ids


def test_masked_cross_entropy_matches_numpy():
    logits, targets, weights, task_ids = _case(0, 3, 7, 50)
    logits[1] += 1e4  # exp would overflow in f32 without the max shift
    loss, aux = masked_cross_entropy(jnp.asarray(logits), targets, weights, task_ids, num_tasks=4)
    ce = np_ce(logits, targets)
    assert float(aux["tokens"]) == weights.sum()
    np.testing.assert_allclose(float(loss), (weights * ce).sum() / weights.sum(), rtol=1e-5)
    for k in range(4):  # task 3 has no tokens: mean 0, count 0
        sel = weights * (task_ids == k)
        np.testing.assert_allclose(float(aux["task_tokens"][k]), sel.sum())
        np.testing.assert_allclose(float(aux["task_loss"][k]), (sel * ce).sum() / max(sel.sum(), 1), rtol=1e-5)
    zero, aux0 = masked_cross_entropy(jnp.asarray(logits), targets, np.zeros_like(weights))
    assert float(zero) == 0.0 and float(aux0["tokens"]) == 0.0 and "task_loss" not in aux0
    with pytest.raises(ValueError, match="task_ids"):
        masked_cross_entropy(jnp.asarray(logits), targets, weights, num_tasks=2)


def test_shift_targets_packed_row():
    # Three packed examples (segments 1, 2, 3) then padding; loss_mask marks response tokens.
    ids = np.array([[11, 12, 13, 14, 21, 22, 23, 31, 32, 0, 0]])
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 3, 0, 0]])
    mask = np.array([[0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0]])
    targets, weights = shift_targets(ids, mask, seg)
    np.testing.assert_array_equal(targets, [[12, 13, 14, 0, 22, 23, 0, 32, 0, 0, 0]])
    np.testing.assert_array_equal(weights, [[0, 1, 1, 0, 1, 1, 0, 1, 0, 0, 0]])
    assert targets.dtype == jnp.int32 and weights.dtype == jnp.float32


@pytest.mark.parametrize("tied", [False, True])
def test_vocab_parallel_equals_plain(devices, tied):
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    b, t, d, v = 4, 8, 16, 64
    r = np.random.default_rng(1)
    hidden = jnp.asarray(r.normal(size=(b, t, d)), jnp.float32)
    kernel = jnp.asarray(r.normal(size=(v, d) if tied else (d, v)) * 0.5, jnp.float32)
    _, targets, weights, task_ids = _case(2, b, t, v)
    targets[0, :4] = [0, 15, 16, v - 1]  # targets at the edges of the four vocab shards

    def plain(h, w):
        logits = jnp.einsum("btd,vd->btv" if tied else "btd,dv->btv", h, w)
        return masked_cross_entropy(logits, targets, weights, task_ids, num_tasks=3)

    def parallel(h, w):
        return vocab_parallel_cross_entropy(h, w, targets, weights, mesh, tied=tied, task_ids=task_ids, num_tasks=3)

    (l0, a0), g0 = jax.jit(jax.value_and_grad(plain, (0, 1), has_aux=True))(hidden, kernel)
    (l1, a1), g1 = jax.jit(jax.value_and_grad(parallel, (0, 1), has_aux=True))(hidden, kernel)
    diffs = {"loss": abs(float(l0) - float(l1))}
    # Means and counts absolutely, sums (~200) relatively: f32 summation order differs per device.
    diffs.update({f"aux/{k}": float(jnp.max(jnp.abs(a0[k] - a1[k]) / (jnp.abs(a0[k]) if k.endswith("_sum") else 1)))
                  for k in a0})
    diffs.update({"grad_hidden": float(jnp.max(jnp.abs(g0[0] - g1[0]))),
                  "grad_kernel": float(jnp.max(jnp.abs(g0[1] - g1[1])))})
    print(f"tied={tied} max abs diffs: {diffs}")
    assert max(diffs.values()) < 1e-5, diffs
    assert float(jnp.max(jnp.abs(g0[1]))) > 1e-3  # the gradient compared is not trivially zero


def test_vocab_parallel_rejects_indivisible_vocab(devices):
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    with pytest.raises(ValueError, match="pad the vocabulary"):
        vocab_parallel_cross_entropy(jnp.zeros((2, 3, 8)), jnp.zeros((8, 30)), jnp.zeros((2, 3), jnp.int32),
                                     jnp.ones((2, 3)), mesh)


def _full_vocab_f32(hlo: str, vocab: int) -> list[str]:
    return sorted(set(re.findall(r"f32\[[0-9,]*\b%d\b[0-9,]*\]" % vocab, hlo)))


@pytest.mark.parametrize("tied", [False, True])
def test_vocab_parallel_never_holds_full_vocab_logits(devices, tied):
    """Compile loss + grad on a 2 (fsdp) x 4 (tensor) mesh with a large vocabulary: the per-device
    program of the vocab-parallel loss has no f32 buffer with the full vocabulary as a dimension; the
    plain loss with gathered logits has the full ``[b_local, t, V]`` logits and needs far more scratch."""
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    b, t, d, vocab = 8, 64, 64, 24576
    rows = NamedSharding(mesh, P(("data", "fsdp"), None))
    args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"), None, None))),
            jax.ShapeDtypeStruct((vocab, d) if tied else (d, vocab), jnp.float32,
                                 sharding=NamedSharding(mesh, P("tensor", None) if tied else P(None, "tensor"))),
            jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=rows),
            jax.ShapeDtypeStruct((b, t), jnp.float32, sharding=rows))

    def parallel(h, w, tg, wt):
        return vocab_parallel_cross_entropy(h, w, tg, wt, mesh, tied=tied)[0]

    def gathered(h, w, tg, wt):
        logits = jnp.einsum("btd,vd->btv" if tied else "btd,dv->btv", h, w)
        logits = jax.lax.with_sharding_constraint(logits, NamedSharding(mesh, P(("data", "fsdp"), None, None)))
        return masked_cross_entropy(logits, tg, wt)[0]

    compiled = {name: jax.jit(jax.value_and_grad(fn, (0, 1))).lower(*args).compile()
                for name, fn in (("vocab_parallel", parallel), ("plain", gathered))}
    temp = {name: c.memory_analysis().temp_size_in_bytes for name, c in compiled.items()}
    full = {name: _full_vocab_f32(c.as_text(), vocab) for name, c in compiled.items()}
    print(f"tied={tied} temp bytes per device {temp}; full-vocab f32 buffers {full}")
    b_local = b // 2
    assert full["vocab_parallel"] == []
    assert f"f32[{b_local},{t},{vocab}]" in full["plain"]
    assert temp["plain"] - temp["vocab_parallel"] >= b_local * t * vocab * 4


def np_self_kd(student, teacher, targets, weights, alpha, temp):
    log_ps, log_pt = np_log_softmax(student / temp), np_log_softmax(teacher / temp)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1) * temp**2
    ce = np_ce(student, targets)
    kl, ce = (weights * kl).sum() / weights.sum(), (weights * ce).sum() / weights.sum()
    return alpha * kl + (1 - alpha) * ce, kl, ce


@pytest.mark.parametrize("alpha,temp", [(0.5, 1.0), (0.3, 2.0)])
def test_self_kd_matches_numpy(alpha, temp):
    student, targets, weights, _ = _case(3, 2, 5, 40)
    teacher = _case(4, 2, 5, 40)[0]
    loss, aux = self_kd_loss(jnp.asarray(student), jnp.asarray(teacher), targets, weights, alpha, temp)
    want, kl, ce = np_self_kd(student, teacher, targets, weights, alpha, temp)
    np.testing.assert_allclose([float(loss), float(aux["kl"]), float(aux["ce"])], [want, kl, ce], rtol=1e-5)


def test_self_kd_alpha_zero_is_ce_and_teacher_gets_no_gradient():
    student, targets, weights, _ = _case(5, 2, 6, 32)
    teacher = _case(6, 2, 6, 32)[0]
    loss, aux = self_kd_loss(jnp.asarray(student), jnp.asarray(teacher), targets, weights, 0.0, 1.0)
    ce, _ = masked_cross_entropy(jnp.asarray(student), targets, weights)
    assert float(loss) == float(ce) == float(aux["ce"])

    grad_s, grad_t = jax.grad(lambda s, t: self_kd_loss(s, t, targets, weights, 0.7, 2.0)[0], (0, 1))(
        jnp.asarray(student), jnp.asarray(teacher))
    assert float(jnp.max(jnp.abs(grad_t))) == 0.0
    assert float(jnp.max(jnp.abs(grad_s))) > 0.0


def test_align_responses_pairs_teacher_and_student_positions():
    # The same 3-token response at different offsets (the spoken question is longer than the text one).
    x_teacher = np.arange(2 * 6 * 2).reshape(2, 6, 2)
    mask_teacher = np.array([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]])
    out, valid = align_responses(jnp.asarray(x_teacher), jnp.asarray(mask_teacher), 4)
    np.testing.assert_array_equal(out[0, :3], x_teacher[0, 1:4])
    np.testing.assert_array_equal(out[1, :2], x_teacher[1, 2:4])
    np.testing.assert_array_equal(valid, [[1, 1, 1, 0], [1, 1, 0, 0]])
