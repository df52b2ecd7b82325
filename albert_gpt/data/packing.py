"""Encoding one split: documents -> ids -> one flat token file, written as it goes.

Documents arrive in pieces (documents.py); pieces are gathered into batches of about
batch_chars() characters and encoded by the tokenizers batch encoder, whose threads use every core
(measured faster than datasets.map worker processes, docs/performance.md). Memory holds one batch
and its ids, whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from albert_gpt.data.documents import pieces_of
from albert_gpt.data.sources import Document
from albert_gpt.data.tokenizer import TextTokenizer

MIN_BATCH_CHARS = 1 << 21  # a batch gives every thread pieces to encode...
MAX_BATCH_CHARS = 1 << 23  # ...and its encodings (about 100 bytes a token) stay far below a gigabyte


def batch_chars() -> int:
    return min(MAX_BATCH_CHARS, max(MIN_BATCH_CHARS, 4 * (os.cpu_count() or 1) * (1 << 18)))


@dataclass
class PackedCounts:
    tokens: int = 0
    n_bytes: int = 0
    n_chars: int = 0
    n_documents: int = 0
    sha256: str = ""  # of the token file, taken as it is written (nothing reads it back)
    max_id: int = -1  # its largest id, likewise


def pack_split(
    documents: Iterable[Document], tokenizer: TextTokenizer, path: Path, dtype: np.dtype, separate: bool,
    desc: str, progress: bool = False,
) -> PackedCounts:
    """Write the split's tokens to `path`; with `separate`, end-of-text goes between documents."""
    from tqdm.auto import tqdm

    counts = PackedCounts()
    digest = hashlib.sha256()
    with path.open("wb") as f, tqdm(desc=desc, unit="tok", unit_scale=True, disable=not progress,
                                    leave=False) as bar:
        for ids in encode_stream(documents, tokenizer, separate, counts):
            raw = ids.astype(dtype, copy=False).tobytes()
            f.write(raw)
            digest.update(raw)
            if len(ids):
                counts.max_id = max(counts.max_id, int(ids.max()))
            counts.tokens += len(ids)
            bar.update(len(ids))
    counts.sha256 = digest.hexdigest()
    return counts


def encode_stream(documents: Iterable[Document], tokenizer: TextTokenizer, separate: bool,
                  counts: PackedCounts | None = None) -> Iterator[np.ndarray]:
    """(n,) int64 ids of the documents in order, a batch at a time, with end-of-text between documents
    when `separate`; `counts` (documents, characters, bytes) is updated as they are read."""
    counts = counts if counts is not None else PackedCounts()
    eot = np.array([tokenizer.eot_id], dtype=np.int64)
    batch: list[str] = []
    starts: list[bool] = []  # piece i begins a document after the first
    size, limit = 0, batch_chars()
    for doc in documents:
        first_piece = True
        for piece in pieces_of(doc):
            if first_piece:
                starts.append(separate and counts.n_documents > 0)
                counts.n_documents += 1
                first_piece = False
            else:
                starts.append(False)
            batch.append(piece)
            counts.n_chars += len(piece)
            counts.n_bytes += len(piece.encode("utf-8", "surrogatepass"))
            size += len(piece)
            if size >= limit:
                yield _encode(batch, starts, tokenizer, eot)
                batch, starts, size = [], [], 0
    if batch:
        yield _encode(batch, starts, tokenizer, eot)


def _encode(batch: list[str], starts: list[bool], tokenizer: TextTokenizer, eot: np.ndarray) -> np.ndarray:
    parts = []
    for ids, start in zip(tokenizer.encode_arrays(batch), starts):
        if start:
            parts.append(eot)
        parts.append(ids)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
