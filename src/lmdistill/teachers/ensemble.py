"""Frozen teachers and their ensemble: averaged logits (Baby Llama) or averaged probabilities, over V columns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from lmdistill.models.families import head_rows
from lmdistill.vocabulary import embedding_rows, kept_columns

__all__ = ["ENSEMBLE_RULES", "TeacherEnsemble", "freeze"]

ENSEMBLE_RULES = ("logits", "probs")


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with ``requires_grad=False`` on every parameter; returns it."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TeacherEnsemble:
    """One or more frozen teachers combined into one next-token distribution over the run's vocabulary.

    Rules:
        - "logits": ``z = mean_i z_i`` (the Baby Llama code). Independent of the temperature.
        - "probs": ``p^T = mean_i softmax(z_i / T)``, returned as ``z = T * log p^T`` so that
          ``softmax(z / T) = p^T`` exactly; the divergences can then divide by T as for any teacher.

    Each teacher's logits are its first V columns, ``z_i = logits_i[..., :V]``: a teacher with ``vocab_rows``
    "shared" may have padding rows past V (``lmdistill.vocabulary``), which are dropped before the rule, so the
    combined logits, ``forward_features``'s outputs and a cache built from the ensemble all have V columns.

    Args:
        teachers (Sequence[nn.Module]): causal LMs over the student's vocabulary; frozen here.
        rule (str): "logits" or "probs".
        vocab_size (int | None): V, the run tokenizer's length; None: the first teacher's embedding rows (every
            teacher must then have as many, and none may be "shared").
        vocab_rows (str | Sequence[str]): per teacher (or one for all), "exact" (embedding rows == V) or "shared"
            (rows >= V; only the first V are used).
        names (Sequence[str] | None): the teachers' names, for messages; None: "teacher 0", "teacher 1", ...

    Raises:
        ValueError: no teachers, an unknown rule or ``vocab_rows``, "shared" without ``vocab_size``.
        VocabularyMismatchError: a teacher whose rows do not fit V (the message points at ``lmdistill
            adapt-teacher``).
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        rule: str = "logits",
        *,
        vocab_size: int | None = None,
        vocab_rows: str | Sequence[str] = "exact",
        names: Sequence[str] | None = None,
    ) -> None:
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        if rule not in ENSEMBLE_RULES:
            raise ValueError(f"ensemble rule must be one of {ENSEMBLE_RULES}, got {rule!r}")
        modes = [vocab_rows] * len(teachers) if isinstance(vocab_rows, str) else list(vocab_rows)
        names = list(names) if names is not None else [f"teacher {i}" for i in range(len(teachers))]
        if len(modes) != len(teachers) or len(names) != len(teachers):
            raise ValueError(f"need one vocab_rows and one name per teacher ({len(teachers)}), got {modes}, {names}")
        rows = [embedding_rows(t) for t in teachers]
        if vocab_size is None:
            if "shared" in modes:
                raise ValueError("vocab_rows 'shared' needs vocab_size (the run tokenizer's length)")
            vocab_size, other = rows[0], (names[0], "embedding rows")
        else:
            other = ("this run's tokenizer", "tokens")
        for name, n, mode in zip(names, rows, modes, strict=True):
            kept_columns(name, n, vocab_size, mode, *other)
        self.teachers = [freeze(t) for t in teachers]
        self.rule = rule
        self.vocab_size = int(vocab_size)
        """V, the columns of every teacher's logits that are used."""
        self.names = names
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
        keep: Tensor | None = None,
    ) -> tuple[Tensor, list]:
        """Combined teacher logits and each teacher's model output (for feature losses).

        Args:
            input_ids (Tensor): (B, T) token ids.
            attention_mask (Tensor | None): (B, T).
            temperature (float): T of the "probs" rule.
            hidden_states (bool): ask every teacher for ``output_hidden_states``.
            attentions (bool): ask every teacher for ``output_attentions`` (needs eager attention).
            keep (Tensor | None): (B, T) bool: logits only at these positions, (N, V) in row-major order
                (``lmdistill.models.families.head_rows``; the objective's ``logits_at="supervised"``).

        Returns:
            tuple: (B, T, V) float32 combined logits as ``__call__`` ((N, V) with ``keep``), and the teachers'
            outputs in order (each output's ``logits`` cut to the first V columns).
        """
        extras = {}
        if hidden_states:
            extras["output_hidden_states"] = True
        if attentions:
            extras["output_attentions"] = True
        outputs = []
        for t in self.teachers:
            with ExitStack() as stack:
                if keep is not None:
                    stack.enter_context(head_rows(t.get_output_embeddings(), keep))
                outputs.append(t(input_ids=input_ids, attention_mask=attention_mask, **extras))
        for o in outputs:  # padding rows past V ("shared") are never seen: (B, T, rows) -> (B, T, V), a view
            o.logits = o.logits[..., : self.vocab_size]
        return self._combine([o.logits.float() for o in outputs], temperature), outputs

    def _combine(self, all_logits: list[Tensor], temperature: float) -> Tensor:
        if len(all_logits) == 1:
            return all_logits[0]
        if self.rule == "logits":
            return torch.stack(all_logits).mean(0)
        log_p = torch.stack([torch.log_softmax(z / temperature, dim=-1) for z in all_logits])  # (n, B, T, V)
        return temperature * (torch.logsumexp(log_p, dim=0) - math.log(len(all_logits)))
