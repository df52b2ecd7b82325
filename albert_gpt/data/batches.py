"""Batches from a flat token array.

Training draws random windows whose positions are a pure function of (seed, step, micro_step),
so a run resumed at step k draws exactly the windows it would have drawn, whatever ran before.
Evaluation walks non-overlapping windows that score every token of a split once.
Shapes: B = batch size, T = block_size (window of T + 1 tokens gives inputs and targets).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from albert_gpt.errors import DataError

IGNORE_INDEX = -1  # target value the model's loss skips


class RandomWindowSampler:
    """Random contiguous windows of block_size + 1 tokens.

    Each (step, micro_step) draws one *global* batch of batch_size * world_size windows; rank r
    takes rows [r * B, (r + 1) * B), so 2 ranks with B rows see what 1 rank with 2B rows sees.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if len(tokens) < block_size + 1:
            raise DataError(
                f"{len(tokens)} tokens cannot fill one window of block_size + 1 = {block_size + 1} tokens"
            )
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._offsets = np.arange(block_size + 1)  # (T + 1,)

    def starts(self, step: int, micro_step: int = 0) -> np.ndarray:
        """(world_size * B,) first positions of the global batch of this (step, micro_step)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, micro_step]))
        # high is exclusive: the last start leaves room for block_size + 1 tokens
        return rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size * self.world_size)

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T) int64 on the CPU; y is x shifted left by one token."""
        rows = self.starts(step, micro_step)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        windows = torch.from_numpy(self.tokens[rows[:, None] + self._offsets].astype(np.int64))  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]


def sequential_windows(tokens: np.ndarray, block_size: int, batch_size: int
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows predicting each of tokens[1:] exactly once.

    Window w covers inputs tokens[w*T : w*T + T] and targets one further on. The last window is
    padded: inputs with 0, targets with IGNORE_INDEX, so batches keep shape (B, T).
    """
    n_targets = len(tokens) - 1
    n_windows = -(-n_targets // block_size) if n_targets > 0 else 0
    for first in range(0, n_windows, batch_size):
        count = min(batch_size, n_windows - first)
        x = torch.zeros(count, block_size, dtype=torch.int64)  # (B, T)
        y = torch.full((count, block_size), IGNORE_INDEX, dtype=torch.int64)  # (B, T)
        for row in range(count):
            start = (first + row) * block_size
            span = min(block_size, n_targets - start)
            x[row, :span] = torch.from_numpy(tokens[start:start + span].astype(np.int64))
            y[row, :span] = torch.from_numpy(tokens[start + 1:start + 1 + span].astype(np.int64))
        yield x, y
