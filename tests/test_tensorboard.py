"""MetricsLogger: TensorBoard event files and metrics.jsonl, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import math

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from albert_gpt.training.metrics import MetricsLogger, read_metrics


def _events(run_dir) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_scalars_reach_tensorboard_and_jsonl_alike(tmp_path):
    """Each scalar is one TensorBoard point and one metrics.jsonl record with the same step and value."""
    with MetricsLogger(tmp_path) as log:
        for step in (5, 10, 15):
            log.scalars({"train/loss": 3.0 / step, "train/lr": step * 1e-4}, step)
    ea = _events(tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert {r["tag"] for r in records} == {"train/loss", "train/lr"}
    for tag in ("train/loss", "train/lr"):
        points = [(e.step, e.value) for e in ea.Scalars(tag)]
        lines = [(r["step"], r["value"]) for r in records if r["tag"] == tag]
        assert [s for s, _ in points] == [5, 10, 15]
        assert [s for s, _ in lines] == [5, 10, 15]
        for (_, a), (_, b) in zip(points, lines):
            assert math.isclose(a, b, rel_tol=1e-6)  # TensorBoard stores float32
    assert all(set(r) == {"step", "tag", "value", "wall_time"} for r in records)


def test_non_finite_scalar_keeps_jsonl_valid(tmp_path):
    """A NaN scalar is written as null, so every metrics.jsonl line stays valid JSON."""
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.scalar("train/loss", float("nan"), 1)
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["value"] is None
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_resume_drops_points_logged_after_the_checkpoint(tmp_path):
    """Reopening with resume_step=5 discards steps 6.. in both outputs, so no step appears twice."""
    with MetricsLogger(tmp_path) as log:
        for step in range(1, 11):
            log.scalar("train/loss", float(step), step)
    with MetricsLogger(tmp_path, resume_step=5) as log:
        for step in range(6, 9):
            log.scalar("train/loss", 100.0 + step, step)
    expected = [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 9)]
    assert [(e.step, e.value) for e in _events(tmp_path).Scalars("train/loss")] == expected
    assert [(r["step"], r["value"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == expected


def test_text_and_hparams_entries(tmp_path):
    """Text goes to the text plugin; hparams writes a session naming the hyper-parameters and metric tags."""
    with MetricsLogger(tmp_path) as log:
        log.scalar("val/loss", 2.5, 10)
        log.text("samples", "to be or not", 10)
        log.hparams({"model.n_layers": 6, "model.norm": "layernorm", "data.path": None}, ["val/loss"])
    ea = _events(tmp_path)
    (sample,) = ea.Tensors("samples/text_summary")
    assert sample.step == 10 and sample.tensor_proto.string_val == [b"to be or not"]
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["model.n_layers"].number_value == 6
    assert hp["model.norm"].string_value == "layernorm"
    assert hp["data.path"].string_value == "None"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/loss"]


TRAIN_TAGS = (
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_sec",
    "train/skipped_steps",
    "sys/peak_memory_mb",
)
VAL_TAGS = ("val/loss", "val/perplexity", "val/bits_per_byte", "val/unigram_perplexity", "val/seconds")


def test_training_run_writes_every_tag_at_its_interval(tmp_path):
    """A 20-step run (log every 5, evaluate every 10) has each train tag at 5,10,15,20, each val tag,
    the text sample at 10,20, the config text once, an hparams entry, and metrics.jsonl matching it all."""
    from train_utils import tiny_config

    from albert_gpt.training.trainer import train

    train(tiny_config(tmp_path))
    run_dir = tmp_path / "runs" / "tiny"
    ea = _events(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert set(ea.Tags()["scalars"]) == set(TRAIN_TAGS + VAL_TAGS)
    assert {r["tag"] for r in records} == set(TRAIN_TAGS + VAL_TAGS)
    for tags, steps in ((TRAIN_TAGS, [5, 10, 15, 20]), (VAL_TAGS, [10, 20])):
        for tag in tags:
            points = ea.Scalars(tag)
            lines = [r for r in records if r["tag"] == tag]
            assert [e.step for e in points] == steps, tag
            assert [r["step"] for r in lines] == steps, tag
            for event, record in zip(points, lines):
                assert math.isclose(event.value, record["value"], rel_tol=1e-6), tag
    assert [e.step for e in ea.Tensors("samples/text_summary")] == [10, 20]
    assert [e.step for e in ea.Tensors("config/text_summary")] == [0]
    assert b"n_embd: 32" in ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.n_embd"].number_value == 32
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(VAL_TAGS[:3])


def _layout(event_dir):
    """The custom-scalars layout as TensorBoard's own reader and proto see it."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    ea = EventAccumulator(str(event_dir), size_guidance={"tensors": 0})
    ea.Reload()
    (event,) = ea.Tensors("custom_scalars__config__")
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


def test_every_run_carries_the_layout_and_its_charts_draw_the_tags_a_run_writes(tmp_path):
    """Read back from a real run with per-depth diagnostics and per-depth norm gains: the story charts
    come first, every per-depth chart draws one line per layer application, and every diag tag the run
    wrote is drawn by some chart (nothing is left out of the layout)."""
    import re

    from train_utils import tiny_config

    from albert_gpt.training.trainer import train

    cfg = tiny_config(
        tmp_path,
        model={"n_layers": 3, "n_groups": 1, "norm_per_depth_affine": True},
        log={"interval": 5, "progress": False, "diagnostics_interval": 5},
    )
    train(cfg)
    run_dir = tmp_path / "runs" / "tiny"
    layout = _layout(run_dir)
    titles = [c.title for c in layout.category]
    assert titles[0] == "1. training"
    first = layout.category[0].chart[0]
    assert first.title.startswith("val perplexity") and list(first.multiline.tag) == [
        r"^val/perplexity$",
        r"^val/unigram_perplexity$",
    ]
    charts = [
        (f"{c.title}: {chart.title}", list(chart.multiline.tag)) for c in layout.category for chart in c.chart
    ]
    tags = set(_events(run_dir).Tags()["scalars"])
    for title, patterns in charts:
        drawn = {t for t in tags if any(re.search(p, t) for p in patterns)}
        assert drawn, title  # every chart has something to draw in this run
        if title.startswith("2. per depth"):
            assert {re.search(r"depth_(\d+)", t).group(1) for t in drawn} == {"00", "01", "02"}, title
    for tag in tags:
        if tag.startswith("diag/"):
            assert any(re.search(p, tag) for _, patterns in charts for p in patterns), tag


def test_hparams_put_varied_keys_then_model_and_train_first_and_keep_booleans(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.hparams(
            {"data.path": "x", "train.lr": 1e-3, "model.bias": True, "run.seed": 3, "model.n_layers": 6},
            ["val/loss"],
            first=["run.seed"],
        )
    content = _events(tmp_path).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [h.name for h in experiment.hparam_infos] == [
        "run.seed",
        "model.bias",
        "model.n_layers",
        "train.lr",
        "data.path",
    ]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.bias"].WhichOneof("kind") == "bool_value"
    assert start.session_start_info.hparams["model.bias"].bool_value is True
