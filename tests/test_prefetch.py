"""Batches prepared ahead on a thread are exactly the sampler's, in order, and the thread stops cleanly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.data.prefetch import BatchPrefetcher, batch_source
from albert_gpt.errors import DataError

T, B = 8, 3


def _sampler() -> RandomWindowSampler:
    tokens = np.arange(500, dtype=np.uint16) % 97
    return RandomWindowSampler(tokens, block_size=T, batch_size=B, seed=7)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batch-prefetch"]


def test_prefetched_batches_equal_the_samplers_from_a_resumed_step():
    sampler = _sampler()
    with BatchPrefetcher(sampler, accum_steps=2, start_step=5, end_step=9, pin=False) as prefetcher:
        for step in range(5, 9):
            for micro in range(2):
                x, y = prefetcher.get(step, micro)
                want_x, want_y = sampler.batch(step, micro)
                assert torch.equal(x, want_x) and torch.equal(y, want_y)
                assert x.shape == (B, T)


def test_batches_asked_out_of_order_are_refused():
    with BatchPrefetcher(_sampler(), accum_steps=2, start_step=0, end_step=3, pin=False) as prefetcher:
        with pytest.raises(RuntimeError, match=r"asked for \(0, 1\), next is \(0, 0\)"):
            prefetcher.get(0, 1)
        with pytest.raises(IndexError, match="step 3 is outside"):
            prefetcher.get(3, 0)


class _FailingSampler(RandomWindowSampler):
    def batch(self, step: int, micro_step: int = 0):
        if step == 2:
            raise DataError("token file shrank under the sampler")
        return super().batch(step, micro_step)


def test_an_error_while_fetching_is_raised_by_get():
    tokens = np.arange(500, dtype=np.uint16)
    sampler = _FailingSampler(tokens, block_size=T, batch_size=B, seed=0)
    with BatchPrefetcher(sampler, accum_steps=1, start_step=0, end_step=5, pin=False) as prefetcher:
        prefetcher.get(0, 0)
        prefetcher.get(1, 0)
        with pytest.raises(DataError, match="shrank"):
            prefetcher.get(2, 0)


def test_close_stops_a_producer_waiting_on_a_full_queue():
    prefetcher = BatchPrefetcher(_sampler(), accum_steps=1, start_step=0, end_step=10_000, pin=False, depth=2)
    deadline = time.monotonic() + 5
    while prefetcher._queue.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetcher._queue.full()  # the producer is now blocked, 2 batches ahead
    prefetcher.close()
    assert not prefetcher._thread.is_alive()
    assert prefetcher._queue.empty()


def test_cpu_batch_source_fetches_in_place_without_a_thread():
    sampler = _sampler()
    with batch_source(sampler, 1, 0, 10, torch.device("cpu")) as fetch:
        assert not _prefetch_threads()
        x, _ = fetch(4, 0)
        assert torch.equal(x, sampler.batch(4, 0)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_cuda_batch_source_prefetches_pinned_batches():
    sampler = _sampler()
    with batch_source(sampler, 1, 0, 3, torch.device("cuda")) as fetch:
        assert len(_prefetch_threads()) == 1
        x, y = fetch(0, 0)
        assert x.is_pinned() and y.is_pinned()
        assert torch.equal(x, sampler.batch(0, 0)[0])
    assert not _prefetch_threads()
