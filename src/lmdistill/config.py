"""Typed recipe configuration: dataclasses validated in ``__post_init__``; YAML is only their serialisation.

Keys are strict (an unknown key is an error with a "did you mean"), values are type- and range-checked as
soon as a recipe is loaded, and ``a.b=c`` overrides from the command line are applied before validation
(list items are addressed by index, e.g. ``teachers.members.0.train.epochs=2``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from lmdistill.registry import did_you_mean

__all__ = [
    "ConfigError",
    "DataConfig",
    "DistillationConfig",
    "EvaluationConfig",
    "FeatureLossConfig",
    "LossConfig",
    "PRESETS",
    "ModelConfig",
    "RecipeConfig",
    "SourceConfig",
    "StudentConfig",
    "TeacherConfig",
    "TokenizerConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "list_recipes",
    "load_recipe",
    "recipe_path",
    "to_dict",
    "to_yaml",
]


class ConfigError(ValueError):
    """A recipe key or value is wrong; the message names the key path and what was expected."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class SourceConfig:
    """One corpus source, read from ``<data root>/corpus/<name>/{train,dev}.txt``."""

    name: str
    """Source folder name under ``corpus/``, e.g. "brown"."""
    max_words: int | None = None
    """Word budget for the train split (whole documents, then lines, are taken until it is reached); None = all."""
    dev_max_words: int | None = None
    """Word budget for the dev split; None = all."""
    cleaning: str | None = None
    """Cleaning rule (see ``lmdistill.data.corpus.CLEANERS``); None = the rule named after the source, or "none"."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "name", "must be a non-empty source name")
        for key in ("max_words", "dev_max_words"):
            value = getattr(self, key)
            _check(value is None or value > 0, key, f"must be > 0 or null, got {value}")


@dataclass
class DataConfig:
    """Corpus sources and block packing."""

    sources: list[SourceConfig]
    """Corpus sources to read, in order."""
    block_size: int = 128
    """Tokens per training block (the model's context length)."""
    random_offset: bool = False
    """Shift the block grid by a random offset in [0, block_size) each epoch (Baby Llama option)."""
    dev_max_blocks: int | None = 256
    """Fixed dev subset: the first N dev blocks (None = all) used for the dev loss at each epoch end."""

    def __post_init__(self) -> None:
        _check(len(self.sources) > 0, "sources", "must name at least one corpus source")
        _check(self.block_size >= 8, "block_size", f"must be >= 8, got {self.block_size}")
        _check(self.dev_max_blocks is None or self.dev_max_blocks > 0, "dev_max_blocks", "must be > 0 or null")
        names = [s.name for s in self.sources]
        _check(len(set(names)) == len(names), "sources", f"a source is named twice: {names}")


@dataclass
class TokenizerConfig:
    """Byte-level BPE tokenizer trained on the train split only."""

    vocab_size: int = 16000
    """Vocabulary size, special tokens included."""
    min_frequency: int = 2
    """Minimum pair frequency for a BPE merge."""

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 260, "vocab_size", f"must be >= 260 (256 bytes + specials), got {self.vocab_size}")
        _check(self.min_frequency >= 1, "min_frequency", f"must be >= 1, got {self.min_frequency}")


@dataclass
class ModelConfig:
    """A GPT-2 or LLaMA causal LM built from scratch, or loaded from a local checkpoint folder."""

    arch: Literal["gpt2", "llama"] = "llama"
    """Architecture: "gpt2" or "llama"."""
    num_layers: int = 4
    """Transformer blocks (L)."""
    num_heads: int = 4
    """Attention heads per block."""
    hidden_size: int = 128
    """Model width (H)."""
    intermediate_size: int = 512
    """MLP inner width."""
    num_kv_heads: int | None = None
    """LLaMA key/value heads (grouped-query attention); None = num_heads."""
    dropout: float = 0.0
    """Dropout probability (GPT-2 residual/embedding/attention dropout; LLaMA attention dropout)."""
    tie_word_embeddings: bool = False
    """Share the input embedding and LM head weights."""
    path: str | None = None
    """Local HF checkpoint folder to load instead of building from the fields above."""

    def __post_init__(self) -> None:
        _check(self.arch in ("gpt2", "llama"), "arch", f"must be 'gpt2' or 'llama', got {self.arch!r}")
        for key in ("num_layers", "num_heads", "hidden_size", "intermediate_size"):
            _check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _check(
            self.hidden_size % self.num_heads == 0,
            "hidden_size",
            f"must be divisible by num_heads ({self.hidden_size} % {self.num_heads} != 0)",
        )
        if self.num_kv_heads is not None:
            _check(
                self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0,
                "num_kv_heads",
                f"must divide num_heads={self.num_heads}, got {self.num_kv_heads}",
            )
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    """Optimisation of one model (teacher, baseline or student): AdamW with a cosine schedule and warm-up."""

    epochs: int = 1
    """Passes over the training blocks."""
    batch_size: int = 32
    """Blocks per optimizer step (after gradient accumulation)."""
    lr: float = 3e-4
    """Peak learning rate."""
    warmup_steps: int = 200
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; batch_size must be divisible by it."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping norm; None disables clipping."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast on a GPU ("bf16" or "fp16"); ignored with a warning on CPU."""
    save_every_steps: int = 0
    """Save a resumable checkpoint every N optimizer steps (0 = only at the end and on Ctrl-C)."""
    log_every_steps: int = 10
    """Write metrics every N optimizer steps."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (the schedule is sized for it); None = epochs x steps per epoch."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(0 < self.lr < 1, "lr", f"must be in (0, 1), got {self.lr}")
        _check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.grad_accum_steps >= 1, "grad_accum_steps", f"must be >= 1, got {self.grad_accum_steps}")
        _check(
            self.batch_size % self.grad_accum_steps == 0,
            "batch_size",
            f"must be divisible by grad_accum_steps ({self.batch_size} % {self.grad_accum_steps} != 0)",
        )
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null")
        _check(
            self.mixed_precision in ("no", "bf16", "fp16"),
            "mixed_precision",
            f"must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}",
        )
        _check(self.save_every_steps >= 0, "save_every_steps", f"must be >= 0, got {self.save_every_steps}")
        _check(self.log_every_steps >= 1, "log_every_steps", f"must be >= 1, got {self.log_every_steps}")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1 or null")


@dataclass
class TeacherConfig:
    """A teacher: trained from scratch on the corpus (``train`` set) or loaded from ``model.path``."""

    name: str
    """Name used for its run sub-folder and in reports, e.g. "gpt2-teacher"."""
    model: ModelConfig
    """Architecture or checkpoint."""
    train: TrainConfig | None = None
    """How to train it; None means use ``model.path`` as it is."""

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be a plain folder name, got {self.name!r}")
        _check(
            self.train is not None or self.model.path is not None,
            "train",
            "a teacher needs either a train section or model.path pointing at a trained checkpoint",
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


DIVERGENCE_NAMES = (
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
)

PRESETS: dict[str, dict[str, Any]] = {
    # The Baby Llama code: KLDivLoss(batchmean) on (B, T, V) at T = 2, alpha on CE, T^2.
    "babyllama": {
        "divergence": "forward_kl",
        "reduction": "batchmean",
        "alpha": 0.5,
        "temperature": 2.0,
        "t2_scaling": True,
    },
    # torchdistill KDLoss: alpha * CE + (1 - alpha) * T^2 * KLDivLoss(batchmean) over the rows it is given (here
    # one row per supervised position, so a mean over positions).
    "torchdistill": {"divergence": "forward_kl", "reduction": "mean", "t2_scaling": True},
    # TRL GKDTrainer: generalized JSD (beta 0.5) at T = 1, mean over supervised positions, no CE, no T^2.
    "gkd": {
        "divergence": "generalized_jsd",
        "beta": 0.5,
        "temperature": 1.0,
        "alpha": 0.0,
        "reduction": "mean",
        "t2_scaling": False,
    },
}
"""Compatibility presets: ``distillation.preset`` fills these keys; keys set in the recipe win."""


@dataclass
class FeatureLossConfig:
    """One feature term ``w_j * F_j`` of the objective (hint, attention or embedding loss)."""

    kind: Literal["hint", "attention", "embedding"]
    """"hint": hidden states through a learned projection (FitNets, STLM); "attention": attention maps (TinyBERT,
    MiniLM); "embedding": embedding-layer outputs through a learned projection (TinyBERT)."""
    weight: float = 1.0
    """w_j, the term's weight in the loss."""
    loss: Literal["mse", "cosine", "kl"] = "mse"
    """hint/embedding: "mse" or "cosine"; attention: "mse" (TinyBERT) or "kl" (MiniLM)."""
    layers: str | list[int] = "uniform"
    """Layer mapping: "uniform" (student layer m takes teacher layer m * N / M), "last", or the teacher layer
    (1-based) of each student layer; ignored by "embedding"."""
    teacher: int = 0
    """Index of the teacher (in ``teachers``) whose features are matched."""

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        allowed = ("mse", "kl") if self.kind == "attention" else ("mse", "cosine")
        _check(self.loss in allowed, "loss", f"a {self.kind} loss must be one of {list(allowed)}, got {self.loss!r}")
        if isinstance(self.layers, str):
            _check(
                self.layers in ("uniform", "last"),
                "layers",
                f"must be 'uniform', 'last' or a list, got {self.layers!r}",
            )
        else:
            _check(
                all(layer >= 1 for layer in self.layers), "layers", f"teacher layers are 1-based, got {self.layers}"
            )
        _check(self.teacher >= 0, "teacher", f"must be >= 0, got {self.teacher}")


@dataclass
class DistillationConfig:
    """The KD objective ``alpha * CE + (1 - alpha) * T^2 * D(teacher, student; T) + sum_j w_j * F_j``.

    ``preset`` fills the keys of a compatibility preset (``PRESETS``: babyllama, torchdistill, gkd); keys set
    in the recipe override it.
    """

    preset: Literal["babyllama", "torchdistill", "gkd"] | None = None
    """Compatibility preset (see the README's table); null = the keys below as written."""
    alpha: float = 0.5
    """Weight of the hard-label cross-entropy; 1 - alpha weights the distillation term."""
    temperature: float = 2.0
    """Softmax temperature T applied to teacher and student logits inside D only (CE is at T = 1)."""
    divergence: Literal[
        "forward_kl", "reverse_kl", "generalized_jsd", "skew_forward_kl", "skew_reverse_kl", "total_variation"
    ] = "forward_kl"
    """D: forward KL (Hinton; Baby Llama), reverse KL (MiniLLM), generalized JSD (GKD), skew KLs (DistiLLM), TV."""
    beta: float = 0.5
    """generalized_jsd's beta in [0, 1]: 0 = forward KL, 1 = reverse KL."""
    skew: float = 0.1
    """The skew KLs' lambda in [0, 1): 0 = plain KL."""
    reduction: Literal["mean", "batchmean"] = "mean"
    """"mean": mean of D over supervised next-token positions; "batchmean": D summed over all positions / batch
    size (the Baby Llama code's ``KLDivLoss(reduction="batchmean")``)."""
    t2_scaling: bool = True
    """Multiply D by T^2 (Hinton et al.), which keeps its gradients on the CE's scale; TRL's GKD does not."""
    ensemble: Literal["logits", "probs"] = "logits"
    """How teachers are combined: average logits (Baby Llama) or average probabilities at temperature T."""
    features: list[FeatureLossConfig] = field(default_factory=list)
    """Feature terms (hint, attention, embedding losses) added to the response loss."""

    @classmethod
    def normalize(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The recipe's ``distillation`` mapping with its preset's keys filled in (recipe keys win)."""
        preset = data.get("preset")
        if preset is None or preset not in PRESETS:
            return data  # an unknown preset is reported by the Literal check
        return {**PRESETS[preset], **data}

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(self.divergence in DIVERGENCE_NAMES, "divergence", f"must be one of {list(DIVERGENCE_NAMES)}")
        _check(0.0 <= self.beta <= 1.0, "beta", f"must be in [0, 1], got {self.beta}")
        _check(0.0 <= self.skew < 1.0, "skew", f"must be in [0, 1), got {self.skew}")
        _check(
            self.reduction in ("mean", "batchmean"),
            "reduction",
            f"must be 'mean' or 'batchmean', got {self.reduction!r}",
        )
        _check(self.ensemble in ("logits", "probs"), "ensemble", f"must be 'logits' or 'probs', got {self.ensemble!r}")


@dataclass
class LossConfig:
    """How the objective is computed; every implementation gives the same values and gradients (to 1e-5)."""

    implementation: Literal["plain", "chunked", "fused"] = "plain"
    """"plain": several (B, T, V) float32 tensors; "chunked": positions in chunks, one (B, T, V) gradient buffer;
    "fused": from the student's final hidden states and LM head, never holding the student's (B, T, V) logits."""
    chunk_size: int | None = None
    """Positions per chunk of the chunked and fused paths; null = about 32 MiB of float32 per (chunk, V)."""

    def __post_init__(self) -> None:
        _check(self.chunk_size is None or self.chunk_size >= 1, "chunk_size", "must be >= 1 or null")


@dataclass
class EvaluationConfig:
    """Zero-shot evaluation after training: every model on each task, scored as lm-evaluation-harness 0.4.13 does."""

    tasks: list[str] = field(default_factory=lambda: ["blimp"])
    """Task names (``lmdistill eval --list-tasks``): blimp, arc_easy, arc_easy_validation, winogrande, mmlu,
    hellaswag."""
    limit: int | None = None
    """Items per task, or per sub-task (BLiMP paradigm, MMLU subject), the first N, as lm-eval's --limit;
    None = all."""
    blimp_paradigms: list[str] | None = None
    """BLiMP paradigm names (file stems) to evaluate; None = all 67."""
    blimp_target_delimiter: str = " "
    """Text before each BLiMP sentence: " " as lm-eval >= 0.4 scores it; "" as BabyLM 2023 / lm-eval 0.3."""
    batch_size: int = 64
    """Rows (distinct inputs) per forward pass."""

    def __post_init__(self) -> None:
        from lmdistill.evaluation.tasks import TASKS

        for i, name in enumerate(self.tasks):
            _check(
                name in TASKS,
                f"tasks.{i}",
                f"unknown task {name!r}.{did_you_mean(name, TASKS.names())} Known: {', '.join(TASKS.names())}",
            )
        _check(len(set(self.tasks)) == len(self.tasks), "tasks", f"a task is named twice: {self.tasks}")
        _check(self.limit is None or self.limit >= 1, "limit", "must be >= 1 or null")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class RecipeConfig:
    """A whole Baby Llama experiment: data -> tokenizer -> teachers -> baseline and student -> evaluation."""

    name: str
    """Recipe name, recorded in results."""
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
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    description: str = ""
    """Free text shown by ``lmdistill recipes ls``."""

    def __post_init__(self) -> None:
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


# ----------------------------------------------------------------------------------------- (de)serialisation


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, key: str) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        _check(optional, key, "may not be null")
        return None
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):  # e.g. str | list[int]: the first alternative that fits
        errors = []
        for alternative in typing.get_args(inner):
            try:
                return _convert(value, alternative, key)
            except ConfigError as err:
                errors.append(str(err).split(": ", 1)[-1])
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if dataclasses.is_dataclass(inner):
        return from_dict(inner, value, prefix=key)
    if origin is list:
        _check(isinstance(value, list), key, f"expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(inner)
        return [_convert(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(inner)
        _check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")
        return value
    if inner is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if inner is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}"
        )
        return float(value)
    if inner is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config type {inner!r}")  # pragma: no cover - a bug in this module


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, strictly.

    Args:
        cls (type): a config dataclass, e.g. ``RecipeConfig``.
        data (dict): parsed YAML.
        prefix (str): key path of ``data`` for error messages.

    Returns:
        An instance of ``cls``, validated by its ``__post_init__``.

    Raises:
        ConfigError: on an unknown or missing key, a wrong type or an out-of-range value; the message names
            the full key path (e.g. ``teachers.members.0.train.lr``) and, for a typo, the closest valid keys.
    """
    where = prefix or "recipe"
    if hasattr(cls, "normalize"):  # presets, list shorthands
        data = cls.normalize(data)
    _check(isinstance(data, dict), where, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{prefix + '.' if prefix else ''}{key}: unknown key.{did_you_mean(str(key), list(fields))} "
                f"Valid keys here: {', '.join(fields)}"
            )
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{err}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (the inverse of ``from_dict``)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """YAML text of a config dataclass; ``from_dict(cls, yaml.safe_load(to_yaml(cfg))) == cfg``."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a parsed recipe dict (in place) and return it.

    Values are parsed as YAML (``3`` is an int, ``null`` is None, ``[a, b]`` a list). List items are addressed
    by index (``teachers.members.1.train.lr=1e-4``).

    Raises:
        ConfigError: on a malformed override or a path through a missing key or index.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        value = yaml.safe_load(raw) if raw.strip() else None
        node: Any = data
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            last = i == len(parts) - 1
            if isinstance(node, list):
                _check(part.isdigit() and int(part) < len(node), here, f"no list item {part} (length {len(node)})")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value  # an unknown key is reported by from_dict, with suggestions
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"{here}: cannot set a key inside a {type(node).__name__}")
    return data


def _packaged_recipes() -> dict[str, Path]:
    folder = resources.files("lmdistill") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_recipes() -> dict[str, str]:
    """Packaged recipe names mapped to their one-line descriptions."""
    out = {}
    for name, path in sorted(_packaged_recipes().items()):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out[name] = str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
    return out


def recipe_path(name_or_path: str) -> Path:
    """Resolve a packaged recipe name (``babyllama-cpu``) or a YAML file path.

    Raises:
        FileNotFoundError: naming the path, or the packaged recipes when a name is unknown.
    """
    packaged = _packaged_recipes()
    if name_or_path in packaged:
        return packaged[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {path}")
        return path
    raise FileNotFoundError(
        f"unknown recipe {name_or_path!r}.{did_you_mean(name_or_path, list(packaged))} "
        f"Packaged recipes: {', '.join(sorted(packaged))}; or pass a path to a .yaml file."
    )


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> RecipeConfig:
    """Load, override and validate a recipe.

    Args:
        name_or_path (str): packaged recipe name or YAML path.
        overrides (list[str]): ``a.b=c`` items applied before validation.

    Returns:
        RecipeConfig: the validated recipe.

    Raises:
        FileNotFoundError: the recipe does not exist.
        ConfigError: a key or value is wrong (the message starts with the file and the key path).
    """
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        data = data if data is not None else {}
        if isinstance(data, dict) and "teachers" in data:  # the list shorthand, so that teachers.cache=... applies
            data["teachers"] = TeachersConfig.normalize(data["teachers"])
        data = apply_overrides(data, overrides or [])
        return from_dict(RecipeConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
