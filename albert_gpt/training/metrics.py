"""Where logged values go: TensorBoard event files in RUN_DIR itself (so `tensorboard --logdir runs`
names each run by its name) and RUN_DIR/metrics.jsonl.

metrics.jsonl holds one JSON object per scalar, {"step", "tag", "value", "wall_time"}, so
scripts can read curves without TensorBoard.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from albert_gpt.errors import TrainingError
from albert_gpt.paths import (
    UnsafePath,
    clear_folder,
    create_new,
    delete,
    open_append,
    temp_name,
    write_atomic,
)

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
EVENT_PREFIX = "events.out.tfevents."  # how TensorBoard's writer names its files
LEGACY_TB_DIR = "tb"  # where runs written before event files moved to RUN_DIR kept them


# The custom-scalars layout written into every run (TensorBoard's "Custom Scalars" tab): the story first
# (perplexity against the unigram reference, both losses, the learning rate), then every per-depth
# statistic as one chart whose lines are the layer applications, so depths compare side by side.
# Each entry: chart title -> regular expressions of the tags it draws.
_PER_DEPTH = r"diag/depth_\d+/"
LAYOUT: dict[str, dict[str, list[str]]] = {
    "1. training": {
        "val perplexity, with the unigram reference": [r"^val/perplexity$", r"^val/unigram_perplexity$"],
        "loss: train and val": [r"^train/loss$", r"^val/loss$"],
        "learning rate": [r"^train/lr$"],
        "gradient norm (before clipping)": [r"^train/grad_norm$"],
    },
    "2. per depth: one line per layer application": {
        "update ratio |f(x)| / |x| (attention, FFN)": [_PER_DEPTH + r"(attn|ffn)_update_ratio$"],
        "RMS a norm divides by (attention, FFN)": [_PER_DEPTH + r"(attn|ffn)_norm_in_rms$"],
        "residual stream RMS after the layer": [_PER_DEPTH + r"layer_out_rms$"],
        "gradient norm at the layer's output": [_PER_DEPTH + r"grad_norm_out$"],
        "how far a layer moves each token: L2 and angle (degrees)": [_PER_DEPTH + r"io_(l2|angle_deg)$"],
        # mean ~ beta and std ~ |gamma| by construction: one folded chart, not a card per depth
        "norm output mean and std (set by beta and gamma)": [_PER_DEPTH + r"(attn|ffn)_norm_out_(mean|std)$"],
    },
    "3. parameters: one line per distinct block": {
        "norm gains and biases (per application with per-depth affine)": [
            r"^diag/params/block_\d+/.*_norm_(gamma|beta)_norm$", r"^diag/params/final_norm/.*_norm$"],
        "gradient norm per part": [r"^diag/params/.*grad_norm$"],
    },
}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; a half-written last line (crash mid-write) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records logged after `last_step`: a resumed run logs those steps again."""
    if not path.is_file():
        return
    kept = [json.dumps(r) for r in read_metrics(path) if r["step"] <= last_step]
    write_atomic(path, "".join(line + "\n" for line in kept))


def _is_event_file(path: Path) -> bool:
    return path.name.startswith(EVENT_PREFIX) and path.is_file()


def clear_event_files(run_dir: Path) -> list[Path]:
    """Delete a run's TensorBoard files (run.overwrite): the files TensorBoard's writer names, in RUN_DIR
    and in an older run's RUN_DIR/tb (then that folder, when nothing else is left). Returns what was
    kept because albert_gpt did not write it."""
    run_dir = Path(run_dir)
    kept = []
    for path in sorted(run_dir.glob(EVENT_PREFIX + "*")):
        try:
            delete(path, run_dir, _is_event_file)
        except (OSError, UnsafePath):
            kept.append(path)
    legacy = run_dir / LEGACY_TB_DIR
    if legacy.exists() or legacy.is_symlink():
        kept += clear_folder(legacy, run_dir, _is_event_file)
    return kept


def check_writable(folder: Path) -> None:
    """OSError now, in this thread, when `folder` cannot take a new file: TensorBoard's writer thread
    would otherwise fail later with a traceback of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = temp_name(folder / "write-probe")
    os.close(create_new(probe))
    probe.unlink()


def _wait_for_a_later_second(tb_dir: Path) -> None:
    """Make the next event file sort after the existing ones.

    TensorBoard reads a run's event files in name order, and a name starts with its creation
    time in whole seconds (then host, pid and a per-process counter that sorts "10" before "9").
    The purge that hides steps logged after the checkpoint works only when the resumed file
    comes last, so a resume within the same second as an earlier writer waits for the next one.
    """
    stamps = [int(p.name.split(".")[3]) for p in tb_dir.glob(EVENT_PREFIX + "*")
              if p.name.split(".")[3].isdigit()]
    if stamps and time.time() < max(stamps) + 1:
        time.sleep(max(stamps) + 1 - time.time())


class MetricsLogger:
    """Writes every scalar to metrics.jsonl and, when enabled, to TensorBoard.

    `resume_step` (a resumed run) discards what was logged after that step, in both places,
    so curves never show a step twice.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None,
                 callbacks: Sequence[Any] = ()):
        self.callbacks = list(callbacks)  # TrainingCallback: told every group of scalars logged
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._file = open_append(self.path)  # never through a link; closed in close()
        self.writer: Any = None  # a SummaryWriter (imported on first use)
        if tensorboard:
            # Imported here: TensorBoard pulls in a lot, and tensorboard: false should not pay for it.
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = Path(run_dir)
            try:
                check_writable(tb_dir)
            except OSError:
                self._file.close()
                raise
            purge = None
            if resume_step is not None:
                purge = resume_step + 1
                _wait_for_a_later_second(tb_dir)
            self.writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge)
            self.writer.add_custom_scalars(
                {category: {chart: ["Multiline", tags] for chart, tags in charts.items()}
                 for category, charts in LAYOUT.items()}
            )

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars({tag: value}, step)

    def _write(self, tag: str, value: float, step: int) -> None:
        value = float(value)
        now = time.time()
        # JSON has no NaN/inf; null keeps the line valid and the step visible.
        shown = value if math.isfinite(value) else None
        record = {"step": step, "tag": tag, "value": shown, "wall_time": now}
        try:
            self._file.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise self._failure(exc) from None
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step, walltime=now)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self._write(tag, value, step)
        for callback in self.callbacks:
            callback.on_log(step, dict(values))

    def histogram(self, tag: str, values: Any, step: int) -> None:
        """TensorBoard only: metrics.jsonl holds scalars."""
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metric_tags: list[str], first: Sequence[str] = ()) -> None:
        """One hparams-plugin entry in this run's own event files, so runs compare side by side.

        The plugin shows, per metric tag, the last value of that scalar in the run; naming the
        val/* tags already logged avoids writing the final values a second time (which
        SummaryWriter.add_hparams would do, into a separate timestamped run). Columns come in
        the order: the keys in `first` (a sweep's varied keys), then model.*, train.*, the rest;
        booleans stay booleans (torch's own helper files them as numbers, shown as 0.0000).
        """
        if self.writer is None:
            return
        from tensorboard.plugins.hparams import summary_v2 as hp

        # The plugin takes numbers, strings and bools; None has no domain, so it becomes text.
        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        order = {"model": 1, "train": 2}
        keys = sorted(clean, key=lambda k: (k not in first, order.get(k.split(".")[0], 3)))
        infos = [hp.HParam(k, hp.Discrete([False, True]) if isinstance(clean[k], bool) else None)
                 for k in keys]
        experiment = hp.hparams_config_pb(hparams=infos, metrics=[hp.Metric(tag) for tag in metric_tags])
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(hp.hparams_pb({k: clean[k] for k in keys}))

    def flush(self) -> None:
        try:
            self._file.flush()
            if self.writer is not None:
                self.writer.flush()
        except OSError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: OSError) -> TrainingError:
        return TrainingError(f"cannot write metrics to {self.path} ({exc.strerror or exc}); make room, then "
                             f"resume from the last checkpoint: albert-gpt train {self.path.parent} --resume")

    def close(self) -> None:
        """Close the files. Runs in the trainer's `finally`, so it never raises: a full disk would
        otherwise replace the error that stopped training with a second, less useful one."""
        for close in (self._file.close, self.writer.close if self.writer is not None else None):
            if close is None:
                continue
            try:
                close()
            except OSError as exc:
                log.warning("could not finish writing metrics in %s (%s)", self.path.parent,
                            exc.strerror or exc)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
