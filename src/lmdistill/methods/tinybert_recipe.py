"""The ``tinybert`` method's recipe section (``TinyBertRecipe`` and its parts), apart from its stages.

Importing it needs neither torch nor transformers (``lmdistill recipes show/validate`` stay fast); the stages are in
``lmdistill.methods.tinybert``, which re-exports these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmdistill.config.schema import check as _check
from lmdistill.config.sections import (
    DIVERGENCE_NAMES,
    FeatureLossConfig,
    LossConfig,
    ModelConfig,
    RecipeBase,
    SourceConfig,
    TrainConfig,
)

__all__ = [
    "DESCRIPTION",
    "LOSS_TERMS",
    "NAME",
    "DiagnosticsConfig",
    "DownstreamConfig",
    "Recipe",
    "TinyBertRecipe",
    "TinyDataConfig",
    "TinyLossConfig",
    "TinyStudentConfig",
    "TinyTeacherConfig",
    "TinyVariantConfig",
    "normalize_recipe",
    "stage_name",
    "validate_data",
]

NAME = "tinybert"
DESCRIPTION = (
    "TinyBERT-style multi-loss KD (embedding, hidden, attention, logit) vs logit-only KD, with per-layer gradient "
    "norms, probe-batch logit losses and a downstream fine-tune"
)
LOSS_TERMS = ("embedding", "hidden", "attention", "logit")
"""The terms a variant can combine (TinyBERT, Jiao et al. 2020, eqs. 7-10)."""
TEACHER = "teacher"


@dataclass
class TinyDataConfig:
    """Corpus text cut into sequences (masked LM: ``[CLS] ... [SEP]`` masked once; causal LM: full blocks)."""

    sources: list[SourceConfig]
    """Corpus sources (train split for training and the train probes, dev split for the held-out probes)."""
    max_length: int = 128
    """Tokens per sequence, special tokens included (TinyBERT: 128)."""
    max_train_sequences: int | None = None
    """Keep the first N training sequences (null = all the sources give)."""
    dev_max_sequences: int = 256
    """Held-out sequences (from the dev split) for the dev loss at each epoch end."""
    mask_probability: float = 0.15
    """Masked LM: share of non-special tokens chosen for prediction."""
    mask_fraction: float = 0.8
    """Of the chosen: replaced by the mask token."""
    random_fraction: float = 0.1
    """Of the chosen: replaced by a random token (the rest kept)."""

    def __post_init__(self) -> None:
        _check(len(self.sources) > 0, "sources", "must name at least one corpus source")
        _check(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}")
        _check(self.dev_max_sequences >= 1, "dev_max_sequences", "must be >= 1")
        _check(0 < self.mask_probability < 1, "mask_probability", f"must be in (0, 1), got {self.mask_probability}")
        _check(
            self.mask_fraction >= 0 and self.random_fraction >= 0 and self.mask_fraction + self.random_fraction <= 1,
            "mask_fraction",
            "mask_fraction and random_fraction must be >= 0 and sum to at most 1",
        )


@dataclass
class TinyTeacherConfig:
    """The pretrained teacher (same vocabulary as the student: the student uses its tokenizer)."""

    model: ModelConfig
    """``path``: an HF folder, ``package:NAME[/sub/folder]`` or a Hub id; ``family`` masked_lm or causal_lm."""
    head: TrainConfig | None = None
    """Train a new MLM head on the frozen body first (all-MiniLM-L6-v2 ships none), on the body's features at the
    masked positions computed once: ``batch_size`` is masked positions per step, ``max_steps`` (or ``epochs``
    passes over the positions) the schedule; null = use the model's own head."""
    head_decoder: Literal["own", "tied"] = "tied"
    """The new head's output matrix: "own" (a (V, H) decoder of its own, initialised from the input embedding, and
    trained) or "tied" (BERT's tie to the frozen input embedding: only the transform and bias train)."""

    def __post_init__(self) -> None:
        _check(self.model.path is not None, "model.path", "the teacher must be a pretrained model (model.path)")


@dataclass
class TinyStudentConfig:
    """The student: built from scratch in the teacher's vocabulary, the same initialisation for every variant."""

    model: ModelConfig
    """Architecture (bert for a masked-LM teacher, llama or gpt2 for a causal one)."""
    train: TrainConfig
    """Schedule of every variant."""


@dataclass
class TinyVariantConfig:
    """One student arm: the loss terms it is trained with."""

    name: str
    """Run sub-folder prefix and report label."""
    losses: list[Literal["embedding", "hidden", "attention", "logit"]] = field(default_factory=list)
    """Terms of ``LOSS_TERMS``; empty = the no-KD baseline (the MLM / LM cross-entropy only)."""

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be a plain folder name, got {self.name!r}")
        for i, term in enumerate(self.losses):
            _check(term in LOSS_TERMS, f"losses.{i}", f"must be one of {list(LOSS_TERMS)}, got {term!r}")
        _check(len(set(self.losses)) == len(self.losses), "losses", f"a term is named twice: {self.losses}")

    @property
    def kd(self) -> bool:
        """Whether it learns from the teacher at all."""
        return bool(self.losses)


def _default_variants() -> list[TinyVariantConfig]:
    return [
        TinyVariantConfig("baseline"),
        TinyVariantConfig("logit_only", ["logit"]),
        TinyVariantConfig("multi_loss", ["embedding", "hidden", "attention", "logit"]),
    ]


@dataclass
class TinyLossConfig:
    """Weights and forms of the terms: ``alpha * CE + (1 - alpha) * T^2 * D + w_e L_emb + w_h L_hid + w_a L_att``."""

    alpha: float = 0.0
    """Weight of the hard-label CE in a KD variant (TinyBERT's general distillation: 0; the baseline has 1)."""
    temperature: float = 1.0
    """T of the logit loss (TinyBERT: 1)."""
    divergence: str = "forward_kl"
    """D of the logit loss: forward_kl (equal in gradient to TinyBERT's soft cross-entropy) or any divergence."""
    embedding_weight: float = 1.0
    """w_e of ``MSE(E_s W_e, E_t)``."""
    hidden_weight: float = 1.0
    """w_h of the mean over mapped layers of ``MSE(H_s^m W_h, H_t^g(m))``."""
    attention_weight: float = 1.0
    """w_a of the mean over mapped layers of the attention MSE."""
    layers: str | list[int] | list[list[int]] = "uniform"
    """Layer mapping of the hidden and attention terms: "uniform" (``g(m) = floor(m * N / M)``, so student layer M
    maps to teacher layer N) or a list (see ``FeatureLossConfig.layers``)."""
    attention: Literal["scores", "probabilities"] = "scores"
    """Compare pre-softmax scores (TinyBERT) or attention probabilities."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha < 1.0, "alpha", f"must be in [0, 1) (1 is the baseline), got {self.alpha}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(self.divergence in DIVERGENCE_NAMES, "divergence", f"must be one of {sorted(DIVERGENCE_NAMES)}")
        for key in ("embedding_weight", "hidden_weight", "attention_weight"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value >= 0, key, f"must be >= 0, got {value}")

    def features(self, losses: list[str]) -> list[FeatureLossConfig]:
        """The objective's feature terms for a variant's ``losses``."""
        out = []
        if "embedding" in losses:
            out.append(FeatureLossConfig(kind="embedding", weight=self.embedding_weight))
        if "hidden" in losses:
            out.append(FeatureLossConfig(kind="hint", weight=self.hidden_weight, layers=self.layers))
        if "attention" in losses:
            out.append(
                FeatureLossConfig(
                    kind="attention",
                    weight=self.attention_weight,
                    loss="mse",
                    layers=self.layers,
                    scores=self.attention == "scores",
                )
            )
        return out


@dataclass
class DiagnosticsConfig:
    """Gradient norms per layer and the logit loss on fixed probe batches, over training."""

    grad_norm_every: int = 10
    """Steps between per-layer gradient norms (step 1 always)."""
    probe_every: int = 25
    """Steps between probe measurements (and before the first step)."""
    probe_batches: int = 2
    """Fixed batches of each probe split: the first training sequences and the first held-out ones."""
    probe_batch_size: int = 32
    """Sequences per probe batch."""

    def __post_init__(self) -> None:
        for key in ("grad_norm_every", "probe_every", "probe_batches", "probe_batch_size"):
            _check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class DownstreamConfig:
    """Fine-tune the teacher and every student on a sentence-pair classification task; accuracy on its test split."""

    task: Literal["esnli", "anli1"] = "esnli"
    """``rationale/<task>/<task>_<split>.json`` of the data root (premise, hypothesis, label 0/1/2)."""
    train_split: str = "valid"
    """Split fine-tuned on (e-SNLI and ANLI have no train inputs here: train on valid, PROVENANCE.md)."""
    test_split: str = "test"
    """Split scored."""
    max_train: int | None = 2000
    """First N training examples (null = all)."""
    max_test: int | None = 1000
    """First N test examples (null = all)."""
    dev_examples: int = 200
    """Training examples held out (the last N of the taken ones) for the dev loss; never the test split."""
    max_length: int = 128
    """Tokens of premise + hypothesis (truncated)."""
    num_labels: int = 3
    """Classes."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, batch_size=32, lr=5e-5, warmup_steps=10))
    """The same schedule for every model."""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Fine-tuning seeds (classifier head initialisation and data order)."""

    def __post_init__(self) -> None:
        _check(self.dev_examples >= 1, "dev_examples", "must be >= 1")
        _check(self.max_train is None or self.max_train > self.dev_examples, "max_train", "must exceed dev_examples")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "must be distinct, >= 1")
        _check(self.num_labels >= 2, "num_labels", "must be >= 2")


@dataclass(kw_only=True)
class TinyBertRecipe(RecipeBase):
    """A TinyBERT-style comparison: teacher (with its MLM head) -> variants per seed -> diagnostics -> fine-tune."""

    data: TinyDataConfig
    """Corpus, sequence length, masking."""
    teacher: TinyTeacherConfig
    """The pretrained teacher."""
    student: TinyStudentConfig
    """The student architecture and schedule."""
    variants: list[TinyVariantConfig] = field(default_factory=_default_variants)
    """Arms (baseline, logit_only, multi_loss by default)."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """Student seeds: every variant once per seed (initialisation and data order)."""
    distillation: TinyLossConfig = field(default_factory=TinyLossConfig)
    """The terms' weights and forms."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    """Gradient norms and probe batches."""
    downstream: DownstreamConfig | None = field(default_factory=DownstreamConfig)
    """The downstream fine-tune (null = none)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """How the logit loss is computed (plain or chunked; the logits are those of the supervised positions only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.method == NAME, "method", f"a TinyBERT recipe has method {NAME!r}, got {self.method!r}")
        names = [v.name for v in self.variants]
        _check(len(names) >= 1 and len(set(names)) == len(names), "variants", f"names must be unique: {names}")
        _check(TEACHER not in names, "variants", f"{TEACHER!r} names the teacher")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "must be distinct, >= 1")
        family = self.teacher.model.family
        _check(family in ("masked_lm", "causal_lm"), "teacher.model.family", "must be masked_lm or causal_lm")
        _check(
            self.student.model.resolved_family == family,
            "student.model.arch",
            f"the student must be of the teacher's family ({family}), got {self.student.model.resolved_family}",
        )
        _check(self.teacher.head is None or family == "masked_lm", "teacher.head", "trains an MLM head only")
        _check(self.loss.implementation != "fused", "loss.implementation", "use plain or chunked")
        _check(
            self.downstream is None or self.teacher.model.gguf_file is None,
            "downstream",
            "fine-tunes the teacher as a classifier from its folder: not from a GGUF file (set downstream: null)",
        )

    @property
    def family(self) -> str:
        """The models' family: masked_lm or causal_lm."""
        return str(self.teacher.model.family)


Recipe = TinyBertRecipe


def normalize_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """No shorthands."""
    return data


def stage_name(variant: TinyVariantConfig, seed: int) -> str:
    """The run sub-folder of one student: ``<variant>-s<seed>``."""
    return f"{variant.name}-s{seed}"


def validate_data(recipe: TinyBertRecipe, data_root: str | Path | None = None) -> list[str]:
    """The corpus files, the downstream task's files and the teacher's files: the problems found."""
    from lmdistill.data.root import resolve_data_root
    from lmdistill.models.paths import model_file_problems

    problems = []
    try:
        root = resolve_data_root(data_root)
    except FileNotFoundError as err:
        return [str(err)]
    for source in recipe.data.sources:
        for split in ("train", "dev"):
            path = root / "corpus" / source.name / f"{split}.txt"
            if not path.is_file():
                problems.append(f"data.sources: {path} not found")
    if recipe.downstream is not None:
        task = recipe.downstream.task
        for split in (recipe.downstream.train_split, recipe.downstream.test_split):
            path = root / "rationale" / task / f"{task}_{split}.json"
            if not path.is_file():
                problems.append(f"downstream: {path} not found")
    model = recipe.teacher.model
    return [*problems, *model_file_problems(model.path, model.gguf_file, "teacher.model")]
