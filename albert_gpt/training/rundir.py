"""The run directory: where it may be, refusing to train over an existing run unless resuming or told
to replace it, and the files a run writes first."""

from __future__ import annotations

import logging
from pathlib import Path

from albert_gpt.config import Config
from albert_gpt.errors import TrainingError
from albert_gpt.paths import is_inside, remove_inside

log = logging.getLogger(__name__)

# What a training run writes; replacing a run removes exactly these, nothing else in the folder.
RUN_FILES = ("config.yaml", "tokenizer.json", "metrics.jsonl")
RUN_DIRS = ("checkpoints", "tb")


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() or (run_dir / name).is_symlink() for name in RUN_FILES + RUN_DIRS)


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
    if holds_run(run_dir) and not resume and not cfg.run.overwrite:
        raise TrainingError(
            f"run directory {run_dir} already holds a run; continue it with "
            f"`albert-gpt train {run_dir} --resume`, choose another --set run.name=..., "
            f"or replace it with --set run.overwrite=true"
        )
    return run_dir


def prepare_run_dir(cfg: Config, resume: bool) -> Path:
    """Create RUN_DIR, or check that training into it is allowed; returns it."""
    run_dir = check_run_dir(cfg, resume)
    try:
        if holds_run(run_dir) and not resume:
            log.warning("run.overwrite: replacing the run in %s", run_dir)
            for name in RUN_FILES + RUN_DIRS:
                remove_inside(run_dir / name, run_dir)  # a link is removed, never followed
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"run directory {run_dir}: cannot create or clean it ({_reason(exc)}); "
                            "choose another run.out_dir or --set run.name=...") from None
    return run_dir


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
