"""The unigram reference: how well token frequencies alone predict the validation split.

A language model that has learned nothing beyond frequencies sits at this perplexity
(DeepNet's "stall near the unigram loss"), so val perplexity divided by it says how much
context the model uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def unigram_perplexity(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Perplexity on `val_tokens` of the unigram model estimated from `train_tokens`.

    p(t) = (count_train(t) + 1) / (N_train + V): add-one smoothing gives tokens absent from
    the training split a finite probability. Estimating from train, not from val itself,
    keeps the reference honest: the model also sees only train.
    """
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in _chunks(train_tokens):
        counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    log_p = np.log(counts + 1.0) - math.log(len(train_tokens) + vocab_size)
    # positions 1.. only: the model never predicts the first token, so neither does the reference
    nll = sum(-log_p[chunk].sum() for chunk in _chunks(val_tokens[1:])) / (len(val_tokens) - 1)
    return math.exp(nll)


def _chunks(tokens: np.ndarray, size: int = 1 << 24) -> Iterator[np.ndarray]:
    """Slices of a (possibly memory-mapped) token array, so a large corpus is never copied whole."""
    for start in range(0, len(tokens), size):
        yield np.asarray(tokens[start : start + size], dtype=np.int64)
