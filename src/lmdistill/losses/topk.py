"""Divergences against a sparse teacher: its top-k log-probabilities plus the probability mass of the tail.

A cached teacher (``lmdistill.teachers.cache``) keeps, per position, the k most probable tokens of
``p = softmax(z / T)`` (the ensemble's combined logits z at the distillation temperature T), their log-probabilities
and ``log m`` with ``m = 1 - sum_{i in top-k} p_i``. How m is spread over the other V - k tokens is not recorded;
the two estimators of D (``ESTIMATORS``, the recipe's ``distillation.topk_estimator``) differ only there:

"tail_bucket" (the default)
    The vocabulary is coarsened into k + 1 outcomes, the k cached tokens and one "tail" outcome holding every other
    token. The teacher's coarse distribution is ``(p_1 .. p_k, m)``; the student's is ``(q_1 .. q_k, q_tail)``
    with ``q = softmax(s / T)`` gathered at the cached ids and ``q_tail = sum_{j not in top-k} q_j`` (a masked
    logsumexp, so it stays exact when the top-k hold almost all the mass). The divergence D is then the very same
    per-position formula as for a dense teacher (``DIVERGENCES``), applied to these (k + 1)-outcome distributions.
    This is TRL's tail bucket (``add_tail_bucket`` in ``trl/experimental/sdft/loss_utils.py``; IW-OPD's
    ``generalized_jsd_loss(top_k=k, add_tail=True)`` at beta = 0, whose support is the teacher's top k) and
    DistillKit's ``sparse_kl_div(missing=SYMMETRIC_UNIFORM)`` (forward KL): "both tails uniform" makes the in-tail
    term vanish, which leaves exactly the k + 1 outcomes. Both take ``q_tail = 1 - sum q_i``, which loses digits
    when the top-k hold almost all the mass.

"uniform_tail"
    The teacher's full distribution is reconstructed as ``p_hat``: ``p_i`` on the cached tokens and ``m / (V - k)``
    on each other token (``uniform_tail_log_probs``, the ``p_hat`` of ``reconstruction_kl``). D is the dense
    per-position formula between ``p_hat`` and the full ``q = softmax(s / T)``. Neither TRL nor DistillKit has this
    mode. It runs chunk of positions by chunk with its gradient (as ``lmdistill.losses.chunked``): one (N, V)
    gradient buffer and (chunk, V) temporaries, less than tail_bucket's autograd (several (N, V) float32 tensors).

Which is better depends on the student. For forward KL the gradient with respect to a logit s_j is
``(q_j - p_j) / T`` on the cached tokens for both; on a tail token it is ``(q_j - m q_j / q_tail) / T`` for
tail_bucket (m split in proportion to the student's own tail) and ``(q_j - m / (V - k)) / T`` for uniform_tail,
against the exact ``(q_j - p_j) / T``. So tail_bucket is exact when the student's tail has the shape of the
teacher's, uniform_tail when the teacher's tail is flat, and both agree for a student whose tail is flat (a
random-init LM head's small logits). Measured (``benchmarks/results/topk_estimator.md``, synthetic Zipf-like
teachers, V = 49,152, k = 64): forward KL has equal errors for a random-init student (0.2% peaked at T = 1, 41%
flat at T = 2); uniform_tail is better for a confident student unrelated to the teacher (flat, T = 2: 31% vs 69%);
tail_bucket for a student close to the teacher at T = 2 (flat: 49% vs 76%; peaked: 8.5% vs 15%), uniform_tail
slightly at T = 1 (4.4% vs 5.6%). Reverse KL cannot be estimated for a random-init student (both > 90%: its mass
is in the tail, where log p_j is unknown); tail_bucket is far better for a student close to the teacher (peaked,
T = 1: 2.5% vs 17%; uniform_tail exceeds 100% at T = 2), uniform_tail for a confident unrelated one (28-40% vs
~100%). Hence the default: distillation soon makes the student resemble the teacher; uniform_tail suits a student
that starts with a confident tail of its own.

Consequences, all tested:
- for k = V the tail is empty (m = q_tail = 0) and both estimators give the dense loss (to float rounding of the
  stored log-probabilities: exact when they are stored in float32);
- tail_bucket: coarsening never increases an f-divergence (data-processing inequality), so for forward KL, reverse
  KL, JSD and TV its value is at most the dense one; the gap is the student's disagreement with the teacher
  *inside* the tail, which the cache does not record; uniform_tail has no such bound, and is the dense value when
  the teacher's tail really is flat;
- the gradient reaches every student logit: tail_bucket pushes the tail tokens, together, towards the tail mass m;
  uniform_tail pushes each towards m / (V - k);
- the skew KLs use the cancellation-free form of ``lmdistill.losses.divergences`` (terms ``a (e^r - 1 - r)``),
  which assumes both distributions sum to 1: with log-probabilities stored in float16 the teacher's sums to
  1 +- ~1e-4 (``p_hat``'s too), and the value differs from the textbook sum by ``(1 - skew) (1 - sum p)`` per
  position (reverse: the opposite), a constant without gradient that removes the first-order effect of that
  rounding when the student is close to the teacher; generalized JSD is unaffected (the two offsets cancel).

Log-probabilities of empty outcomes (-inf) are floored at ``LOG_FLOOR`` (tail_bucket: the k + 1 outcomes;
uniform_tail: the student's and ``p_hat``'s V) so that ``0 * log 0`` terms are 0 rather than NaN; a reverse KL
against a teacher tail of exactly 0 is therefore large and finite instead of infinite, and so is uniform_tail's
forward KL where the student has a logit of -inf outside the top-k (``p_hat`` gives that token m / (V - k)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lmdistill.losses.chunked import _hand_over, auto_chunk_size
from lmdistill.losses.divergences import Divergence, at_least_float32, compute_dtype, tempered_log_softmax

__all__ = [
    "ESTIMATORS",
    "LOG_FLOOR",
    "Estimator",
    "TopKTeacher",
    "coarse_log_probs",
    "reconstruction_kl",
    "sparse_per_token",
    "topk_teacher",
    "uniform_tail_log_probs",
]

Estimator = Literal["tail_bucket", "uniform_tail"]
ESTIMATORS: tuple[str, ...] = ("tail_bucket", "uniform_tail")
"""The estimators of D against a top-k teacher (see the module docstring); "tail_bucket" is the default."""

LOG_FLOOR = -1.0e4
"""Floor of both estimators' log-probabilities: exp(LOG_FLOOR) == 0 in float32, and 0 * (LOG_FLOOR - x) == 0."""


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


def _check_positions(student_logits: Tensor, teacher: TopKTeacher) -> None:
    """Raise ValueError unless the student's logits (..., V) fit the cached teacher's positions and vocabulary."""
    if student_logits.shape[:-1] != teacher.shape or teacher.ids.shape != teacher.log_probs.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} do not match the cached teacher's positions "
            f"{tuple(teacher.shape)} (top-k {tuple(teacher.log_probs.shape)}, ids {tuple(teacher.ids.shape)})"
        )
    if student_logits.shape[-1] != teacher.vocab_size:
        from lmdistill.vocabulary import vocabulary_mismatch

        raise vocabulary_mismatch(
            "the cached teacher", teacher.vocab_size, "tokens", "the student's logits", student_logits.shape[-1],
            "columns",
        )  # fmt: skip


def coarse_log_probs(student_logits: Tensor, teacher: TopKTeacher) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's (k + 1)-outcome log-distributions of "tail_bucket" (module docstring).

    Args:
        student_logits (Tensor): (..., V) student logits; tempered by ``teacher.temperature`` here.
        teacher (TopKTeacher): positions of the same shape (...).

    Returns:
        tuple: (log_q, log_p), each (..., k + 1) float32, the last column the tail; floored at ``LOG_FLOOR``.

    Raises:
        ValueError: shapes or vocabularies that do not match.
    """
    _check_positions(student_logits, teacher)
    log_q_all = tempered_log_softmax(student_logits, teacher.temperature)
    ids = teacher.ids.long()
    log_q_top = log_q_all.gather(-1, ids)
    log_q_tail = log_q_all.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    log_q = torch.cat([log_q_top, log_q_tail], dim=-1).clamp_min(LOG_FLOOR)
    teacher_lp = at_least_float32(teacher.log_probs).to(log_q.dtype)
    log_p = torch.cat([teacher_lp, teacher.log_tail.to(log_q.dtype).unsqueeze(-1)], dim=-1).clamp_min(LOG_FLOOR)
    return log_q, log_p


def uniform_tail_log_probs(teacher: TopKTeacher, dtype: torch.dtype = torch.float32) -> Tensor:
    """The teacher of "uniform_tail": ``log p_hat`` with the cached ``log p_i`` and ``log(m / (V - k))`` elsewhere.

    Args:
        teacher (TopKTeacher): the cached top-k and tail mass, positions (...).
        dtype (torch.dtype): float32 or float64.

    Returns:
        Tensor: (..., V) log-probabilities in ``dtype`` (not floored: -inf where m = 0).
    """
    vocab, k = teacher.vocab_size, teacher.top_k
    tail_each = teacher.log_tail.to(dtype) - math.log(max(vocab - k, 1))  # log(m / (V - k)); no tail token at k = V
    log_p_hat = tail_each.unsqueeze(-1).expand(*teacher.shape, vocab).clone()
    return log_p_hat.scatter_(-1, teacher.ids.long(), at_least_float32(teacher.log_probs).to(dtype))


def _uniform_tail_pass(
    div: Divergence, student_logits: Tensor, teacher: TopKTeacher, chunk_size: int, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """D per row of (N, V) logits against the uniform-tail teacher, and its gradient, one chunk of rows at a time."""
    n_rows = student_logits.shape[0]
    values = student_logits.new_empty(n_rows, dtype=compute_dtype(student_logits))
    grad = torch.empty_like(student_logits) if need_grad else None
    params = dict(div.params)
    for start in range(0, n_rows, chunk_size):
        rows = slice(start, min(start + chunk_size, n_rows))
        s = student_logits[rows].detach().requires_grad_(need_grad)
        part = TopKTeacher(
            teacher.log_probs[rows], teacher.ids[rows], teacher.log_tail[rows], teacher.temperature, teacher.vocab_size
        )
        with torch.enable_grad():
            log_q = tempered_log_softmax(s, teacher.temperature).clamp_min(LOG_FLOOR)  # (chunk, V)
            log_p = uniform_tail_log_probs(part, log_q.dtype).clamp_min_(LOG_FLOOR)  # (chunk, V)
            d = div.formula(log_q, log_p, **params)  # (chunk,)
            total = d.sum()  # rows are independent: d(sum)/d(row logits) = d(row's D)/d(row logits)
        if need_grad:
            grad[rows] = torch.autograd.grad(total, s)[0]
        values[rows] = d.detach()
    return values, grad


class _UniformTailLoss(torch.autograd.Function):
    """(N, V) logits -> (N,) D against the uniform-tail teacher; the gradient is computed chunk by chunk in forward.

    As ``lmdistill.losses.chunked``'s ``_ChunkedLoss``: one (N, V) gradient buffer, handed to autograd (scaled in
    place by the incoming per-row gradient) by the first backward; a later backward recomputes it.
    """

    @staticmethod
    def forward(ctx, student_logits, log_probs, ids, log_tail, div, temperature, vocab_size, chunk_size):
        teacher = TopKTeacher(log_probs, ids, log_tail, temperature, vocab_size)
        need = ctx.needs_input_grad[0]
        values, grad = _uniform_tail_pass(div, student_logits, teacher, chunk_size, need)
        ctx.save_for_backward(student_logits, log_probs, ids, log_tail)
        ctx.args = (div, temperature, vocab_size, chunk_size)
        ctx.grads = grad
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        student_logits, log_probs, ids, log_tail = ctx.saved_tensors
        div, temperature, vocab_size, chunk_size = ctx.args

        def recompute():
            teacher = TopKTeacher(log_probs, ids, log_tail, temperature, vocab_size)
            return _uniform_tail_pass(div, student_logits, teacher, chunk_size, True)[1]

        grad = _hand_over(ctx, recompute)
        return grad.mul_(grad_out.unsqueeze(-1).to(grad.dtype)), None, None, None, None, None, None, None


def sparse_per_token(
    div: Divergence,
    student_logits: Tensor,
    teacher: TopKTeacher,
    estimator: Estimator = "tail_bucket",
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """D(teacher, student) per position against a top-k teacher, by one of ``ESTIMATORS`` (module docstring).

    "tail_bucket": ``div``'s formula on the (k + 1)-outcome distributions of ``coarse_log_probs`` (autograd).
    "uniform_tail": ``div``'s formula on the full (..., V) distributions, the teacher's from
    ``uniform_tail_log_probs``, evaluated chunk of positions by chunk with its gradient: one (N, V) gradient
    buffer and (chunk, V) temporaries.

    Args:
        div (Divergence): from ``get_divergence`` (its parameters, e.g. beta, apply unchanged).
        student_logits (Tensor): (..., V) student logits (the gradient flows into them).
        teacher (TopKTeacher): the cached teacher, at the distillation temperature.
        estimator (str): "tail_bucket" (default) or "uniform_tail".
        chunk_size (int | None): positions per chunk of "uniform_tail"; None = about 32 MiB per (chunk, V).

    Returns:
        Tensor: (...) float32 divergence per position (float64 for float64 logits; not T^2-scaled, not reduced).

    Raises:
        ValueError: an unknown estimator, or shapes or vocabularies that do not match.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown top-k estimator {estimator!r}; choose one of {list(ESTIMATORS)}")
    if estimator == "tail_bucket":
        log_q, log_p = coarse_log_probs(student_logits, teacher)
        return div.formula(log_q, log_p, **dict(div.params))
    _check_positions(student_logits, teacher)
    vocab, k = teacher.vocab_size, teacher.top_k
    chunk_size = chunk_size or auto_chunk_size(vocab)
    values = _UniformTailLoss.apply(
        student_logits.reshape(-1, vocab),
        teacher.log_probs.reshape(-1, k),
        teacher.ids.reshape(-1, k),
        teacher.log_tail.reshape(-1),
        div,
        teacher.temperature,
        vocab,
        chunk_size,
    )
    return values.view(teacher.shape)


@torch.no_grad()
def reconstruction_kl(teacher_logits: Tensor, teacher: TopKTeacher) -> Tensor:
    """``KL(p || p_hat)`` per position: how much of the full teacher a top-k cache loses.

    ``p = softmax(teacher_logits / T)``; ``p_hat`` keeps the cached top-k probabilities (as stored, so the storage
    dtype's rounding counts) and spreads the tail mass m evenly over the other V - k tokens: the teacher of the
    "uniform_tail" estimator (``uniform_tail_log_probs``).

    Args:
        teacher_logits (Tensor): (..., V) the full teacher logits the cache was built from.
        teacher (TopKTeacher): the cached top-k of those logits.

    Returns:
        Tensor: (...) float32 KL in nats (0 for k = V up to rounding).
    """
    log_p = tempered_log_softmax(teacher_logits, teacher.temperature)
    log_p_hat = uniform_tail_log_probs(teacher, log_p.dtype)
    p = log_p.exp()
    terms = p * (log_p - log_p_hat)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)  # 0 * log 0 = 0
