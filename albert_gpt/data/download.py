"""`data.source: url`: a single-file corpus fetched once into the cache, checked against its SHA-256.

The file lands in DATA.cache_dir/downloads/ under a name that carries its checksum, written to a
temporary name and renamed only once it is complete and verified: an interrupted or corrupted download
never looks like a finished one. A local copy (`data.path`) is used instead of the network when its
checksum matches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from albert_gpt.config import DataConfig
from albert_gpt.errors import DataError

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
        local = Path(data.path).expanduser()
        if not local.is_file():
            raise DataError(f"data.path: no such file: {data.path} (a local copy of {url})")
        _check(local, expected, f"data.path {local}")
        return local
    downloads = Path(data.cache_dir) / "downloads"
    target = downloads / _cached_name(url, expected)
    if target.is_file() and (expected is None or sha256_of(target) == expected):
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = downloads / f".tmp-{os.getpid()}-{target.name}"
    try:
        actual = _download(url, tmp, progress)
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
        tmp.unlink(missing_ok=True)
    return target


def _check(path: Path, expected: str | None, what: str) -> None:
    if expected is not None and (actual := sha256_of(path)) != expected:
        raise DataError(f"{what}: sha256 {actual} does not match data.sha256 {expected}")


def _cached_name(url: str, expected: str | None) -> str:
    """`<checksum or url hash>-<file name>`: one entry per content, readable in a listing."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    key = expected[:16] if expected else "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{key}-{name}"


def _download(url: str, out: Path, progress: bool) -> str:
    """Stream `url` into `out` with a progress bar in bytes; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, out.open("wb") as f:
            total = response.headers.get("Content-Length")
            bar = tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"downloading {Path(urllib.parse.urlparse(url).path).name}",
                disable=not progress,
            )
            with bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DataError(f"data.url {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"data.url {url}: cannot download it ({reason}); offline, give a local copy with data.path"
        ) from None
    return digest.hexdigest()
