"""Divergences against a sparse teacher: its top-k log-probabilities plus the probability mass of the tail.

A cached teacher (``lmdistill.teachers.cache``) keeps, per position, the k most probable tokens of
``p = softmax(z / T)`` (the ensemble's combined logits z at the distillation temperature T), their log-probabilities
and ``log m`` with ``m = 1 - sum_{i in top-k} p_i``. What the loss computes from that, exactly:

    The vocabulary is coarsened into k + 1 outcomes, the k cached tokens and one "tail" outcome holding every other
    token. The teacher's coarse distribution is ``(p_1 .. p_k, m)``; the student's is ``(q_1 .. q_k, q_tail)``
    with ``q = softmax(s / T)`` gathered at the cached ids and ``q_tail = sum_{j not in top-k} q_j`` (a masked
    logsumexp, so it stays exact when the top-k hold almost all the mass). The divergence D is then the very same
    per-position formula as for a dense teacher (``DIVERGENCES``), applied to these (k + 1)-outcome distributions.

Consequences, all tested:
- for k = V the tail is empty (m = q_tail = 0), the tail outcome contributes exactly 0, and the value is the dense
  loss (to float rounding of the stored log-probabilities: exact when they are stored in float32);
- coarsening never increases an f-divergence (data-processing inequality), so for forward KL, reverse KL,
  JSD and TV the sparse value is at most the dense one; the gap is the student's disagreement with the
  teacher *inside* the tail, which the cache does not record;
- the gradient reaches every student logit: tail tokens are pushed, together, towards the tail mass m;
- the skew KLs use the cancellation-free form of ``lmdistill.losses.divergences`` (terms ``a (e^r - 1 - r)``),
  which assumes both distributions sum to 1: with log-probabilities stored in float16 the teacher's sums to
  1 +- ~1e-4, and the value differs from the textbook sum by ``(1 - skew) (1 - sum p)`` per position (reverse:
  the opposite), a constant without gradient that removes the first-order effect of that rounding when the
  student is close to the teacher; generalized JSD is unaffected (the two offsets cancel).

Log-probabilities of empty outcomes (-inf) are floored at ``LOG_FLOOR`` so that ``0 * log 0`` terms are 0 rather
than NaN; a reverse KL against a teacher tail of exactly 0 is therefore large and finite instead of infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lmdistill.losses.divergences import Divergence, at_least_float32, tempered_log_softmax

__all__ = ["LOG_FLOOR", "TopKTeacher", "coarse_log_probs", "reconstruction_kl", "sparse_per_token", "topk_teacher"]

LOG_FLOOR = -1.0e4
"""Floor of the coarse log-probabilities: exp(LOG_FLOOR) == 0 in float32, and 0 * (LOG_FLOOR - x) == 0."""


@dataclass
class TopKTeacher:
    """A teacher known only through its top-k tokens and tail mass at a temperature.

    Attributes:
        log_probs (Tensor): (..., k) ``log softmax(z / T)`` of the k most probable tokens, in any order.
        ids (Tensor): (..., k) int64 token ids of those log-probabilities.
        log_tail (Tensor): (...) ``log(1 - sum exp(log_probs))``, the log of the mass outside the top-k
            (-inf when the top-k hold everything, e.g. k = V).
        temperature (float): the T the log-probabilities were computed at; the student is tempered by the same T.
        vocab_size (int): V of the teacher's distribution.
    """

    log_probs: Tensor
    ids: Tensor
    log_tail: Tensor
    temperature: float
    vocab_size: int

    @property
    def top_k(self) -> int:
        """k, the number of tokens kept per position."""
        return self.log_probs.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """Shape of the positions, e.g. (B, T)."""
        return self.log_tail.shape

    def to(self, device: torch.device | str) -> TopKTeacher:
        """The same teacher with its tensors on ``device``."""
        return TopKTeacher(
            self.log_probs.to(device), self.ids.to(device), self.log_tail.to(device), self.temperature, self.vocab_size
        )


@torch.no_grad()
def topk_teacher(teacher_logits: Tensor, top_k: int, temperature: float = 1.0) -> TopKTeacher:
    """The top-k of ``softmax(teacher_logits / T)`` with the log of the remaining mass.

    Args:
        teacher_logits (Tensor): (..., V) teacher logits (e.g. an ensemble's combined logits).
        top_k (int): k in [1, V].
        temperature (float): T > 0.

    Returns:
        TopKTeacher: float32 log-probabilities sorted from the most probable, their int64 ids, and ``log_tail``
        computed as the logsumexp of the other tokens' log-probabilities (exact even when it is tiny).

    Raises:
        ValueError: k outside [1, V], or T <= 0.
    """
    vocab = teacher_logits.shape[-1]
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in [1, V={vocab}], got {top_k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = tempered_log_softmax(teacher_logits, temperature)
    values, ids = log_p.topk(top_k, dim=-1)
    log_tail = log_p.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return TopKTeacher(values, ids, log_tail, float(temperature), vocab)


def coarse_log_probs(student_logits: Tensor, teacher: TopKTeacher) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's (k + 1)-outcome log-distributions (see the module docstring).

    Args:
        student_logits (Tensor): (..., V) student logits; tempered by ``teacher.temperature`` here.
        teacher (TopKTeacher): positions of the same shape (...).

    Returns:
        tuple: (log_q, log_p), each (..., k + 1) float32, the last column the tail; floored at ``LOG_FLOOR``.

    Raises:
        ValueError: shapes or vocabularies that do not match.
    """
    if student_logits.shape[:-1] != teacher.shape or teacher.ids.shape != teacher.log_probs.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} do not match the cached teacher's positions "
            f"{tuple(teacher.shape)} (top-k {tuple(teacher.log_probs.shape)}, ids {tuple(teacher.ids.shape)})"
        )
    if student_logits.shape[-1] != teacher.vocab_size:
        raise ValueError(
            f"student vocabulary V={student_logits.shape[-1]} != cached teacher vocabulary V={teacher.vocab_size}"
        )
    log_q_all = tempered_log_softmax(student_logits, teacher.temperature)
    ids = teacher.ids.long()
    log_q_top = log_q_all.gather(-1, ids)
    log_q_tail = log_q_all.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    log_q = torch.cat([log_q_top, log_q_tail], dim=-1).clamp_min(LOG_FLOOR)
    teacher_lp = at_least_float32(teacher.log_probs).to(log_q.dtype)
    log_p = torch.cat([teacher_lp, teacher.log_tail.to(log_q.dtype).unsqueeze(-1)], dim=-1).clamp_min(LOG_FLOOR)
    return log_q, log_p


def sparse_per_token(div: Divergence, student_logits: Tensor, teacher: TopKTeacher) -> Tensor:
    """D(teacher, student) per position against a top-k teacher.

    ``div``'s formula applied to the (k + 1)-outcome distributions of ``coarse_log_probs``.

    Args:
        div (Divergence): from ``get_divergence`` (its parameters, e.g. beta, apply unchanged).
        student_logits (Tensor): (..., V) student logits (the gradient flows into them).
        teacher (TopKTeacher): the cached teacher, at the distillation temperature.

    Returns:
        Tensor: (...) float32 divergence per position (not T^2-scaled, not reduced).
    """
    log_q, log_p = coarse_log_probs(student_logits, teacher)
    return div.formula(log_q, log_p, **dict(div.params))


@torch.no_grad()
def reconstruction_kl(teacher_logits: Tensor, teacher: TopKTeacher) -> Tensor:
    """``KL(p || p_hat)`` per position: how much of the full teacher a top-k cache loses.

    ``p = softmax(teacher_logits / T)``; ``p_hat`` keeps the cached top-k probabilities (as stored, so the storage
    dtype's rounding counts) and spreads the tail mass m evenly over the other V - k tokens.

    Args:
        teacher_logits (Tensor): (..., V) the full teacher logits the cache was built from.
        teacher (TopKTeacher): the cached top-k of those logits.

    Returns:
        Tensor: (...) float32 KL in nats (0 for k = V up to rounding).
    """
    log_p = tempered_log_softmax(teacher_logits, teacher.temperature)
    vocab, k = log_p.shape[-1], teacher.top_k
    tail_each = teacher.log_tail.float() - math.log(max(vocab - k, 1))  # log(m / (V - k))
    log_p_hat = tail_each.unsqueeze(-1).expand_as(log_p).clone()
    log_p_hat.scatter_(-1, teacher.ids.long(), teacher.log_probs.float())
    p = log_p.exp()
    terms = p * (log_p - log_p_hat)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)  # 0 * log 0 = 0
