"""What albert_gpt may delete, and how it writes: the one deletion rule, writes that never follow a
link, the ownership marker, stale temporary files and OS file locks. Every caller that deletes or
replaces something (run overwrite, checkpoint rotation, stale-file sweeps, export, cache rebuilds)
goes through `delete`.

The deletion rule. albert_gpt deletes a path only when
1. it lies inside the folder being cleaned (`within`), with every link resolved, and is not that folder;
2. it is not, and does not contain, the working directory or a path the caller protects (run.out_dir,
   a run directory other than the one being replaced, the run being exported);
3. albert_gpt can prove it wrote it: `proof(path)` holds. Proofs are the ownership marker albert_gpt
   writes into the folders it creates (`.albert-gpt`), a manifest it wrote (a checkpoint's meta.json
   naming every file in it), or a name albert_gpt gives only its own files in a folder of its own.
A symbolic link is removed as a link, never followed: removing it deletes no data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

MARKER = ".albert-gpt"  # {"kind": ...}: this folder was created by albert_gpt
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# `.NAME.tmp-PID-HEX`: a file being written by process PID (see atomic_file)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")

Proof = Callable[[Path], bool]


class UnsafePath(ValueError):
    """albert_gpt refused to delete or write a path (it is elsewhere, protected, or not its own)."""


def is_inside(path: Path, root: Path) -> bool:
    """True when `path`, with every symbolic link resolved, is `root` or lies under it."""
    resolved, base = _real(path), _real(root)
    return resolved == base or base in resolved.parents


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def check_deletable(path: Path, within: Path, protect: Iterable[Path] = ()) -> None:
    """Rules 1 and 2: UnsafePath unless `path` lies inside `within` and holds no protected path."""
    real, base = _real(path), _real(within)
    if real == base or base not in real.parents:
        raise UnsafePath(f"refusing to delete {path}: it is not inside {within}")
    cwd = Path.cwd()
    for guard in (cwd, *protect):
        held = _real(guard)
        if held == real or real in held.parents:
            what = "the working directory" if guard == cwd else str(guard)
            raise UnsafePath(f"refusing to delete {path}: it is or contains {what}")


def delete(path: Path, within: Path, proof: Proof, protect: Iterable[Path] = ()) -> None:
    """Delete the file or folder `path` under the deletion rule; UnsafePath when the rule says no.
    Nothing there: nothing to do."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        if not is_inside(path.parent, within):
            raise UnsafePath(f"refusing to delete {path}: it is not inside {within}")
        path.unlink()
        return
    check_deletable(path, within, protect)
    if not proof(path):
        raise UnsafePath(f"refusing to delete {path}: nothing shows that albert_gpt wrote it")
    if path.is_dir():
        shutil.rmtree(path)  # links inside are unlinked, never followed
    else:
        path.unlink()


def clear_folder(folder: Path, within: Path, proof: Proof) -> list[Path]:
    """Delete each entry of `folder` that `proof` shows albert_gpt wrote, then the folder when nothing is
    left; a link in the folder's place is removed as a link. Returns the entries kept."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        delete(folder, within, lambda p: False)  # a link (removed as a link), nothing, or refused
        return []
    kept = []
    for entry in sorted(folder.iterdir()):
        try:
            delete(entry, folder, proof)
        except (OSError, UnsafePath):
            kept.append(entry)
    if not kept:
        folder.rmdir()
    return kept


# ---------------------------------------------------------------- proofs


def write_marker(folder: Path, kind: str) -> None:
    """Mark `folder`, which albert_gpt has just created, as albert_gpt's (`kind` says what it is)."""
    with os.fdopen(create_new(Path(folder) / MARKER), "w", encoding="utf-8") as f:
        json.dump({"kind": kind}, f)


def marker_kind(folder: Path) -> str | None:
    """The kind in `folder`'s marker, when `folder` is a real folder with a real marker file."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return None
    try:
        fd = os.open(folder / MARKER, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            value = json.loads(f.read(4096).decode("utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def entries(folder: Path) -> set[str]:
    return {p.name for p in Path(folder).iterdir()}


def marked(kind: str, allowed: Collection[str] | Callable[[str], bool]) -> Proof:
    """Proof: the folder carries albert_gpt's marker of `kind` and holds only names albert_gpt writes
    there (so a file a user put in later is never deleted with it)."""
    return lambda path: marker_kind(path) == kind and only(path, allowed)


def only(folder: Path, allowed: Collection[str] | Callable[[str], bool]) -> bool:
    """True when `folder` is a real folder whose entries are all allowed names (the marker included)."""
    if Path(folder).is_symlink() or not Path(folder).is_dir():
        return False
    ok = allowed if callable(allowed) else allowed.__contains__
    return all(name == MARKER or ok(name) for name in entries(folder))


def own_temp_file(path: Path) -> bool:
    """Proof for a file named as atomic_file names its temporaries, whose writer is gone."""
    match = _TEMP_NAME.match(Path(path).name)
    return match is not None and Path(path).is_file() and not pid_alive(int(match["pid"]))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sweep_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files atomic_file left in `folder` when its process was killed; returns them."""
    swept: list[Path] = []
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return swept
    for path in folder.iterdir():
        if _TEMP_NAME.match(path.name) and not path.is_symlink():
            with contextlib.suppress(OSError, UnsafePath):  # refused while its writer lives
                delete(path, folder, own_temp_file)
                swept.append(path)
    return swept


# ---------------------------------------------------------------- writing


def temp_name(path: Path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def create_new(path: Path, mode: int = 0o666) -> int:
    """A file descriptor for a new file: O_EXCL and O_NOFOLLOW, so nothing that exists, and no link, is
    ever opened in its place."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)


@contextlib.contextmanager
def atomic_file(path: Path, text: bool = True) -> Iterator[IO[Any]]:
    """A new file that becomes `path` whole or not at all: written under a fresh temporary name
    beside it (created exclusively, so a planted link is never followed), flushed, then renamed over
    `path` (a link at `path` itself is replaced, not followed). Removed on any error."""
    path = Path(path)
    tmp = temp_name(path)
    fd = create_new(tmp)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    with atomic_file(path, text=isinstance(data, str)) as f:
        f.write(data)


def open_append(path: Path) -> IO[str]:
    """`path` opened for appending text, created if missing; OSError (ELOOP) when it is a link."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
    return os.fdopen(fd, "a", encoding="utf-8")


# ---------------------------------------------------------------- locks


def lock_fd(fd: int, shared: bool = False, wait: bool = False) -> bool:
    """flock `fd` (dies with the process); False when another process holds it and `wait` is off."""
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """Hold a lock on `folder` itself for the block; yields False when it was not free (`wait` off) or
    the folder is gone."""
    try:
        fd = os.open(folder, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        yield False
        return
    try:
        yield lock_fd(fd, shared=shared, wait=wait)
    finally:
        os.close(fd)
