"""One vocabulary for teachers and student: the refusal of a mismatch, and the rule for padding rows.

A teacher distils into the student only over one vocabulary: id i is the same token for both, and the teacher's
logits have one column per token of the run's tokenizer, V = ``len(tokenizer)``. A teacher's embedding and LM head
may have rows past V that no token uses (padding): Qwen2.5-0.5B pads its tokenizer's 151,665 tokens to 151,936
rows and Qwen2.5-7B to 152,064; GPT-2-style checkpoints pad ``config.vocab_size`` to a multiple of 64. How a
teacher's rows must match (``TeacherConfig.vocab_rows``, ``VOCAB_ROWS``):

- "exact" (the default): exactly V rows.
- "shared": V rows or more, the rows past V being padding. Its tokenizer must still be the run's (the checks
  compare them id by id), and its logits are cut to the first V columns (``kept_columns``) wherever they are
  used: the ensemble, its dev loss and evaluation, the teacher cache. The student never sees the padding rows.

Every other difference is refused with ``vocabulary_mismatch``, whose message names both sides and both sizes and
points at ``lmdistill adapt-teacher`` (which gives a teacher a new embedding and LM head in the student's
vocabulary).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "ADAPT_TEACHER",
    "VOCAB_ROWS",
    "VocabRows",
    "VocabularyMismatchError",
    "embedding_rows",
    "kept_columns",
    "vocabulary_mismatch",
]

VocabRows = Literal["exact", "shared"]
VOCAB_ROWS: tuple[str, ...] = ("exact", "shared")
"""How a teacher's embedding rows must match the run tokenizer's length V: exactly, or V or more (padding)."""

ADAPT_TEACHER = "adapt it with `lmdistill adapt-teacher` (a new embedding and LM head in the student's vocabulary)"


class VocabularyMismatchError(ValueError):
    """A teacher and the student (or the run's tokenizer) do not share one vocabulary."""


def vocabulary_mismatch(
    model: str,
    size: int,
    unit: str,
    other: str,
    other_size: int,
    other_unit: str,
    *,
    detail: str | None = None,
    padding: bool = False,
) -> VocabularyMismatchError:
    """The one refusal of a vocabulary mismatch, to raise: both sides with their sizes, then the way out.

    Example: ``vocabulary_mismatch("qwen-teacher", 151936, "embedding rows", "this run's tokenizer", 151665,
    "tokens", padding=True)`` says "qwen-teacher has 151,936 embedding rows and this run's tokenizer has 151,665
    tokens: they do not share one vocabulary; adapt it with `lmdistill adapt-teacher` (...); or, ...".

    Args:
        model (str): the teacher (or its logits) as the user knows it, e.g. "teacher gpt2-teacher (path)".
        size (int): its size, in ``unit``.
        unit (str): what ``size`` counts, e.g. "embedding rows", "tokens", "logit columns".
        other (str): what it was compared with, e.g. "this run's tokenizer", "the student's logits".
        other_size (int): its size, in ``other_unit``.
        other_unit (str): what ``other_size`` counts.
        detail (str | None): what differs besides the sizes, e.g. an example token.
        padding (bool): ``model`` has more rows than the tokenizer: also name the ``vocab_rows: shared`` option.

    Returns:
        VocabularyMismatchError: a ValueError with that message.
    """
    text = f"{model} has {size:,} {unit} and {other} has {other_size:,} {other_unit}: they do not share one vocabulary"
    if detail:
        text += f" ({detail})"
    text += f"; {ADAPT_TEACHER}"
    if padding:
        text += (
            "; or, if the rows past the tokenizer's length are only padding and its tokenizer is the run's, set the "
            "teacher's `vocab_rows: shared` to use the shared rows only"
        )
    return VocabularyMismatchError(text)


def embedding_rows(model: Any) -> int:
    """Rows of a model's LM head (its logits' last dimension), else ``config.vocab_size``."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    return int(model.config.vocab_size)


def kept_columns(
    model: str,
    rows: int,
    vocab_size: int,
    vocab_rows: str = "exact",
    other: str = "this run's tokenizer",
    other_unit: str = "tokens",
) -> int:
    """How many of a teacher's logit columns the student sees: V, if its ``rows`` fit ``vocab_rows``.

    Args:
        model (str): the teacher, for the message.
        rows (int): its embedding / LM head rows (``embedding_rows``).
        vocab_size (int): V, the run tokenizer's length (or the vocabulary it is compared with).
        vocab_rows (str): "exact" (rows == V) or "shared" (rows >= V; columns from V on are dropped).
        other (str): what V is, for the message.
        other_unit (str): what V counts, for the message.

    Returns:
        int: V (the columns ``[:V]`` of the teacher's logits are its distribution over the run's vocabulary).

    Raises:
        ValueError: an unknown ``vocab_rows``.
        VocabularyMismatchError: "exact" and rows != V, or "shared" and rows < V.
    """
    if vocab_rows not in VOCAB_ROWS:
        raise ValueError(f"vocab_rows must be one of {VOCAB_ROWS}, got {vocab_rows!r}")
    if rows == vocab_size or (vocab_rows == "shared" and rows > vocab_size):
        return vocab_size
    raise vocabulary_mismatch(model, rows, "embedding rows", other, vocab_size, other_unit, padding=rows > vocab_size)
