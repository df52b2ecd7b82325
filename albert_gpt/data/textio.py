"""Turning bytes on disk into document text: BOM and invalid UTF-8 (documents.py reads the files).

Invalid UTF-8 follows `data.encoding_errors`: `replace` substitutes U+FFFD and counts the
substitutions (the pipeline reports the total); `strict` refuses with the file and byte offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from albert_gpt.errors import DataError

BOM = "\ufeff"
REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = REPLACEMENT.encode("utf-8")


@dataclass
class Decoded:
    text: str
    invalid: int  # invalid UTF-8 sequences replaced by U+FFFD


def decode_utf8(raw: bytes, source: Path | str, errors: str, strip_bom: bool = True, at_byte: int = 0,
                at_line: int = 1) -> Decoded:
    """Decode UTF-8, dropping a leading byte-order mark (when `strip_bom`: the start of a file).
    `raw` starts at byte `at_byte`, on line `at_line`, of `source` (for the strict error's position).

    With errors="replace" the count of replaced sequences is the number of U+FFFD in the
    result minus those written in the file as valid characters (EF BF BD), which a
    decoder always reads back as themselves.
    """
    if errors == "strict":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = at_line + raw.count(b"\n", 0, exc.start)
            raise DataError(
                f"{source}: invalid UTF-8 at byte {at_byte + exc.start} (line {line}); "
                "data.encoding_errors is strict (set it to replace to substitute U+FFFD)"
            ) from None
        invalid = 0
    else:
        text = raw.decode("utf-8", errors="replace")
        invalid = text.count(REPLACEMENT) - raw.count(_REPLACEMENT_BYTES)
    return Decoded(text.removeprefix(BOM) if strip_bom else text, invalid)
