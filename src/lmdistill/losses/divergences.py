"""Divergences between teacher and student next-token distributions: pure functions on logits.

Conventions (DESIGN.md, "Loss algebra"):

- logits have shape (..., V); the temperature T divides both the teacher's and the student's logits,
  ``p = softmax(z / T)``, computed in float32 (float64 inputs: float64). A logit of -inf is a probability of 0
  (e.g. a padded vocabulary masked out), with 0 log 0 = 0 in values and gradients: entries that are -inf in both
  models change nothing, as if they were removed;
- T^2 is *not* applied here: the objective applies it;
- ``reduction`` is "mean" over unmasked positions, "sum", "batchmean" (sum over positions / the size of the
  first dimension, i.e. torch's ``KLDivLoss(reduction="batchmean")`` on (B, T, V) as in the Baby Llama code) or
  "none" (per position, masked positions set to 0); an empty mask gives 0, never NaN;
- every divergence has three implementations with equal values and gradients: "plain" (materialises several
  (N, V) float32 tensors), "chunked" (``lmdistill.losses.chunked``: O(chunk x V) extra memory besides the
  gradient) and, through ``fused_distillation_loss``, "fused" (never materialises the student's logits).

Each divergence is a per-position function ``f(log p_s, log p_t) -> (...)`` registered in ``DIVERGENCES``, so the
plain, chunked and fused paths (and the top-k path, on its coarsened distributions) evaluate the very same formula.
The divergences to a mixture (generalized JSD, skew KLs) are computed so as to keep float32's digits when the
student is close to the teacher (see ``lmdistill.losses.numerics``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lmdistill.losses.numerics import KLTerms, LogMix, MixtureKLTerms, log_ratio_from_logits
from lmdistill.vocabulary import vocabulary_mismatch

__all__ = [
    "DIVERGENCES",
    "IMPLEMENTATIONS",
    "REDUCTIONS",
    "Divergence",
    "Implementation",
    "Reduction",
    "at_least_float32",
    "divergence",
    "forward_kl",
    "generalized_jsd",
    "get_divergence",
    "reduce_per_token",
    "reduction_weights",
    "reverse_kl",
    "skew_forward_kl",
    "skew_reverse_kl",
    "tempered_log_softmax",
    "total_variation",
]

Reduction = Literal["mean", "sum", "batchmean", "none"]
Implementation = Literal["plain", "chunked"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "batchmean", "none")
IMPLEMENTATIONS: tuple[str, ...] = ("plain", "chunked")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_per_token(per_token: Tensor, mask: Tensor | None, reduction: Reduction) -> Tensor:
    """Reduce a per-position loss over unmasked positions.

    Args:
        per_token (Tensor): (B, T) or (N,) loss per position.
        mask (Tensor | None): same shape, bool or 0/1; True marks positions that count. None = all count.
        reduction (str): "mean" over unmasked positions; "sum"; "batchmean" = sum / B where B is the first
            dimension (torch's ``KLDivLoss(reduction="batchmean")`` on (B, T, V)); "none" = per position, masked
            positions set to 0.

    Returns:
        Tensor: scalar (float32), or ``per_token``'s shape for "none".

    Raises:
        ValueError: unknown reduction, or a mask whose shape differs from ``per_token``'s.
    """
    _check_reduction(reduction)
    if mask is None:
        mask = torch.ones_like(per_token, dtype=torch.bool)
    elif mask.shape != per_token.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != per-token loss shape {tuple(per_token.shape)}")
    # where(), not a product: a masked position's value (even inf or NaN) must change nothing
    masked = torch.where(mask.bool(), per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if reduction == "none":
        return masked
    if reduction == "sum":
        return masked.sum()
    if reduction == "mean":
        return masked.sum() / mask.sum().clamp_min(1)  # empty mask -> 0, not NaN
    return masked.sum() / max(per_token.shape[0] if per_token.dim() else 1, 1)  # batchmean; one position: / 1


def reduction_weights(
    shape: torch.Size, mask: Tensor | None, reduction: Reduction, device=None, dtype: torch.dtype | None = None
) -> Tensor:
    """Per-position weights ``w`` such that ``reduce_per_token(x, mask, reduction) == (w * x).sum()``.

    Used by the chunked and fused paths, which need the reduction as weights before they see the losses.

    Args:
        shape (torch.Size): shape of the per-position loss, e.g. (B, T).
        mask (Tensor | None): positions that count, of that shape; None = all.
        reduction (str): "mean", "sum" or "batchmean" ("none" has no scalar form).
        device: device of the weights (default: the mask's, else the CPU).
        dtype (torch.dtype | None): dtype of the weights, that of the losses they weigh (float64 losses need
            float64 weights: ``1 / n`` rounded to float32 is off by up to 3e-8 relative); None = float32.

    Returns:
        Tensor: weights of ``shape`` in ``dtype``; 0 at masked positions.

    Raises:
        ValueError: reduction "none" or unknown, or a mask of another shape.
    """
    _check_reduction(reduction)
    if reduction == "none":
        raise ValueError("reduction 'none' has no per-position weights (it returns a loss per position)")
    dtype = torch.float32 if dtype is None else dtype
    if mask is None:
        weights = torch.ones(shape, dtype=dtype, device=device)
    else:
        if mask.shape != shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != per-token loss shape {tuple(shape)}")
        weights = mask.to(dtype)
    if reduction == "mean":
        return weights / weights.sum().clamp_min(1)
    if reduction == "batchmean":
        return weights / max(shape[0] if len(shape) else 1, 1)
    return weights


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or unchanged when it is already float32 or float64 (softmax never runs in half precision)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype the divergences compute in for these inputs: float32, or float64 if any input is float64."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, at_least_float32(x).dtype)
    return dtype


def tempered_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    """``log_softmax(logits / T)`` over the last dimension, in float32 (float64 inputs stay float64)."""
    logits = at_least_float32(logits)
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Per-position formulas on log-probabilities (..., V) -> (...), float32 or float64. p = exp(log p). The mixtures'
# optional ``log_ratio`` is d = log p_s - log p_t from the logits (``log_ratio_from_logits``), as ``Divergence``
# passes it; without it (e.g. the top-k path, which has only log-probabilities) d is their difference.
# ---------------------------------------------------------------------------------------------------------------


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Textbook ``KL(p || q) = sum_v p (log p - log q)`` over the last dimension, with 0 log 0 = 0."""
    return KLTerms.apply(log_p, log_q).sum(-1)


def _forward_kl(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return _kl(log_p_t, log_p_s)


def _reverse_kl(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return _kl(log_p_s, log_p_t)


def _ratio(log_p_s: Tensor, log_p_t: Tensor, log_ratio: Tensor | None) -> Tensor:
    """The log-ratio ``log p_s - log p_t``: ``log_ratio`` when the caller computed it from logits, else this."""
    return log_p_s - log_p_t if log_ratio is None else log_ratio


def _kl_to_mixture(log_p: Tensor, log_q: Tensor, weight_p: float, x: Tensor, sign: float) -> Tensor:
    """``KL(p || m)``, ``m = weight_p * p + (1 - weight_p) * q``, from ``sign * x = log q - log p`` (..., V)."""
    r = LogMix.apply(x, 1.0 - weight_p, sign)  # log m - log p = log(weight_p + (1 - weight_p) e^(sign x))
    return MixtureKLTerms.apply(log_p, r, log_q, weight_p).sum(-1)


def _generalized_jsd(log_p_s: Tensor, log_p_t: Tensor, beta: float, *, log_ratio: Tensor | None = None) -> Tensor:
    if beta == 0.0:
        return _forward_kl(log_p_s, log_p_t)
    if beta == 1.0:
        return _reverse_kl(log_p_s, log_p_t)
    d = _ratio(log_p_s, log_p_t, log_ratio)
    # m = beta p_t + (1 - beta) p_s; log p_s - log p_t = d
    kl_t = _kl_to_mixture(log_p_t, log_p_s, beta, d, 1.0)
    kl_s = _kl_to_mixture(log_p_s, log_p_t, 1.0 - beta, d, -1.0)
    return beta * kl_t + (1.0 - beta) * kl_s


def _skew_forward_kl(log_p_s: Tensor, log_p_t: Tensor, skew: float, *, log_ratio: Tensor | None = None) -> Tensor:
    if skew == 0.0:
        return _forward_kl(log_p_s, log_p_t)
    return _kl_to_mixture(log_p_t, log_p_s, skew, _ratio(log_p_s, log_p_t, log_ratio), 1.0)


def _skew_reverse_kl(log_p_s: Tensor, log_p_t: Tensor, skew: float, *, log_ratio: Tensor | None = None) -> Tensor:
    if skew == 0.0:
        return _reverse_kl(log_p_s, log_p_t)
    return _kl_to_mixture(log_p_s, log_p_t, skew, _ratio(log_p_s, log_p_t, log_ratio), -1.0)


def _total_variation(log_p_s: Tensor, log_p_t: Tensor) -> Tensor:
    return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)  # exp(-inf) = 0 and |x|'s gradient at 0 is 0


_USES_LOG_RATIO: dict[str, Callable[[float], bool]] = {
    "generalized_jsd": lambda beta: 0.0 < beta < 1.0,
    "skew_forward_kl": lambda skew: skew > 0.0,
    "skew_reverse_kl": lambda skew: skew > 0.0,
}
"""The divergences (at those parameters) whose formula takes ``log_ratio``: the mixtures."""


@dataclass(frozen=True)
class Divergence:
    """A divergence D(teacher, student) with its parameter bound, ready to evaluate per position.

    Attributes:
        name (str): registry name, e.g. "generalized_jsd".
        formula (Callable): ``(log_p_s, log_p_t, **params) -> (...)`` on (..., V) float32 (or float64)
            log-probabilities; the mixtures (generalized JSD, skew KLs) also take ``log_ratio``, ``log_p_s -
            log_p_t`` computed from the logits for precision (see ``log_ratio_from_logits``).
        params (dict): the parameter(s), e.g. ``{"beta": 0.5}``; empty for parameter-free divergences.
    """

    name: str
    formula: Callable[..., Tensor]
    params: tuple[tuple[str, float], ...] = ()

    def per_token(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
        """D per position: logits (..., V) -> (...) float32 (float64 inputs: float64), both divided by T first.

        -inf logits are probabilities of 0 (0 log 0 = 0), in the value and the gradient.
        """
        dtype = compute_dtype(student_logits, teacher_logits)
        log_p_s = tempered_log_softmax(student_logits.to(dtype), temperature)
        log_p_t = tempered_log_softmax(teacher_logits.to(dtype), temperature)
        params = dict(self.params)
        uses_log_ratio = _USES_LOG_RATIO.get(self.name)
        if uses_log_ratio is not None and uses_log_ratio(*params.values()):
            params["log_ratio"] = log_ratio_from_logits(student_logits, teacher_logits, log_p_s, log_p_t, temperature)
        return self.formula(log_p_s, log_p_t, **params)


def _param_range(name: str, value: float, low: float, high: float, high_open: bool) -> float:
    value = float(value)
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value}")
    return value


DIVERGENCES: dict[str, tuple[Callable[..., Tensor], str | None, bool]] = {
    # name: (formula, parameter name or None, whether the parameter's upper bound 1 is excluded)
    "forward_kl": (_forward_kl, None, False),
    "reverse_kl": (_reverse_kl, None, False),
    "generalized_jsd": (_generalized_jsd, "beta", False),
    "skew_forward_kl": (_skew_forward_kl, "skew", True),
    "skew_reverse_kl": (_skew_reverse_kl, "skew", True),
    "total_variation": (_total_variation, None, False),
}
"""Every divergence by name: its per-position formula and its parameter ("beta" or "skew", in [0, 1])."""

DEFAULT_PARAMS = {"beta": 0.5, "skew": 0.1}


def get_divergence(name: str, *, beta: float | None = None, skew: float | None = None) -> Divergence:
    """The divergence ``name`` with its parameter bound.

    Args:
        name (str): one of ``DIVERGENCES``.
        beta (float | None): generalized_jsd's beta in [0, 1] (default 0.5); ignored by the others.
        skew (float | None): the skew KLs' lambda in [0, 1) (default 0.1, DistiLLM's); ignored by the others.

    Raises:
        ValueError: unknown name (the message lists the names), or a parameter out of range.
    """
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
    formula, param, high_open = DIVERGENCES[name]
    if param is None:
        return Divergence(name, formula)
    value = {"beta": beta, "skew": skew}[param]
    value = DEFAULT_PARAMS[param] if value is None else value
    return Divergence(name, formula, ((param, _param_range(param, value, 0.0, 1.0, high_open)),))


def check_logits_pair(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> None:
    """Raise ValueError unless the two logits have one shape (one vocabulary) and T > 0.

    Raises:
        VocabularyMismatchError: the last dimensions (V) differ (``lmdistill.vocabulary``).
        ValueError: the other dimensions differ, or T <= 0.
    """
    shapes = f"student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}"
    if teacher_logits.shape[-1:] != student_logits.shape[-1:]:
        raise vocabulary_mismatch(
            "teacher_logits",
            teacher_logits.shape[-1],
            "columns",
            "student_logits",
            student_logits.shape[-1],
            "columns",
            detail=shapes,
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher and student logits differ in their positions ({shapes})")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def divergence(
    div: Divergence,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    implementation: Implementation = "plain",
    chunk_size: int | None = None,
) -> Tensor:
    """Evaluate ``div`` on logits with a reduction, by the plain or the chunked path.

    Args:
        div (Divergence): from ``get_divergence``.
        student_logits (Tensor): (..., V) raw student logits.
        teacher_logits (Tensor): (..., V) raw teacher logits.
        temperature (float): T > 0, divides both.
        mask (Tensor | None): (...) positions that count; None = all.
        reduction (str): "mean", "sum", "batchmean" or "none" (see ``reduce_per_token``).
        implementation (str): "plain" or "chunked" (equal values and gradients; see ``lmdistill.losses.chunked``).
        chunk_size (int | None): positions per chunk of the chunked path; None = about 32 MiB per (chunk, V).

    Returns:
        Tensor: scalar float32, or (...) for "none". Not multiplied by T^2.

    Raises:
        ValueError: shapes differ, T <= 0, unknown reduction or implementation, mask of the wrong shape.
    """
    check_logits_pair(student_logits, teacher_logits, temperature)
    _check_reduction(reduction)
    if implementation == "plain":
        return reduce_per_token(div.per_token(student_logits, teacher_logits, temperature), mask, reduction)
    if implementation == "chunked":
        from lmdistill.losses.chunked import chunked_per_token  # noqa: PLC0415 (chunked imports this module)

        if mask is not None and mask.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} != logits shape without V {tuple(student_logits.shape[:-1])}"
            )
        if reduction == "none":
            per_token = chunked_per_token(div, student_logits, teacher_logits, temperature, chunk_size=chunk_size)
            return reduce_per_token(per_token, mask, reduction)
        weights = reduction_weights(
            student_logits.shape[:-1],
            mask,
            reduction,
            device=student_logits.device,
            dtype=compute_dtype(student_logits, teacher_logits),  # float64 losses: float64 weights
        )
        return chunked_per_token(
            div, student_logits, teacher_logits, temperature, chunk_size=chunk_size, div_weights=weights, reduce=True
        )
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


_COMMON_ARGS = """
    Args:
        student_logits (Tensor): (..., V) raw student logits, e.g. (B, T, V).
        teacher_logits (Tensor): (..., V) raw teacher logits (usually without gradient).
        temperature (float): T > 0; ``p = softmax(z / T)`` for both models.
        mask (Tensor | None): (...) bool, True where a position counts (e.g. ``labels != -100``); None = all.
        reduction (str): "mean" over unmasked positions (default), "sum", "batchmean" (sum / size of the first
            dimension) or "none" (per position, 0 where masked).
        implementation (str): "plain" or "chunked" (memory O(chunk x V) besides the gradient; same values).
        chunk_size (int | None): positions per chunk of the chunked path; None = about 32 MiB per (chunk, V).

    Returns:
        Tensor: scalar float32 (or (...) for "none"), in nats; not multiplied by T^2.

    Raises:
        ValueError: shapes differ, T <= 0, a parameter out of range, unknown reduction or implementation.
"""


def _with_common_args(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Append the arguments every divergence shares to ``fn``'s docstring."""
    fn.__doc__ = fn.__doc__.rstrip() + "\n" + _COMMON_ARGS
    return fn


@_with_common_args
def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    implementation: Implementation = "plain",
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL(p_t^T || p_s^T) = sum_v p_t(v) (log p_t(v) - log p_s(v)), mean-seeking.

    The divergence of Hinton et al., "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531), and of
    Baby Llama (arXiv:2308.02019, with T^2 and alpha applied by the objective).
    """
    div = get_divergence("forward_kl")
    return divergence(
        div,
        student_logits,
        teacher_logits,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )


@_with_common_args
def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    implementation: Implementation = "plain",
    chunk_size: int | None = None,
) -> Tensor:
    """Reverse KL(p_s^T || p_t^T) = sum_v p_s(v) (log p_s(v) - log p_t(v)), mode-seeking.

    As in MiniLLM (Gu et al., arXiv:2306.08543) and STLM (Cheng et al. 2024).
    """
    div = get_divergence("reverse_kl")
    return divergence(
        div,
        student_logits,
        teacher_logits,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )


@_with_common_args
def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    implementation: Implementation = "plain",
    chunk_size: int | None = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., arXiv:2306.13649).

    ``JSD(beta) = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)`` with ``m = beta * p_t + (1 - beta) * p_s``,
    log m computed in log space (``logaddexp``). As beta -> 0, JSD(beta) / beta -> forward KL, and as beta -> 1,
    JSD(beta) / (1 - beta) -> reverse KL; the endpoints are therefore defined as forward KL (beta = 0) and
    reverse KL (beta = 1), the convention of TRL's ``GKDTrainer``. beta = 0.5 is the symmetric JSD.
    ``beta`` (float, keyword) is in [0, 1], default 0.5.
    """
    div = get_divergence("generalized_jsd", beta=beta)
    return divergence(
        div,
        student_logits,
        teacher_logits,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )


@_with_common_args
def skew_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew: float = 0.1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    implementation: Implementation = "plain",
    chunk_size: int | None = None,
) -> Tensor:
    """Skew forward KL of DistiLLM (Ko et al., arXiv:2402.03898): KL(p_t || skew * p_t + (1 - skew) * p_s).

    Mixing some teacher into the student bounds the divergence and its gradient; skew = 0 is forward KL.
    ``skew`` (float, keyword) is lambda in [0, 1), default 0.1 (DistiLLM's).
    """
    div = get_divergence("skew_forward_kl", skew=skew)
    return divergence(
        div,
        student_logits,
        teacher_logits,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )


@_with_common_args
def skew_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew: float = 0.1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    implementation: Implementation = "plain",
    chunk_size: int | None = None,
) -> Tensor:
    """Skew reverse KL of DistiLLM (arXiv:2402.03898): KL(p_s || skew * p_s + (1 - skew) * p_t).

    skew = 0 is reverse KL. ``skew`` (float, keyword) is lambda in [0, 1), default 0.1 (DistiLLM's).
    """
    div = get_divergence("skew_reverse_kl", skew=skew)
    return divergence(
        div,
        student_logits,
        teacher_logits,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )


@_with_common_args
def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    implementation: Implementation = "plain",
    chunk_size: int | None = None,
) -> Tensor:
    """Total variation distance 0.5 * sum_v |p_t(v) - p_s(v)|, in [0, 1].

    Used for KD by Wen et al., f-divergence minimisation for sequence-level KD (arXiv:2307.15190).
    """
    div = get_divergence("total_variation")
    return divergence(
        div,
        student_logits,
        teacher_logits,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        implementation=implementation,
        chunk_size=chunk_size,
    )
