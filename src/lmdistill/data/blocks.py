"""Fixed-length training blocks over one 1-D token array, in a new random order every epoch."""

from __future__ import annotations

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

    Raises:
        ValueError: if the array holds fewer than ``block_size`` tokens.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int = 0, random_offset: bool = False) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        if len(tokens) < block_size:
            raise ValueError(f"only {len(tokens)} tokens, fewer than one block of {block_size}")
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


def dev_blocks(tokens: np.ndarray, block_size: int, max_blocks: int | None) -> torch.Tensor:
    """The fixed dev subset: ``max_blocks`` blocks evenly spaced over the whole dev split (every block if None).

    The dev split is read source after source, so the first blocks would all come from the first sources; evenly
    spaced blocks give every source a share proportional to its dev tokens (a systematic sample).

    Returns:
        Tensor: (num_blocks, T) int64, in split order.

    Raises:
        ValueError: if the dev split holds fewer than ``block_size`` tokens.
    """
    num = len(tokens) // block_size
    if num == 0:
        raise ValueError(f"the dev split has {len(tokens)} tokens, fewer than one block of {block_size}")
    grid = np.asarray(tokens[: num * block_size], dtype=np.int64).reshape(num, block_size)
    if max_blocks is not None and max_blocks < num:
        grid = grid[dev_block_indices(num, max_blocks)]
    return torch.from_numpy(np.ascontiguousarray(grid))


def dev_block_indices(num_blocks: int, max_blocks: int) -> np.ndarray:
    """Indices of ``max_blocks`` of ``num_blocks`` blocks, evenly spaced (block i * num / max, rounded down)."""
    return (np.arange(max_blocks) * num_blocks) // max_blocks
