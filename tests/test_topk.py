"""Divergences against a top-k + tail teacher: exact at k = V, a coarsening of the dense value below it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmdistill.losses.divergences import DIVERGENCES, get_divergence
from lmdistill.losses.objective import DistillationObjective
from lmdistill.losses.topk import TopKTeacher, coarse_log_probs, reconstruction_kl, sparse_per_token, topk_teacher

PARAMS = {"generalized_jsd": {"beta": 0.3}, "skew_forward_kl": {"skew": 0.1}, "skew_reverse_kl": {"skew": 0.2}}


def _logits(*shape, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(False)


@pytest.mark.parametrize("name", list(DIVERGENCES))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_k_equal_to_vocab_gives_the_dense_loss_and_gradient(name, temperature):
    div = get_divergence(name, **PARAMS.get(name, {}))
    student = _logits(3, 5, 17, seed=1).requires_grad_()
    teacher_logits = _logits(3, 5, 17, seed=2)
    dense = div.per_token(student, teacher_logits, temperature)
    (grad_dense,) = torch.autograd.grad(dense.sum(), student)
    top = topk_teacher(teacher_logits, 17, temperature)
    assert torch.isneginf(top.log_tail).all()  # nothing outside the top-k
    sparse = sparse_per_token(div, student, top)
    (grad_sparse,) = torch.autograd.grad(sparse.sum(), student)
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_sparse, grad_dense, rtol=1e-9, atol=1e-12)


def test_sparse_forward_kl_matches_the_coarsened_formula_written_out():
    """k < V: KL over the k cached tokens plus one tail outcome, computed here by hand in numpy (float64)."""
    student = _logits(4, 50, seed=3)
    teacher_logits = _logits(4, 50, seed=4)
    T, k = 2.0, 7
    top = topk_teacher(teacher_logits, k, T)
    got = sparse_per_token(get_divergence("forward_kl"), student, top).numpy()
    s, t = student.numpy() / T, teacher_logits.numpy() / T
    p = np.exp(t - t.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(s - s.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    for row in range(4):
        order = np.argsort(-p[row])
        top_ids, tail_ids = order[:k], order[k:]
        pk, qk = p[row, top_ids], q[row, top_ids]
        m, q_tail = p[row, tail_ids].sum(), q[row, tail_ids].sum()
        want = float(np.sum(pk * np.log(pk / qk)) + m * math.log(m / q_tail))
        assert got[row] == pytest.approx(want, rel=1e-10)
        np.testing.assert_array_equal(top.ids[row].numpy(), top_ids)
        assert top.log_tail[row].item() == pytest.approx(math.log(m), rel=1e-10)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "generalized_jsd", "total_variation"])
def test_coarsening_never_exceeds_the_dense_divergence(name):
    """Data-processing inequality for f-divergences: merging the tail can only lose divergence."""
    div = get_divergence(name, **PARAMS.get(name, {}))
    student, teacher_logits = _logits(6, 40, 64, seed=5), _logits(6, 40, 64, seed=6)
    dense = div.per_token(student, teacher_logits, 1.5)
    previous = torch.zeros_like(dense)
    for k in (1, 4, 16, 63, 64):
        sparse = sparse_per_token(div, student, topk_teacher(teacher_logits, k, 1.5))
        assert (sparse <= dense + 1e-12).all()
        assert (sparse >= previous - 1e-12).all()  # a finer partition loses less
        previous = sparse
    torch.testing.assert_close(previous, dense)


def test_coarse_distributions_sum_to_one_and_tail_is_exact_for_tiny_tails():
    student = _logits(2, 3, 100, seed=7, dtype=torch.float32)
    teacher_logits = _logits(2, 3, 100, seed=8, scale=20.0, dtype=torch.float32)  # very peaked: tails ~ 1e-20
    top = topk_teacher(teacher_logits, 10, 1.0)
    log_q, log_p = coarse_log_probs(student, top)
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(2, 3))
    exact = torch.log_softmax(teacher_logits.double(), -1).sort(-1, descending=True).values[..., 10:].logsumexp(-1)
    torch.testing.assert_close(top.log_tail.double(), exact, rtol=1e-5, atol=1e-5)


def test_reconstruction_kl_is_zero_at_full_k_and_falls_with_k():
    teacher_logits = _logits(5, 200, seed=9, dtype=torch.float32)
    values = [
        reconstruction_kl(teacher_logits, topk_teacher(teacher_logits, k, 2.0)).mean().item()
        for k in (1, 8, 64, 199, 200)
    ]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(0.0, abs=1e-6) and values[0] > 0.01
    # the uniform-tail reconstruction is exact when the tail really is uniform
    flat = torch.cat([torch.tensor([[5.0, 4.0]]), torch.zeros(1, 30)], dim=1)
    assert reconstruction_kl(flat, topk_teacher(flat, 2, 1.0)).item() == pytest.approx(0.0, abs=1e-6)


def test_objective_reads_a_cached_teacher_like_a_dense_one_at_full_k():
    torch.manual_seed(0)
    student = torch.randn(2, 6, 11, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(2, 6, 11, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 6))
    for reduction in ("mean", "batchmean"):
        objective = DistillationObjective(alpha=0.3, temperature=2.0, divergence="reverse_kl", reduction=reduction)
        dense_loss, dense_terms = objective(student, labels, teacher_logits)
        sparse_loss, sparse_terms = objective(student, labels, topk_teacher(teacher_logits, 11, 2.0))
        torch.testing.assert_close(sparse_loss, dense_loss)
        assert sparse_terms == pytest.approx(dense_terms, rel=1e-9)
        (g_dense,) = torch.autograd.grad(dense_loss, student)
        (g_sparse,) = torch.autograd.grad(sparse_loss, student)
        torch.testing.assert_close(g_sparse, g_dense)


def test_objective_refuses_a_cache_at_another_temperature():
    objective = DistillationObjective(alpha=0.5, temperature=2.0)
    logits = torch.randn(1, 4, 9)
    with pytest.raises(ValueError, match="cached teacher is at temperature 1.0, the objective at 2.0"):
        objective(logits, torch.zeros(1, 4, dtype=torch.long), topk_teacher(logits, 3, 1.0))


def test_bad_shapes_and_k_are_named():
    logits = torch.randn(2, 3, 9)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, V=9\], got 10"):
        topk_teacher(logits, 10)
    top = topk_teacher(logits, 4)
    with pytest.raises(ValueError, match="do not match the cached teacher's positions"):
        sparse_per_token(get_divergence("forward_kl"), torch.randn(2, 4, 9), top)
    wrong_vocab = TopKTeacher(top.log_probs, top.ids, top.log_tail, 1.0, 12)
    with pytest.raises(ValueError, match="student vocabulary V=9 != cached teacher vocabulary V=12"):
        sparse_per_token(get_divergence("forward_kl"), logits, wrong_vocab)
