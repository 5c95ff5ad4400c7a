"""Numerically careful per-entry terms of the divergences: 0 log 0 = 0, and mixtures near the teacher.

Small autograd Functions used by ``lmdistill.losses.divergences``: the textbook KL terms with 0 log 0 = 0 in values
and gradients (logits of -inf, a padded vocabulary), and the KL-to-a-mixture terms of generalized JSD and the skew
KLs, which keep float32's digits when the student is close to the teacher. Why each is needed is below.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["KLTerms", "LogMix", "MixtureKLTerms", "log_ratio_from_logits"]


# ---------------------------------------------------------------------------------------------------------------
# Numerics of the per-position formulas.
#
# 0 log 0 = 0. A logit of -inf (a padded vocabulary masked out, in both models or in one) is a probability of 0.
# Every term weighted by a probability of 0 is exactly 0 in value and gradient, although its log-ratio is NaN
# (-inf - -inf) or +-inf: the KLs' per-entry terms are small autograd Functions that replace those before any
# product, forward and backward (autograd through ``where(p > 0, p * x, 0)`` would still send ``0 * NaN = NaN``
# back through the product; TV needs nothing: exp(-inf) = 0). A divergence that really is infinite (a weight > 0
# where the other distribution is 0: forward KL where only the student is -inf, reverse KL where only the teacher
# is) stays +inf, never NaN; the mixtures never are (m >= w p).
#
# Mixtures near the teacher. Generalized JSD and the skew KLs are divergences to a mixture m = w p + (1 - w) q,
# and in float32 their textbook form loses its digits exactly where distillation ends up, the student close to
# the teacher: with d = log p_s - log p_t ~ 1e-3 the divergence is O(d^2) ~ 1e-7, each term of
# ``sum_v p (log p - log m)`` is O(d), and the log-probabilities carry rounding errors of eps * |log p| ~ 1e-6
# each, so the sum cancels to noise (relative errors of 0.5 to 40 at d ~ 1e-3, V = 512). Two changes, each needed
# on its own, bring them to ~1e-6:
#
# 1. d is computed from the logits, not as a difference of two rounded log-probabilities:
#    ``d = (z_s - z_t) / T - (lse_s - lse_t)``, where ``z_s - z_t`` is exact for close logits (Sterbenz), so d is
#    accurate relative to d itself up to one constant per row (the rounding of lse_s - lse_t, ~1e-6), which one
#    renormalisation step removes: ``d -= log1p(sum_v p_t expm1(d))`` (exactly 0 in exact arithmetic, where
#    ``sum_v p_t e^d = sum_v p_s = 1``; expm1 and log1p keep the small sum's digits). The gradient is that of
#    ``log p_s - log p_t``, which d equals in exact arithmetic.
# 2. Each KL to the mixture is summed from terms that are each O(d^2) and >= 0, with nothing left to cancel:
#    ``KL(a || b) = sum_v a (e^r - 1 - r)`` with ``r = log b - log a`` (equal to ``sum_v a log(a / b)`` as
#    ``sum b = sum a``), ``e^r - 1 - r`` from its Taylor series for |r| < 1/4 (``expm1(r) - r`` would cancel
#    again), and ``r = log m - log p = log((1 - w) + w e^x)`` for x = log q - log p computed as
#    ``log1p(w expm1(x))``: ``logaddexp`` of the log-probabilities with log(w), log(1 - w) rounds at the scale
#    of log 2, not of x.
#
# This costs ~100 elementwise passes over (N, V) instead of ~25 (3x the time of the textbook skew KLs, 4x that
# of the textbook JSD, forward and backward, measured on CPU), so forward KL, reverse KL and total variation
# (also the endpoints beta in {0, 1}, skew = 0) keep their textbook forms, which agree with TRL, Liger,
# torchtune and torchdistill to float32 rounding (they share the cancellation: ~1e-6 absolute, so ~100% relative
# at d ~ 1e-3).
#
# The Functions keep ``forward`` and ``setup_context`` apart, so that ``torch.func`` transforms (the compiled
# chunked loss, ``lmdistill.losses.chunked``) can differentiate them as autograd does.
# The Functions' backward passes are written out in differentiable operations (second derivatives work) and
# save only log-probabilities (already saved by log_softmax, or the teacher's, which the textbook forms kept as
# probabilities), d and one log-ratio, so the plain path keeps no more (N, V) tensors for backward than before
# (forward KL 2, generalized JSD 4 instead of 6).
# ---------------------------------------------------------------------------------------------------------------

_FAR = 10.0
"""Above this log-ratio r, ``a (e^r - 1 - r)`` is computed as ``b - a (1 + r)`` (b >> a: no cancellation, and no
overflow of e^r, which a tiny a > 0 could otherwise meet for r up to ~104 in float32)."""

_SERIES_RADIUS = 0.25
"""|r| below which ``e^r - 1 - r`` comes from its Taylor series (there ``expm1(r) - r`` loses ~log10(2 / |r|)
digits); at the radius the direct form loses only ~4 bits."""


def _expm1_minus_x(r: Tensor) -> Tensor:
    """``e^r - 1 - r`` to full relative precision (no autograd; used inside the Functions below)."""
    x = r.clamp(-_SERIES_RADIUS, _SERIES_RADIUS)
    small = x == r
    # sum_{k >= 2} x^k / k! by Horner, in place; truncated where the next term is below the dtype's epsilon at
    # |x| = 1/4 (after x^7 / 7!: 1e-8 relative in float32; after x^12 / 12!: 8e-17 in float64)
    last = 12 if r.dtype == torch.float64 else 7
    series = x * (1.0 / math.factorial(last))
    series.add_(1.0 / math.factorial(last - 1))
    for k in range(last - 2, 1, -1):
        series.mul_(x).add_(1.0 / math.factorial(k))
    series.mul_(x).mul_(x)
    return torch.where(small, series, torch.expm1(r).sub_(r))


def _finite_where_zero(r: Tensor) -> Tensor:
    """The log-ratio r = log m - log a with +inf and NaN replaced by 2 * ``_FAR``.

    Where the weight a = 0, r is +inf (or NaN if m = 0 too), and a finite r > ``_FAR`` makes the term
    ``m - a (1 + r) = m`` with no NaN in any product, forward or backward. Where a > 0, r >= log(mix) is finite
    and unchanged.
    """
    return r.nan_to_num(nan=2 * _FAR, posinf=2 * _FAR)


class MixtureKLTerms(torch.autograd.Function):
    """Per-entry terms of ``KL(a || m)``, ``a (e^r - 1 - r)``, for the mixture ``m = mix * a + (1 - mix) * c``.

    Inputs: ``log_a``, ``log_c`` (..., V) and ``r = log m - log a`` (..., V), accurate even when small (from
    ``LogMix``). The term is m where a = 0 and ``m - a (1 + r)`` where r > ``_FAR``.

    Backward uses that the terms equal ``m - a - a r`` (m = a e^r): the gradients are ``-a`` for r and those of
    m for the log-probabilities, so only ``log_a`` and ``log_c`` are saved (r too when ``log_a`` needs a gradient).
    """

    @staticmethod
    def forward(log_a, r, log_c, mix):
        """The terms (see the class docstring)."""
        a, c = log_a.exp(), log_c.exp()
        m = torch.add(c * (1.0 - mix), a, alpha=mix)
        r = _finite_where_zero(r)
        terms = _expm1_minus_x(r.clamp(max=_FAR)).mul_(a)
        return torch.where(r <= _FAR, terms, torch.addcmul(m, a, r + 1.0, value=-1.0))  # m - a (1 + r)

    @staticmethod
    def setup_context(ctx, inputs, output):
        """Save ``log_a``, ``log_c`` (and ``r`` when ``log_a`` needs a gradient) and ``mix``."""
        log_a, r, log_c, mix = inputs
        ctx.save_for_backward(log_a, log_c, r if ctx.needs_input_grad[0] else None)
        ctx.mix = mix

    @staticmethod
    def backward(ctx, grad):
        """Their gradients, written out (0 where the weight is 0)."""
        log_a, log_c, r = ctx.saved_tensors
        mix = ctx.mix
        a = log_a.exp()
        grad_log_a = grad_r = grad_log_c = None
        if ctx.needs_input_grad[0]:
            grad_log_a = grad * a * (mix - 1.0 - _finite_where_zero(r))  # d/d log a of (m - a - a r); 0 where a = 0
        if ctx.needs_input_grad[1]:
            grad_r = -grad * a
        if ctx.needs_input_grad[2]:
            grad_log_c = grad * ((1.0 - mix) * log_c.exp())
        return grad_log_a, grad_r, grad_log_c, None


_MIX_FAR = 80.0
"""Above this y, ``log((1 - w) + w e^y) = y + log w`` to float32 and float64 rounding (e^-80 < 2e-35), and
``expm1(y)`` would soon overflow float32 (at 88.7)."""


class LogMix(torch.autograd.Function):
    """``log((1 - w) + w e^y)`` with ``y = sign * x``, w in (0, 1]: log m - log p for ``m = (1 - w) p + w q``.

    ``log1p(w expm1(y))`` (exact digits for small y) up to ``_MIX_FAR``, ``y + log w`` above. The derivative is
    ``sigmoid(y + log(w / (1 - w)))``, finite for y = +-inf; NaN inputs (entries where both probabilities are 0,
    never used) get a zero gradient.
    """

    @staticmethod
    def forward(x, w, sign):
        """The terms (see the class docstring)."""
        y = x if sign > 0 else -x
        # above _MIX_FAR, log1p(w expm1(_MIX_FAR)) + (y - _MIX_FAR) = y + log w; below, the excess is exactly 0
        excess = (y - _MIX_FAR).clamp_(min=0.0)
        return torch.expm1(y.clamp(max=_MIX_FAR)).mul_(w).log1p_().add_(excess)

    @staticmethod
    def setup_context(ctx, inputs, output):
        """Save ``x``, ``w`` and ``sign``."""
        x, w, sign = inputs
        ctx.save_for_backward(x)
        ctx.w, ctx.sign = w, sign

    @staticmethod
    def backward(ctx, grad):
        """Their gradients, written out (0 where the weight is 0)."""
        (x,) = ctx.saved_tensors
        w, sign = ctx.w, ctx.sign
        logit = math.inf if w >= 1.0 else math.log(w / (1.0 - w))  # w = 1 (a skew below 1e-16): log m - log p = y
        slope = torch.sigmoid(x + logit if sign > 0 else logit - x).nan_to_num(0.0)
        return (grad * slope if sign > 0 else -grad * slope), None, None


def log_ratio_from_logits(
    student_logits: Tensor, teacher_logits: Tensor, log_p_s: Tensor, log_p_t: Tensor, temperature: float
) -> Tensor:
    """``d = log p_s - log p_t`` accurate relative to itself, from the logits (see "Numerics" above).

    Args:
        student_logits (Tensor): (..., V) student logits.
        teacher_logits (Tensor): (..., V) teacher logits.
        log_p_s (Tensor): (..., V) ``tempered_log_softmax(student_logits, temperature)``.
        log_p_t (Tensor): (..., V) ``tempered_log_softmax(teacher_logits, temperature)``.
        temperature (float): T > 0.

    Returns:
        Tensor: (..., V) d in the log-probabilities' dtype: +-inf where one probability is 0, NaN where both are
        (the formulas never use it there); its gradient is that of ``log_p_s - log_p_t``.
    """
    rounded = log_p_s - log_p_t  # carries the gradient (saves nothing); its value is off by ~eps * |log p|
    with torch.no_grad():
        z_s, z_t = student_logits.to(rounded.dtype), teacher_logits.to(rounded.dtype)
        # lse = x_j - log p_j at the row's most probable entry j, for x = z / T; its rounding is removed below
        lse = []
        for z, log_p in ((z_s, log_p_s), (z_t, log_p_t)):
            j = log_p.argmax(-1, keepdim=True)
            lse.append(z.gather(-1, j) / temperature - log_p.gather(-1, j))
        d = torch.sub(z_s, z_t)  # exact for close logits; z_s / T - z_t / T would round each side first
        if temperature != 1.0:
            d.div_(temperature)
        d.sub_(lse[0] - lse[1])
        # renormalise, sum_v p_t e^d = 1: sum_v (p_s - p_t) per entry from d where p_t > 0 (p_s where p_t = 0)
        p_t = log_p_t.exp()
        excess = torch.where(d <= _FAR, torch.expm1(d.clamp(max=_FAR)).mul_(p_t), log_p_s.exp().sub_(p_t))
        d.sub_(torch.log1p(excess.sum(-1, keepdim=True)))
        # the value of d with the gradient of ``rounded``; 0 where either is infinite or NaN (the same entries)
        correction = d.sub_(rounded).nan_to_num_(0.0, 0.0, 0.0)
    return rounded + correction


class KLTerms(torch.autograd.Function):
    """Textbook per-entry terms ``p (log p - log q)`` of ``KL(p || q)``, with 0 log 0 = 0 in value and gradient.

    Where p = 0 the difference is NaN or -inf and autograd's ``0 * NaN`` would reach the gradients; here such
    terms and their gradients are exactly 0. Where p > 0 = q the term is +inf (an infinite KL).
    """

    @staticmethod
    def forward(log_p, log_q):
        """The terms (see the class docstring)."""
        return log_p.exp().mul_(log_p - log_q).nan_to_num_(nan=0.0, posinf=math.inf)  # NaN only where p = 0

    @staticmethod
    def setup_context(ctx, inputs, output):
        """Save both log-probabilities."""
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        """Their gradients, written out (0 where the weight is 0)."""
        log_p, log_q = ctx.saved_tensors
        p = log_p.exp()
        grad_log_p = grad_log_q = None
        if ctx.needs_input_grad[0]:  # p (log p - log q + 1); NaN only where p = 0, where it is 0
            grad_log_p = grad * (p * (log_p - log_q + 1.0)).nan_to_num(nan=0.0, posinf=math.inf)
        if ctx.needs_input_grad[1]:
            grad_log_q = -grad * p
        return grad_log_p, grad_log_q
