"""Divergences against a top-k + tail teacher: exact at k = V; below it, a coarsening of the dense value
("tail_bucket") or the dense value against a uniform-tail reconstruction of the teacher ("uniform_tail")."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from lmdistill.config import ConfigError, DistillationConfig, from_dict
from lmdistill.losses.divergences import DIVERGENCES, get_divergence
from lmdistill.losses.objective import DistillationObjective
from lmdistill.losses.topk import (
    ESTIMATORS,
    TopKTeacher,
    coarse_log_probs,
    reconstruction_kl,
    sparse_per_token,
    topk_teacher,
    uniform_tail_log_probs,
)

PARAMS = {"generalized_jsd": {"beta": 0.3}, "skew_forward_kl": {"skew": 0.1}, "skew_reverse_kl": {"skew": 0.2}}


def _logits(*shape, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(False)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name", list(DIVERGENCES))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_k_equal_to_vocab_gives_the_dense_loss_and_gradient(estimator, name, temperature, dtype):
    div = get_divergence(name, **PARAMS.get(name, {}))
    student = _logits(3, 5, 17, seed=1, dtype=dtype).requires_grad_()
    teacher_logits = _logits(3, 5, 17, seed=2, dtype=dtype)
    dense = div.per_token(student, teacher_logits, temperature)
    (grad_dense,) = torch.autograd.grad(dense.sum(), student)
    top = topk_teacher(teacher_logits, 17, temperature)
    assert torch.isneginf(top.log_tail).all()  # nothing outside the top-k
    sparse = sparse_per_token(div, student, top, estimator, chunk_size=4)  # uniform_tail: 15 rows in 4 chunks
    (grad_sparse,) = torch.autograd.grad(sparse.sum(), student)
    assert sparse.dtype == dtype and grad_sparse.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad_sparse, grad_dense, rtol=1e-9, atol=1e-12)
    else:
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_sparse, grad_dense, rtol=1e-4, atol=1e-5)


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
    with pytest.raises(ValueError, match="the cached teacher has 12 tokens and the student's logits has 9 columns"):
        sparse_per_token(get_divergence("forward_kl"), logits, wrong_vocab)


# ----------------------------------------------------------------------------------------------- uniform_tail


def _textbook(name: str, log_q: torch.Tensor, p: torch.Tensor, params: dict) -> torch.Tensor:
    """D per row from its textbook definition on full distributions (..., V): p the teacher, q = exp(log_q)."""
    q = log_q.exp()

    def kl(a, log_a, log_b):
        return (a * (log_a - log_b)).sum(-1)

    log_p = p.log()
    if name == "forward_kl":
        return kl(p, log_p, log_q)
    if name == "reverse_kl":
        return kl(q, log_q, log_p)
    if name == "generalized_jsd":
        beta = params["beta"]
        log_m = (beta * p + (1 - beta) * q).log()
        return beta * kl(p, log_p, log_m) + (1 - beta) * kl(q, log_q, log_m)
    if name == "skew_forward_kl":  # KL(p || lambda p + (1 - lambda) q), DistiLLM
        return kl(p, log_p, (params["skew"] * p + (1 - params["skew"]) * q).log())
    if name == "skew_reverse_kl":  # KL(q || lambda q + (1 - lambda) p)
        return kl(q, log_q, (params["skew"] * q + (1 - params["skew"]) * p).log())
    assert name == "total_variation"
    return 0.5 * (p - q).abs().sum(-1)


def _reconstructed_teacher(teacher_logits: torch.Tensor, k: int, T: float) -> torch.Tensor:
    """The uniform-tail teacher built by hand from the full one: top-k kept, the rest's mass spread evenly."""
    p = torch.softmax(teacher_logits / T, dim=-1)
    vocab = p.shape[-1]
    p_hat = torch.empty_like(p)
    for row in range(p.shape[0]):
        order = torch.argsort(p[row], descending=True)
        top, tail = order[:k], order[k:]
        p_hat[row, tail] = p[row, tail].sum() / (vocab - k)
        p_hat[row, top] = p[row, top]
    return p_hat


@pytest.mark.parametrize("name", list(DIVERGENCES))
@pytest.mark.parametrize(("k", "T"), [(1, 1.0), (5, 2.0), (29, 1.5)])
def test_uniform_tail_is_the_dense_divergence_against_the_reconstructed_teacher(name, k, T):
    """k < V: value and gradient equal the textbook D between softmax(s / T) and the hand-built p_hat (float64)."""
    params = PARAMS.get(name, {})
    div = get_divergence(name, **params)
    student = _logits(7, 30, seed=11).requires_grad_()
    teacher_logits = _logits(7, 30, seed=12)
    p_hat = _reconstructed_teacher(teacher_logits, k, T)
    want = _textbook(name, torch.log_softmax(student / T, dim=-1), p_hat, params)
    (grad_want,) = torch.autograd.grad(want.sum(), student)
    top = topk_teacher(teacher_logits, k, T)
    torch.testing.assert_close(uniform_tail_log_probs(top, torch.float64).exp(), p_hat, rtol=1e-12, atol=1e-15)
    got = sparse_per_token(div, student, top, "uniform_tail", chunk_size=3)
    (grad_got,) = torch.autograd.grad(got.sum(), student)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-8, atol=1e-12)
    if name == "forward_kl":  # the closed form: d KL(p_hat || q) / d s = (q - p_hat) / T
        q = torch.softmax(student.detach() / T, dim=-1)
        torch.testing.assert_close(grad_got, (q - p_hat) / T, rtol=1e-9, atol=1e-12)


def test_the_estimators_differ_below_full_k_and_agree_when_the_tail_is_flat():
    """The tail is all they differ on: with a teacher whose tail really is uniform, uniform_tail is the dense loss."""
    student = _logits(4, 40, seed=13).requires_grad_()
    flat_tail = torch.cat([_logits(4, 6, seed=14) + 6.0, torch.zeros(4, 34, dtype=torch.float64)], dim=1)
    for name in DIVERGENCES:
        div = get_divergence(name, **PARAMS.get(name, {}))
        dense = div.per_token(student, flat_tail, 2.0)
        top = topk_teacher(flat_tail, 6, 2.0)
        uniform = sparse_per_token(div, student, top, "uniform_tail")
        bucket = sparse_per_token(div, student, top, "tail_bucket")
        torch.testing.assert_close(uniform, dense, rtol=1e-9, atol=1e-12)
        assert (bucket < dense - 1e-6).all(), name  # the student's non-flat tail is invisible to the bucket


def test_uniform_tail_gradcheck_and_a_second_backward():
    """Second derivatives are not supported, but repeated backwards through one graph are (gradcheck does them)."""
    student = _logits(2, 3, 9, seed=15).requires_grad_()
    top = topk_teacher(_logits(2, 3, 9, seed=16), 4, 1.5)
    div = get_divergence("generalized_jsd", beta=0.3)
    assert torch.autograd.gradcheck(lambda s: sparse_per_token(div, s, top, "uniform_tail", chunk_size=4), (student,))
    per_token = sparse_per_token(div, student, top, "uniform_tail")
    weights = torch.rand(2, 3, dtype=torch.float64)
    (first,) = torch.autograd.grad((per_token * weights).sum(), student, retain_graph=True)
    (second,) = torch.autograd.grad((per_token * weights).sum(), student)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_uniform_tail_without_gradient_and_bad_estimator():
    top = topk_teacher(_logits(2, 11, seed=17), 3)
    student = _logits(2, 11, seed=18)
    with torch.no_grad():
        value = sparse_per_token(get_divergence("reverse_kl"), student, top, "uniform_tail")
    assert value.shape == (2,) and not value.requires_grad
    with pytest.raises(ValueError, match=r"unknown top-k estimator 'uniform'; choose one of \['tail_bucket', 'uni"):
        sparse_per_token(get_divergence("reverse_kl"), student, top, "uniform")


# ------------------------------------------------------------------------------------------- the config switch


def test_config_switch_reaches_the_loss_on_a_flat_teacher():
    torch.manual_seed(0)
    student = torch.randn(2, 6, 300, requires_grad=True)
    flat_teacher = torch.randn(2, 6, 300) * 0.5  # most of the mass outside the top 8
    labels = torch.randint(0, 300, (2, 6))
    top = topk_teacher(flat_teacher, 8, 2.0)
    assert top.log_tail.exp().min() > 0.5
    section = {"alpha": 0.5, "temperature": 2.0, "divergence": "forward_kl"}
    default = DistillationObjective.from_config(from_dict(DistillationConfig, section, prefix="distillation"))
    cfg = from_dict(DistillationConfig, {**section, "topk_estimator": "uniform_tail"}, prefix="distillation")
    assert cfg.topk_estimator == "uniform_tail" and default.topk_estimator == "tail_bucket"
    switched = DistillationObjective.from_config(cfg)
    loss_default, terms_default = default(student, labels, top)
    loss_switched, terms_switched = switched(student, labels, top)
    assert terms_switched["ce"] == pytest.approx(terms_default["ce"])
    assert terms_switched["forward_kl"] > terms_default["forward_kl"] * 1.5
    # the switched objective's D is the uniform-tail estimator's, mean over the supervised positions
    supervised = torch.ones(2, 6, dtype=torch.bool)
    supervised[:, -1] = False
    want = sparse_per_token(switched.divergence, student, top, "uniform_tail")[supervised].mean()
    assert terms_switched["forward_kl"] == pytest.approx(want.item(), rel=1e-5)
    # and its gradient reaches the student's logits
    (g_default,) = torch.autograd.grad(loss_default, student)
    (g_switched,) = torch.autograd.grad(loss_switched, student)
    assert (g_default - g_switched).norm() > 0.01 * g_default.norm()
    # the keyword of the constructor does the same
    direct = DistillationObjective(alpha=0.5, temperature=2.0, topk_estimator="uniform_tail")
    assert direct(student, labels, top)[1] == pytest.approx(terms_switched)


def test_bad_topk_estimator_is_a_config_error():
    with pytest.raises(ConfigError, match=r"distillation\.topk_estimator: must be one of \['tail_bucket', 'uniform_"):
        from_dict(DistillationConfig, {"topk_estimator": "uniform"}, prefix="distillation")
    with pytest.raises(ConfigError, match="topk_estimator: must be 'tail_bucket' or 'uniform_tail', got 'bucket'"):
        DistillationConfig(topk_estimator="bucket")
    with pytest.raises(ConfigError, match="topk_estimator"):
        DistillationObjective(topk_estimator="bucket")
    # the config's choices are the loss's estimators
    choices = typing.get_args(typing.get_type_hints(DistillationConfig)["topk_estimator"])
    assert choices == ESTIMATORS
