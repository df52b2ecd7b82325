"""Batches: seeded random training windows and sequential evaluation windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from albert_gpt.data.batches import IGNORE_INDEX, RandomWindowSampler, sequential_windows
from albert_gpt.errors import DataError

# tokens = arange: a window's values are its positions, so contiguity and bounds are visible
TOKENS = np.arange(1000, dtype=np.uint16)


def test_same_seed_and_step_same_windows():
    """Two samplers with one seed give identical batches for a (step, micro_step), whatever was
    drawn before: a resumed run sees the windows it would have seen."""
    a = RandomWindowSampler(TOKENS, block_size=16, batch_size=4, seed=7)
    b = RandomWindowSampler(TOKENS, block_size=16, batch_size=4, seed=7)
    for step in range(5):
        a.batch(step)
    xa, ya = a.batch(12, micro_step=1)
    xb, yb = b.batch(12, micro_step=1)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("other", [dict(step=4), dict(micro_step=1), dict(seed=8)])
def test_different_step_micro_step_or_seed_differ(other):
    """Changing the step, the micro-step or the seed changes the windows."""
    key = {"step": 3, "micro_step": 0, "seed": 7} | other
    base = RandomWindowSampler(TOKENS, 16, 4, seed=7).batch(3, 0)[0]
    changed = RandomWindowSampler(TOKENS, 16, 4, seed=key["seed"]).batch(key["step"], key["micro_step"])[0]
    assert not torch.equal(base, changed)


def test_windows_are_contiguous_and_targets_shifted():
    """x rows are contiguous runs of block_size tokens, y is x one token on, dtype int64 on CPU."""
    x, y = RandomWindowSampler(TOKENS, block_size=16, batch_size=8, seed=0).batch(0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(8, 16))
    assert torch.equal(y, x + 1)


def test_windows_reach_both_ends_and_stay_inside():
    """Starts cover 0 .. len - block_size - 1 and no window runs past the end."""
    tokens = np.arange(20, dtype=np.uint16)
    sampler = RandomWindowSampler(tokens, block_size=4, batch_size=64, seed=0)
    starts = np.concatenate([sampler.starts(step) for step in range(10)])
    assert starts.min() == 0 and starts.max() == 20 - 4 - 1


def test_ranks_split_one_global_batch():
    """Rank r of 2 with B rows equals rows [rB, (r+1)B) of one rank with 2B rows."""
    whole = RandomWindowSampler(TOKENS, 16, 6, seed=3).batch(5)[0]
    parts = [RandomWindowSampler(TOKENS, 16, 3, seed=3, rank=r, world_size=2).batch(5)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(parts), whole)


def test_too_short_for_one_window():
    """Fewer than block_size + 1 tokens: a DataError with both numbers."""
    with pytest.raises(DataError, match=r"10 tokens cannot fill one window of block_size \+ 1 = 17"):
        RandomWindowSampler(TOKENS[:10], block_size=16, batch_size=1, seed=0)


def test_sequential_windows_score_every_token_once():
    """Evaluation windows predict tokens[1:] exactly once, in order; the padded tail is ignored."""
    tokens = np.arange(103, dtype=np.uint16)
    xs, ys = zip(*sequential_windows(tokens, block_size=10, batch_size=4))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (11, 10)  # ceil(102 / 10) windows
    scored = y[y != IGNORE_INDEX]
    assert torch.equal(scored, torch.arange(1, 103))
    assert torch.equal(x[y != IGNORE_INDEX], torch.arange(0, 102))


def test_sequential_windows_too_short():
    """A split of one token has nothing to predict: no windows."""
    assert list(sequential_windows(np.zeros(1, dtype=np.uint16), 8, 2)) == []
