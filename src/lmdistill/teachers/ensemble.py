"""Frozen teachers and their ensemble: averaged logits (Baby Llama) or averaged probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ENSEMBLE_RULES", "TeacherEnsemble", "freeze"]

ENSEMBLE_RULES = ("logits", "probs")


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with ``requires_grad=False`` on every parameter; returns it."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TeacherEnsemble:
    """One or more frozen teachers combined into one next-token distribution.

    Rules:
        - "logits": ``z = mean_i z_i`` (the Baby Llama code). Independent of the temperature.
        - "probs": ``p^T = mean_i softmax(z_i / T)``, returned as ``z = T * log p^T`` so that
          ``softmax(z / T) = p^T`` exactly; the divergences can then divide by T as for any teacher.

    Args:
        teachers (Sequence[nn.Module]): causal LMs sharing the student's vocabulary; frozen here.
        rule (str): "logits" or "probs".

    Raises:
        ValueError: no teachers, an unknown rule, or teachers with different vocabulary sizes.
    """

    def __init__(self, teachers: Sequence[nn.Module], rule: str = "logits") -> None:
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        if rule not in ENSEMBLE_RULES:
            raise ValueError(f"ensemble rule must be one of {ENSEMBLE_RULES}, got {rule!r}")
        sizes = {getattr(t.config, "vocab_size", None) for t in teachers}
        if len(sizes) != 1:
            raise ValueError(
                f"teachers have different vocabulary sizes {sorted(map(str, sizes))}: they must share one tokenizer"
            )
        self.teachers = [freeze(t) for t in teachers]
        self.rule = rule
        self.vocab_size = sizes.pop()
        windows = [
            getattr(t.config, "max_position_embeddings", None) or getattr(t.config, "n_positions", None)
            for t in teachers
        ]
        self.max_length: int | None = min((w for w in windows if w), default=None)
        """Shortest context window among the teachers (read by the evaluation scorer)."""

    @property
    def device(self) -> torch.device:
        """Device of the first teacher (all teachers are moved together by ``to``)."""
        return next(self.teachers[0].parameters()).device

    def to(self, device: torch.device | str) -> TeacherEnsemble:
        """Move every teacher to ``device``."""
        self.teachers = [t.to(device) for t in self.teachers]
        return self

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """Combined teacher logits.

        Args:
            input_ids (Tensor): (B, T) token ids.
            attention_mask (Tensor | None): (B, T).
            temperature (float): T of the "probs" rule (ignored by "logits").

        Returns:
            Tensor: (B, T, V) float32 logits with ``softmax(logits / T)`` the ensemble distribution at T.
        """
        return self.forward_features(input_ids, attention_mask, temperature)[0]

    @torch.no_grad()
    def forward_features(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        temperature: float = 1.0,
        *,
        hidden_states: bool = False,
        attentions: bool = False,
    ) -> tuple[Tensor, list]:
        """Combined teacher logits and each teacher's model output (for feature losses).

        Args:
            input_ids (Tensor): (B, T) token ids.
            attention_mask (Tensor | None): (B, T).
            temperature (float): T of the "probs" rule.
            hidden_states (bool): ask every teacher for ``output_hidden_states``.
            attentions (bool): ask every teacher for ``output_attentions`` (needs eager attention).

        Returns:
            tuple: (B, T, V) float32 combined logits as ``__call__``, and the teachers' outputs in order.
        """
        extras = {}
        if hidden_states:
            extras["output_hidden_states"] = True
        if attentions:
            extras["output_attentions"] = True
        outputs = [t(input_ids=input_ids, attention_mask=attention_mask, **extras) for t in self.teachers]
        return self._combine([o.logits.float() for o in outputs], temperature), outputs

    def _combine(self, all_logits: list[Tensor], temperature: float) -> Tensor:
        if len(all_logits) == 1:
            return all_logits[0]
        if self.rule == "logits":
            return torch.stack(all_logits).mean(0)
        log_p = torch.stack([torch.log_softmax(z / temperature, dim=-1) for z in all_logits])  # (n, B, T, V)
        return temperature * (torch.logsumexp(log_p, dim=0) - math.log(len(all_logits)))
