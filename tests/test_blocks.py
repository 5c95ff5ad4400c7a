import numpy as np
import pytest
import torch

from lmdistill.data.blocks import BlockDataset, dev_blocks


def test_each_epoch_is_a_new_permutation_of_all_blocks():
    tokens = np.arange(1000, dtype=np.uint16)
    ds = BlockDataset(tokens, 10, seed=3)
    e0, e1 = ds.epoch_starts(0), ds.epoch_starts(1)
    assert sorted(e0) == sorted(e1) == list(range(0, 1000, 10))
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, BlockDataset(tokens, 10, seed=3).epoch_starts(0))  # reproducible


def test_batches_are_contiguous_token_blocks_and_skip_resumes():
    tokens = np.arange(200, dtype=np.uint16)
    ds = BlockDataset(tokens, 8, seed=0)
    batches = list(ds.epoch_batches(0, 4))
    assert len(batches) == ds.num_batches(0, 4) == 25 // 4
    for b in batches:
        assert b.shape == (4, 8) and b.dtype == torch.int64
        assert torch.equal(b[:, 1:] - b[:, :-1], torch.ones(4, 7, dtype=torch.int64))
    resumed = list(ds.epoch_batches(0, 4, skip=2))
    assert all(torch.equal(x, y) for x, y in zip(batches[2:], resumed, strict=True))


def test_random_offset_shifts_the_grid():
    ds = BlockDataset(np.arange(1000, dtype=np.uint16), 10, seed=1, random_offset=True)
    offsets = {int(ds.epoch_starts(e).min()) for e in range(10)}
    assert len(offsets) > 1 and all(0 <= o < 10 for o in offsets)


def test_too_few_tokens_is_an_error():
    with pytest.raises(ValueError, match="fewer than one block"):
        BlockDataset(np.arange(5), 8)
    with pytest.raises(ValueError, match="dev split has 5 tokens"):
        dev_blocks(np.arange(5), 8, None)
    assert dev_blocks(np.arange(100), 8, 3).shape == (3, 8)
