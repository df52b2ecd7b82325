"""Training batches prepared ahead of the step that needs them, on a background thread.

On CUDA a step ends with one host sync, so a batch fetched after it would keep the GPU idle
while the host gathers and pins it. The thread gathers the next batches (and pins them, so
the copy to the GPU can be non-blocking) while the GPU still runs the current step.
Shapes: B = batch size, T = block_size.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

_POLL_S = 0.1  # how often a blocked producer checks whether it was closed


class BatchPrefetcher:
    """sampler.batch(step, micro) for step = start_step .. end_step - 1, micro = 0 .. accum_steps - 1.

    The sampler is a pure function of (step, micro), or a stream asked in order, so a prefetched
    batch is exactly the one a synchronous fetch would return; `get` checks that it is asked for them
    in that order, and tells a stream which of its positions has been used.
    At most `depth` batches wait in the queue. An error while fetching is raised by `get`.
    """

    def __init__(self, sampler: Any, accum_steps: int, start_step: int, end_step: int,
                 pin: bool, depth: int = 2) -> None:
        self._sampler, self._accum_steps, self._pin = sampler, accum_steps, pin
        self._start, self._end = start_step, end_step
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        # A stream's batches come with its position after them (StreamBatches.batch_with_position).
        draw = getattr(self._sampler, "batch_with_position", None)
        try:
            for step in range(self._start, self._end):
                for micro in range(self._accum_steps):
                    x, y, position = draw(step, micro) if draw else (*self._sampler.batch(step, micro), None)
                    if self._pin:
                        x, y = x.pin_memory(), y.pin_memory()
                    if not self._put(((step, micro), x, y, position)):
                        return
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self._put(exc)

    def _put(self, item: object) -> bool:
        """Queue `item`, waiting for room; False once the prefetcher is closed."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) batch of (step, micro), each (B, T); blocks until it is ready."""
        if not self._start <= step < self._end:
            raise IndexError(f"step {step} is outside the prefetched steps {self._start}..{self._end - 1}")
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        key, x, y, position = item
        if key != (step, micro):
            raise RuntimeError(f"batches must be taken in order: asked for {(step, micro)}, next is {key}")
        if position is not None:
            self._sampler.consumed(position)
        return x, y

    def close(self) -> None:
        """Stop the thread and drop the batches it prepared."""
        self._closed.set()
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


FetchFn = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]  # (step, micro) -> (x, y), (B, T) each


@contextlib.contextmanager
def batch_source(sampler: Any, accum_steps: int, start_step: int, end_step: int,
                 device: torch.device) -> Iterator[FetchFn]:
    """fetch(step, micro) for the training loop: prefetched and pinned on CUDA, fetched in place elsewhere.

    On the CPU the batch share of a step is under 1% (docs/performance.md) and a thread would
    take its time from the same cores the step runs on.
    """
    if device.type != "cuda":
        yield sampler.batch
        return
    with BatchPrefetcher(sampler, accum_steps, start_step, end_step, pin=True) as prefetcher:
        yield prefetcher.get
