"""Baby Llama's recipe section (``BabyLlamaRecipe``: teachers, student, baseline), apart from its stages.

Importing it needs neither torch nor transformers, so that ``lmdistill recipes show/validate`` stay fast; the stages
are in ``lmdistill.methods.babyllama``, which re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmdistill.config.schema import check as _check
from lmdistill.config.sections import (
    DataConfig,
    DistillationConfig,
    EvaluationConfig,
    LossConfig,
    ModelConfig,
    RecipeBase,
    TokenizerConfig,
    TrainConfig,
)
from lmdistill.data.root import resolve_data_root
from lmdistill.evaluation.tasks import task_data_problems
from lmdistill.vocabulary import VOCAB_ROWS, VocabRows

__all__ = [
    "DESCRIPTION",
    "NAME",
    "BabyLlamaRecipe",
    "Recipe",
    "RecipeConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeachersConfig",
    "normalize_recipe",
    "validate_data",
]

NAME = "babyllama"
DESCRIPTION = "ensemble distillation from scratch (Baby Llama): teachers trained on the corpus, averaged logits"


# ------------------------------------------------------------------------------------------------ recipe section


@dataclass
class TeacherConfig:
    """A teacher: trained from scratch on the corpus (``train`` set) or loaded from ``model.path``."""

    name: str
    """Name used for its run sub-folder and in reports, e.g. "gpt2-teacher"."""
    model: ModelConfig
    """Architecture or checkpoint."""
    train: TrainConfig | None = None
    """How to train it; None means use ``model.path`` as it is."""
    vocab_rows: VocabRows = "exact"
    """How its embedding / LM head rows must match the run tokenizer's length V: "exact" (V rows), or "shared"
    (V rows or more: the rows past V are padding, e.g. a checkpoint whose ``config.vocab_size`` is rounded up to a
    multiple of 64). With "shared" its tokenizer must still be the run's (compared id by id, special tokens and
    merges), and only the first V columns of its logits are used (ensemble, dev loss, evaluation, teacher cache):
    the student never sees the padding rows. Only for a teacher used as it is (``model.path``, no ``train``). A
    teacher with another vocabulary needs ``lmdistill adapt-teacher``."""

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be a plain folder name, got {self.name!r}")
        _check(
            self.train is not None or self.model.path is not None,
            "train",
            "a teacher needs either a train section or model.path pointing at a trained checkpoint",
        )
        _check(self.vocab_rows in VOCAB_ROWS, "vocab_rows", f"must be one of {VOCAB_ROWS}, got {self.vocab_rows!r}")
        _check(
            self.vocab_rows == "exact" or self.train is None,
            "vocab_rows",
            "'shared' is for a teacher used as it is (model.path, no train section): a teacher trained in this run "
            "is built with exactly the run tokenizer's rows",
        )


@dataclass
class TeachersConfig:
    """The teachers and how the student sees them: run online at every step, or read from a top-k cache.

    A recipe may also give ``teachers`` as a plain list of teachers, short for ``{members: [...]}``.
    """

    members: list[TeacherConfig]
    """Teachers, trained in order, combined by ``distillation.ensemble``."""
    cache: bool = False
    """Distil from a cache of the ensemble's top-k distribution per training block (``lmdistill cache-teacher``;
    ``lmdistill run`` builds it when missing) instead of running the teachers at every step. Needs
    ``data.random_offset: false`` (the cache holds the fixed block grid) and no feature terms."""
    cache_top_k: int = 64
    """k, tokens kept per position (their log-probabilities and ids, plus the tail mass)."""
    cache_dtype: Literal["float16", "float32"] = "float16"
    """Storage dtype of the cached log-probabilities (float16: 260 bytes per token at k = 64)."""
    cache_dir: str | None = None
    """Cache folder; null = ``RUN/teacher-cache``."""
    cache_batch_size: int = 32
    """Blocks per teacher forward pass while building the cache."""
    cache_shard_blocks: int = 256
    """Blocks per shard file (the unit of resuming an interrupted build and of splitting it across ranks)."""

    @classmethod
    def normalize(cls, data: Any) -> Any:
        """A plain list of teachers becomes ``{members: [...]}``."""
        return {"members": data} if isinstance(data, list) else data

    def __post_init__(self) -> None:
        _check(len(self.members) >= 1, "members", "must list at least one teacher")
        names = [t.name for t in self.members]
        _check(len(set(names)) == len(names), "members", f"teacher names must be unique, got {names}")
        reserved = {"student", "baseline", "ensemble", "tokenizer"}
        _check(not reserved & set(names), "members", f"teacher names may not be one of {sorted(reserved)}")
        _check(self.cache_top_k >= 1, "cache_top_k", f"must be >= 1, got {self.cache_top_k}")
        _check(
            self.cache_dtype in ("float16", "float32"),
            "cache_dtype",
            f"must be 'float16' or 'float32', got {self.cache_dtype!r}",
        )
        _check(self.cache_batch_size >= 1, "cache_batch_size", f"must be >= 1, got {self.cache_batch_size}")
        _check(self.cache_shard_blocks >= 1, "cache_shard_blocks", f"must be >= 1, got {self.cache_shard_blocks}")


@dataclass
class StudentConfig:
    """The student (also the architecture and schedule of the no-distillation baseline)."""

    model: ModelConfig
    """Student architecture."""
    train: TrainConfig
    """Student schedule (the baseline uses the same)."""


@dataclass(kw_only=True)
class BabyLlamaRecipe(RecipeBase):
    """A whole Baby Llama experiment: data -> tokenizer -> teachers -> baseline and student -> evaluation."""

    data: DataConfig
    """Corpus and packing."""
    tokenizer: TokenizerConfig
    """Tokenizer training."""
    teachers: TeachersConfig
    """Teachers (``members``, trained in order, combined by ``distillation.ensemble``) and the teacher cache."""
    student: StudentConfig
    """Student architecture and schedule."""
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    """KD objective."""
    loss: LossConfig = field(default_factory=LossConfig)
    """How the objective is computed (plain, chunked or fused)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Zero-shot evaluation."""
    baseline: bool = True
    """Also train the student architecture without distillation (alpha = 1) as a baseline."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.method == NAME, "method", f"a Baby Llama recipe has method {NAME!r}, got {self.method!r}")
        for key, model in self._models().items():
            _check(
                model.resolved_family == "causal_lm",
                f"{key}.family",
                f"Baby Llama distils causal LMs, got {model.resolved_family!r}",
            )
        teachers = self.teachers.members
        # Accelerate keeps one process-wide state: every stage of a run must use the same mixed precision
        precisions = {
            f"teachers.members.{i}.train": t.train.mixed_precision for i, t in enumerate(teachers) if t.train
        }
        precisions["student.train"] = self.student.train.mixed_precision
        _check(
            len(set(precisions.values())) == 1,
            "mixed_precision",
            f"every train section of a run must use the same mixed_precision, got {precisions}",
        )
        for i, term in enumerate(self.distillation.features):
            _check(
                term.teacher < len(teachers),
                f"distillation.features.{i}.teacher",
                f"must index one of the {len(teachers)} teachers, got {term.teacher}",
            )
        if self.teachers.cache:
            _check(
                not self.data.random_offset,
                "teachers.cache",
                "needs data.random_offset: false: the cache holds one distribution per block of the fixed block "
                "grid, and a random offset cuts different blocks every epoch",
            )
            _check(
                not self.distillation.features,
                "teachers.cache",
                "cannot serve feature terms (distillation.features): the cache holds only the teachers' output "
                "distribution, not their hidden states or attentions",
            )

    def _models(self) -> dict[str, ModelConfig]:
        models = {f"teachers.members.{i}.model": t.model for i, t in enumerate(self.teachers.members)}
        return {**models, "student.model": self.student.model}


RecipeConfig = BabyLlamaRecipe
"""The earlier name of ``BabyLlamaRecipe``."""

Recipe = BabyLlamaRecipe


def normalize_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """A plain list of teachers becomes ``{members: [...]}`` (so that ``teachers.cache=...`` overrides apply)."""
    if "teachers" in data:
        data["teachers"] = TeachersConfig.normalize(data["teachers"])
    return data


def validate_data(recipe: BabyLlamaRecipe, data_root: str | Path | None = None) -> list[str]:
    """Every data file the recipe will read: its corpus files and its evaluation tasks' data; the problems found."""
    try:
        root = resolve_data_root(data_root)
    except FileNotFoundError as err:
        return [str(err)]
    problems = []
    for s in recipe.data.sources:
        for split in ("train", "dev"):
            path = root / "corpus" / s.name / f"{split}.txt"
            if not path.is_file():
                problems.append(f"missing corpus file: {path}")
    return problems + task_data_problems(recipe.evaluation, root)
