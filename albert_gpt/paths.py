"""Paths that must stay inside a root: a run directory inside run.out_dir, a checkpoint's temporary
files inside the checkpoints folder. Used before anything is deleted or replaced."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def is_inside(path: Path, root: Path) -> bool:
    """True when `path`, with every symbolic link resolved, is `root` or lies under it."""
    resolved, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return resolved == base or base in resolved.parents


def remove_inside(path: Path, root: Path) -> None:
    """Delete the file or folder `path`, which must lie inside `root`; a symbolic link is removed as a
    link and never followed. Raises ValueError when `path` lies elsewhere."""
    if not is_inside(path.parent, root):
        raise ValueError(f"refusing to delete {path}: it is not inside {root}")
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)
