"""Masked-language-model examples: documents cut into ``[CLS] ... [SEP]`` sequences, masked once, by seed.

BERT's masking (Devlin et al. 2019, sec. 3.1): each non-special token is chosen with probability 0.15; a chosen
token is replaced by ``[MASK]`` with probability 0.8, by a random token with 0.1, and kept with 0.1; the loss is
on the chosen positions only. Here the masks are drawn once per sequence, from ``numpy.random.default_rng([seed,
index])`` (static masking, as BERT's original preprocessing), so every variant of a run, and a resumed run, sees
the same masks whatever its batch order. A sequence where no token was chosen gets one chosen position, so that
every example is supervised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmdistill.data.batches import IGNORE_INDEX

__all__ = ["MaskingConfig", "causal_examples", "mask_sequence", "mlm_examples", "mlm_sequences"]


@dataclass(frozen=True)
class MaskingConfig:
    """BERT's masking rates (see the module docstring)."""

    probability: float = 0.15
    """Share of non-special tokens chosen for prediction."""
    mask_fraction: float = 0.8
    """Of the chosen: replaced by the mask token."""
    random_fraction: float = 0.1
    """Of the chosen: replaced by a uniformly drawn non-special token (the rest are kept)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise ValueError(f"masking probability must be in (0, 1), got {self.probability}")
        if self.mask_fraction < 0 or self.random_fraction < 0 or self.mask_fraction + self.random_fraction > 1:
            raise ValueError(
                f"mask_fraction ({self.mask_fraction}) and random_fraction ({self.random_fraction}) must be >= 0 and "
                "sum to at most 1"
            )


def mlm_sequences(token_ids: Sequence[Sequence[int]], cls_id: int, sep_id: int, max_length: int) -> list[list[int]]:
    """Each document's tokens cut into consecutive pieces of ``max_length - 2``, each as ``[CLS] piece [SEP]``.

    Args:
        token_ids (Sequence[Sequence[int]]): per document, its token ids without special tokens.
        cls_id (int): the sequence-start token (``[CLS]``).
        sep_id (int): the sequence-end token (``[SEP]``).
        max_length (int): tokens per sequence, the two special tokens included (>= 3). A document's last piece is
            shorter: batches are padded.

    Returns:
        list[list[int]]: the sequences, in document order.

    Raises:
        ValueError: ``max_length`` < 3.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] token [SEP]), got {max_length}")
    piece = max_length - 2
    out = []
    for ids in token_ids:
        ids = list(ids)
        for start in range(0, len(ids), piece):
            out.append([cls_id, *ids[start : start + piece], sep_id])
    return out


def mask_sequence(
    ids: Sequence[int],
    rng: np.random.Generator,
    *,
    mask_id: int,
    special_ids: Sequence[int],
    random_ids: np.ndarray,
    config: MaskingConfig = MaskingConfig(),
) -> tuple[list[int], list[int]]:
    """One sequence's masked inputs and labels (the original token at chosen positions, -100 elsewhere).

    Args:
        ids (Sequence[int]): the sequence's token ids.
        rng (np.random.Generator): draws the choice, the replacement kind and the random tokens, in that order.
        mask_id (int): the mask token.
        special_ids (Sequence[int]): tokens never chosen ([CLS], [SEP], padding).
        random_ids (np.ndarray): the tokens a random replacement is drawn from (uniformly).
        config (MaskingConfig): the rates.

    Returns:
        tuple: (input_ids, labels), lists of ``len(ids)``.
    """
    ids_array = np.asarray(ids, dtype=np.int64)
    candidates = ~np.isin(ids_array, np.asarray(list(special_ids), dtype=np.int64))
    chosen = (rng.random(len(ids_array)) < config.probability) & candidates
    if not chosen.any() and candidates.any():
        chosen[rng.choice(np.flatnonzero(candidates))] = True
    kind = rng.random(len(ids_array))
    replacement = random_ids[rng.integers(0, len(random_ids), len(ids_array))]
    inputs = ids_array.copy()
    to_mask = chosen & (kind < config.mask_fraction)
    to_random = chosen & (kind >= config.mask_fraction) & (kind < config.mask_fraction + config.random_fraction)
    inputs[to_mask] = mask_id
    inputs[to_random] = replacement[to_random]
    labels = np.where(chosen, ids_array, IGNORE_INDEX)
    return inputs.tolist(), labels.tolist()


def mlm_examples(
    sequences: Sequence[Sequence[int]],
    *,
    seed: int,
    mask_id: int,
    special_ids: Sequence[int],
    vocab_size: int,
    config: MaskingConfig = MaskingConfig(),
) -> list[dict[str, list[int]]]:
    """Masked examples ``{"input_ids", "labels"}`` of every sequence, sequence i masked by ``default_rng([seed, i])``.

    Random replacements are drawn uniformly from the ``vocab_size`` ids that are not in ``special_ids`` and not the
    mask token.

    Raises:
        ValueError: no sequences.
    """
    if not sequences:
        raise ValueError("no sequences to mask")
    excluded = {*special_ids, mask_id}
    random_ids = np.asarray([i for i in range(vocab_size) if i not in excluded], dtype=np.int64)
    out = []
    for i, ids in enumerate(sequences):
        inputs, labels = mask_sequence(
            ids,
            np.random.default_rng([seed, i]),
            mask_id=mask_id,
            special_ids=special_ids,
            random_ids=random_ids,
            config=config,
        )
        out.append({"input_ids": inputs, "labels": labels})
    return out


def causal_examples(
    token_ids: Sequence[Sequence[int]], bos_id: int | None, eos_id: int | None, block_size: int
) -> list[dict[str, list[int]]]:
    """Causal-LM examples: documents as ``bos ... eos``, concatenated and cut into full blocks of ``block_size``.

    Labels are the inputs (the family shifts them); the incomplete last block is dropped.

    Raises:
        ValueError: fewer tokens than one block.
    """
    stream: list[int] = []
    for ids in token_ids:
        stream.extend(([bos_id] if bos_id is not None else []) + list(ids) + ([eos_id] if eos_id is not None else []))
    if len(stream) < block_size:
        raise ValueError(f"{len(stream)} tokens give no block of {block_size}")
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    return [{"input_ids": b, "labels": b} for b in blocks]
