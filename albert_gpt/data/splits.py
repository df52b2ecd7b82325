"""Train / validation / test: the source's own splits, else carved from the training documents.

By document, with a fixed seedless rule on a document's position i: Fibonacci hashing,
u_i = frac((i + 1) / phi), is equidistributed, so every held-out split gets its share to within
a document or two at any corpus size, and a stream is split without knowing its length
(document i is held out for validation when u_i < val_fraction, for test when the next
test_fraction of the unit interval holds it).

By character position when that rule would leave a held-out split or train without a document
(a single file such as tiny Shakespeare): the joined text is cut into train, then val, then
test, each cut moved forward to the next line start (nanoGPT cuts its 90/10 split this way,
without the line rule).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from albert_gpt.data.documents import pieces_of
from albert_gpt.data.sources import Document, SourceDocs, document_count

SPLITS = ("train", "val", "test")
_FIB = 2654435769  # round(2**32 / phi): Knuth's multiplicative hashing constant


def unit_position(i: int) -> float:
    """u_i in [0, 1) for document position i (exact integer arithmetic, the same on every machine)."""
    return ((i + 1) * _FIB % 2**32) / 2**32


def unit_positions(n: int) -> np.ndarray:
    """unit_position of 0 .. n-1 at once (uint64 products wrap modulo 2**64, a multiple of 2**32, so the
    result is still exact)."""
    return ((np.arange(n).astype(np.uint64) + 1) * np.uint64(_FIB) % np.uint64(2**32)) / 2**32


def _label(u: float, carve: list[tuple[str, float]]) -> str:
    edge = 0.0
    for name, fraction in carve:
        edge += fraction
        if u < edge:
            return name
    return "train"


@dataclass
class Splits:
    documents: dict[str, Iterable[Document]]  # keys: SPLITS
    method: str


class CarvedDocuments:
    """The documents of one split under the position rule, re-iterable over a list or a stream."""

    def __init__(self, train: Iterable[Document], carve: list[tuple[str, float]], name: str,
                 length: int | None) -> None:
        self._train, self._carve, self._name, self.length = train, carve, name, length

    def __iter__(self) -> Iterator[Document]:
        for i, doc in enumerate(self._train):
            if _label(unit_position(i), self._carve) == self._name:
                yield doc


def make_splits(source: SourceDocs, val_fraction: float, test_fraction: float) -> Splits:
    """All three splits: those the source defines, the others carved from its "train"."""
    fractions = {"val": val_fraction, "test": test_fraction}
    carve = [(name, fractions[name]) for name in ("val", "test") if name not in source.splits]
    if not carve:
        return Splits(dict(source.splits), "the source's own splits")
    train = source.splits["train"]
    n = document_count(train)
    counts = _counts(n, carve) if n is not None else None
    own = [name for name in ("val", "test") if name in source.splits]
    suffix = f"; {', '.join(own)} from the source" if own else ""
    names = ", ".join(name for name, f in carve if f > 0) or "no held-out split"
    by_position = counts is not None and (not counts or not all(counts[name] for name, f in carve if f > 0))
    if by_position:
        mid_line: list[str] = []
        pieces = split_by_position(train, carve, mid_line)
        count = f"{n} document{'s' if n != 1 else ''}"
        where = "at line starts" if not mid_line else (
            f"at line starts, {' and '.join(mid_line)} mid-line (no line break after the cut)")
        method = f"{names} cut from train by character position {where} ({count}){suffix}"
        return Splits({**source.splits, **pieces}, method)
    documents = dict(source.splits)
    for name in ["train"] + [name for name, _ in carve]:
        length = counts[name] if counts is not None else None
        documents[name] = CarvedDocuments(train, carve, name, length)
    return Splits(documents, f"{names} carved from train by document (fixed position rule){suffix}")


def _counts(n: int, carve: list[tuple[str, float]]) -> dict[str, int]:
    """Documents per split under the position rule; {} when train would be left empty."""
    u = unit_positions(n)
    counts, edge = {}, 0.0
    for name, fraction in carve:
        counts[name] = int(np.count_nonzero((u >= edge) & (u < edge + fraction)))
        edge += fraction
    counts["train"] = n - sum(counts.values())
    return counts if counts["train"] > 0 else {}


def split_by_position(docs: Iterable[Document], carve: list[tuple[str, float]],
                      mid_line: list[str] | None = None) -> dict[str, list[Document]]:
    """Cut the joined documents into train then each carved split, at line starts; where the last
    document has no line break after a cut (one long line), at the cut's own character, and that split's
    name is appended to `mid_line`.

    Two passes, neither holding more than a piece of a document: the first measures the documents,
    the second finds the line start after each cut. A str document gives str parts; a text file gives
    `DocumentPart`s that read their share of the file when iterated.
    """
    docs = list(docs)  # a handful: this rule only applies when there are too few documents to carve
    lengths = [sum(len(piece) for piece in pieces_of(doc)) for doc in docs]
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    total = starts[-1]
    held_out = sum(fraction for _, fraction in carve)
    cuts, position = [], total * (1.0 - held_out)
    for name, fraction in carve:
        cut = _line_start(docs, starts, round(position))
        if cut >= total and round(position) < total and fraction > 0:  # no line start left: cut mid-line
            cut = round(position)
            if mid_line is not None:
                mid_line.append(name)
        cuts.append(cut)
        position += total * fraction
    bounds = [0, *cuts, total]
    names = ["train"] + [name for name, _ in carve]
    parts: dict[str, list[Any]] = {name: [] for name in names}  # text, or DocumentPart of a file
    for doc, start, length in zip(docs, starts, lengths):
        for name, lo, hi in zip(names, bounds, bounds[1:]):
            lo, hi = max(lo - start, 0), min(max(hi - start, 0), length)
            if lo < hi:
                parts[name].append(doc[lo:hi] if isinstance(doc, str) else DocumentPart(doc, lo, hi))
    return parts


class DocumentPart:
    """Characters [lo, hi) of a document read in pieces, itself iterated as pieces."""

    def __init__(self, doc: Iterable[str], lo: int, hi: int) -> None:
        self.doc, self.lo, self.hi = doc, lo, hi

    def __iter__(self) -> Iterator[str]:
        offset = 0
        for piece in self.doc:
            end = offset + len(piece)
            part = piece[max(self.lo - offset, 0): max(self.hi - offset, 0)]
            if part:
                yield part
            offset = end
            if offset >= self.hi:
                return


def _line_start(docs: list[Document], starts: list[int], position: int) -> int:
    """The first position >= `position` that begins a line (or a document)."""
    k = bisect.bisect_right(starts, position) - 1
    if k >= len(docs):
        return starts[-1]
    offset = position - starts[k]
    if offset == 0:
        return position
    at = 0
    for piece in pieces_of(docs[k]):
        end = at + len(piece)
        if end >= offset:  # this piece holds character offset - 1 or lies after it
            newline = piece.find("\n", max(offset - 1 - at, 0))
            if newline >= 0:
                return starts[k] + at + newline + 1
        at = end
    return starts[k] + at
