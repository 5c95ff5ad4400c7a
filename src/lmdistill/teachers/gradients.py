"""Gradients of a frozen teacher's output with respect to its inputs (for saliency), never to its weights.

The teacher stays frozen (``requires_grad=False`` on every parameter, eval mode), so no parameter gradient is
computed or stored; the input embeddings are a fresh leaf tensor, and the gradient of a score of the teacher's
output flows back to them alone. Attribution libraries (captum's Saliency, InputXGradient) compute the same
quantity at the embedding layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lmdistill.models.families import IGNORE_INDEX, ModelFamily, family_of
from lmdistill.teachers.ensemble import freeze

__all__ = ["input_gradients", "predicted_log_prob"]


def predicted_log_prob(logits: Tensor, targets: Tensor) -> Tensor:
    """Per row, the summed log-probability of the teacher's own most likely token at each supervised position.

    Args:
        logits (Tensor): (B, T, V) logits, aligned with ``targets``.
        targets (Tensor): (B, T) aligned targets; -100 marks positions without one (they are not scored).

    Returns:
        Tensor: (B,) float32 scores.
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    best = log_p.max(dim=-1).values  # (B, T): the predicted label's log-probability
    return (best * (targets != IGNORE_INDEX)).sum(dim=-1)


def input_gradients(
    teacher: nn.Module,
    batch: Mapping[str, Any],
    score: Callable[[Tensor, Tensor], Tensor] = predicted_log_prob,
    family: ModelFamily | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradient of ``score(teacher logits)`` with respect to the teacher's input embeddings.

    Args:
        teacher (nn.Module): a transformers model of any family; it is frozen here (eval mode, no parameter
            gradients) and never updated.
        batch (Mapping): ``input_ids`` (B, T), optional ``attention_mask`` (B, T), ``labels`` (as the family reads
            them; only their -100 pattern matters to the default score).
        score (Callable): (logits (B, T, V), aligned targets (B, T)) -> (B,) scores; default: the log-probability of
            the teacher's own prediction at each supervised position, summed per row.
        family (ModelFamily | None): the teacher's family; None = ``family_of(teacher)``.

    Returns:
        tuple: input embeddings (B, T, H), their gradient (B, T, H), and the (B,) scores, all detached.

    Raises:
        ValueError: the teacher belongs to no model family.
    """
    family = family or family_of(teacher)
    freeze(teacher)
    embeddings = family.input_embeddings(teacher)(batch["input_ids"]).detach().requires_grad_(True)  # (B, T, H)
    inputs = family.model_inputs(teacher, batch)
    del inputs["input_ids"]
    with torch.enable_grad():
        logits = family.positions(teacher(**inputs, inputs_embeds=embeddings).logits)
        scores = score(logits, family.targets(batch["labels"]))
        (grad,) = torch.autograd.grad(scores.sum(), embeddings)  # rows are independent: one backward for all
    return embeddings.detach(), grad.detach(), scores.detach()
