"""Exact resume: N steps, stop, resume for N more equals 2N steps straight (CPU, fp32)."""

from __future__ import annotations

import signal

import pytest
import torch
import yaml
from train_utils import stop_at, tiny_config, tiny_raw

from albert_gpt.checkpoint import find_latest, load_checkpoint
from albert_gpt.cli import main
from albert_gpt.config import load_config
from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.errors import CheckpointError
from albert_gpt.training.metrics import read_metrics
from albert_gpt.training.trainer import train

# dropout on, so the restored torch RNG state matters; log and eval intervals that do not divide
# the stop step, so the restored per-interval loss sum matters too.
SECTIONS = dict(model={"dropout": 0.1}, train={"max_steps": 12, "checkpoint_interval": 0},
                eval={"interval": 4}, log={"interval": 4})


def _stop_at(monkeypatch, step: int) -> None:
    stop_at(monkeypatch, RandomWindowSampler, step)


def _final(run_dir):
    weights, state, _ = load_checkpoint(find_latest(run_dir))
    records = read_metrics(run_dir / "metrics.jsonl")
    losses = [(r["step"], r["value"]) for r in records if r["tag"] == "train/loss"]
    val = [(r["step"], r["value"]) for r in records if r["tag"] == "val/loss"]
    return weights, state, losses, val


# Every architecture, and both LSTM layer kinds (torch's nn.LSTM and the loop of the normed cell).
ARCHS = {
    "transformer": {},
    "lstm": {"arch": "lstm", "norm": "layernorm", "n_groups": 2},
    "lstm-plain": {"arch": "lstm", "norm": "none"},
    "conv": {"arch": "conv", "norm": "layernorm", "n_groups": 2},
    "conv-batchnorm": {"arch": "conv", "norm": "batchnorm", "n_groups": 2},
}


@pytest.mark.parametrize("arch", ARCHS)
def test_stop_and_resume_is_bit_identical(tmp_path, monkeypatch, arch):
    """6 steps, SIGTERM, resume 6 more: weights, optimizer state and logged losses equal the straight run."""
    sections = {**SECTIONS, "model": {**SECTIONS["model"], **ARCHS[arch]}}
    straight = train(tiny_config(tmp_path / "a", **sections))
    with monkeypatch.context() as m:
        _stop_at(m, 6)
        first = train(tiny_config(tmp_path / "b", **sections))
    assert first["interrupted"] == "SIGTERM" and first["step"] == 6
    resumed = train(tiny_config(tmp_path / "b", **sections), resume=True)
    assert straight["step"] == resumed["step"] == 12

    w_a, s_a, loss_a, val_a = _final(tmp_path / "a" / "runs" / "tiny")
    w_b, s_b, loss_b, val_b = _final(tmp_path / "b" / "runs" / "tiny")
    assert w_a.keys() == w_b.keys()
    for name in w_a:
        assert torch.equal(w_a[name], w_b[name]), name
    for key, state in s_a["optimizer"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, s_b["optimizer"]["state"][key][field]), (key, field)
    assert [s for s, _ in loss_a] == [4, 8, 12]
    assert loss_a == loss_b  # exact floats, including the interval 5..8 split by the stop at 6
    assert val_a == val_b and len(val_a) == 3


def test_resume_with_a_different_model_shape_names_the_key(tmp_path):
    """Resuming with another model.n_embd fails naming the key and both values; config.yaml is left as is."""
    train(tiny_config(tmp_path, train={"max_steps": 2}, eval={"interval": 0}))
    run_dir = tmp_path / "runs" / "tiny"
    saved = (run_dir / "config.yaml").read_text()
    wider = tiny_config(tmp_path, model={"n_embd": 64}, train={"max_steps": 4})
    with pytest.raises(CheckpointError, match=r"model\.n_embd is 32 in the checkpoint, 64 in the config"):
        train(wider, resume=True)
    assert (run_dir / "config.yaml").read_text() == saved


def test_cli_resumes_a_run_directory_from_anywhere(tmp_path, monkeypatch):
    """`albert-gpt train RUN_DIR --resume` from another folder continues a run whose out_dir is relative."""
    monkeypatch.chdir(tmp_path)
    raw = tiny_raw(tmp_path, run={"out_dir": "runs"}, train={"max_steps": 8, "schedule": "constant"},
                   eval={"interval": 0})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    with monkeypatch.context() as m:
        _stop_at(m, 3)
        assert main(["train", str(config)]) == 128 + signal.SIGTERM
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["train", str(run_dir), "--resume"]) == 0
    assert find_latest(run_dir).name == "step_00000008"
    assert not (elsewhere / "runs").exists()
    assert load_config(run_dir / "config.yaml").run.out_dir == str(tmp_path / "runs")
