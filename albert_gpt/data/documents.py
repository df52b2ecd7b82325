"""Documents read lazily from local files, so a corpus larger than memory is never held whole.

A document is a `str` (a JSON Lines or Parquet row, a hub row) or a `TextFile`: one .txt / .md file,
read in pieces of about PIECE_BYTES. A piece ends only where the tokenizer cannot tell the difference:
encoding the pieces one by one gives exactly the tokens of encoding the whole file (tested). Where
that is depends on the tokenizer (`cut_rule`):

  line           after any newline: tokenizers that encode each character alone (char)
  isolated_line  after a newline with a printable ASCII character on each side: byte-level BPE with
                 GPT-2's pre-tokenizer, whose pieces never reach across such a newline
  none           nowhere: the file is read whole (a tokenizer whose pre-tokenizer is not known to us)

A piece never grows past MAX_PIECE_BYTES, whatever the file (one long line, minified JSON, no whitespace at
all): where no newline allows a cut within it, `line` cuts at a character boundary (still exact), and
`isolated_line` before a single space with a printable character on each side (GPT-2's pre-tokenizer
starts a new piece at " word" whatever precedes it, so this is exact too). Where even that is missing (or
under `none`), the piece is cut at a character boundary and the cut is counted (`DecodeCounts.forced`):
the tokens on either side of such a cut may differ from those of the whole file, and the data summary
says how many such cuts there were.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from albert_gpt.data.textio import BOM, decode_utf8
from albert_gpt.errors import DataError

PIECE_BYTES = 1 << 18
MAX_PIECE_BYTES = 4 * PIECE_BYTES  # the most a piece holds, whatever the file
CUT_RULES = ("line", "isolated_line", "none")


def _printable(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E


def find_cut(buf: bytes | bytearray, start: int, rule: str) -> int:
    """The first position >= start + 1 just after a newline where `rule` allows a cut; -1 when there is
    none in `buf` yet (isolated_line needs to see the byte after the newline)."""
    if rule == "none":
        return -1
    i = buf.find(b"\n", start)
    while i >= 0:
        if rule == "line":
            return i + 1
        if i + 1 >= len(buf):
            return -1
        if i > 0 and _printable(buf[i - 1]) and _printable(buf[i + 1]):
            return i + 1
        i = buf.find(b"\n", i + 1)
    return -1


def find_space_cut(buf: bytes | bytearray, start: int) -> int:
    """The first position >= start just before a single space with a printable ASCII character on each
    side ("x y": the cut falls between x and " y"); -1 when there is none in `buf`."""
    i = buf.find(b" ", max(start, 1))
    while i >= 0:
        if i + 1 < len(buf) and _printable(buf[i - 1]) and _printable(buf[i + 1]):
            return i
        i = buf.find(b" ", i + 1)
    return -1


def char_boundary(buf: bytes | bytearray, at: int) -> int:
    """`at`, moved back over UTF-8 continuation bytes (at most 3) so that no character is split."""
    back = 0
    while back < 3 and at - back > 0 and (buf[at - back] & 0xC0) == 0x80:
        back += 1
    return at - back


class DecodeCounts:
    """Invalid UTF-8 sequences per file, as counted by the last complete reading of each file, and the
    pieces cut where no exact cut was found (`forced`)."""

    def __init__(self) -> None:
        self.per_file: dict[str, int] = {}
        self.forced: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.per_file.values())

    @property
    def forced_total(self) -> int:
        return sum(self.forced.values())


class TextFile:
    """One text file as one document, iterated as decoded pieces cut by `rule`."""

    def __init__(self, path: Path, errors: str, rule: str, counts: DecodeCounts) -> None:
        if rule not in CUT_RULES:
            raise ValueError(f"cut rule {rule!r} is not one of {CUT_RULES}")
        self.path, self.errors, self.rule, self.counts = path, errors, rule, counts

    def is_empty(self) -> bool:
        size = self.path.stat().st_size
        return size == 0 or (size <= len(BOM.encode()) and not "".join(self))

    def raw_pieces(self) -> Iterator[bytes]:
        """The file's bytes in pieces of PIECE_BYTES to MAX_PIECE_BYTES (but the last), cut by the rule
        (see the module docstring for a file where the rule finds no cut)."""
        pending = bytearray()
        scanned = 0  # pending[:scanned] holds no allowed cut
        forced = 0
        with open_data_file(self.path) as f:
            while data := f.read(PIECE_BYTES):
                pending += data
                while len(pending) >= PIECE_BYTES:
                    cut = find_cut(pending, max(scanned, PIECE_BYTES - 1), self.rule)
                    if cut < 0 and len(pending) >= MAX_PIECE_BYTES:
                        cut, exact = self._fallback_cut(pending)
                        forced += not exact
                    if cut < 0:
                        scanned = max(len(pending) - 1, 0)
                        break
                    yield bytes(pending[:cut])
                    del pending[:cut]
                    scanned = 0
        if pending:
            yield bytes(pending)
        self.counts.forced[str(self.path)] = forced

    def _fallback_cut(self, pending: bytearray) -> tuple[int, bool]:
        """A cut in a full piece without an allowed newline: (position, whether the tokens stay exact)."""
        if self.rule == "line":  # each character encoded alone: any character boundary is exact
            return char_boundary(pending, PIECE_BYTES), True
        if self.rule == "isolated_line":
            space = find_space_cut(pending, PIECE_BYTES)
            if space >= 0:
                return space, True
        return char_boundary(pending, PIECE_BYTES), False

    def __iter__(self) -> Iterator[str]:
        invalid, at_byte, at_line = 0, 0, 1
        for raw in self.raw_pieces():
            # a BOM only ever starts a file
            decoded = decode_utf8(raw, self.path, self.errors, at_byte == 0, at_byte, at_line)
            at_byte, at_line = at_byte + len(raw), at_line + raw.count(b"\n")
            invalid += decoded.invalid
            if decoded.text:
                yield decoded.text
        self.counts.per_file[str(self.path)] = invalid

    def __repr__(self) -> str:
        return f"TextFile({self.path})"


def pieces_of(document: str | Iterable[str]) -> Iterator[str]:
    """A document's text in pieces: a str is one piece."""
    if isinstance(document, str):
        yield document
    else:
        yield from document


def stream_items(documents: Iterable[str | Iterable[str]]) -> Iterator[tuple[str, bool]]:
    """(piece, starts a document) for every piece of every document, in order."""
    for doc in documents:
        first = True
        for piece in pieces_of(doc):
            yield piece, first
            first = False


def open_data_file(path: Path) -> BinaryIO:
    """A corpus file opened for reading, or a one-line DataError naming it (unreadable, gone, a folder)."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def iter_jsonl(path: Path, text_field: str, errors: str, counts: DecodeCounts) -> Iterator[str]:
    """The `text_field` string of every non-blank line, read line by line; a bad line names its number."""
    invalid, at_byte = 0, 0
    with open_data_file(path) as f:
        # binary lines end at b"\n" only (str.splitlines would also cut at U+2028, which JSON allows)
        for number, raw in enumerate(f, start=1):
            decoded = decode_utf8(raw, path, errors, number == 1, at_byte, number)
            at_byte += len(raw)
            invalid += decoded.invalid
            line = decoded.text
            if not line.strip():
                continue
            text = _jsonl_text(line, path, number, text_field)
            if text:
                yield text
    counts.per_file[str(path)] = invalid


def _jsonl_text(line: str, path: Path, number: int, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    if text_field not in record:
        raise DataError(
            f"{path}:{number}: no {text_field!r} field (data.text_field; fields here: "
            f"{', '.join(sorted(record)) or 'none'})"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{path}:{number}: field {text_field!r} is {type(text).__name__}, not a string")
    return text


def iter_parquet(path: Path, text_field: str, batch_rows: int = 4096) -> Iterator[str]:
    """The `text_field` strings of a Parquet file, read a batch of rows at a time."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        columns = table.schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read parquet ({_first_line(exc)})") from None
    if text_field not in columns:
        raise DataError(f"{path}: no column {text_field!r} (data.text_field; columns: {', '.join(columns)})")
    row = 0
    for batch in table.iter_batches(batch_size=batch_rows, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                kind = type(text).__name__
                raise DataError(f"{path}: row {row} of column {text_field!r} is {kind}, not a string")
            row += 1
            if text:
                yield text


class FileDocuments:
    """The documents of local files in order, re-iterable and lazy: .txt / .md files are one `TextFile`
    each, .jsonl and .parquet files one document per row. `max_documents` stops after that many."""

    def __init__(self, files: list[Path], text_field: str, errors: str, rule: str,
                 max_documents: int | None) -> None:
        self.files, self.text_field, self.errors, self.rule = files, text_field, errors, rule
        self.max_documents = max_documents
        self.counts = DecodeCounts()
        self._length: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def length(self) -> int:
        """The number of documents (one pass over the rows the first time it is asked)."""
        if self._length is None:
            self._length = sum(1 for _ in self)
        return self._length

    def __iter__(self) -> Iterator[str | TextFile]:
        n = 0
        for path in self.files:
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                rows: Iterable[str | TextFile] = iter_jsonl(path, self.text_field, self.errors, self.counts)
            elif suffix == ".parquet":
                rows = iter_parquet(path, self.text_field)
            else:
                doc = TextFile(path, self.errors, self.rule, self.counts)
                rows = [] if doc.is_empty() else [doc]
            for row in rows:
                yield row
                n += 1
                if self.max_documents is not None and n >= self.max_documents:
                    return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
