"""Training diagnostics: per-layer gradient norms (a pre-step hook) and the logit loss on fixed probe batches.

Barakat & Huang ("Knowledge Distillation on Large Language Models", after TinyBERT) compare logit-only and
multi-loss KD by the logit loss on training and held-out batches over training (their Figures 3 and 4) and by the
average gradient norm of each layer (Figure 5). ``GradientNorms`` gives the second from the gradients the step
already has (no extra backward); ``LogitLossProbe`` the first, on batches fixed for the whole run (same rows, same
masks for every variant).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmdistill.data.batches import Batch
from lmdistill.losses.chunked import IGNORE_INDEX, token_cross_entropy
from lmdistill.losses.divergences import Divergence
from lmdistill.losses.features import model_dims
from lmdistill.models.families import ModelFamily, head_rows

__all__ = ["GradientNorms", "LogitLossProbe", "mean_gradient_norms", "parameter_groups", "read_probes"]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _layer_list(base: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList] | None:
    """The body's list of transformer blocks: the first ``nn.ModuleList`` of ``num_layers`` modules."""
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name, module
    return None


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's trainable parameters by part: ``embeddings``, ``layer_01`` .. ``layer_L``, ``final``, ``head``.

    ``embeddings`` are the body's parameters registered before its first transformer block (token, position and
    type embeddings and their norm), ``final`` those after the last (a final norm, a pooler), ``head`` everything
    outside the body (an MLM head's transform and bias; an untied LM head). A weight tied to the input embedding is
    counted once, in ``embeddings``. Empty groups are left out.

    Raises:
        ValueError: no list of ``num_hidden_layers`` blocks is found in the body.
    """
    inner = _unwrap(model)
    num_layers = model_dims(inner.config).num_layers
    base = inner.base_model
    found = _layer_list(base, num_layers)
    if found is None:
        raise ValueError(f"{type(inner).__name__}: no list of {num_layers} transformer blocks in its body")
    _, layers = found
    layer_of = {id(p): i for i, block in enumerate(layers) for p in block.parameters()}
    body = {id(p) for p in base.parameters()}
    groups: dict[str, list[nn.Parameter]] = {"embeddings": []}
    groups.update({f"layer_{i + 1:02d}": [] for i in range(num_layers)})
    groups.update({"final": [], "head": []})
    seen_layer = False
    for p in dict.fromkeys(inner.parameters()):  # distinct, in registration order
        if not p.requires_grad:
            continue
        if id(p) in layer_of:
            groups[f"layer_{layer_of[id(p)] + 1:02d}"].append(p)
            seen_layer = True
        elif id(p) in body:
            groups["final" if seen_layer else "embeddings"].append(p)
        else:
            groups["head"].append(p)
    return {k: v for k, v in groups.items() if v}


class GradientNorms:
    """A pre-step hook (``train(..., pre_step_hooks=[...])``): the L2 norm of each part's gradient every N steps.

    The norms are of the step's complete gradients before clipping, one ``torch.nn.utils.get_total_norm`` (a fused
    foreach norm) per group of ``parameter_groups``, ``total`` (the student's whole gradient) and ``projections``
    (the objective's learned projections, not part of ``total``: only some variants have them). Logged as
    ``grad_norm/<group>`` with the step's terms (metrics.jsonl and TensorBoard).

    Args:
        every (int): steps between measurements (step 1 is always measured).

    Raises:
        ValueError: ``every`` < 1.
    """

    def __init__(self, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"gradient norms every {every} steps: must be >= 1")
        self.every = every
        self._groups: dict[str, list[nn.Parameter]] | None = None

    def __call__(self, info: Any) -> dict[str, float] | None:
        """The norms at ``info.step`` (a ``lmdistill.training.StepInfo``), or None between measurements."""
        if info.step != 1 and info.step % self.every:
            return None
        if self._groups is None:
            self._groups = parameter_groups(info.model)
            projections = [p for p in info.objective.parameters() if p.requires_grad]
            if projections:
                self._groups["projections"] = projections
        out = {}
        student = []  # the student's own parameters: "total" leaves the objective's projections out
        for name, params in self._groups.items():
            grads = [p.grad for p in params if p.grad is not None]
            if name != "projections":
                student.extend(grads)
            out[f"grad_norm/{name}"] = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        out["grad_norm/total"] = float(torch.nn.utils.get_total_norm(student)) if student else 0.0
        return out


class LogitLossProbe:
    """The logit loss ``D(p_t^T, p_s^T)`` and the CE of a model on fixed probe batches, appended to a JSONL file.

    The teacher's logits at each batch's supervised positions are computed once, at construction; each call scores
    the student on the same rows and masks (eval mode, no gradient) and appends ``{"step", "<split>_logit_loss",
    "<split>_ce"}`` for each split, D and CE being means over the split's supervised positions (masked tokens of a
    masked LM, next tokens of a causal LM). D is without T^2, as the objective logs it.

    Args:
        batches (Mapping[str, Sequence[Batch]]): split name (e.g. "train", "held_out") -> its fixed batches.
        teacher (nn.Module): the teacher (same vocabulary as the students).
        family (ModelFamily): the models' family (which positions are supervised).
        divergence (Divergence): D, e.g. ``get_divergence("forward_kl")``.
        temperature (float): T of D.
        path (Path): the JSONL file (appended to; a resumed run's repeated steps supersede earlier records).
    """

    def __init__(
        self,
        batches: Mapping[str, Sequence[Batch]],
        teacher: nn.Module,
        family: ModelFamily,
        divergence: Divergence,
        temperature: float,
        path: Path,
    ) -> None:
        self.batches = {k: list(v) for k, v in batches.items()}
        self.family = family
        self.divergence = divergence
        self.temperature = temperature
        self.path = Path(path)
        self.teacher_logits = {split: [self._logits(teacher, b) for b in rows] for split, rows in self.batches.items()}

    @torch.no_grad()
    def _logits(self, model: nn.Module, batch: Batch) -> Tensor:
        """(N, V) logits at the batch's supervised positions."""
        device = next(model.parameters()).device
        batch = batch.to(device)
        with head_rows(self.family.output_head(model), self.family.supervised(batch.labels)):
            return self.family.forward(model, batch).logits.float()

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """``<split>_logit_loss`` and ``<split>_ce`` of ``model`` on every split."""
        was_training = model.training
        model.eval()
        out = {}
        try:
            for split, rows in self.batches.items():
                d_sum = ce_sum = 0.0
                count = 0
                for batch, teacher in zip(rows, self.teacher_logits[split], strict=True):
                    student = self._logits(model, batch)
                    targets = self.family.supervised_targets(batch.labels).flatten().to(student.device)
                    d = self.divergence.per_token(student, teacher.to(student.device).float(), self.temperature)
                    d_sum += float(d.sum())
                    ce_sum += float(token_cross_entropy(student, targets).sum())
                    count += int((targets != IGNORE_INDEX).sum())
                out[f"{split}_logit_loss"] = d_sum / max(count, 1)
                out[f"{split}_ce"] = ce_sum / max(count, 1)
        finally:
            model.train(was_training)
        return out

    def __call__(self, step: int, model: nn.Module) -> dict[str, float]:
        """Measure ``model`` and append the record for ``step``; returns it."""
        record = {"step": step, **self.measure(model)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def has_step(self, step: int) -> bool:
        """Whether the file has a record for ``step`` already."""
        return any(r["step"] == step for r in read_probes(self.path))


def read_probes(path: Path) -> list[dict[str, float]]:
    """A probe file's records, one per step (the last written wins: a resumed run redoes steps), by step.

    A truncated last line (a process killed mid-write) is skipped.
    """
    path = Path(path)
    if not path.exists():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def mean_gradient_norms(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The mean over logged steps of every ``grad_norm/<group>`` key of metrics records (finite values only)."""
    sums: dict[str, list[float]] = {}
    for r in records:
        for k, v in r.items():
            if k.startswith("grad_norm/") and isinstance(v, int | float) and math.isfinite(v):
                sums.setdefault(k[len("grad_norm/") :], []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}
