"""Callbacks: a user's code told about a run as it trains (Weights & Biases, CSV files, early alerts),
without editing the trainer. Subclass `TrainingCallback`, override what you need, and pass instances to
`train(cfg, callbacks=[...])`; they run in the main process only, after the run's own logging.

`CSVLogger` is the built-in example: every scalar the run logs, as rows of step,tag,value,wall_time.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

from albert_gpt.config import Config


class TrainingCallback:
    """Hooks the trainer calls; every one does nothing unless overridden."""

    def on_train_start(self, cfg: Config, run_dir: Path, start_step: int) -> None:
        """Before the first step; `start_step` is the step a resumed run continues from (0 otherwise)."""

    def on_log(self, step: int, scalars: dict[str, float]) -> None:
        """Each group of scalars the run logs (train/*, val/*, sys/*, diag/*), with its step."""

    def on_train_end(self, result: dict[str, Any]) -> None:
        """After the last step (or after an interruption's checkpoint), with the run's result."""


class CSVLogger(TrainingCallback):
    """Every logged scalar appended to `path` (default RUN_DIR/metrics.csv) as step,tag,value,wall_time.
    A resumed run first drops the rows after the step it resumes from, as metrics.jsonl does."""

    HEADER = ("step", "tag", "value", "wall_time")

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._file: Any = None
        self._writer: Any = None

    def on_train_start(self, cfg: Config, run_dir: Path, start_step: int) -> None:
        self.path = self.path or Path(run_dir) / "metrics.csv"
        kept: list[list[str]] = []
        if start_step > 0 and self.path.is_file():
            with self.path.open(newline="", encoding="utf-8") as f:
                kept = [row for row in list(csv.reader(f))[1:] if row and int(row[0]) <= start_step]
        self._file = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        self._writer.writerow(self.HEADER)
        self._writer.writerows(kept)
        self._file.flush()

    def on_log(self, step: int, scalars: dict[str, float]) -> None:
        now = time.time()
        for tag, value in scalars.items():
            value = float(value)
            self._writer.writerow([step, tag, repr(value) if math.isfinite(value) else "", f"{now:.3f}"])
        self._file.flush()

    def on_train_end(self, result: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
