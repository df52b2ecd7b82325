"""Sweeps: grid expansion, a real 2x2 grid of tiny runs, resuming, and run classification."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from train_utils import tiny_raw

from albert_gpt.errors import ConfigError
from albert_gpt.study.sweep import cell_config, load_sweep, run_sweep, summarize_run
from albert_gpt.training.metrics import MetricsLogger


def write_sweep(tmp_path, spec: dict, base_sections: dict | None = None):
    """A base config of the tiny char model (train_utils) and a sweep file next to it."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_raw(tmp_path, **(base_sections or {}))), encoding="utf-8")
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump({"base": "base.yaml", "out_dir": str(tmp_path / "sweeps"), **spec}, sort_keys=False),
        encoding="utf-8",
    )
    return path


def test_grid_expands_named_and_key_axes_with_exclude_and_include(tmp_path):
    """Cells are the product of the axes, minus excludes, plus includes, each with its overrides."""
    path = write_sweep(
        tmp_path,
        {
            "name": "grid",
            "set": {"train.max_steps": 7},
            "grid": {
                "variant": {
                    "post": {"model.norm_placement": "post"},
                    "pre_nowarm": {"model.norm_placement": "pre", "train.warmup_steps": 0},
                },
                "train.lr": ["1e-3", 3.0e-3],  # YAML reads 1e-3 as text: the config's coercion applies
            },
            "exclude": [{"variant": "pre_nowarm", "train.lr": 0.003}],
            "include": [{"variant": "post", "train.lr": 0.01}],
        },
    )
    sweep = load_sweep(path)
    assert [c.name for c in sweep.cells] == [
        "post,lr=0.001",
        "post,lr=0.003",
        "pre_nowarm,lr=0.001",
        "post,lr=0.01",
    ]
    cfg = cell_config(sweep, sweep.cells[2])
    assert (cfg.model.norm_placement, cfg.train.warmup_steps, cfg.train.lr) == ("pre", 0, 0.001)
    assert cfg.train.max_steps == 7 and cfg.log.progress is False
    assert cfg.run_dir == tmp_path / "sweeps" / "grid" / "runs" / "pre_nowarm,lr=0.001"
    assert cell_config(sweep, sweep.cells[3]).train.lr == 0.01


def test_command_line_overrides_apply_to_every_cell(tmp_path):
    """--set on the sweep command reaches every cell, after the sweep file's own `set`."""
    path = write_sweep(tmp_path, {"set": {"train.max_steps": 7}, "grid": {"run.seed": [1, 2]}})
    sweep = load_sweep(path, overrides=["train.max_steps=3"])
    assert {cell_config(sweep, c).train.max_steps for c in sweep.cells} == {3}
    assert sweep.name == "sweep"  # no name given: the file's stem


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"train.lrr": [1, 2]}}, "did you mean train.lr"),
        ({"grid": {"train.lr": ["fast"]}}, "train.lr: expected float"),
        ({"grid": {"v": {"a": {"model.norm": "weightnorm"}}}}, "model.norm: unknown value 'weightnorm'"),
        ({"grid": {"run.seed": [1]}, "exclude": [{"seed": 1}]}, r"exclude\[0\] must map grid axes"),
        ({"grid": {"run.seed": [1]}, "include": [{"train.lr": 1}]}, r"include\[0\] gives no value for axis"),
        ({"grid": {"run.seed": [1]}, "sett": {}}, "unknown sweep key sett"),
        ({"grid": {"run.seed": [1]}, "post_eval": {"batch": 2}}, "post_eval: unknown key 'batch'"),
        ({"set": {"run.seed": 1}}, "`grid` must map at least one axis"),
    ],
)
def test_bad_sweep_file_fails_before_any_cell_runs(tmp_path, spec, message):
    """A wrong key or value is a one-line ConfigError naming the sweep file."""
    path = write_sweep(tmp_path, spec)
    with pytest.raises(ConfigError, match=message) as info:
        run_sweep(path, progress=False)
    assert str(path) in str(info.value)
    assert not (tmp_path / "sweeps").exists()


def test_bad_value_in_one_cell_names_the_cell(tmp_path):
    """A value the config rejects only in combination (min_lr > lr) names the cell."""
    path = write_sweep(tmp_path, {"set": {"train.min_lr": 0.002}, "grid": {"train.lr": [0.01, 0.001]}})
    with pytest.raises(ConfigError, match=r"cell lr=0.001: train.min_lr \(0.002\) must be <= train.lr"):
        run_sweep(path, progress=False)


def test_two_by_two_grid_runs_and_a_rerun_skips_finished_cells(tmp_path):
    """4 tiny runs finish (an exploding learning rate is a diverged cell, not a crash), the
    summary lists them, and a second invocation trains nothing unless a result is missing."""
    path = write_sweep(
        tmp_path,
        {
            "name": "two",
            "grid": {"model.norm_placement": ["post", "pre"], "train.lr": [0.003, 1e30]},
            "set": {
                "train.max_steps": 6,
                "train.max_skipped_steps": 0,
                "train.grad_clip": 0.0,
                "train.checkpoint_interval": 0,
                "eval.interval": 3,
                "eval.sample_tokens": 0,
                "log.interval": 1,
                "log.tensorboard": False,
            },
        },
    )
    sweep_dir = run_sweep(path, progress=False)
    assert sweep_dir == tmp_path / "sweeps" / "two"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    by_name = {c["cell"]: c for c in summary["cells"]}
    expected = [f"norm_placement={p},lr={lr}" for p in ("post", "pre") for lr in ("0.003", "1e+30")]
    assert list(by_name) == expected
    for name, cell in by_name.items():
        if name.endswith("1e+30"):
            assert cell["status"] == "diverged" and "non-finite" in cell["error"]
        else:
            assert cell["status"] in ("trained", "plateau") and cell["steps"] == 6
            assert math.isfinite(cell["final_val_loss"]) and cell["error"] is None
            assert cell["params_unique"] > 0
    table = (sweep_dir / "summary.md").read_text()
    assert all(f"| {p} | {lr} |" in table for p in ("post", "pre") for lr in ("0.003", "1e+30"))

    runs = sweep_dir / "runs"
    stamps = {d.name: (d / "metrics.jsonl").stat().st_mtime_ns for d in runs.iterdir()}
    # as if interrupted before the cell finished
    (runs / "norm_placement=pre,lr=0.003" / "result.json").unlink()
    run_sweep(path, progress=False)
    after = {d.name: (d / "metrics.jsonl").stat().st_mtime_ns for d in runs.iterdir()}
    changed = {name for name in stamps if after[name] != stamps[name]}
    assert changed == {"norm_placement=pre,lr=0.003"}
    assert len(json.loads((sweep_dir / "summary.json").read_text())["cells"]) == 4


def plant(run_dir, train_losses, val_losses, unigram_ppl=math.e**3, skipped=0):
    """A run directory with a real metrics.jsonl (no TensorBoard) holding the given curves."""
    run_dir.mkdir(parents=True)
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step, loss in enumerate(train_losses, 1):
            logger.scalars({"train/loss": loss, "train/skipped_steps": skipped if step > 1 else 0}, step)
        for step, loss in enumerate(val_losses, 1):
            logger.scalars({"val/loss": loss, "val/unigram_perplexity": unigram_ppl}, step)
    return run_dir


def test_classification_of_planted_runs(tmp_path):
    """diverged / plateau / trained follow the issue's rules (unigram loss here = 3 nats)."""
    cases = {
        "nan_loss": (plant(tmp_path / "a", [3.5, float("nan")], [3.4]), None, "diverged"),
        "skipped_steps": (plant(tmp_path / "b", [3.5, 2.0], [2.0], skipped=2), None, "diverged"),
        "stopped": (plant(tmp_path / "c", [3.5], [3.4]), "5 non-finite steps in a row", "diverged"),
        "at_unigram": (plant(tmp_path / "d", [3.5, 3.0], [3.2, 2.95]), None, "plateau"),
        "above_unigram": (plant(tmp_path / "e", [4.0, 3.9], [3.8]), None, "plateau"),
        "learned": (plant(tmp_path / "f", [3.5, 2.0], [2.8, 2.1]), None, "trained"),
        "no_eval": (plant(tmp_path / "g", [3.5], []), None, "failed"),
    }
    for name, (run_dir, error, expected) in cases.items():
        assert summarize_run(run_dir, error)["status"] == expected, name
    learned = summarize_run(tmp_path / "f")
    assert learned["final_val_loss"] == 2.1 and learned["best_val_loss"] == 2.1
    assert learned["final_train_loss"] == 2.0 and learned["unigram_loss"] == pytest.approx(3.0)
    assert summarize_run(tmp_path / "d")["best_val_loss"] == 2.95


def test_post_eval_measures_train_and_eval_mode_losses(tmp_path):
    """post_eval scores the final weights: LayerNorm gives the same val loss in train and eval
    mode (no dropout here), BatchNorm does not (batch statistics vs running statistics)."""
    path = write_sweep(
        tmp_path,
        {
            "name": "modes",
            "grid": {"model.norm": ["layernorm", "batchnorm"]},
            "set": {
                "train.max_steps": 4,
                "eval.interval": 0,
                "eval.sample_tokens": 0,
                "log.tensorboard": False,
            },
            "post_eval": {"batches": 2, "train_mode": True},
        },
    )
    cells = json.loads((run_sweep(path, progress=False) / "summary.json").read_text())["cells"]
    ln, bn = cells
    for cell in cells:
        assert cell["generalization_gap"] == pytest.approx(cell["eval_val_loss"] - cell["eval_train_loss"])
    assert ln["mode_gap"] == pytest.approx(0.0, abs=1e-6)
    assert abs(bn["mode_gap"]) > 1e-4


def test_a_signal_stops_the_sweep_and_a_rerun_resumes_the_interrupted_cell(tmp_path, monkeypatch, capsys):
    """SIGTERM in the first cell: that cell checkpoints and is recorded "interrupted" (never classified),
    the sweep stops with 128 + 15, and the same command resumes the cell from its checkpoint, then runs
    the rest."""
    from train_utils import stop_at

    from albert_gpt.cli import main
    from albert_gpt.data.batches import RandomWindowSampler
    from albert_gpt.training.metrics import read_metrics

    path = write_sweep(
        tmp_path,
        {"name": "sig", "grid": {"run.seed": [1, 2]}},
        {"train": {"max_steps": 20, "checkpoint_interval": 10}},
    )
    runs = tmp_path / "sweeps" / "sig" / "runs"
    with monkeypatch.context() as patch:
        stop_at(patch, RandomWindowSampler, 15)
        assert main(["sweep", str(path)]) == 128 + 15
    first = json.loads((runs / "seed=1" / "result.json").read_text())
    assert (first["status"], first["step"]) == ("interrupted", 15)
    assert not (runs / "seed=2").exists()  # the sweep stopped: no later cell started
    assert "run the same command again" in capsys.readouterr().err

    assert main(["sweep", str(path)]) == 0
    for seed in (1, 2):
        result = json.loads((runs / f"seed={seed}" / "result.json").read_text())
        assert result["status"] in ("trained", "plateau")
        steps = [
            r["step"]
            for r in read_metrics(runs / f"seed={seed}" / "metrics.jsonl")
            if r["tag"] == "train/loss"
        ]
        assert steps == sorted(set(steps)) and steps[-1] == 20  # resumed, not restarted: each step once
    summary = json.loads((tmp_path / "sweeps" / "sig" / "summary.json").read_text())
    assert [c["status"] in ("trained", "plateau") for c in summary["cells"]] == [True, True]


def test_a_sweeps_varied_keys_come_first_in_tensorboards_hparams_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    path = write_sweep(
        tmp_path,
        {
            "name": "hp",
            "grid": {"train.lr": [0.003], "model.norm_placement": ["pre"]},
            "set": {
                "train.max_steps": 2,
                "train.checkpoint_interval": 0,
                "eval.interval": 2,
                "eval.sample_tokens": 0,
                "log.interval": 1,
            },
        },
    )
    sweep_dir = run_sweep(path, progress=False)
    (run,) = (sweep_dir / "runs").iterdir()
    ea = EventAccumulator(str(run))
    ea.Reload()
    content = ea.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = [h.name for h in experiment.hparam_infos]
    assert set(names[:2]) == {"train.lr", "model.norm_placement"} and names[2].startswith("model.")
