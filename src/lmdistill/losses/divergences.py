"""Divergences between teacher and student next-token distributions: pure functions on logits.

Conventions (DESIGN.md, "Loss algebra"): logits have shape (..., V); the temperature divides both the
teacher's and the student's logits; softmax runs in float32; T^2 is *not* applied here (the objective applies
it); an empty mask gives 0, never NaN.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Reduction", "forward_kl", "reduce_per_token", "reverse_kl"]

Reduction = Literal["mean", "sum", "batchmean", "none"]


def reduce_per_token(per_token: Tensor, mask: Tensor | None, reduction: Reduction) -> Tensor:
    """Reduce a per-token loss over unmasked positions.

    Args:
        per_token (Tensor): (B, T) or (N,) loss per position.
        mask (Tensor | None): same shape, bool or 0/1; True marks positions that count. None = all count.
        reduction (str): "mean" over unmasked positions; "sum"; "batchmean" = sum / B where B is the first
            dimension (torch's ``KLDivLoss(reduction="batchmean")`` on (B, T, V)); "none" = per token, masked
            positions set to 0.

    Returns:
        Tensor: scalar (float32), or ``per_token``'s shape for "none".

    Raises:
        ValueError: unknown reduction, or a mask whose shape differs from ``per_token``'s.
    """
    if mask is None:
        mask = torch.ones_like(per_token, dtype=torch.bool)
    elif mask.shape != per_token.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != per-token loss shape {tuple(per_token.shape)}")
    masked = per_token * mask.to(per_token.dtype)
    if reduction == "none":
        return masked
    if reduction == "sum":
        return masked.sum()
    if reduction == "mean":
        return masked.sum() / mask.sum().clamp_min(1)  # empty mask -> 0, not NaN
    if reduction == "batchmean":
        return masked.sum() / max(per_token.shape[0], 1)
    raise ValueError(f"reduction must be 'mean', 'sum', 'batchmean' or 'none', got {reduction!r}")


def _tempered_log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``log_softmax(logits / T)`` of student and teacher in float32, after checking shapes and T."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} differ: "
            "teachers and student must share a tokenizer (same vocabulary size)"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return log_p_s, log_p_t


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Forward KL(p_teacher^T || p_student^T), the divergence of Hinton et al. (arXiv:1503.02531).

    ``KL = sum_v p_t(v) * (log p_t(v) - log p_s(v))`` with ``p = softmax(logits / T)`` per position.

    Args:
        student_logits (Tensor): (..., V) raw student logits.
        teacher_logits (Tensor): (..., V) raw teacher logits (no gradient needed).
        temperature (float): T > 0, divides both logits.
        mask (Tensor | None): (...) positions that count.
        reduction (str): see ``reduce_per_token``.

    Returns:
        Tensor: scalar float32 (or per position for "none"). Not multiplied by T^2.

    Raises:
        ValueError: mismatched shapes or a non-positive temperature.
    """
    log_p_s, log_p_t = _tempered_log_probs(student_logits, teacher_logits, temperature)  # (..., V) each
    per_token = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (...)
    return reduce_per_token(per_token, mask, reduction)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Reverse KL(p_student^T || p_teacher^T) (mode-seeking; Gu et al., MiniLLM, arXiv:2306.08543).

    Same arguments, shapes and reductions as ``forward_kl``; ``KL = sum_v p_s(v) * (log p_s(v) - log p_t(v))``.
    """
    log_p_s, log_p_t = _tempered_log_probs(student_logits, teacher_logits, temperature)  # (..., V) each
    per_token = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    return reduce_per_token(per_token, mask, reduction)
