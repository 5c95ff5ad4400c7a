"""Fixed-length training blocks over one 1-D token array, in a new random order every epoch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BlockDataset", "dev_block_indices", "dev_blocks"]


class BlockDataset:
    """Contiguous blocks of ``block_size`` tokens cut from a 1-D token array (Baby Llama packing).

    Each epoch has its own order, drawn from ``numpy.random.default_rng([seed, epoch])``, so the order of any
    epoch can be recomputed after a crash without saving generator state. With ``random_offset`` the block
    grid is shifted by an offset in ``[0, block_size)`` drawn from the same generator (the tokens before the
    offset are skipped that epoch).

    Args:
        tokens (np.ndarray): (N,) token ids, e.g. a read-only memmap.
        block_size (int): tokens per block (T).
        seed (int): base seed of the per-epoch orders.
        random_offset (bool): shift the block grid randomly each epoch.
        split (str | None): which split the tokens are (e.g. "train"), named in the error message only.
        sources (Sequence[str] | None): the corpus sources the tokens come from, named in the error message only.

    Raises:
        ValueError: if the array holds fewer than ``block_size`` tokens (naming ``split`` and ``sources`` when given).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        seed: int = 0,
        random_offset: bool = False,
        *,
        split: str | None = None,
        sources: Sequence[str] | None = None,
    ) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        if len(tokens) < block_size:
            what = f"the {split} split has only" if split else "the token array has only"
            raise ValueError(_too_short(what, len(tokens), block_size, sources, "max_words"))
        self.tokens = tokens
        self.block_size = block_size
        self.seed = seed
        self.random_offset = random_offset

    def __len__(self) -> int:
        """Number of blocks with no offset."""
        return len(self.tokens) // self.block_size

    def epoch_starts(self, epoch: int) -> np.ndarray:
        """Start positions (in tokens) of every block of ``epoch``, in that epoch's random order."""
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(0, self.block_size)) if self.random_offset else 0
        num_blocks = (len(self.tokens) - offset) // self.block_size
        return offset + rng.permutation(num_blocks) * self.block_size

    def num_batches(self, epoch: int, batch_size: int) -> int:
        """Full batches in ``epoch`` (the last partial batch is dropped)."""
        return len(self.epoch_starts(epoch)) // batch_size

    def batch(self, starts: np.ndarray) -> torch.Tensor:
        """Token ids (B, T) as int64 for the given block start positions."""
        rows = [np.asarray(self.tokens[s : s + self.block_size], dtype=np.int64) for s in starts]
        return torch.from_numpy(np.stack(rows))

    def epoch_batch_starts(self, epoch: int, batch_size: int, skip: int = 0):
        """Yield the (B,) block start positions of each full batch of ``epoch``, skipping the first ``skip``."""
        starts = self.epoch_starts(epoch)
        for i in range(skip, len(starts) // batch_size):
            yield starts[i * batch_size : (i + 1) * batch_size]

    def epoch_batches(self, epoch: int, batch_size: int, skip: int = 0):
        """Yield (B, T) batches of ``epoch``, skipping its first ``skip`` batches (for resuming mid-epoch)."""
        for starts in self.epoch_batch_starts(epoch, batch_size, skip):
            yield self.batch(starts)


def _too_short(what: str, num_tokens: int, block_size: int, sources: Sequence[str] | None, budget: str) -> str:
    """``"<what> N tokens (sources: a, b), fewer than one block of T tokens ..."``, with what to change."""
    named = f" (sources: {', '.join(sources)})" if sources else ""
    return (
        f"{what} {num_tokens} tokens{named}, fewer than one block of {block_size} tokens: need at least "
        f"data.block_size tokens; give the sources more words (data.sources[].{budget}) or lower data.block_size"
    )


def dev_blocks(
    tokens: np.ndarray, block_size: int, max_blocks: int | None, *, sources: Sequence[str] | None = None
) -> torch.Tensor:
    """The fixed dev subset: ``max_blocks`` blocks evenly spaced over the whole dev split (every block if None).

    The dev split is read source after source, so the first blocks would all come from the first sources; evenly
    spaced blocks give every source a share proportional to its dev tokens (a systematic sample).

    Args:
        tokens (np.ndarray): (N,) token ids of the dev split.
        block_size (int): tokens per block (T).
        max_blocks (int | None): blocks to keep; None keeps every block.
        sources (Sequence[str] | None): the corpus sources of the dev split, named in the error message only.

    Returns:
        Tensor: (num_blocks, T) int64, in split order.

    Raises:
        ValueError: if the dev split holds fewer than ``block_size`` tokens (naming ``sources`` when given).
    """
    num = len(tokens) // block_size
    if num == 0:
        raise ValueError(_too_short("the dev split has", len(tokens), block_size, sources, "dev_max_words"))
    grid = np.asarray(tokens[: num * block_size], dtype=np.int64).reshape(num, block_size)
    if max_blocks is not None and max_blocks < num:
        grid = grid[dev_block_indices(num, max_blocks)]
    return torch.from_numpy(np.ascontiguousarray(grid))


def dev_block_indices(num_blocks: int, max_blocks: int) -> np.ndarray:
    """Indices of ``max_blocks`` of ``num_blocks`` blocks, evenly spaced (block i * num / max, rounded down)."""
    return (np.arange(max_blocks) * num_blocks) // max_blocks
