"""Training from a stream (`data.streaming: true`): documents are read, tokenized and packed into windows
as training goes, so the first step waits for nothing but the held-out slices, whatever the corpus size.

The stream is a sequence of items, (text piece, whether it starts a document): a row of a hub or
JSON Lines dataset is one item, a text file is several (documents.py cuts it where its tokens do not
change). `TokenWindowStream` (a torch IterableDataset) encodes items a group at a time, puts the
end-of-text token between documents, cuts windows of block_size + 1 tokens that overlap by one (every
token is a target once) and draws them through a shuffle buffer. When the stream ends it starts again
(the next epoch) from its first training item.

Its state (items read this epoch, tokens not yet in a window, the buffer, the generator) goes into
every checkpoint; a resumed run skips the items already read, without tokenizing them, and then draws
exactly the windows the uninterrupted run would have drawn (tested).
Shapes: B = batch size, T = block_size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from albert_gpt.data.documents import stream_items
from albert_gpt.data.sources import Document
from albert_gpt.data.tokenizer import TextTokenizer
from albert_gpt.errors import DataError

GROUP_CHARS = 1 << 20  # characters encoded together: the batch encoder's threads share them


class TokenWindowStream(torch.utils.data.IterableDataset):
    """Shuffled (T + 1,) int64 windows of the training stream, with a state for exact resume.

    `documents` is the training documents, re-iterable (read again each epoch, and on resume); the
    first `skip_items` items are the held-out slices and are never trained on.
    """

    def __init__(self, documents: Iterable[Document], tokenizer: TextTokenizer, block_size: int,
                 seed: int, buffer_size: int, separate: bool = True, skip_items: int = 0) -> None:
        super().__init__()
        self.documents, self.tokenizer, self.block_size = documents, tokenizer, block_size
        self.buffer_size, self.separate, self.skip_items = buffer_size, separate, skip_items
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        self.epoch = 0
        self.items_read = self.skip_items  # items of this epoch read so far, held-out ones included
        self.carry = np.zeros(0, dtype=np.int64)  # tokens not yet in a window
        self.buffer: list[np.ndarray] = []
        self.any_token = False  # a document was read before: the next one is preceded by end-of-text
        self.windows_this_epoch = 0
        self.rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED]))

    # ---------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        window = self.block_size + 1
        buffer = np.stack(self.buffer) if self.buffer else np.zeros((0, window), dtype=np.int64)
        return {
            "epoch": self.epoch, "items_read": self.items_read, "any_token": self.any_token,
            "windows_this_epoch": self.windows_this_epoch,
            "carry": torch.from_numpy(self.carry.copy()), "buffer": torch.from_numpy(buffer.copy()),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.items_read = int(state["epoch"]), int(state["items_read"])
        self.any_token, self.windows_this_epoch = bool(state["any_token"]), int(state["windows_this_epoch"])
        self.carry = state["carry"].numpy().astype(np.int64)
        self.buffer = [row for row in state["buffer"].numpy().astype(np.int64)]
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]

    # ---------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[torch.Tensor]:
        for window in self._windows():
            yield torch.from_numpy(window)

    def _windows(self) -> Iterator[np.ndarray]:
        # Every change of state happens before the yield that hands a window out, so the state taken
        # between two windows is exactly the position after the first of them.
        while True:
            items = itertools.islice(stream_items(self.documents), self.items_read, None)
            for group in _groups(items):
                self.carry = self._encode(group)
                self.items_read += len(group)
                while (window := self._next_window()) is not None:
                    if len(self.buffer) < self.buffer_size:
                        self.buffer.append(window)
                        continue
                    j = int(self.rng.integers(self.buffer_size))
                    out, self.buffer[j] = self.buffer[j], window
                    yield out
            if self.windows_this_epoch == 0 and not self.buffer:
                raise DataError("the training stream gives no window of block_size + 1 tokens "
                                "(too little text after the held-out slices)")
            self.epoch += 1
            self.items_read, self.windows_this_epoch = self.skip_items, 0

    def _encode(self, group: list[tuple[str, bool]]) -> np.ndarray:
        """The carried tokens followed by the group's, end-of-text before each new document."""
        eot = np.array([self.tokenizer.eot_id], dtype=np.int64)
        parts = [self.carry]
        for ids, (_, starts) in zip(self.tokenizer.encode_arrays([text for text, _ in group]), group):
            if starts and self.separate and self.any_token:
                parts.append(eot)
            if starts:
                self.any_token = True
            parts.append(ids)
        return np.concatenate(parts)

    def _next_window(self) -> np.ndarray | None:
        """The next T + 1 carried tokens as a window (windows start every T tokens); None when too few."""
        T = self.block_size
        if len(self.carry) < T + 1:
            return None
        window, self.carry = self.carry[:T + 1].copy(), self.carry[T:]
        self.windows_this_epoch += 1
        return window


def _groups(items: Iterator[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
    group: list[tuple[str, bool]] = []
    size = 0
    for item in items:
        group.append(item)
        size += len(item[0])
        if size >= GROUP_CHARS:
            yield group
            group, size = [], 0
    if group:
        yield group


class StreamBatches:
    """The trainer's batches from a TokenWindowStream: the global batch of (step, micro) is the next
    B * world_size windows, and rank r takes rows [r * B, (r + 1) * B), as RandomWindowSampler does.

    Batches must be asked for in order. On CUDA a prefetching thread draws them ahead of the step
    that uses them, so the stream itself runs ahead: with each batch it hands over the stream's
    position right after it (`batch_with_position`), and the trainer marks the batches it has used
    (`consumed`); `state_dict` is the position after the last used batch, what a checkpoint needs.
    """

    def __init__(self, stream: TokenWindowStream, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.stream, self.batch_size, self.rank, self.world_size = stream, batch_size, rank, world_size
        self._iterator: Iterator[np.ndarray] | None = None
        self._used: dict[str, Any] | None = None  # position after the last used batch, when prefetched

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T) int64 on the CPU."""
        if self._iterator is None:
            self._iterator = self.stream._windows()
        rows = [next(self._iterator) for _ in range(self.batch_size * self.world_size)]
        mine = np.stack(rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])  # (B, T + 1)
        windows = torch.from_numpy(mine)
        return windows[:, :-1], windows[:, 1:]

    def batch_with_position(self, step: int, micro_step: int = 0
                            ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The batch, and the stream's position right after it (for a prefetching thread)."""
        if self._used is None:  # nothing used yet: a checkpoint now saves where the stream started
            self._used = self.stream.state_dict()
        x, y = self.batch(step, micro_step)
        return x, y, self.stream.state_dict()

    def consumed(self, position: dict[str, Any]) -> None:
        """The batch that came with `position` has been used."""
        self._used = position

    def state_dict(self) -> dict[str, Any]:
        return self._used if self._used is not None else self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
        self._iterator = None
        self._used = None
