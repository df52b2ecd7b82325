"""The run directory: refuse to train over an existing run unless resuming or told to replace it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from albert_gpt.config import Config
from albert_gpt.errors import TrainingError

log = logging.getLogger(__name__)

# What a training run writes; replacing a run removes exactly these, nothing else in the folder.
RUN_FILES = ("config.yaml", "tokenizer.json", "metrics.jsonl")
RUN_DIRS = ("checkpoints", "tb")


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_FILES + RUN_DIRS)


def check_run_dir(cfg: Config, resume: bool) -> Path:
    """RUN_DIR, after checking (without writing anything) that training into it is allowed."""
    run_dir = cfg.run_dir
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
    if holds_run(run_dir) and not resume:
        log.warning("run.overwrite: replacing the run in %s", run_dir)
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            if (run_dir / name).exists():
                shutil.rmtree(run_dir / name)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def resume_command(run_dir: Path) -> str:
    return f"albert-gpt train {run_dir} --resume"
