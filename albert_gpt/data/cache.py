"""The token cache: `<data.cache_dir>/<fingerprint>/` holding tokenizer.json, one flat token file
per split (`train.bin`, `val.bin`, `test.bin`: raw uint16 or uint32, no header) and `meta.json`.

An entry is built in a temporary sibling directory, `meta.json` is written last (itself through
a temporary file), and the directory is then renamed into place: a directory without a readable
`meta.json`, or whose token files do not have the sizes it states, is incomplete and rebuilt.
`meta.json` also records each token file's sha256, largest id and modification time; a file whose
time changed is hashed again, and one whose content changed is reported and rebuilt, so tokens
are never trained on that the pipeline did not write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from albert_gpt.errors import DataError
from albert_gpt.paths import (
    UnsafePath,
    delete,
    folder_lock,
    marked,
    marker_kind,
    only,
    write_atomic,
    write_marker,
)

log = logging.getLogger(__name__)

PIPELINE_VERSION = 3  # bump when a change alters the tokens (or the metadata) written for the same inputs
META = "meta.json"
TOKENIZER = "tokenizer.json"


@dataclass
class TokenSplit:
    """One split's tokens (documents joined by end-of-text unless data.join_rows)."""

    name: str
    tokens: np.ndarray  # (N,) read-only memmap, uint16 or uint32
    n_bytes: int  # UTF-8 bytes of the split's text, separators excluded (for bits per byte)
    n_documents: int
    n_chars: int

    def __len__(self) -> int:
        return len(self.tokens)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id (at most vocab_size - 1) fits in it."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def fingerprint(spec: dict[str, Any]) -> str:
    canonical = json.dumps({"pipeline_version": PIPELINE_VERSION, **spec}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:20]


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False))


def written_record(path: Path, sha256: str, max_id: int) -> dict[str, Any]:
    """What meta.json keeps to recognise a token file later: sha256 and largest id (taken while the file
    was written, packing.pack_split), size and mtime."""
    stat = path.stat()
    return {"sha256": sha256, "max_id": max_id, "file_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def split_record(path: Path, dtype: np.dtype) -> dict[str, Any]:
    """written_record of a token file read back: one chunked read gives both the hash and the largest id
    (a memory map's max would pull every page of the file into this process's resident memory)."""
    digest = hashlib.sha256()
    largest = -1
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):  # a multiple of every token size
            digest.update(chunk)
            ids = np.frombuffer(chunk, dtype=dtype)
            if ids.size:
                largest = max(largest, int(ids.max()))
    return written_record(path, digest.hexdigest(), largest)


def read_entry(entry: Path, fp: str) -> dict[str, Any] | None:
    """The entry's metadata when it is complete, matches `fp` and its token files are the ones it
    describes; else None (the caller rebuilds it)."""
    try:
        meta = json.loads((entry / META).read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fp or not (entry / TOKENIZER).is_file():
            return None
        dtype = np.dtype(meta["dtype"])
        for name, split in meta["splits"].items():
            if not _split_intact(entry / f"{name}.bin", split, dtype, meta["vocab_size"]):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


def _split_intact(path: Path, split: dict[str, Any], dtype: np.dtype, vocab_size: int) -> bool:
    if not path.is_file() or path.stat().st_size != split["tokens"] * dtype.itemsize:
        return False
    if split["max_id"] >= vocab_size:
        log.warning("token cache %s: ids up to %d for a vocabulary of %d; rebuilding", path, split["max_id"],
                    vocab_size)
        return False
    if path.stat().st_mtime_ns == split["mtime_ns"]:
        return True  # untouched since it was recorded: no need to read it again
    if split_record(path, dtype)["sha256"] != split["sha256"]:
        log.warning("token cache %s was changed after it was built (sha256 differs); rebuilding", path)
        return False
    return True


def open_split(entry: Path, name: str, meta: dict[str, Any]) -> TokenSplit:
    info = meta["splits"][name]
    dtype = np.dtype(meta["dtype"])
    if info["tokens"] == 0:  # numpy cannot map an empty file
        tokens: np.ndarray = np.zeros(0, dtype=dtype)
    else:
        tokens = np.memmap(entry / f"{name}.bin", dtype=dtype, mode="r")
    return TokenSplit(name, tokens, info["bytes"], info["documents"], info["characters"])


def _cache_name(name: str) -> bool:
    """Names the pipeline writes in a cache entry: its files and their temporaries."""
    return name in (META, TOKENIZER) or name.endswith(".bin") or ".tmp-" in name


def sweep_stale_entries(root: Path) -> None:
    """Remove temporary entries (`.FP.tmp-*`) that a killed build left: only folders that carry the
    cache's marker and whose builder no longer holds its lock."""
    if root.is_symlink() or not root.is_dir():
        return
    for path in root.iterdir():
        if not (path.name.startswith(".") and ".tmp-" in path.name) or marker_kind(path) != "cache-build":
            continue
        with folder_lock(path, wait=False) as free:
            if not free:
                continue  # another process is building it right now
            try:
                delete(path, root, marked("cache-build", _cache_name))
                log.info("removed %s, left by a build that was killed", path)
            except (OSError, UnsafePath) as exc:
                log.warning("left %s in place (%s)", path, exc)


@contextlib.contextmanager
def building_entry(root: Path, fp: str) -> Iterator[Path]:
    """A fresh temporary directory to fill; renamed to `root/fp` when the block ends without error.

    The block must write META last. On any error (or Ctrl-C) the temporary directory is removed.
    If another process completed the same entry meanwhile, its copy is kept and ours dropped. The
    builder holds a lock on the directory, so a sweep at another start never takes it for litter.
    """
    tmp = root / f".{fp}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise DataError(f"data.cache_dir {root}: cannot create a cache entry ({exc.strerror})") from None
    with folder_lock(tmp):  # taken before the marker: a sweep never sees our marker unlocked
        try:
            write_marker(tmp, "cache-build")
            sweep_stale_entries(root)
            yield tmp
            if not (tmp / META).is_file():
                raise DataError(f"internal: cache entry {tmp} has no {META}")
            final = root / fp
            if os.path.lexists(final):
                if read_entry(final, fp) is not None:
                    log.info("another process completed %s first; keeping its copy", final)
                    return
                _remove_incomplete(final, root)
            try:
                os.replace(tmp, final)
            except OSError as exc:  # another process renamed its copy into place since the check above
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and read_entry(final, fp) is not None:
                    log.info("another process completed %s first; keeping its copy", final)
                    return
                raise
        finally:
            if tmp.exists():
                with contextlib.suppress(OSError, UnsafePath):
                    delete(tmp, root, marked("cache-build", _cache_name))


def _remove_incomplete(entry: Path, root: Path) -> None:
    """An incomplete entry left by an older crash (or a link in its place) makes way for the new one;
    anything else by that name is refused in one line."""
    try:
        delete(entry, root, lambda path: only(path, _cache_name))
    except UnsafePath as exc:
        raise DataError(f"token cache {entry} is incomplete and holds files the pipeline did not write "
                        f"({exc}); move it away or choose another data.cache_dir") from None
