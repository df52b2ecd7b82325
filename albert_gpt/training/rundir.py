"""The run directory: where it may be, one trainer at a time (an OS lock), refusing to train over an
existing run unless resuming or told to replace it, and the files a run writes first."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from albert_gpt.checkpoint.store import clear_checkpoints
from albert_gpt.config import Config
from albert_gpt.errors import TrainingError
from albert_gpt.paths import UnsafePath, delete, is_inside, lock_fd, sweep_temp_files
from albert_gpt.training.metrics import EVENT_PREFIX, clear_event_files

log = logging.getLogger(__name__)

# What a training run writes; replacing a run removes exactly these, nothing else in the folder.
RUN_FILES = ("config.yaml", "tokenizer.json", "metrics.jsonl", "data.json")
RUN_DIRS = ("checkpoints", "tb")  # "tb": event files of runs written before they moved to RUN_DIR
LOCK_FILE = ".lock"  # held (flock) by the process training the run; names it for a second one


def holds_run(run_dir: Path) -> bool:
    return (any((run_dir / name).exists() or (run_dir / name).is_symlink() for name in RUN_FILES + RUN_DIRS)
            or any(Path(run_dir).glob(EVENT_PREFIX + "*")))


def check_run_dir(cfg: Config, resume: bool) -> Path:
    """RUN_DIR, after checking (without writing anything) that training into it is allowed."""
    try:
        return _check_run_dir(cfg, resume)
    except OSError as exc:  # e.g. a path component too long for the file system
        raise TrainingError(f"run directory {cfg.run_dir}: unusable ({_reason(exc)}); "
                            "choose another run.out_dir or --set run.name=...") from None


def _check_run_dir(cfg: Config, resume: bool) -> Path:
    run_dir, out_dir = cfg.run_dir, Path(cfg.run.out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"run directory {run_dir} is a file; choose another --set run.name=... "
                            "or run.out_dir")
    # run.name is one plain folder name, so only a symbolic link can take the run elsewhere.
    if (run_dir.exists() or run_dir.is_symlink()) and not is_inside(run_dir, out_dir):
        raise TrainingError(f"run directory {run_dir} is a symbolic link leading outside run.out_dir "
                            f"({out_dir}); refusing to write there")
    if resume and (run_dir / "checkpoints").is_symlink():
        target = os.path.realpath(run_dir / "checkpoints")
        raise TrainingError(f"{run_dir / 'checkpoints'} is a symbolic link (to {target}); a run writes and "
                            "rotates checkpoints only in a real folder inside its run directory; replace the "
                            "link by a folder to resume")
    if holds_run(run_dir) and not resume and not cfg.run.overwrite:
        raise TrainingError(
            f"run directory {run_dir} already holds a run; continue it with "
            f"`albert-gpt train {run_dir} --resume`, choose another --set run.name=..., "
            f"or replace it with --set run.overwrite=true"
        )
    return run_dir


class RunLock:
    """An exclusive OS lock (flock) on RUN_DIR/.lock while this process trains the run. It dies with the
    process, so a killed run never leaves a stale lock behind."""

    def __init__(self, run_dir: Path) -> None:
        path = run_dir / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd: int | None = os.open(path, flags, 0o666)
        except OSError as exc:
            raise TrainingError(f"cannot lock the run directory: {path} ({_reason(exc)}); a link or an "
                                "unwritable folder?") from None
        if not lock_fd(self.fd):
            holder = os.pread(self.fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
            self.release()
            raise TrainingError(f"run directory {run_dir} is being trained by {holder}; wait for it to "
                                "finish or stop it, then try again")
        command = " ".join(sys.argv[1:])[:200]
        text = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} " \
               f"({command})"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode("utf-8"), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def prepare_run_dir(cfg: Config, resume: bool) -> tuple[Path, RunLock]:
    """Create RUN_DIR and lock it for this process, or check that training into it is allowed and
    replace the run there (run.overwrite); returns it and the lock, which the caller releases."""
    run_dir = check_run_dir(cfg, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"run directory {run_dir}: cannot create it ({_reason(exc)}); "
                            "choose another run.out_dir or --set run.name=...") from None
    lock = RunLock(run_dir)
    try:
        check_run_dir(cfg, resume)  # again, now that no other trainer can change it
        for stale in sweep_temp_files(run_dir):
            log.info("removed %s, left by a process that was killed", stale)
        if holds_run(run_dir) and not resume:
            _replace_run(run_dir)
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def _replace_run(run_dir: Path) -> None:
    """run.overwrite: delete the run's own entries, under the deletion rule (paths.py); what albert_gpt
    did not write stays and is named."""
    log.warning("run.overwrite: replacing the run in %s", run_dir)
    kept: list[Path] = []
    try:
        for name in RUN_FILES:  # plain files by the run's own names (a link is removed as a link)
            delete(run_dir / name, run_dir, lambda p: p.is_file())
        kept += clear_checkpoints(run_dir)
        kept += clear_event_files(run_dir)
    except (OSError, UnsafePath) as exc:
        raise TrainingError(f"run directory {run_dir}: cannot replace the run ({exc}); "
                            "choose another --set run.name=...") from None
    if kept:
        log.warning("run.overwrite: kept %d entr%s that albert_gpt did not write: %s", len(kept),
                    "y" if len(kept) == 1 else "ies", ", ".join(str(p) for p in kept[:5]))


def write_run_file(path: Path, write) -> None:
    """Call `write(path)` for one of the run's own files, turning a failure into one line."""
    try:
        write(path)
    except OSError as exc:
        raise TrainingError(f"cannot write {path} ({_reason(exc)}); nothing was trained yet") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def resume_command(run_dir: Path) -> str:
    return f"albert-gpt train {run_dir} --resume"
