"""Edge cases of the logit divergences, each against an independent float64 reference.

- the package ``lmdistill.losses`` exports every public name of ``divergences`` (``from lmdistill.losses import
  generalized_jsd`` works);
- -inf logits are probabilities of 0 (0 log 0 = 0), in values and gradients, on the plain, chunked, fused and
  top-k paths: entries that are -inf in both models give the loss of the row without them; entries that are -inf
  in one model only give the textbook value (+inf where the divergence really is infinite, never NaN);
- float64 inputs get float64 reduction weights on the chunked and fused paths (agreement to ~1e-13);
- the float32 values of the divergences to a mixture (generalized JSD, skew KLs) keep ~1e-5 relative precision
  when the student is close to the teacher (d = log p_s - log p_t ~ 1e-3, where the textbook sums cancel to
  noise); the KLs and TV keep their textbook values; every gradient stays at least as accurate as before.

The reference is the textbook formula in float64 through ``F.kl_div`` on log-probabilities (as in
``test_divergences``); a probability of exactly 0 is given to it as a logit of -1e4, whose softmax underflows to
0 in float64, so that the reference itself needs no special case.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmdistill.losses
from lmdistill.losses import divergences as D
from lmdistill.losses.chunked import chunked_per_token, fused_linear_loss
from lmdistill.losses.topk import TopKTeacher, coarse_log_probs, sparse_per_token, topk_teacher

CONFIGS = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.0}),
    ("generalized_jsd", {"beta": 0.1}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 0.9}),
    ("generalized_jsd", {"beta": 1.0}),
    ("skew_forward_kl", {"skew": 0.0}),
    ("skew_forward_kl", {"skew": 0.1}),
    ("skew_forward_kl", {"skew": 0.9}),
    ("skew_reverse_kl", {"skew": 0.0}),
    ("skew_reverse_kl", {"skew": 0.1}),
    ("skew_reverse_kl", {"skew": 0.5}),
    ("total_variation", {}),
]
CONFIG_IDS = [f"{n}{''.join(f'-{k}={v}' for k, v in p.items())}" for n, p in CONFIGS]
# divergences to a mixture: generalized JSD inside (0, 1), the skew KLs above 0 (the others are the KLs and TV)
MIXTURES = [(n, p) for n, p in CONFIGS if n != "total_variation" and 0.0 < p.get("beta", p.get("skew", 0.0)) < 1.0]
MIXTURE_IDS = [f"{n}{''.join(f'-{k}={v}' for k, v in p.items())}" for n, p in MIXTURES]
IMPLS = ["plain", "chunked"]
ZERO_LOGIT = -1.0e4  # softmax(-1e4 / T) == 0 in float64 for T <= 10: a probability of exactly 0, but finite


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: intra-op threads only add contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rand(*shape, scale=2.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def call(name, params, student, teacher, **kw):
    if kw.get("implementation") == "chunked":
        kw.setdefault("chunk_size", 2)
    return getattr(D, name)(student, teacher, **params, **kw)


def textbook(name, params, student, teacher, temperature=1.0, dtype=torch.float64):
    """Per-position divergence from ``F.kl_div(log q, log p, log_target=True)`` = KL(p || q), in ``dtype``."""
    ls = F.log_softmax(student.to(dtype) / temperature, -1)
    lt = F.log_softmax(teacher.to(dtype) / temperature, -1)

    def kl(log_p, log_q):
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)

    def log_mix(w, log_a, log_b):  # log(w a + (1 - w) b)
        return torch.logsumexp(torch.stack([log_a + math.log(w), log_b + math.log(1 - w)]), dim=0)

    if name == "forward_kl" or (name in ("generalized_jsd", "skew_forward_kl") and params[next(iter(params))] == 0):
        return kl(lt, ls)
    if name == "reverse_kl" or (name == "skew_reverse_kl" and params["skew"] == 0):
        return kl(ls, lt)
    if name == "generalized_jsd":
        beta = params["beta"]
        if beta == 1.0:
            return kl(ls, lt)
        log_m = log_mix(beta, lt, ls)
        return beta * kl(lt, log_m) + (1 - beta) * kl(ls, log_m)
    if name == "skew_forward_kl":
        return kl(lt, log_mix(params["skew"], lt, ls))
    if name == "skew_reverse_kl":
        return kl(ls, log_mix(params["skew"], ls, lt))
    if name == "total_variation":
        return 0.5 * (lt.exp() - ls.exp()).abs().sum(-1)
    raise AssertionError(name)


def infinite_when_zero(name, params, side):
    """Whether the divergence is +inf when only ``side`` ("teacher" or "student") has probability 0 somewhere."""
    value = params.get("beta", params.get("skew"))
    forward_like = name == "forward_kl" or (name in ("generalized_jsd", "skew_forward_kl") and value == 0.0)
    reverse_like = name == "reverse_kl" or (name, value) in (("generalized_jsd", 1.0), ("skew_reverse_kl", 0.0))
    # KL(p_t || p_s) is infinite where p_s = 0 < p_t; KL(p_s || p_t) where p_t = 0 < p_s
    return forward_like if side == "student" else reverse_like


# ---------------------------------------------------------------------------------------------------- exports


def test_every_public_divergence_name_is_exported_by_the_package():
    from lmdistill.losses import generalized_jsd, skew_forward_kl, skew_reverse_kl, total_variation

    assert (generalized_jsd, skew_forward_kl, skew_reverse_kl, total_variation) == (
        D.generalized_jsd,
        D.skew_forward_kl,
        D.skew_reverse_kl,
        D.total_variation,
    )
    for name in D.__all__:
        assert name in lmdistill.losses.__all__, name
        assert getattr(lmdistill.losses, name) is getattr(D, name), name
    for name in D.DIVERGENCES:  # every registered divergence has its public function, exported
        assert name in lmdistill.losses.__all__ and callable(getattr(lmdistill.losses, name))
    assert len(lmdistill.losses.__all__) == len(set(lmdistill.losses.__all__))


# ------------------------------------------------------------------------------------------------- -inf logits


def padded(student, teacher, pad, both=True, seed=0):
    """Insert ``pad`` entries of -inf at scattered places of the vocabulary (in the teacher only if not both)."""
    V = student.shape[-1]
    g = torch.Generator().manual_seed(seed)
    where = torch.zeros(V + pad, dtype=torch.bool)
    where[torch.randperm(V + pad, generator=g)[:pad]] = True
    out = []
    for x, inf in ((student, both), (teacher, True)):
        full = torch.full((*x.shape[:-1], V + pad), float("-inf") if inf else 0.0, dtype=x.dtype)
        full[..., ~where] = x.detach()
        if not inf:
            full[..., where] = rand(*x.shape[:-1], pad, dtype=x.dtype, seed=seed + 1)
        out.append(full)
    return out[0], out[1], where


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_entries_minus_inf_in_both_models_are_as_if_removed(name, params, impl):
    s, t = rand(3, 4, 7, seed=1), rand(3, 4, 7, seed=2)
    s_pad, t_pad, pad = padded(s, t, 5)
    mask = torch.tensor([[True, True, False, True], [True, False, True, True], [False, True, True, True]])
    for dtype, tol in ((torch.float64, {"rtol": 1e-12, "atol": 1e-14}), (torch.float32, {"rtol": 1e-5, "atol": 1e-6})):
        ref_s, ref_t = s.to(dtype).requires_grad_(), t.to(dtype).requires_grad_()
        got_s, got_t = s_pad.to(dtype).requires_grad_(), t_pad.to(dtype).requires_grad_()
        for reduction in ("none", "mean"):
            kw = {"temperature": 1.7, "mask": mask, "reduction": reduction, "implementation": impl}
            want = call(name, params, ref_s, ref_t, **kw)
            got = call(name, params, got_s, got_t, **kw)
            torch.testing.assert_close(got, want, **tol)
            torch.testing.assert_close(
                want.double(),
                D.reduce_per_token(textbook(name, params, s, t, 1.7), mask, reduction),
                rtol=1e-5,
                atol=1e-7,
            )
            up = rand(*got.shape, seed=3, dtype=dtype)
            g_want = torch.autograd.grad((want * up).sum(), (ref_s, ref_t))
            g_got = torch.autograd.grad((got * up).sum(), (got_s, got_t))
            for full, short in zip(g_got, g_want, strict=True):
                assert torch.isfinite(full).all()
                assert (full[..., pad] == 0).all()
                torch.testing.assert_close(full[..., ~pad], short, **tol)


@pytest.mark.parametrize("side", ["teacher", "student"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_entries_minus_inf_in_one_model_only(name, params, impl, side):
    """One model gives probability 0 to entries the other does not: the textbook value, finite or +inf."""
    s, t = rand(2, 3, 6, seed=4), rand(2, 3, 6, seed=5)
    if side == "teacher":
        s, t, zero = padded(s, t, 3, both=False, seed=6)
    else:
        t, s, zero = padded(t, s, 3, both=False, seed=6)
    finite_s, finite_t = s.clone(), t.clone()
    (finite_t if side == "teacher" else finite_s)[..., zero] = ZERO_LOGIT
    for dtype in (torch.float64, torch.float32):
        a, b = s.to(dtype).requires_grad_(), t.to(dtype).requires_grad_()
        got = call(name, params, a, b, temperature=1.3, reduction="none", implementation=impl)
        assert not torch.isnan(got).any()
        if infinite_when_zero(name, params, side):
            assert torch.isposinf(got).all()
            continue
        ref_s, ref_t = finite_s.clone().requires_grad_(), finite_t.clone().requires_grad_()
        want = textbook(name, params, ref_s, ref_t, 1.3)
        tol = {"rtol": 1e-11, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
        torch.testing.assert_close(got.double(), want, **tol)
        up = rand(2, 3, seed=7)
        g_got = torch.autograd.grad((got.double() * up).sum(), (a, b))
        g_want = torch.autograd.grad((want * up).sum(), (ref_s, ref_t))
        for x, y in zip(g_got, g_want, strict=True):
            assert torch.isfinite(x).all()
            torch.testing.assert_close(x.double(), y, **tol)
        zero_side = g_got[1] if side == "teacher" else g_got[0]
        assert (zero_side[..., zero] == 0).all()  # a probability of 0 (a -inf logit) gets no gradient


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_fused_path_with_a_padded_vocabulary(name, params):
    """The LM head's bias is -inf on the padding (student logits -inf there), and so are the teacher's logits."""
    div = D.get_divergence(name, **params)
    N, H, V, pad = 5, 3, 6, 4
    h, w, bias = rand(N, H, scale=1.0, seed=8), rand(V, H, scale=1.0, seed=9), rand(V, seed=10)
    t = rand(N, V, seed=11)
    targets = torch.tensor([0, 3, -100, 5, 1])
    div_w = torch.full((N,), 1 / N, dtype=torch.float64)
    ce_w = (targets != -100) / (targets != -100).sum()
    g = torch.Generator().manual_seed(12)
    keep = torch.sort(torch.randperm(V + pad, generator=g)[:V]).values  # real entries, padding scattered
    w_pad, b_pad = (
        torch.zeros(V + pad, H, dtype=torch.float64),
        torch.full((V + pad,), float("-inf"), dtype=torch.float64),
    )
    t_pad = torch.full((N, V + pad), float("-inf"), dtype=torch.float64)
    w_pad[keep], b_pad[keep], t_pad[:, keep] = w, bias, t
    targets_pad = torch.where(targets >= 0, keep[targets.clamp_min(0)], targets)
    runs = []
    for ww, bb, tt, yy in ((w, bias, t, targets), (w_pad, b_pad, t_pad, targets_pad)):
        inputs = (h.clone().requires_grad_(), ww.clone().requires_grad_(), bb.clone().requires_grad_())
        loss, d_rows, ce_rows = fused_linear_loss(
            inputs[0],
            inputs[1],
            tt,
            div,
            bias=inputs[2],
            temperature=1.4,
            targets=yy,
            div_weights=div_w,
            ce_weights=ce_w,
            chunk_size=2,
        )
        runs.append((loss, d_rows, ce_rows, *torch.autograd.grad(loss, inputs)))
    (loss, d_rows, ce_rows, gh, gw, gb), (loss_p, d_rows_p, ce_rows_p, gh_p, gw_p, gb_p) = runs
    tol = {"rtol": 1e-12, "atol": 1e-14}
    for a, b in (
        (loss_p, loss),
        (d_rows_p, d_rows),
        (ce_rows_p, ce_rows),
        (gh_p, gh),
        (gw_p[keep], gw),
        (gb_p[keep], gb),
    ):
        torch.testing.assert_close(a, b, **tol)
    for grad in (gh_p, gw_p, gb_p):
        assert torch.isfinite(grad).all()
    pad_rows = torch.ones(V + pad, dtype=torch.bool)
    pad_rows[keep] = False
    assert (gw_p[pad_rows] == 0).all() and (gb_p[pad_rows] == 0).all()


def test_chunked_with_targets_and_a_padded_vocabulary():
    """CE and D share the chunked pass; -inf entries in both change neither, nor the gradients elsewhere."""
    div = D.get_divergence("skew_reverse_kl", skew=0.3)
    s, t = rand(4, 3, 5, seed=13), rand(4, 3, 5, seed=14)
    s_pad, t_pad, pad = padded(s, t, 3, seed=15)
    targets = torch.tensor([[1, -100, 4], [0, 2, 2], [-100, -100, 3], [4, 1, 0]])
    real = torch.arange(s_pad.shape[-1])[~pad]
    weights = rand(4, 3, seed=16).abs()
    out = []
    for ss, tt, yy in (
        (s, t, targets),
        (s_pad, t_pad, torch.where(targets >= 0, real[targets.clamp_min(0)], targets)),
    ):
        ss = ss.clone().requires_grad_()
        total = chunked_per_token(div, ss, tt, 2.0, chunk_size=5, targets=yy, div_weights=weights, reduce=True)
        out.append((total, torch.autograd.grad(total, ss)[0]))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-12, atol=1e-14)
    assert torch.isfinite(out[1][1]).all() and (out[1][1][..., pad] == 0).all()
    torch.testing.assert_close(out[1][1][..., ~pad], out[0][1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(D.DIVERGENCES))
def test_top_k_path_with_a_padded_vocabulary(name):
    """A cached teacher over a vocabulary padded with -inf (in both models) is the cache over the real one."""
    div = D.get_divergence(name, **{"generalized_jsd": {"beta": 0.3}, "skew_forward_kl": {"skew": 0.2}}.get(name, {}))
    s, t = rand(2, 3, 9, seed=17), rand(2, 3, 9, seed=18)
    s_pad, t_pad, pad = padded(s, t, 4, seed=19)
    for k, k_pad in ((4, 4), (9, 13)):  # k = V: the padded cache holds the -inf entries too
        want_s, got_s = s.clone().requires_grad_(), s_pad.clone().requires_grad_()
        want = sparse_per_token(div, want_s, topk_teacher(t, k, 1.5))
        got = sparse_per_token(div, got_s, topk_teacher(t_pad, k_pad, 1.5))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        (g_want,) = torch.autograd.grad(want.sum(), want_s)
        (g_got,) = torch.autograd.grad(got.sum(), got_s)
        assert torch.isfinite(g_got).all() and (g_got[..., pad] == 0).all()
        torch.testing.assert_close(g_got[..., ~pad], g_want, rtol=1e-9, atol=1e-12)


def test_top_k_mixtures_with_a_float16_cache_against_the_textbook_sums():
    """Stored in float16, the teacher's coarse probabilities sum to 1 +- ~1e-4: the skew KLs differ from the
    textbook sums by the constant (1 - skew)(1 - sum p) (reverse: the opposite), JSD not at all; same gradients.
    """
    s, t = rand(4, 6, 60, seed=35), rand(4, 6, 60, seed=36)
    exact = topk_teacher(t, 8, 2.0)
    cached = TopKTeacher(exact.log_probs.half().double(), exact.ids, exact.log_tail, 2.0, 60)
    log_q, log_p = coarse_log_probs(s, cached)
    mass = log_p.exp().sum(-1)
    assert (mass - 1).abs().max() > 1e-6
    for name, params in MIXTURES:
        div = D.get_divergence(name, **params)
        student = s.clone().requires_grad_()
        got = sparse_per_token(div, student, cached)
        lq, lp = coarse_log_probs(student, cached)
        skew = params.get("skew", 0.0)
        if name == "generalized_jsd":
            beta = params["beta"]
            log_m = torch.logaddexp(lp + math.log(beta), lq + math.log(1 - beta))
            textbook_sum = beta * (lp.exp() * (lp - log_m)).sum(-1) + (1 - beta) * (lq.exp() * (lq - log_m)).sum(-1)
            offset = torch.zeros_like(mass)
        elif name == "skew_forward_kl":
            log_m = torch.logaddexp(lp + math.log(skew), lq + math.log(1 - skew))
            textbook_sum, offset = (lp.exp() * (lp - log_m)).sum(-1), (1 - skew) * (1 - mass)
        else:
            log_m = torch.logaddexp(lq + math.log(skew), lp + math.log(1 - skew))
            textbook_sum, offset = (lq.exp() * (lq - log_m)).sum(-1), (1 - skew) * (mass - 1)
        torch.testing.assert_close(got, textbook_sum + offset, rtol=1e-10, atol=1e-13)
        (g_got,) = torch.autograd.grad(got.sum(), student)
        (g_want,) = torch.autograd.grad(textbook_sum.sum(), student)
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-13)


# ------------------------------------------------------------------------------------------- float64 weights


def test_reduction_weights_follow_the_requested_dtype():
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert D.reduction_weights(mask.shape, mask, "mean").dtype == torch.float32  # the default is unchanged
    w = D.reduction_weights(mask.shape, mask, "mean", dtype=torch.float64)
    assert w.dtype == torch.float64 and w[0, 0].item() == 1 / 3
    assert D.reduction_weights(mask.shape, None, "batchmean", dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum"])
@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_float64_chunked_path_agrees_with_float64_plain_to_1e_13(name, params, reduction):
    """With 3 positions counted, a float32 weight 1/3 would be off by 1e-8 relative."""
    s, t = rand(3, 4, 6, seed=20).requires_grad_(), rand(3, 4, 6, seed=21).requires_grad_()
    mask = torch.tensor([[True, False, False, False], [False, True, False, False], [False, False, False, True]])
    kw = {"temperature": 1.3, "mask": mask, "reduction": reduction}
    plain = call(name, params, s, t, **kw)
    chunked = call(name, params, s, t, **kw, implementation="chunked")
    assert chunked.dtype == torch.float64
    torch.testing.assert_close(chunked, plain, rtol=1e-13, atol=0)
    ref = D.reduce_per_token(textbook(name, params, s, t, 1.3), mask, reduction)
    torch.testing.assert_close(chunked, ref, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(chunked, (s, t)), torch.autograd.grad(ref, (s, t)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-15)


def test_a_float64_teacher_makes_every_path_float64():
    s, t = rand(2, 3, 5, dtype=torch.float32, seed=29).requires_grad_(), rand(2, 3, 5, seed=30)
    mask = torch.tensor([[True, True, False], [False, True, False]])
    for reduction in ("mean", "none"):
        values = [
            D.generalized_jsd(s, t, mask=mask, reduction=reduction, implementation=impl, chunk_size=4)
            for impl in IMPLS
        ]
        assert [v.dtype for v in values] == [torch.float64, torch.float64]
        torch.testing.assert_close(values[1], values[0], rtol=1e-13, atol=0)
        grads = [torch.autograd.grad(v.sum(), s)[0] for v in values]
        assert grads[0].dtype == grads[1].dtype == torch.float32
        torch.testing.assert_close(grads[1], grads[0])


def test_float64_fused_path_agrees_with_a_float64_reference():
    N, H, V = 7, 4, 6
    h, w, t = rand(N, H, scale=1.0, seed=22), rand(V, H, scale=1.0, seed=23), rand(N, V, seed=24)
    targets = torch.tensor([1, 0, -100, 5, 2, -100, 4])
    mask = targets != -100  # 5 positions: 1/5 is not a float32 number
    for name, params in CONFIGS:
        div = D.get_divergence(name, **params)
        div_w = D.reduction_weights(mask.shape, mask, "mean", dtype=torch.float64)
        ce_w = D.reduction_weights(mask.shape, mask, "mean", dtype=torch.float64)
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss, _, _ = fused_linear_loss(
            hh, ww, t, div, temperature=2.0, targets=targets, div_weights=div_w, ce_weights=ce_w, chunk_size=3
        )
        grads = torch.autograd.grad(loss, (hh, ww))
        hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
        logits = hr @ wr.T
        ref = textbook(name, params, logits, t, 2.0)[mask].mean() + F.cross_entropy(logits, targets)
        ref_grads = torch.autograd.grad(ref, (hr, wr))
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------------- float32 precision


def close_pair(eps, V=512, N=32, seed=25):
    """float32 student logits and a teacher ``student + eps * noise`` (rounded to float32)."""
    s = rand(N, V, dtype=torch.float32, seed=seed)
    t = (s.double() + eps * rand(N, V, scale=1.0, seed=seed + 1)).float()
    return s, t


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "params"), MIXTURES, ids=MIXTURE_IDS)
def test_float32_mixture_value_is_precise_when_the_student_is_close_to_the_teacher(name, params, impl):
    """d ~ 1e-3: each textbook term is O(d) and the sum O(d^2) ~ 1e-7, below the terms' rounding (~1e-6).

    (Closer still, e.g. d ~ 1e-4 at skew 0.9, the float64 textbook reference itself keeps only ~1e-5.)
    """
    for eps, T in ((1e-3, 1.0), (1e-3, 2.0), (1e-2, 1.0), (1e-1, 1.0)):
        s, t = close_pair(eps)
        got = call(name, params, s, t, temperature=T, reduction="none", implementation=impl, chunk_size=7)
        assert got.dtype == torch.float32
        want = textbook(name, params, s, t, T)
        assert (want > 0).all()
        err = ((got.double() - want).abs() / want).max().item()
        assert err < 1e-5, (eps, T, err)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_float32_gradient_stays_accurate_when_the_student_is_close(name, params):
    """The float32 gradient is at least as accurate as autograd through the float32 textbook formula."""
    s, t = close_pair(1e-3, V=256, N=16)
    grads = {}
    for key, dtype, fn in (
        ("ours", torch.float32, lambda a, b: call(name, params, a, b, temperature=2.0, reduction="sum")),
        ("textbook32", torch.float32, lambda a, b: textbook(name, params, a, b, 2.0, dtype=torch.float32).sum()),
        ("reference", torch.float64, lambda a, b: textbook(name, params, a, b, 2.0).sum()),
    ):
        a, b = s.to(dtype).clone().requires_grad_(), t.to(dtype).clone().requires_grad_()
        grads[key] = torch.autograd.grad(fn(a, b), (a, b))
    for ours, old, ref in zip(grads["ours"], grads["textbook32"], grads["reference"], strict=True):
        # a difference of close probabilities: ~1e-4 of the largest entry, in float32 (1e-2 at skew 0.9)
        err = (ours.double() - ref).abs().max()
        assert err <= 1.5 * (old.double() - ref).abs().max() + 1e-6 * ref.abs().max(), err / ref.abs().max()


@pytest.mark.parametrize(("name", "params"), [c for c in CONFIGS if c not in MIXTURES])
def test_kls_and_total_variation_keep_their_textbook_float32_values(name, params):
    """Forward KL, reverse KL and TV are the textbook formulas (those of TRL, torchdistill...), close or not."""
    for eps in (1e-3, 1.0):
        s, t = close_pair(eps, V=300, N=8)
        got = call(name, params, s, t, temperature=1.5, reduction="none")
        torch.testing.assert_close(got, textbook(name, params, s, t, 1.5, dtype=torch.float32), rtol=0, atol=1e-6)


def test_float32_value_is_unchanged_far_from_the_teacher():
    s, t = rand(16, 300, dtype=torch.float32, seed=27), rand(16, 300, scale=3.0, dtype=torch.float32, seed=28)
    for name, params in CONFIGS:
        got = call(name, params, s, t, temperature=1.5, reduction="none")
        torch.testing.assert_close(got.double(), textbook(name, params, s, t, 1.5), rtol=2e-6, atol=0)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=CONFIG_IDS)
def test_second_derivatives_match_the_textbook_formula(name, params):
    """The hand-written backward passes are differentiable: Hessian-vector products as through the textbook."""
    s0, t0, v_s, v_t = (rand(3, 6, seed=seed) for seed in (31, 32, 33, 34))
    hvps = []
    for fn in (
        lambda a, b: call(name, params, a, b, temperature=1.5, reduction="sum"),
        lambda a, b: textbook(name, params, a, b, 1.5).sum(),
    ):
        a, b = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        g_a, g_b = torch.autograd.grad(fn(a, b), (a, b), create_graph=True)
        hvps.append(torch.autograd.grad((g_a * v_s).sum() + (g_b * v_t).sum(), (a, b)))
    for got, want in zip(*hvps, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("implementation", ["plain", "chunked", "fused"])
def test_objective_in_float64_matches_a_float64_reference(implementation):
    """The objective's reduction weights follow the inputs' dtype on every path (1 / n in float64)."""
    from lmdistill.losses import DistillationObjective
    from lmdistill.losses.objective import StudentOutput

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 5, dtype=torch.float64, generator=g)
    head = torch.nn.Linear(5, 11, bias=False).double()
    teacher = torch.randn(2, 7, 11, dtype=torch.float64, generator=g)
    labels = torch.randint(0, 11, (2, 7), generator=g)
    labels[0, 3] = -100
    objective = DistillationObjective(alpha=0.3, temperature=2.0, implementation=implementation)
    student = (
        StudentOutput(hidden=hidden, lm_head=head) if implementation == "fused" else StudentOutput(logits=head(hidden))
    )
    loss, _ = objective(student, labels, teacher)
    logits = head(hidden)
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    mask = targets != -100
    ce = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    log_p_t = torch.log_softmax(teacher / 2, -1)
    kl = (log_p_t.exp() * (log_p_t - torch.log_softmax(logits / 2, -1))).sum(-1)[mask].mean()
    reference = 0.3 * ce + 0.7 * 4 * kl
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
