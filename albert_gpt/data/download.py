"""`data.source: url`: a single-file corpus fetched once into the cache, checked against its SHA-256.

The file lands in DATA.cache_dir/downloads/ under a name that carries its checksum, written to a
temporary name and renamed only once it is complete and verified: an interrupted or corrupted download
never looks like a finished one. A local copy (`data.path`) is used instead of the network when its
checksum matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from albert_gpt.config import DataConfig
from albert_gpt.errors import DataError
from albert_gpt.paths import create_new, sweep_temp_files, temp_name

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def corpus_file(data: DataConfig, progress: bool = True) -> Path:
    """The verified local file of a url source: `data.path` when given (its checksum must match), else
    the cached download, else a fresh download."""
    url, expected = data.url or "", data.sha256
    if data.path:
        return _local_copy(data, url, expected)
    downloads = Path(data.cache_dir) / "downloads"
    target = downloads / _cached_name(url, expected)
    if target.is_file() and (expected is None or sha256_of(target) == expected):
        return target
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data.cache_dir: cannot create {downloads} ({exc.strerror or exc})") from None
    for stale in sweep_temp_files(downloads):
        log.info("removed %s, left by a download that was killed", stale)
    tmp = temp_name(target)
    try:
        with _removed_on_sigterm():
            actual = _download(url, tmp, progress, data.download_max_bytes, data.download_timeout_s)
        if expected is not None and actual != expected:
            raise DataError(
                f"data.url {url}: downloaded file has sha256 {actual}, data.sha256 says {expected} "
                "(the file changed upstream or the download was corrupted); nothing was kept"
            )
        if expected is None:
            log.warning(
                "data.sha256 is not set: %s has sha256 %s; set data.sha256 to pin this corpus", url, actual
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return target


def _local_copy(data: DataConfig, url: str, expected: str | None) -> Path:
    local = Path(data.path or "").expanduser()
    if not local.is_file():
        raise DataError(f"data.path: no such file: {data.path} (a local copy of {url})")
    _check(local, expected, f"data.path {local}")
    return local


class _Terminated(BaseException):
    """SIGTERM during a download: unwinds like Ctrl-C, so the partial file is removed."""


@contextlib.contextmanager
def _removed_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into an exception for the block (main thread only), so `finally` clauses run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except _Terminated:
        raise DataError("download stopped by SIGTERM; the partial file was removed") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check(path: Path, expected: str | None, what: str) -> None:
    if expected is not None and (actual := sha256_of(path)) != expected:
        raise DataError(f"{what}: sha256 {actual} does not match data.sha256 {expected}")


def _cached_name(url: str, expected: str | None) -> str:
    """`<checksum or url hash>-<file name>`: one entry per content, readable in a listing."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    key = expected[:16] if expected else "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{key}-{name}"


def _download(url: str, out: Path, progress: bool, max_bytes: int, timeout_s: float) -> str:
    """Stream `url` into the new file `out` with a progress bar in bytes; returns the SHA-256 of what
    was written. Refused: more than `max_bytes`, more than `timeout_s` in all, fewer bytes than the
    server's Content-Length."""
    digest = hashlib.sha256()
    deadline = time.monotonic() + timeout_s
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=min(TIMEOUT_S, timeout_s)) as response, \
                os.fdopen(create_new(out), "wb") as f:
            total = _content_length(response.headers.get("Content-Length"))
            if total is not None and total > max_bytes:
                raise DataError(f"data.url {url}: {total:,} bytes announced, more than "
                                f"data.download_max_bytes ({max_bytes:,}); nothing was kept")
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=f"downloading {Path(urllib.parse.urlparse(url).path).name}", disable=not progress)
            with bar:
                while chunk := response.read1(CHUNK):  # what has arrived: the deadline is checked often
                    written += len(chunk)
                    if written > max_bytes:
                        raise DataError(f"data.url {url}: more than data.download_max_bytes ({max_bytes:,}) "
                                        "bytes; stopped and removed")
                    if time.monotonic() > deadline:
                        raise DataError(f"data.url {url}: not finished within data.download_timeout_s "
                                        f"({timeout_s:g} s; {written:,} bytes so far); stopped and removed")
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DataError(f"data.url {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, http.client.IncompleteRead):
            reason = f"the connection closed after {written:,} bytes"
        raise DataError(
            f"data.url {url}: cannot download it ({reason}); offline, give a local copy with data.path"
        ) from None
    if total is not None and written != total:
        raise DataError(f"data.url {url}: the download stopped at {written:,} of the {total:,} bytes the "
                        "server announced (cut short); nothing was kept")
    return digest.hexdigest()


def _content_length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None and value.strip().isdigit() else None
    except ValueError:
        return None
