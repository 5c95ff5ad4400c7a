"""Batches for the training loop, from fixed-length blocks or from padded, collated examples.

A ``Batch`` carries what every model family needs (``input_ids``, ``attention_mask``, ``labels``) plus any
family-specific fields (e.g. ``decoder_attention_mask``) and, for blocks, their index on the block grid (what a
teacher cache is looked up by). Both sources give the loop the same three things: the number of global batches of
an epoch, the row ids of each global batch (a new seeded order every epoch, recomputable after a crash), and
``collate(rows)``, so a process can build just its own slice of a global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lmdistill.data.blocks import BlockDataset

__all__ = ["IGNORE_INDEX", "Batch", "BlockSource", "ExampleSource", "dev_batches"]

IGNORE_INDEX = -100


@dataclass
class Batch(Mapping):
    """One (micro-)batch; a mapping of its tensor fields, so ``family.model_inputs(model, batch)`` reads it.

    Attributes:
        input_ids (Tensor): (B, T) token ids.
        labels (Tensor): (B, T) targets before the family's alignment, -100 where not supervised; (B,) classes.
        attention_mask (Tensor | None): (B, T), 1 at real tokens and 0 at padding; None = no padding.
        extras (dict): family-specific (B, ...) tensors, e.g. ``decoder_attention_mask``.
        index (Tensor | None): (B,) the rows' ids in their source (block index on the grid, example index).
    """

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None

    def _fields(self) -> dict[str, Tensor]:
        out = {"input_ids": self.input_ids, "labels": self.labels}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        return {**out, **self.extras}

    def __getitem__(self, key: str) -> Tensor:
        return self._fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    @property
    def size(self) -> int:
        """B, the number of rows."""
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """The batch with every tensor on ``device``."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Batch(
            input_ids=move(self.input_ids),
            labels=move(self.labels),
            attention_mask=move(self.attention_mask),
            extras={k: move(v) for k, v in self.extras.items()},
            index=self.index,
        )


class BlockSource:
    """Global batches of fixed-length blocks (Baby Llama packing): labels are the input ids, nothing is padded.

    Args:
        blocks (BlockDataset): the blocks and their per-epoch order.
        batch_size (int): rows of a global batch (the last partial batch of an epoch is dropped).
    """

    def __init__(self, blocks: BlockDataset, batch_size: int) -> None:
        self.blocks = blocks
        self.batch_size = batch_size

    @property
    def random_offset(self) -> bool:
        """Whether the block grid moves every epoch (then a teacher cache cannot serve it)."""
        return self.blocks.random_offset

    def num_batches(self, epoch: int) -> int:
        """Full global batches in ``epoch``."""
        return self.blocks.num_batches(epoch, self.batch_size)

    def epoch_batches(self, epoch: int, skip: int = 0) -> Iterator[np.ndarray]:
        """The (batch_size,) block start positions of each global batch of ``epoch``, after the first ``skip``."""
        yield from self.blocks.epoch_batch_starts(epoch, self.batch_size, skip=skip)

    def collate(self, rows: np.ndarray) -> Batch:
        """The batch of these block starts: input_ids = labels (B, T), ``index`` = block index on the grid."""
        ids = self.blocks.batch(rows)
        return Batch(input_ids=ids, labels=ids, index=torch.as_tensor(rows // self.blocks.block_size))

    def tokens_per_batch(self) -> int:
        """Input tokens of a global batch."""
        return self.batch_size * self.blocks.block_size


class ExampleSource:
    """Global batches of variable-length examples, padded on the right to the longest row of each batch.

    Each example is a mapping with ``input_ids`` (a list of token ids) and optionally ``labels`` (same length, or a
    single class id for a classifier; default: the input ids, i.e. causal LM on the whole example) and, for seq2seq,
    decoder ``labels`` of their own length (then ``decoder_attention_mask`` is built). Padding gets label -100 and
    attention mask 0.

    Args:
        examples (Sequence[Mapping]): the examples.
        batch_size (int): rows of a global batch (the last partial batch is dropped).
        pad_id (int): padding token id.
        seed (int): base seed of the per-epoch orders (``numpy.random.default_rng([seed, epoch])``).
        shuffle (bool): a new order every epoch (False: the examples' order).

    Raises:
        ValueError: no examples, an empty example, or labels whose length differs from the inputs' (outside
            seq2seq, which pads them on their own).
    """

    def __init__(
        self,
        examples: Sequence[Mapping[str, Any]],
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        shuffle: bool = True,
        seq2seq: bool = False,
    ) -> None:
        if not examples:
            raise ValueError("an example source needs at least one example")
        for i, ex in enumerate(examples):
            if not len(ex["input_ids"]):
                raise ValueError(f"example {i} has no input_ids")
            labels = ex.get("labels")
            if not seq2seq and isinstance(labels, Sequence) and len(labels) != len(ex["input_ids"]):
                raise ValueError(f"example {i}: {len(labels)} labels for {len(ex['input_ids'])} input_ids")
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.shuffle = shuffle
        self.seq2seq = seq2seq
        self.random_offset = False

    def num_batches(self, epoch: int) -> int:
        """Full global batches in an epoch."""
        return len(self.examples) // self.batch_size

    def epoch_batches(self, epoch: int, skip: int = 0) -> Iterator[np.ndarray]:
        """The (batch_size,) example indices of each global batch of ``epoch``, after the first ``skip``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples)) if self.shuffle else None
        order = np.arange(len(self.examples)) if order is None else order
        for i in range(skip, self.num_batches(epoch)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]

    def collate(self, rows: np.ndarray) -> Batch:
        """Pad these examples into one batch (see the class docstring)."""
        chosen = [self.examples[int(r)] for r in rows]
        ids, mask = _pad([list(ex["input_ids"]) for ex in chosen], self.pad_id)
        labels = [ex.get("labels", ex["input_ids"]) for ex in chosen]
        extras: dict[str, Tensor] = {}
        if labels and not isinstance(labels[0], Sequence):  # classifier: one class per example
            label_tensor = torch.tensor([int(y) for y in labels])
        elif self.seq2seq:
            label_tensor, decoder_mask = _pad([list(y) for y in labels], IGNORE_INDEX)
            extras["decoder_attention_mask"] = decoder_mask
        else:
            label_tensor, _ = _pad([list(y) for y in labels], IGNORE_INDEX)
        return Batch(
            input_ids=ids, labels=label_tensor, attention_mask=mask, extras=extras, index=torch.as_tensor(rows)
        )


def _pad(rows: list[list[int]], value: int) -> tuple[Tensor, Tensor]:
    """Right-pad ``rows`` with ``value``: (B, T_max) int64 and the (B, T_max) mask of real entries."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return out, mask


def dev_batches(dev: Tensor | Sequence[Batch], batch_size: int = 32) -> list[Batch]:
    """Dev data as batches: (N, T) dev blocks are cut into batches of ``batch_size`` (labels = inputs)."""
    if isinstance(dev, Tensor):
        return [
            Batch(input_ids=dev[i : i + batch_size], labels=dev[i : i + batch_size])
            for i in range(0, len(dev), batch_size)
        ]
    return list(dev)
