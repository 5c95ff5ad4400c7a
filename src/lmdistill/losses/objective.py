"""The KD objective: ``alpha * CE + (1 - alpha) * T^2 * D(teacher, student; T) + sum_j w_j * F_j``.

One objective serves plain LM training (alpha = 1: teachers and the no-distillation baseline) and distillation,
and computes its response part by one of three paths with equal values and gradients:

- "plain": the student's logits (B, T, V), then CE and D as ordinary autograd expressions;
- "chunked": the student's logits, then CE and D chunk by chunk (``lmdistill.losses.chunked``), one (B, T, V)
  gradient buffer instead of several float32 (B, T, V) temporaries;
- "fused": the student's final hidden states and LM head; no (B, T, V) student tensor is ever held.

A cached teacher (``TopKTeacher``: top-k log-probabilities and tail mass) is read by a fourth, sparse path on the
student's logits (``lmdistill.losses.topk``, by its ``topk_estimator``), whatever the implementation.

Compatibility presets (``PRESETS`` in ``lmdistill.config``; each reproduces its anchor's formula, see the tests):

============  =====================================================================================
preset        loss
============  =====================================================================================
babyllama     ``alpha*CE + (1-alpha)*T^2*KLDivLoss(batchmean)(log p_s^T, p_t^T)`` on (B, T, V): KL summed
              over every position, divided by B (Timiryasov & Tastet's code; alpha 0.5, T 2)
torchdistill  ``alpha*CE + (1-alpha)*T^2*KL`` with KL averaged over the rows given (one per supervised
              position); torchdistill's ``KDLoss`` returns the KL without T^2 when alpha is 0
gkd           ``JSD(beta=0.5)`` at T = 1, mean over supervised positions, no CE, no T^2 (TRL's GKDTrainer)
============  =====================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from lmdistill.config import PRESETS, DistillationConfig, FeatureLossConfig, LossConfig, from_dict
from lmdistill.losses.chunked import (
    IGNORE_INDEX,
    check_compile_available,
    chunked_per_token,
    combined_row_loss,
    fused_linear_loss,
    masked_weighted,
    token_cross_entropy,
)
from lmdistill.losses.divergences import (
    check_logits_pair,
    compute_dtype,
    get_divergence,
    reduce_per_token,
    reduction_weights,
)
from lmdistill.losses.features import AttentionLoss, EmbeddingLoss, HintLoss, layer_map, model_dims
from lmdistill.losses.topk import TopKTeacher, sparse_per_token
from lmdistill.models.families import FAMILIES, ModelFamily, head_rows

__all__ = ["IGNORE_INDEX", "DistillationObjective", "StudentOutput", "causal_lm_ce", "next_token_targets"]

IMPLEMENTATIONS = ("plain", "chunked", "fused")
LOGITS_AT = ("all", "supervised")


def next_token_targets(labels: Tensor) -> Tensor:
    """Targets aligned with the logits: ``targets[:, t] = labels[:, t + 1]``, -100 at the last position.

    Aligning the targets (rather than slicing ``logits[:, :-1]``) avoids copying the (B, T, V) logits.

    Args:
        labels (Tensor): (B, T) token ids, -100 where not supervised.

    Returns:
        Tensor: (B, T) targets.
    """
    return FAMILIES["causal_lm"].targets(labels)


def causal_lm_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy at T = 1, mean over supervised tokens (labels != -100).

    Args:
        logits (Tensor): (B, T, V) logits; position t predicts ``labels[:, t + 1]``.
        labels (Tensor): (B, T) token ids, -100 where not supervised.

    Returns:
        Tensor: scalar float32; 0 when no token is supervised.
    """
    targets = next_token_targets(labels)
    per_token = token_cross_entropy(logits.flatten(0, -2), targets.flatten()).view_as(targets)
    return reduce_per_token(per_token, targets != IGNORE_INDEX, "mean")


@dataclass
class StudentOutput:
    """What the objective needs from the student's forward pass (see ``DistillationObjective.student_forward``).

    Attributes:
        logits (Tensor | None): (B, T, V), for the plain and chunked paths.
        hidden (Tensor | None): (B, T, H) final hidden states (after the final norm), for the fused path.
        lm_head (nn.Module | None): the output embedding (``weight`` (V, H), optional ``bias``), for the fused path.
        hidden_states (tuple | None): L + 1 tensors (B, T, H) when a hint or embedding term needs them.
        attentions (tuple | None): L tensors (B, heads, T, T) when an attention term needs them.
    """

    logits: Tensor | None = None
    hidden: Tensor | None = None
    lm_head: nn.Module | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class _FeatureTerm:
    """A configured feature term; its module is built by ``DistillationObjective.setup``."""

    name: str
    spec: FeatureLossConfig
    extra: dict = field(default_factory=dict)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel and friends


def _attention_outputs(model: nn.Module, scores: bool) -> None:
    """Make ``output_attentions`` give probabilities (eager attention) or pre-softmax scores (``scores``)."""
    from lmdistill.losses.attention_scores import use_attention_scores

    if scores:
        use_attention_scores(model)
    elif getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")


class DistillationObjective(nn.Module):
    """``L = alpha * CE(y, z_s) + (1 - alpha) * s * D(p_t^T, p_s^T)`` with ``s = T^2`` (or 1), DESIGN.md's algebra.

    alpha weights the hard-label CE at T = 1 (Baby Llama, arXiv:2308.02019; torchdistill); the temperature divides
    teacher and student logits inside D only, and T^2 keeps D's gradients on the CE's scale (Hinton et al.,
    arXiv:1503.02531). D is any divergence of ``lmdistill.losses.divergences``.

    Reduction of D:
        - "mean": D at each next-token position (the positions CE supervises), mean over supervised positions.
        - "batchmean": the Baby Llama code's ``KLDivLoss(reduction="batchmean")`` on (B, T, V): D summed over
          every real input position of the block (the last included, it has no label) and divided by B.

    Args:
        alpha (float): weight of CE in [0, 1]; 1 = plain LM training (the teacher is ignored).
        temperature (float): T > 0.
        divergence (str): a name of ``DIVERGENCES``.
        beta (float): generalized_jsd's beta.
        skew (float): the skew KLs' lambda.
        reduction (str): "mean" or "batchmean".
        t2_scaling (bool): multiply D by T^2.
        topk_estimator (str): how D is estimated against a cached top-k teacher, "tail_bucket" or "uniform_tail"
            (``lmdistill.losses.topk``); unused with full teacher logits.
        implementation (str): "plain", "chunked" or "fused".
        chunk_size (int | None): positions per chunk of the chunked and fused paths (and of the uniform_tail
            estimator); None = automatic.
        compile (bool): compile the chunked and fused paths' per-chunk math with ``torch.compile`` (the recipe's
            ``loss.compile``; see ``lmdistill.losses.chunked``); not with "plain".
        features (Sequence[FeatureLossConfig]): feature terms ``w_j * F_j`` (hint, attention, embedding); their
            modules (learned projections) are built by ``setup`` once the student and teachers are known.
        family (ModelFamily | str): the student's model family, which aligns labels with logits (causal LMs
            shift by one, masked LMs and seq2seq decoders do not, a classifier has one label per row).
        logits_at (str): "all" positions, or "supervised" only: the LM head maps only the positions with a target
            (``lmdistill.models.families.head_rows``), so the student's and teacher's logits are (N, V) for the N
            supervised positions, read as (N, 1, V) against (N, 1) targets. Same values as "all" (every loss is a
            mean over supervised positions); a masked LM pays its (V, H) head product on the 15% masked
            positions only. Not with the fused path, a classifier, or the "batchmean" reduction (it counts
            unsupervised positions too).

    Raises:
        ValueError: a value out of range (checked as the recipe's ``distillation`` section is).
        RuntimeError: ``compile`` where ``torch.compile`` cannot run (``check_compile_available``; the device
            backend is checked at the first loss).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 2.0,
        divergence: str = "forward_kl",
        *,
        beta: float = 0.5,
        skew: float = 0.1,
        reduction: str = "mean",
        t2_scaling: bool = True,
        topk_estimator: str = "tail_bucket",
        implementation: str = "plain",
        chunk_size: int | None = None,
        compile: bool = False,
        features: Sequence[FeatureLossConfig] = (),
        family: ModelFamily | str = "causal_lm",
        logits_at: str = "all",
    ) -> None:
        super().__init__()
        self.family = FAMILIES[family] if isinstance(family, str) else family
        if logits_at not in LOGITS_AT:
            raise ValueError(f"logits_at must be one of {LOGITS_AT}, got {logits_at!r}")
        if logits_at == "supervised" and (
            implementation == "fused" or reduction == "batchmean" or self.family.name == "classifier"
        ):
            raise ValueError(
                "logits_at='supervised' needs the plain or chunked path, the 'mean' reduction and a family with an "
                f"LM head (got implementation={implementation!r}, reduction={reduction!r}, {self.family.name})"
            )
        self.logits_at = logits_at
        cfg = DistillationConfig(  # validates ranges with the recipe's messages
            alpha=alpha,
            temperature=temperature,
            divergence=divergence,
            beta=beta,
            skew=skew,
            reduction=reduction,
            t2_scaling=t2_scaling,
            topk_estimator=topk_estimator,
        )
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        LossConfig(implementation=implementation, chunk_size=chunk_size, compile=compile)
        if compile:
            check_compile_available()  # early: what does not depend on the device (the device at the first loss)
        self.alpha = cfg.alpha
        self.temperature = cfg.temperature
        self.divergence = get_divergence(cfg.divergence, beta=cfg.beta, skew=cfg.skew)
        self.reduction = cfg.reduction
        self.t2_scaling = cfg.t2_scaling
        self.topk_estimator = cfg.topk_estimator
        self.implementation = implementation
        self.chunk_size = chunk_size
        self.compile_loss = bool(compile)  # not ``self.compile``: that is nn.Module.compile
        self._terms: list[_FeatureTerm] = []
        for spec in features:
            base = spec.kind
            count = sum(t.spec.kind == base for t in self._terms)
            self._terms.append(_FeatureTerm(base if count == 0 else f"{base}_{count}", spec))
        self.feature_modules = nn.ModuleDict()  # projections etc., built by setup() from the models' configs

    # ------------------------------------------------------------------------------------------- constructors

    @classmethod
    def from_config(
        cls,
        cfg: DistillationConfig,
        loss: LossConfig | None = None,
        family: ModelFamily | str = "causal_lm",
        logits_at: str = "all",
    ) -> DistillationObjective:
        """Objective of a recipe's ``distillation`` and ``loss`` sections for a student of ``family``."""
        loss = loss or LossConfig()
        return cls(
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            divergence=cfg.divergence,
            beta=cfg.beta,
            skew=cfg.skew,
            reduction=cfg.reduction,
            t2_scaling=cfg.t2_scaling,
            topk_estimator=cfg.topk_estimator,
            implementation=loss.implementation,
            chunk_size=loss.chunk_size,
            compile=loss.compile,
            features=cfg.features,
            family=family,
            logits_at=logits_at,
        )

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> DistillationObjective:
        """Objective of a compatibility preset ("babyllama", "torchdistill", "gkd"), with keys overridden.

        Raises:
            ValueError: an unknown preset (the message lists them) or an invalid override.
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        loss_keys = {k: overrides.pop(k) for k in ("implementation", "chunk_size", "compile") if k in overrides}
        cfg = from_dict(DistillationConfig, {"preset": preset, **overrides}, prefix="distillation")
        return cls.from_config(cfg, LossConfig(**loss_keys))

    @classmethod
    def language_modeling(
        cls,
        implementation: str = "plain",
        family: ModelFamily | str = "causal_lm",
        logits_at: str = "all",
        *,
        compile: bool = False,
    ) -> DistillationObjective:
        """Plain CE on the family's targets (alpha = 1): teachers and the no-distillation baseline."""
        return cls(
            alpha=1.0, temperature=1.0, implementation=implementation, family=family, logits_at=logits_at,
            compile=compile,
        )  # fmt: skip

    def num_supervised(self, labels: Tensor) -> int:
        """Positions with a target once ``labels`` are aligned by the family (the CE's denominator)."""
        return int((self.family.targets(labels) != IGNORE_INDEX).sum())

    @property
    def needs_teacher(self) -> bool:
        """Whether the divergence term has non-zero weight or a feature term matches a teacher."""
        return self.alpha < 1.0 or bool(self._terms)

    @property
    def needs_hidden_states(self) -> bool:
        """Whether a hint or embedding term needs ``output_hidden_states``."""
        return any(t.spec.kind in ("hint", "embedding") for t in self._terms)

    @property
    def needs_attentions(self) -> bool:
        """Whether an attention term needs ``output_attentions`` (eager attention)."""
        return any(t.spec.kind == "attention" for t in self._terms)

    @property
    def feature_teachers(self) -> list[int]:
        """Indices of the teachers whose features the terms match."""
        return sorted({t.spec.teacher for t in self._terms})

    def setup(self, student: nn.Module, teachers: Sequence[nn.Module]) -> DistillationObjective:
        """Build the feature terms' modules (layer maps, learned projections) for these models; returns self.

        Widths and depths come from the models' configs; the projections are initialised from the global torch
        seed, live on the student's device, and are trained with the student (``parameters()``). Models whose
        attentions are matched are switched to eager attention (the fused kernels return no attention weights), or
        to ``lmdistill_scores`` attention for a term with ``scores`` (``lmdistill.losses.attention_scores``).

        Raises:
            ValueError: a term names a teacher that is not there, or a layer map does not fit the models.
        """
        if not self._terms or len(self.feature_modules) == len(self._terms):
            return self
        student = _unwrap(student)
        device = next(student.parameters()).device
        kinds = {t.spec.scores for t in self._terms if t.spec.kind == "attention"}
        if len(kinds) > 1:
            raise ValueError("attention terms ask for both pre-softmax scores and probabilities: choose one")
        for term in self._terms:
            spec = term.spec
            if spec.teacher >= len(teachers):
                raise ValueError(
                    f"feature term {term.name!r} matches teacher {spec.teacher}, but there are {len(teachers)}"
                )
            teacher = teachers[spec.teacher]
            s, t = model_dims(student.config), model_dims(teacher.config)
            if spec.kind == "embedding":
                module = EmbeddingLoss(s.hidden_size, t.hidden_size, kind=spec.loss)
            else:
                layers = spec.layers if isinstance(spec.layers, str) else list(spec.layers)
                pairs = layer_map(layers, s.num_layers, t.num_layers)
                if spec.kind == "hint":
                    module = HintLoss(s.hidden_size, t.hidden_size, pairs, kind=spec.loss)
                else:
                    module = AttentionLoss(pairs, kind=spec.loss)
                    for model in (student, teacher):
                        _attention_outputs(model, scores=spec.scores)
            self.feature_modules[term.name] = module.to(device)
        return self

    @property
    def divergence_scale(self) -> float:
        """``(1 - alpha) * T^2`` (or ``1 - alpha`` without T^2 scaling), the weight of D in the loss."""
        return (1.0 - self.alpha) * (self.temperature**2 if self.t2_scaling else 1.0)

    # ---------------------------------------------------------------------------------------------- forward

    def student_forward(
        self, model: nn.Module, batch: Mapping | Tensor, attention_mask: Tensor | None = None
    ) -> StudentOutput:
        """Run the student as this objective's path needs: logits, or (fused) final hidden states and LM head.

        Args:
            model (nn.Module): the student (possibly DDP-wrapped).
            batch (Mapping | Tensor): a ``Batch`` (or mapping with ``input_ids``, ``labels``, ...), or (B, T) input
                ids of a causal LM.
            attention_mask (Tensor | None): (B, T), when ``batch`` is a tensor.

        Raises:
            ValueError: the fused path on a family or model whose logits are not ``lm_head(last hidden state)`` (a
                masked-LM head's transform, logit soft-capping or scaling).
        """
        if isinstance(batch, Tensor):
            batch = {"input_ids": batch, "labels": batch, "attention_mask": attention_mask}
        extras = {}
        if self.needs_hidden_states:
            extras["output_hidden_states"] = True
        if self.needs_attentions:
            extras["output_attentions"] = True
        family = self.family
        if self.implementation != "fused":
            if self.logits_at == "supervised":
                with head_rows(family.output_head(model), family.supervised(batch["labels"])):
                    out = family.forward(model, batch, **extras)
            else:
                out = family.forward(model, batch, **extras)
            return StudentOutput(
                logits=family.positions(out.logits),
                hidden_states=family.hidden_states(out),
                attentions=family.attentions(out),
            )
        if not family.fused:
            raise ValueError(f"loss.implementation=fused applies to causal LMs, not {family.name}: use 'chunked'")
        config = _unwrap(model).config
        for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
            if getattr(config, key, None) not in (None, 1.0):
                raise ValueError(
                    f"loss.implementation=fused needs logits = lm_head(hidden states), but the model's config sets "
                    f"{key}={getattr(config, key)}; use 'chunked'"
                )
        out = family.body(model)(**family.model_inputs(model, batch), **extras)
        return StudentOutput(
            hidden=out.last_hidden_state,
            lm_head=family.output_head(model),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
        )

    def forward(
        self,
        student: StudentOutput | Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None = None,
        attention_mask: Tensor | None = None,
        teacher_outputs: Sequence | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Compute the loss and its terms.

        Args:
            student (StudentOutput | Tensor): ``student_forward``'s output, or the (B, T, V) logits.
            labels (Tensor): (B, T) labels before alignment (the family aligns them: a causal LM's position t
                predicts ``labels[:, t + 1]``), -100 where not supervised; (B,) classes for a classifier.
            teacher_logits (Tensor | TopKTeacher | None): (B, T, V) ((N, V) with ``logits_at="supervised"``),
                already combined over teachers (see ``TeacherEnsemble``), or a cached teacher's top-k and tail at this
                objective's temperature (see ``lmdistill.losses.topk`` for what D is then); required when alpha < 1.
            attention_mask (Tensor | None): (B, T) real (1) vs padding (0) positions; used by "batchmean" and
                the feature terms.
            teacher_outputs (Sequence | None): each teacher's model output (with ``hidden_states`` and/or
                ``attentions``), required by feature terms; see ``TeacherEnsemble.forward_features``.

        Returns:
            tuple: scalar loss (with gradient), and ``{"loss", "ce"[, D's name][, each feature term's name]}`` as
            floats (D without T^2, each feature term without its weight).

        Raises:
            ValueError: a teacher is needed but missing, teacher and student vocabularies differ, the student
                output does not fit the path, or feature terms lack their inputs (or ``setup`` was not called).
        """
        if isinstance(student, Tensor):
            student = StudentOutput(logits=self.family.positions(student))
        if isinstance(teacher_logits, Tensor):
            teacher_logits = self.family.positions(teacher_logits)
        if self.logits_at == "supervised":  # (N, 1): the logits are the supervised positions' rows only
            targets = self.family.supervised_targets(labels)
        else:
            targets = self.family.targets(labels)  # (B, T), aligned with the logits' positions
        supervised = targets != IGNORE_INDEX
        # the weights follow the inputs' dtype: float64 losses need float64 1/n (float32 is off by up to 3e-8)
        side = student.logits if student.logits is not None else student.hidden
        tensors = [t for t in (side, teacher_logits) if isinstance(t, Tensor)]
        dtype = compute_dtype(*tensors)
        ce_weights = reduction_weights(targets.shape, supervised, "mean", device=targets.device, dtype=dtype)
        div = self.divergence if self.alpha < 1.0 else None
        div_weights = None
        if div is not None:
            if teacher_logits is None:
                raise ValueError(f"alpha={self.alpha} < 1 needs teacher logits, got None")
            if self.reduction == "batchmean":
                real = None if attention_mask is None else attention_mask.bool()
                div_weights = reduction_weights(targets.shape, real, "batchmean", device=targets.device, dtype=dtype)
            else:
                div_weights = reduction_weights(targets.shape, supervised, "mean", device=targets.device, dtype=dtype)
        loss, ce, d = self._response(student, teacher_logits, targets, div, ce_weights, div_weights)
        values = {"ce": ce}
        if d is not None:
            values[self.divergence.name] = d
        for name, value in self._features(student, teacher_outputs, attention_mask).items():
            loss = loss + self._weight(name) * value
            values[name] = value
        return loss, {"loss": loss.item(), **{k: v.item() for k, v in values.items()}}

    def _weight(self, name: str) -> float:
        return next(t.spec.weight for t in self._terms if t.name == name)

    def _features(self, student: StudentOutput, teacher_outputs, attention_mask) -> dict[str, Tensor]:
        if not self._terms:
            return {}
        if len(self.feature_modules) != len(self._terms):
            raise ValueError("feature terms are not built: call objective.setup(student_model, teacher_models) first")
        if teacher_outputs is None:
            raise ValueError("feature terms need the teachers' outputs (teacher_outputs), got None")
        mask = None if attention_mask is None else attention_mask.bool()
        values = {}
        for term in self._terms:
            teacher = teacher_outputs[term.spec.teacher]
            module = self.feature_modules[term.name]
            if term.spec.kind == "attention":
                values[term.name] = module(student.attentions, getattr(teacher, "attentions", None), mask)
            else:
                values[term.name] = module(student.hidden_states, getattr(teacher, "hidden_states", None), mask)
        return values

    def _response(self, student, teacher_logits, targets, div, ce_weights, div_weights):
        """``alpha * CE + scale * D`` by the configured path, with CE and D (reduced, unscaled) for logging."""
        weighted_ce = ce_weights * self.alpha
        weighted_div = None if div is None else div_weights * self.divergence_scale
        teacher_logits = teacher_logits if div is not None else None
        if isinstance(teacher_logits, TopKTeacher):
            loss, d_rows, ce_rows = self._sparse_response(
                student, teacher_logits, targets, div, weighted_ce, weighted_div
            )
        elif self.implementation == "fused":
            if student.hidden is None or student.lm_head is None:
                raise ValueError("the fused path needs the student's final hidden states and LM head")
            loss, d_rows, ce_rows = fused_linear_loss(
                student.hidden,
                student.lm_head.weight,
                teacher_logits,
                div,
                bias=getattr(student.lm_head, "bias", None),
                temperature=self.temperature,
                targets=targets,
                div_weights=weighted_div,
                ce_weights=weighted_ce,
                chunk_size=self.chunk_size,
                compile=self.compile_loss,
            )
        else:
            logits = student.logits
            if logits is None:
                raise ValueError(f"the {self.implementation} path needs the student's logits (StudentOutput.logits)")
            if div is not None:
                check_logits_pair(logits, teacher_logits, self.temperature)
            if self.implementation == "chunked":
                loss, d_rows, ce_rows = chunked_per_token(
                    div,
                    logits,
                    teacher_logits,
                    self.temperature,
                    chunk_size=self.chunk_size,
                    targets=targets,
                    div_weights=weighted_div,
                    ce_weights=weighted_ce,
                    reduce=True,
                    return_parts=True,
                    compile=self.compile_loss,
                )
            else:  # plain: the same per-position formula on all (B * T, V) rows at once
                rows = logits.shape[-1]
                total, d_rows, ce_rows = combined_row_loss(
                    logits.reshape(-1, rows),
                    None if teacher_logits is None else teacher_logits.reshape(-1, rows),
                    targets.flatten(),
                    div,
                    self.temperature,
                    None if weighted_div is None else weighted_div.flatten(),
                    weighted_ce.flatten(),
                )
                loss = total.sum()
                d_rows = None if d_rows is None else d_rows.view_as(targets)
                ce_rows = ce_rows.view_as(targets)
        ce = (ce_rows * ce_weights).sum()
        d = None if div is None else masked_weighted(d_rows, div_weights).sum()
        return loss, ce, d

    def _sparse_response(self, student, teacher: TopKTeacher, targets, div, weighted_ce, weighted_div):
        """A cached (top-k + tail) teacher: D by ``topk_estimator`` (``lmdistill.losses.topk``).

        On the student's logits whatever ``implementation`` says: tail_bucket by autograd (the teacher side is already
        small), uniform_tail chunk by chunk (``chunk_size`` positions; None = automatic).
        """
        if teacher.temperature != self.temperature:
            raise ValueError(
                f"the cached teacher is at temperature {teacher.temperature}, the objective at {self.temperature}: "
                "rebuild the cache at the distillation temperature"
            )
        logits = student.logits
        if logits is None:  # fused: the logits are needed for the student's tail mass
            logits = student.lm_head(student.hidden)
        ce_rows = token_cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.flatten()).view_as(targets)
        d_rows = sparse_per_token(div, logits, teacher, estimator=self.topk_estimator, chunk_size=self.chunk_size)
        loss = (masked_weighted(ce_rows, weighted_ce) + masked_weighted(d_rows, weighted_div)).sum()
        return loss, d_rows, ce_rows
