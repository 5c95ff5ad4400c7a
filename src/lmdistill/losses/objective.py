"""The KD objective of Baby Llama: ``alpha * CE + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lmdistill.config import DistillationConfig
from lmdistill.losses.divergences import forward_kl, reduce_per_token

__all__ = ["IGNORE_INDEX", "DistillationObjective", "causal_lm_ce"]

IGNORE_INDEX = -100


def causal_lm_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy at T = 1, mean over supervised tokens (labels != -100).

    Args:
        logits (Tensor): (B, T, V) logits; position t predicts ``labels[:, t + 1]``.
        labels (Tensor): (B, T) token ids, -100 where not supervised.

    Returns:
        Tensor: scalar float32; 0 when no token is supervised.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)
    return reduce_per_token(per_token, shift_labels != IGNORE_INDEX, "mean")


class DistillationObjective:
    """``L = alpha * CE(y, z_s) + (1 - alpha) * T^2 * KL(p_t^T || p_s^T)`` (Timiryasov & Tastet, arXiv:2308.02019).

    alpha weights the hard-label CE at T = 1; the temperature divides teacher and student logits inside the KL
    only, and T^2 keeps the KL gradients on the CE's scale (Hinton et al., arXiv:1503.02531).

    KL reduction:
        - "mean": KL per next-token position (the positions CE supervises), mean over supervised tokens.
        - "batchmean": the Baby Llama code's ``KLDivLoss(reduction="batchmean")`` on (B, T, V): KL summed over
          every input position of the block (the last included, it has no label) and divided by B.

    Args:
        alpha (float): weight of CE in [0, 1]; 1 = plain LM training (the teacher is ignored).
        temperature (float): T > 0.
        kl_reduction (str): "mean" or "batchmean".
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 2.0, kl_reduction: str = "mean") -> None:
        DistillationConfig(alpha=alpha, temperature=temperature, kl_reduction=kl_reduction)  # validates ranges
        self.alpha = alpha
        self.temperature = temperature
        self.kl_reduction = kl_reduction

    @classmethod
    def from_config(cls, cfg: DistillationConfig) -> DistillationObjective:
        """Objective of a recipe's ``distillation`` section."""
        return cls(alpha=cfg.alpha, temperature=cfg.temperature, kl_reduction=cfg.kl_reduction)

    @classmethod
    def language_modeling(cls) -> DistillationObjective:
        """Plain next-token CE (alpha = 1): teachers and the no-distillation baseline."""
        return cls(alpha=1.0, temperature=1.0)

    @property
    def needs_teacher(self) -> bool:
        """Whether the KL term has non-zero weight."""
        return self.alpha < 1.0

    def __call__(
        self,
        student_logits: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Compute the loss and its terms.

        Args:
            student_logits (Tensor): (B, T, V).
            labels (Tensor): (B, T) input ids with -100 where not supervised (padding).
            teacher_logits (Tensor | None): (B, T, V), already combined over teachers (see
                ``TeacherEnsemble``); required when alpha < 1.
            attention_mask (Tensor | None): (B, T) real (1) vs padding (0) input positions; used by "batchmean".

        Returns:
            tuple: scalar loss (with gradient), and ``{"loss", "ce"[, "kl"]}`` as floats (kl without T^2).

        Raises:
            ValueError: a teacher is needed but missing, or teacher and student vocabularies differ.
        """
        ce = causal_lm_ce(student_logits, labels)
        if not self.needs_teacher:
            return ce, {"loss": ce.item(), "ce": ce.item()}
        if teacher_logits is None:
            raise ValueError(f"alpha={self.alpha} < 1 needs teacher logits, got None")
        T = self.temperature
        if self.kl_reduction == "batchmean":
            mask = torch.ones_like(labels, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            kl = forward_kl(student_logits, teacher_logits, temperature=T, mask=mask, reduction="batchmean")
        else:
            mask = labels[:, 1:] != IGNORE_INDEX
            kl = forward_kl(student_logits[:, :-1], teacher_logits[:, :-1], temperature=T, mask=mask, reduction="mean")
        loss = self.alpha * ce + (1.0 - self.alpha) * T**2 * kl
        return loss, {"loss": loss.item(), "ce": ce.item(), "kl": kl.item()}
