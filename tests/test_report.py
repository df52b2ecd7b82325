"""The sweep report: tables from summary.json, plots from the runs' metrics.jsonl."""

from __future__ import annotations

import math
import sys

import pytest
import yaml

from albert_gpt.cli import main
from albert_gpt.errors import ConfigError
from albert_gpt.study.report import write_report
from albert_gpt.study.sweep import load_sweep, summarize_run, write_summary
from albert_gpt.training.metrics import MetricsLogger

UNIGRAM = 3.0  # nats


@pytest.fixture
def sweep_dir(tmp_path):
    """A 2 (variant) x 2 (lr) x 2 (seed) sweep whose runs are planted metrics.jsonl files.

    pre at lr 0.01 diverges; post at lr 0.001 stalls at the unigram loss; the others learn.
    Every run logs per-depth diagnostics for 3 depths.
    """
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "fixture", "out_dir": str(tmp_path / "sweeps"),
        "grid": {"variant": {"post": {"model.norm_placement": "post"},
                             "pre": {"model.norm_placement": "pre"}},
                 "train.lr": [0.001, 0.01], "run.seed": [1, 2]},
        "report": {"rows": "variant", "cols": "train.lr"},
    }, sort_keys=False), encoding="utf-8")
    sweep = load_sweep(sweep_file)
    results = []
    for cell in sweep.cells:
        run_dir = sweep.sweep_dir() / "runs" / cell.name
        run_dir.mkdir(parents=True)
        variant, lr, seed = cell.axes["variant"], float(cell.axes["train.lr"]), int(cell.axes["run.seed"])
        final = UNIGRAM - 0.05 if (variant, lr) == ("post", 0.001) else 2.0 + 0.1 * seed
        with MetricsLogger(run_dir, tensorboard=False) as logger:
            for step in (10, 20):
                diverged = (variant, lr) == ("pre", 0.01) and step == 20
                val = float("nan") if diverged else final + (20 - step) * 0.05
                logger.scalars({"train/loss": val, "val/loss": val, "train/skipped_steps": 0,
                                "val/unigram_perplexity": math.exp(UNIGRAM)}, step)
                for depth in range(3):
                    logger.scalars({f"diag/depth_{depth:02d}/io_l2": 1.0 + depth + seed,
                                    f"diag/depth_{depth:02d}/io_angle_deg": 30.0 - depth,
                                    f"diag/depth_{depth:02d}/grad_norm_out": 0.1 * (depth + 1)}, step)
        result = summarize_run(run_dir)
        result.update(cell=cell.name, axes=cell.axes, wall_time_s=1.5)
        results.append(result)
    write_summary(sweep, results)
    return sweep.sweep_dir()


def test_report_holds_pivot_and_cell_tables_and_plots(sweep_dir):
    """report.md has the variant x lr table (mean ± std over seeds, status letters), every cell,
    and PNG plots small enough for the docs."""
    path = write_report(sweep_dir)
    text = path.read_text()
    assert path == sweep_dir / "report.md"
    assert "| variant \\ train.lr | 0.001 | 0.01 |" in text
    assert "| post | 2.950 ±0.000 PP | 2.150 ±0.050 TT |" in text
    assert "| pre | 2.150 ±0.050 TT | – DD |" in text
    assert text.count("| post | 0.001 | 1 | plateau |") == 1
    assert "| pre | 0.01 | 2 | diverged |" in text
    for name in ("curves.png", "value_vs_column.png", "depth_profiles.png"):
        png = sweep_dir / "figures" / name
        assert f"(figures/{name})" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size < 200_000


def test_report_without_matplotlib_still_writes_the_tables(sweep_dir, monkeypatch):
    """With matplotlib not importable the report keeps its tables and says the plots were skipped."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    text = write_report(sweep_dir).read_text()
    assert "| post | 2.950 ±0.000 PP | 2.150 ±0.050 TT |" in text
    assert "## All cells" in text
    assert "Plots skipped: matplotlib is not installed" in text
    assert "![" not in text
    assert not (sweep_dir / "figures").exists()


def test_report_command_on_a_folder_that_is_not_a_sweep(tmp_path, capsys):
    """`albert-gpt report DIR` without a summary.json is a one-line error, exit code 2."""
    with pytest.raises(ConfigError, match="not a sweep directory"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_report_command_writes_the_report(sweep_dir, capsys):
    """`albert-gpt report SWEEP_DIR` writes report.md and prints where."""
    assert main(["report", str(sweep_dir)]) == 0
    assert str(sweep_dir / "report.md") in capsys.readouterr().out
