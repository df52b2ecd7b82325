"""The Python API: the README's example as written, callbacks, the CSV logger, library logging."""

from __future__ import annotations

import csv
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_utils import tiny_config

import albert_gpt
from albert_gpt import CSVLogger, TrainingCallback, train

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- api-example:start -->\n```python\n(.*?)```\n<!-- api-example:end -->", text, re.S
    )
    assert block, "README has no API example between its markers"
    return block.group(1)


def test_the_readme_api_example_runs_as_written(tmp_path):
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "quickstart.yaml", tmp_path / "configs")
    script = tmp_path / "example.py"
    script.write_text(readme_example(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loss, perplexity = (float(v) for v in done.stdout.splitlines()[0].split())
    assert perplexity == pytest.approx(2.718281828**loss, rel=1e-4)  # the same checkpoint, the same split
    assert "done: 20 steps" in done.stderr  # enable_logging() showed the library's log lines
    lines = [line for line in done.stderr.splitlines() if line.startswith(("model:", "step ", "done:"))]
    assert lines and len(lines) == len(set(lines)), lines  # each once: the progress bar's redirect adds none
    rows = list(csv.DictReader((tmp_path / "runs" / "api_demo" / "metrics.csv").open()))
    assert {"train/loss", "val/loss"} <= {r["tag"] for r in rows}


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.events: list = []

    def on_train_start(self, cfg, run_dir, start_step):
        self.events.append(("start", start_step))

    def on_log(self, step, scalars):
        self.events.append(("log", step, dict(scalars)))

    def on_train_end(self, result):
        self.events.append(("end", result["step"]))


def test_callbacks_see_every_logged_group_and_csv_logger_resumes_cleanly(tmp_path):
    cfg = tiny_config(
        tmp_path, train={"max_steps": 8, "checkpoint_interval": 4}, eval={"interval": 4}, log={"interval": 2}
    )
    recorder, csv_logger = Recorder(), CSVLogger()
    train(cfg, callbacks=[recorder, csv_logger])
    assert recorder.events[0] == ("start", 0) and recorder.events[-1] == ("end", 8)
    logged = {tag for e in recorder.events if e[0] == "log" for tag in e[2]}
    assert {"train/loss", "val/loss", "val/perplexity"} <= logged
    jsonl = [line for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    rows = list(csv.DictReader((cfg.run_dir / "metrics.csv").open()))
    assert len(rows) == len(jsonl)  # the same scalars in both files

    # a resume from step 4 drops the CSV rows after it, as metrics.jsonl does, then logs steps 5-8 again
    cfg2 = tiny_config(
        tmp_path, train={"max_steps": 8, "checkpoint_interval": 4}, eval={"interval": 4}, log={"interval": 2}
    )
    shutil.rmtree(cfg.run_dir / "checkpoints" / "step_00000008")
    (cfg.run_dir / "checkpoints" / "latest").write_text("step_00000004")
    train(cfg2, resume=True, callbacks=[CSVLogger()])
    again = list(csv.DictReader((cfg.run_dir / "metrics.csv").open()))
    steps = [(int(r["step"]), r["tag"]) for r in again]
    assert len(steps) == len(set(steps))  # no step logged twice
    assert max(s for s, _ in steps) == 8


def test_the_library_is_silent_until_logging_is_enabled():
    logger = logging.getLogger("albert_gpt")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    before = len(logger.handlers)
    albert_gpt.enable_logging()
    albert_gpt.enable_logging()
    assert len(logger.handlers) == before + 1  # a second call adds no second handler
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        albert_gpt.nope  # noqa: B018


def test_the_package_root_lists_exactly_the_api():
    """The root names the API without importing it (so `import albert_gpt` stays light); the two lists
    are kept equal here."""
    from albert_gpt import api

    assert set(albert_gpt._API) == set(api.__all__)
    assert all(getattr(albert_gpt, name) is getattr(api, name) for name in api.__all__)


def test_evaluate_a_loaded_run_equals_evaluating_its_directory(tmp_path):
    from albert_gpt import evaluate, load_run

    cfg = tiny_config(tmp_path, train={"max_steps": 4})
    train(cfg)
    run = load_run(cfg.run_dir, device="cpu", dtype="float32")
    in_memory = evaluate(run)
    from albert_gpt.inference.evaluate import evaluate_run

    from_disk = evaluate_run(cfg.run_dir, progress=False, device="cpu", dtype="float32")
    assert in_memory["loss"] == pytest.approx(from_disk["loss"], rel=1e-6)
    assert in_memory["tokens"] == from_disk["tokens"] > 0
