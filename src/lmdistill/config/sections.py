"""The recipe sections every method shares: data, tokenizer, model, train, distillation, loss, evaluation.

A method's own sections (e.g. Baby Llama's teachers and student) live beside the method in
``lmdistill.methods.<name>``; both are plain dataclasses validated in ``__post_init__`` and built strictly by
``lmdistill.config.schema.from_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmdistill.config.schema import ConfigError, check_finite
from lmdistill.config.schema import check as _check
from lmdistill.registry import did_you_mean

__all__ = [
    "DIVERGENCE_NAMES",
    "MODEL_FAMILIES",
    "PRESETS",
    "DataConfig",
    "DistillationConfig",
    "EvaluationConfig",
    "FeatureLossConfig",
    "LossConfig",
    "ModelConfig",
    "RecipeBase",
    "SourceConfig",
    "TokenizerConfig",
    "TrainConfig",
]


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
    """Fixed dev subset for the dev loss at each epoch end: N blocks evenly spaced over the whole dev split, so that
    every source contributes in proportion to its dev tokens (None = every dev block)."""

    def __post_init__(self) -> None:
        _check(len(self.sources) > 0, "sources", "must name at least one corpus source")
        _check(self.block_size >= 8, "block_size", f"must be >= 8, got {self.block_size}")
        _check(self.dev_max_blocks is None or self.dev_max_blocks > 0, "dev_max_blocks", "must be > 0 or null")
        names = [s.name for s in self.sources]
        _check(len(set(names)) == len(names), "sources", f"a source is named twice: {names}")


@dataclass
class TokenizerConfig:
    """Byte-level BPE tokenizer trained on the train split only, or a pretrained tokenizer used as it is."""

    vocab_size: int = 16000
    """Vocabulary size, special tokens included."""
    min_frequency: int = 2
    """Minimum pair frequency for a BPE merge."""
    pretrained: str | None = None
    """A tokenizer folder, ``package:NAME`` or Hub id (e.g. "gpt2") to use instead of training one (vocab_size and
    min_frequency are then ignored); one without a pad token pads with its eos token, one without bos starts
    documents with eos."""

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 260, "vocab_size", f"must be >= 260 (256 bytes + specials), got {self.vocab_size}")
        _check(self.min_frequency >= 1, "min_frequency", f"must be >= 1, got {self.min_frequency}")


MODEL_FAMILIES = ("causal_lm", "masked_lm", "seq2seq", "classifier")
"""Model families (``lmdistill.models.families``): how labels align with logits and where a model's parts are."""

ARCHITECTURES = {"gpt2": "causal_lm", "llama": "causal_lm", "bert": "masked_lm", "t5": "seq2seq"}
"""Architectures built from scratch by ``lmdistill.models.build_model``, with their default family."""


@dataclass
class ModelConfig:
    """A model built from scratch (``arch`` and sizes), or loaded from ``path`` (a folder, a Hub id, a GGUF file).

    ``path`` is a local Hugging Face folder, else a Hub id such as ``HuggingFaceTB/SmolLM2-135M`` (needs internet;
    never used by the tests); with ``gguf_file`` it is the folder (or Hub id) holding that GGUF file, which
    transformers dequantises on load.
    """

    arch: Literal["gpt2", "llama", "bert", "t5"] = "llama"
    """Architecture built from scratch: "gpt2", "llama" (causal LMs), "bert" (masked LM), "t5" (seq2seq)."""
    family: Literal["causal_lm", "masked_lm", "seq2seq", "classifier"] | None = None
    """Model family; null = the architecture's (gpt2/llama causal_lm, bert masked_lm, t5 seq2seq) or, for a loaded
    model, its config's."""
    num_labels: int | None = None
    """Classes of a "classifier" (sequence classification head); required for that family."""
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
    """Dropout probability (GPT-2 residual/embedding/attention dropout; LLaMA attention dropout; BERT/T5 dropout)."""
    tie_word_embeddings: bool = False
    """Share the input embedding and LM head weights."""
    path: str | None = None
    """Local HF checkpoint folder or Hub id to load instead of building from the fields above."""
    gguf_file: str | None = None
    """A GGUF file name inside ``path`` (e.g. "SmolLM2-135M-Instruct.Q4_1.gguf"), loaded through transformers."""

    def __post_init__(self) -> None:
        _check(self.arch in ARCHITECTURES, "arch", f"must be one of {list(ARCHITECTURES)}, got {self.arch!r}")
        _check(
            self.family is None or self.family in MODEL_FAMILIES,
            "family",
            f"must be one of {list(MODEL_FAMILIES)} or null, got {self.family!r}",
        )
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
        if self.family == "classifier" and self.path is None:
            _check(self.num_labels is not None and self.num_labels >= 2, "num_labels", "a classifier needs >= 2")
        _check(self.gguf_file is None or self.path is not None, "gguf_file", "needs path (the folder holding it)")

    @property
    def resolved_family(self) -> str:
        """The family: ``family`` if set, else the architecture's."""
        return self.family or ARCHITECTURES[self.arch]


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
    eval_every_steps: int = 0
    """Also compute the dev loss every N optimizer steps (and before the first), logged as ``dev_step`` events
    with the tokens seen: a learning curve finer than one point per epoch. 0 = only after each epoch."""
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
        check_finite(self.weight_decay, "weight_decay")
        check_finite(self.max_grad_norm, "max_grad_norm")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null")
        _check(
            self.mixed_precision in ("no", "bf16", "fp16"),
            "mixed_precision",
            f"must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}",
        )
        _check(self.save_every_steps >= 0, "save_every_steps", f"must be >= 0, got {self.save_every_steps}")
        _check(self.log_every_steps >= 1, "log_every_steps", f"must be >= 1, got {self.log_every_steps}")
        _check(self.eval_every_steps >= 0, "eval_every_steps", f"must be >= 0, got {self.eval_every_steps}")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1 or null")


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
    layers: str | list[int] | list[list[int]] = "uniform"
    """Layer mapping: "uniform" (student layer m takes teacher layer m * N / M), "last", the teacher layer
    (1-based) of each student layer, or ``[student_layer, teacher_layer]`` pairs; ignored by "embedding"."""
    teacher: int = 0
    """Index of the teacher (in ``teachers``) whose features are matched."""
    scores: bool = False
    """attention: compare the pre-softmax scores ``Q K^T / sqrt(d)`` (TinyBERT; needs ``loss: mse``) instead of the
    probabilities (``lmdistill.losses.attention_scores``)."""

    def __post_init__(self) -> None:
        check_finite(self.weight, "weight")
        if self.scores:
            _check(self.kind == "attention", "scores", f"applies to attention terms, not {self.kind}")
            _check(self.loss == "mse", "loss", "attention scores are not distributions: use loss 'mse'")
        _check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        allowed = ("mse", "kl") if self.kind == "attention" else ("mse", "cosine")
        _check(self.loss in allowed, "loss", f"a {self.kind} loss must be one of {list(allowed)}, got {self.loss!r}")
        if isinstance(self.layers, str):
            _check(
                self.layers in ("uniform", "last"),
                "layers",
                f"must be 'uniform', 'last' or a list, got {self.layers!r}",
            )
        else:  # teacher layers, or (student layer, teacher layer) pairs
            flat = [x for item in self.layers for x in (item if isinstance(item, list | tuple) else [item])]
            _check(all(layer >= 1 for layer in flat), "layers", f"layers are 1-based, got {self.layers}")
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
    topk_estimator: Literal["tail_bucket", "uniform_tail"] = "tail_bucket"
    """D against a cached top-k teacher (``lmdistill.losses.topk``): "tail_bucket" = D on k + 1 outcomes, the other
    tokens merged into one (TRL's tail bucket, DistillKit's SYMMETRIC_UNIFORM); "uniform_tail" = the dense D against
    the teacher with its tail mass m spread evenly over the V - k uncached tokens (better for a student whose tail is
    confident and unrelated to the teacher's; worse for one close to it). Unused with a live teacher."""
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
        check_finite(self.temperature, "temperature")
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
        _check(
            self.topk_estimator in ("tail_bucket", "uniform_tail"),
            "topk_estimator",
            f"must be 'tail_bucket' or 'uniform_tail', got {self.topk_estimator!r}",
        )


@dataclass
class LossConfig:
    """How the objective is computed; every implementation gives the same values and gradients (to 1e-5)."""

    implementation: Literal["plain", "chunked", "fused"] = "plain"
    """"plain": several (B, T, V) float32 tensors; "chunked": positions in chunks, one (B, T, V) gradient buffer;
    "fused": from the student's final hidden states and LM head, never holding the student's (B, T, V) logits."""
    chunk_size: int | None = None
    """Positions per chunk of the chunked and fused paths; null = about 32 MiB of float32 per (chunk, V), 64 MiB
    with ``compile``."""
    compile: bool = False
    """Run the per-chunk math of the chunked and fused paths through ``torch.compile`` (the chunk loop stays
    eager): the same values and gradients to float32 rounding, fewer passes over each (chunk, V) block. Needs a
    working ``torch.compile`` (on CPU, a C++ compiler for inductor); the first step compiles (seconds per
    divergence). Only with implementation chunked or fused."""

    def __post_init__(self) -> None:
        _check(self.chunk_size is None or self.chunk_size >= 1, "chunk_size", "must be >= 1 or null")
        _check(
            not self.compile or self.implementation != "plain",
            "compile",
            "applies to implementation chunked or fused, not plain",
        )


@dataclass
class EvaluationConfig:
    """Zero-shot evaluation after training: every model on each task, scored as lm-evaluation-harness 0.4.13 does."""

    tasks: list[str] = field(default_factory=lambda: ["blimp"])
    """Task names (``lmdistill eval --list-tasks``): blimp, arc_easy, arc_easy_validation, winogrande, mmlu,
    hellaswag."""
    limit: int | None = None
    """Items per task, or per sub-task (BLiMP paradigm, MMLU subject), the first N, as lm-eval's --limit;
    None = all."""
    task_limits: dict[str, int] = field(default_factory=dict)
    """Per-task ``limit`` instead of the common one, e.g. ``{mmlu: 2, arc_easy: 200}`` (MMLU's long prompts
    dominate the cost)."""
    blimp_paradigms: list[str] | None = None
    """BLiMP paradigm names (file stems) to evaluate; None = all 67."""
    blimp_target_delimiter: str = " "
    """Text before each BLiMP sentence: " " as lm-eval >= 0.4 scores it; "" as BabyLM 2023 / lm-eval 0.3."""
    empty_context_prefix: Literal["bos", "eos"] | None = None
    """Token an empty context (BLiMP) is scored after: "bos" as lm-eval >= 0.4 (``<s>``, which also starts every
    training document of a corpus recipe), "eos" as lm-eval 0.3; null = "bos", or "eos" with
    ``blimp_target_delimiter: ""`` (together: the BabyLM 2023 pipeline's scoring)."""
    batch_size: int = 64
    """Rows (distinct inputs) per forward pass."""
    task_files: list[str] = field(default_factory=list)
    """Task spec files (or folders of them) whose tasks ``tasks`` may name, as ``lmdistill eval --task-file``;
    a relative path in a recipe file is relative to that file, one from the command line to the working folder."""

    @property
    def prefix(self) -> str:
        """The empty-context prefix in force ("bos" or "eos"), see ``empty_context_prefix``."""
        if self.empty_context_prefix is not None:
            return self.empty_context_prefix
        return "eos" if self.blimp_target_delimiter == "" else "bos"

    def __post_init__(self) -> None:
        from lmdistill.evaluation.taskfile import register_task_files
        from lmdistill.evaluation.tasks import TASKS

        for i, path in enumerate(self.task_files):
            try:
                register_task_files([path])
            except (OSError, ValueError, NotImplementedError) as err:
                raise ConfigError(f"task_files.{i}: {err}") from None

        for i, name in enumerate(self.tasks):
            _check(
                name in TASKS,
                f"tasks.{i}",
                f"unknown task {name!r}.{did_you_mean(name, TASKS.names())} Known: {', '.join(TASKS.names())}",
            )
        _check(len(set(self.tasks)) == len(self.tasks), "tasks", f"a task is named twice: {self.tasks}")
        _check(self.limit is None or self.limit >= 1, "limit", "must be >= 1 or null")
        for name, limit in self.task_limits.items():
            _check(name in self.tasks, f"task_limits.{name}", f"is not one of tasks {self.tasks}")
            _check(limit >= 1, f"task_limits.{name}", f"must be >= 1, got {limit}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass(kw_only=True)
class RecipeBase:
    """The keys every recipe has, whatever its method; a method's recipe adds its own sections to these."""

    name: str
    """Recipe name, recorded in results (and the default run folder, ``runs/<name>``)."""
    method: str = "babyllama"
    """The method (``lmdistill.methods.METHODS``) whose stages run this recipe."""
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    description: str = ""
    """Free text shown by ``lmdistill recipes ls``."""

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be a plain name, got {self.name!r}")
