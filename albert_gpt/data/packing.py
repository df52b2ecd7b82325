"""Encoding one split: documents -> ids through `datasets.map` -> one flat token file.

Documents are read in chunks of about CHUNK_CHARS characters, so a streamed corpus larger than
memory is packed with bounded memory; each chunk becomes an in-memory `datasets.Dataset`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from albert_gpt.data.tokenizer import TextTokenizer

CHUNK_CHARS = 1 << 25


@dataclass
class PackedCounts:
    tokens: int = 0
    n_bytes: int = 0
    n_chars: int = 0
    n_documents: int = 0


def pack_split(
    documents: Iterable[str], tokenizer: TextTokenizer, path: Path, dtype: np.dtype, separate: bool,
    num_proc: int, desc: str,
) -> PackedCounts:
    """Write the split's tokens to `path`; with `separate`, end-of-text goes between documents."""
    counts = PackedCounts()
    with path.open("wb") as f:
        for chunk in _chunks(documents):
            counts.n_documents += len(chunk)
            counts.n_chars += sum(len(text) for text in chunk)
            counts.n_bytes += sum(len(text.encode("utf-8", "surrogatepass")) for text in chunk)
            ids = encode_documents(chunk, tokenizer, separate, num_proc, desc)
            f.write(ids.astype(dtype, copy=False).tobytes())
            counts.tokens += len(ids)
        if separate and counts.tokens:
            # every document was followed by end-of-text; the last one has nothing to separate
            counts.tokens -= 1
            f.truncate(counts.tokens * dtype.itemsize)
    return counts


def encode_documents(
    texts: list[str], tokenizer: TextTokenizer, separate: bool, num_proc: int, desc: str
) -> np.ndarray:
    """(N,) int64 ids of the texts in order, each followed by end-of-text when `separate`."""
    import datasets

    eot = tokenizer.eot_id

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer.encode_batch(batch["text"])
        if separate:
            for row in ids:
                row.append(eot)
        return {"ids": ids}

    ds = datasets.Dataset.from_dict({"text": texts})
    ds = ds.map(
        encode, batched=True, remove_columns=["text"], desc=desc,
        num_proc=min(num_proc, len(texts)) if num_proc > 1 else None,
        # the dataset lives in memory, so nothing is cached under this name; giving one spares
        # datasets hashing the tokenizer, which costs more than encoding a small corpus
        new_fingerprint=uuid.uuid4().hex,
    )
    column = ds.data.table.column("ids")
    if len(column) == 0:
        return np.zeros(0, dtype=np.int64)
    return pc.list_flatten(column).to_numpy()


def _chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for text in documents:
        if not text:
            continue
        chunk.append(text)
        size += len(text)
        if size >= CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
