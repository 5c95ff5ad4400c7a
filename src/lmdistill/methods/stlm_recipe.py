"""The ``stlm`` method's recipe section (``StlmRecipe``, ``AdaptationConfig``, variants, hint), apart from its stages.

Importing it needs neither torch nor transformers, so that ``lmdistill recipes show/validate`` stay fast; the stages
are in ``lmdistill.methods.stlm`` (and the adaptation stage in ``lmdistill.methods.adaptation``), which re-export
these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmdistill.config.schema import check as _check
from lmdistill.config.sections import (
    DIVERGENCE_NAMES,
    DataConfig,
    DistillationConfig,
    EvaluationConfig,
    FeatureLossConfig,
    LossConfig,
    ModelConfig,
    RecipeBase,
    TokenizerConfig,
    TrainConfig,
)

__all__ = [
    "ADAPTATION_INITS",
    "DESCRIPTION",
    "NAME",
    "AdaptationConfig",
    "BitsPerByteConfig",
    "HintConfig",
    "Recipe",
    "StlmRecipe",
    "StlmStudentConfig",
    "ORIGINAL",
    "VariantConfig",
    "normalize_recipe",
    "stage_name",
    "validate_data",
]

ADAPTATION_INITS = ("random", "mean_of_subwords")
"""Initialisations of a new embedding and head (``lmdistill.models.adapt.INITS``)."""


@dataclass
class AdaptationConfig:
    """A pretrained teacher with its own tokenizer and how it is adapted to the run's (the student's) vocabulary."""

    model: ModelConfig
    """The teacher: ``path`` (an HF folder, ``package:NAME``, a Hub id) and optionally ``gguf_file``."""
    train: TrainConfig
    """Schedule of the new embedding and head (the body is frozen); ``eval_every_steps`` draws the curve."""
    inits: list[Literal["random", "mean_of_subwords"]] = field(default_factory=lambda: ["mean_of_subwords"])
    """Initialisations to adapt and compare: "random" (STLM) and/or "mean_of_subwords" (FVT)."""
    use: str = "best"
    """The adapted teacher the students learn from: "best" (the lowest final dev loss among ``inits``) or an init."""
    special_tokens: dict[str, str] = field(default_factory=dict)
    """Run tokenizer's special token -> teacher token whose row it starts from (FVT), e.g. ``{"<s>":
    "<|endoftext|>"}``; unlisted specials map by role (bos to bos, ...). The token ``<s>`` maps to is also the
    prefix of the teacher's evaluation in its own vocabulary, so that both see the same context token."""
    train_final_norm: bool = False
    """Also train the body's final norm (the rest of the body stays frozen)."""

    def __post_init__(self) -> None:
        _check(self.model.path is not None, "model.path", "the teacher to adapt must be given by model.path")
        _check(len(self.inits) >= 1, "inits", "must list at least one of random, mean_of_subwords")
        _check(len(set(self.inits)) == len(self.inits), "inits", f"an init is named twice: {self.inits}")
        for i, init in enumerate(self.inits):
            _check(init in ADAPTATION_INITS, f"inits.{i}", f"must be one of {list(ADAPTATION_INITS)}, got {init!r}")
        _check(
            self.use == "best" or self.use in self.inits,
            "use",
            f"must be 'best' or one of inits {self.inits}, got {self.use!r}",
        )


NAME = "stlm"
DESCRIPTION = "cross-vocabulary teacher adaptation + response/hint KD (Super Tiny LMs), forward or reverse KL"
ORIGINAL = "teacher-original"


# ------------------------------------------------------------------------------------------------ recipe section


@dataclass
class VariantConfig:
    """One student arm: trained from the same initialisation and data order as the others, per seed."""

    name: str
    """Its run sub-folder prefix and report label, e.g. "forward_kl"."""
    kd: bool = True
    """Distil from the adapted teacher; false = the no-KD baseline (alpha = 1)."""
    divergence: str = "forward_kl"
    """D of the response term: "forward_kl" (Hinton), "reverse_kl" (MiniLLM-style mode seeking), or any divergence
    of the loss library."""
    hint: bool = False
    """Add the hint loss of the ``hint`` section."""

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be a plain folder name, got {self.name!r}")
        _check(
            self.divergence in DIVERGENCE_NAMES,
            "divergence",
            f"must be one of {sorted(DIVERGENCE_NAMES)}, got {self.divergence!r}",
        )
        _check(self.kd or not self.hint, "hint", "a baseline (kd: false) has no teacher to match")


def _default_variants() -> list[VariantConfig]:
    return [
        VariantConfig("baseline", kd=False),
        VariantConfig("forward_kl"),
        VariantConfig("reverse_kl", divergence="reverse_kl"),
        VariantConfig("forward_kl_hint", hint=True),
    ]


@dataclass
class HintConfig:
    """The hint term ``weight * loss(F_t^(teacher_layer), phi(F_s^(student_layer)))``, phi a learned linear map."""

    student_layer: int = 2
    """Student block (1-based) whose output is projected."""
    teacher_layer: int = 10
    """Teacher block (1-based) it is matched to; the teacher runs only this far online."""
    weight: float = 1.0
    """w, the term's weight."""
    loss: Literal["mse", "cosine"] = "mse"
    """"mse" (FitNets) or "cosine"."""

    def __post_init__(self) -> None:
        _check(self.student_layer >= 1, "student_layer", f"must be >= 1, got {self.student_layer}")
        _check(self.teacher_layer >= 1, "teacher_layer", f"must be >= 1, got {self.teacher_layer}")
        _check(self.weight >= 0 and math.isfinite(self.weight), "weight", f"must be >= 0, got {self.weight}")

    def feature(self) -> FeatureLossConfig:
        """The objective's feature term."""
        return FeatureLossConfig(
            kind="hint", weight=self.weight, loss=self.loss, layers=[[self.student_layer, self.teacher_layer]]
        )


@dataclass
class StlmStudentConfig:
    """The student architecture and schedule (every variant and seed uses the same)."""

    model: ModelConfig
    """Student architecture (built from scratch in the run's vocabulary)."""
    train: TrainConfig
    """Student schedule."""


@dataclass
class BitsPerByteConfig:
    """Bits per UTF-8 byte (and per word) of held-out corpus text: the metric that crosses tokenizers."""

    split: Literal["dev", "train"] = "dev"
    """Corpus split whose documents are scored (dev: never trained on)."""
    max_bytes_per_source: int = 20000
    """Whole documents in file order, up to this many bytes per source (every source of ``data.sources``)."""
    batch_size: int = 8
    """Windows per forward pass."""
    max_length: int | None = 1024
    """Tokens per scoring window (rolling windows over longer documents), capped by each model's context; null =
    each model's whole context (SmolLM2: 8,192, slow on a CPU)."""

    def __post_init__(self) -> None:
        _check(self.max_bytes_per_source >= 1, "max_bytes_per_source", "must be >= 1")
        _check(self.max_length is None or self.max_length >= 2, "max_length", "must be >= 2 or null")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass(kw_only=True)
class StlmRecipe(RecipeBase):
    """A whole STLM experiment: data -> tokenizer -> teacher (before, adapted) -> students per seed -> evaluation."""

    data: DataConfig
    """Corpus and packing (``random_offset: false``: the teacher cache holds the fixed block grid)."""
    tokenizer: TokenizerConfig
    """The student's BPE tokenizer, trained on the corpus; the teacher is adapted to it."""
    teacher: AdaptationConfig
    """The pretrained teacher and its adaptation."""
    student: StlmStudentConfig
    """Student architecture and schedule."""
    variants: list[VariantConfig] = field(default_factory=_default_variants)
    """Student arms (baseline, forward_kl, reverse_kl, forward_kl_hint by default)."""
    seeds: list[int] = field(default_factory=lambda: [42])
    """Student seeds: every variant is trained once per seed (initialisation and data order)."""
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    """alpha, temperature, T^2, reduction of every KD variant (each variant sets its divergence)."""
    hint: HintConfig = field(default_factory=HintConfig)
    """The hint term of the variants with ``hint: true``."""
    cache_top_k: int = 64
    """k of the teacher's top-k cache (its log-probabilities at the distillation temperature, plus the tail)."""
    cache_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the cached log-probabilities."""
    cache_batch_size: int = 8
    """Blocks per teacher forward pass while building the cache."""
    cache_shard_blocks: int = 256
    """Blocks per cache shard (the unit of resuming an interrupted build)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """How the objective is computed."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Zero-shot evaluation of every model."""
    bits_per_byte: BitsPerByteConfig = field(default_factory=BitsPerByteConfig)
    """Bits per byte of held-out text, for every model."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.method == NAME, "method", f"an STLM recipe has method {NAME!r}, got {self.method!r}")
        _check(
            not self.data.random_offset,
            "data.random_offset",
            "must be false: the teacher cache holds one distribution per block of the fixed block grid",
        )
        _check(not self.distillation.features, "distillation.features", "use the hint section and variants")
        names = [v.name for v in self.variants]
        _check(len(names) >= 1 and len(set(names)) == len(names), "variants", f"names must be unique: {names}")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds", "must be distinct, >= 1")
        _check(self.cache_top_k >= 1, "cache_top_k", f"must be >= 1, got {self.cache_top_k}")
        _check(
            self.hint.student_layer <= self.student.model.num_layers,
            "hint.student_layer",
            f"the student has {self.student.model.num_layers} layers, got {self.hint.student_layer}",
        )
        for key, model in (("teacher.model", self.teacher.model), ("student.model", self.student.model)):
            _check(model.resolved_family == "causal_lm", f"{key}.family", "STLM distils causal LMs")
        _check(
            self.teacher.train.mixed_precision == self.student.train.mixed_precision,
            "mixed_precision",
            "teacher.train and student.train must use the same mixed_precision (one Accelerate state per run)",
        )


Recipe = StlmRecipe


def normalize_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """No shorthands."""
    return data


def stage_name(variant: VariantConfig, seed: int) -> str:
    """The run sub-folder of one student: ``<variant>-s<seed>``."""
    return f"{variant.name}-s{seed}"


def validate_data(recipe: StlmRecipe, data_root: str | Path | None = None) -> list[str]:
    """Every data file the recipe reads (corpus, evaluation data) and the teacher's files: the problems found."""
    from lmdistill.methods.babyllama_recipe import validate_data as corpus_problems
    from lmdistill.models.paths import model_file_problems

    problems = corpus_problems(recipe, data_root)  # the corpus files and evaluation data, as Baby Llama reads them
    model = recipe.teacher.model
    return [*problems, *model_file_problems(model.path, model.gguf_file, "teacher.model")]
