"""Faults: SIGTERM / SIGINT in a real subprocess, and non-finite losses or gradients planted in a run."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from train_utils import tiny_config, write_config

from albert_gpt.checkpoint import find_latest, load_checkpoint, verify_checkpoint
from albert_gpt.errors import TrainingError
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.training.metrics import read_metrics
from albert_gpt.training.trainer import train


def _wait_for_step(run_dir, step: int, proc: subprocess.Popen, limit_s: float = 120) -> None:
    """Poll metrics.jsonl until `step` is logged (a hang guard, not a timing check)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stderr.read()}")
        if any(r["step"] >= step for r in read_metrics(run_dir / "metrics.jsonl")):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"step {step} not reached")


def test_sigterm_checkpoints_prints_how_to_resume_and_the_resume_works(tmp_path):
    """SIGTERM mid-run: exit code 143, the message names the resume command, a checkpoint is complete,
    and resuming from it reaches the planned end."""
    steps = {"max_steps": 100_000, "schedule": "constant", "checkpoint_interval": 0}
    config = write_config(tmp_path, train=steps, eval={"interval": 0})
    run_dir = tmp_path / "runs" / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "albert_gpt", "train", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received: finishing this step" in err
    assert f"resume with: albert-gpt train {run_dir} --resume" in err
    latest = find_latest(run_dir)
    verify_checkpoint(latest)
    stopped = int(latest.name.removeprefix("step_"))
    assert stopped >= 10

    result = train(tiny_config(tmp_path, train={"max_steps": stopped + 3, "schedule": "constant",
                                                "checkpoint_interval": 0}, eval={"interval": 0}), resume=True)
    assert result["step"] == stopped + 3 and result["interrupted"] is None


_TWO_SIGNALS = textwrap.dedent("""
    import sys, time
    from albert_gpt.training.signals import StopRequest

    with StopRequest() as stop:
        print("ready", flush=True)
        while not stop.requested:
            time.sleep(0.01)
        print("first signal seen", flush=True)
        time.sleep(600)  # a long checkpoint write: only a second signal ends this early
    print("not reached", flush=True)
""")


def test_second_signal_exits_at_once(tmp_path):
    """The first SIGINT only sets the stop flag; a second one ends the process at once with 128 + SIGINT."""
    script = tmp_path / "two_signals.py"
    script.write_text(_TWO_SIGNALS)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "first signal seen"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert "not reached" not in out
    assert "SIGINT received: finishing this step" in err and "SIGINT again: exiting immediately" in err


def _plant(monkeypatch, nan_loss_calls: set[int], nan_grad_calls: set[int] = frozenset()) -> None:
    """Make the n-th training forward (1-based, training mode with targets) return a NaN loss, or a
    finite loss whose token-embedding gradient is NaN."""
    original = AlbertGPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, tracer=None):
        logits, loss = original(self, idx, targets, tracer)
        if targets is None or not self.training:
            return logits, loss
        calls["n"] += 1
        if calls["n"] in nan_loss_calls:
            loss = loss * float("nan")
        if calls["n"] in nan_grad_calls:
            loss = loss + 0.0 * _NanGradient.apply(self.tok_emb.weight).sum()
        return logits, loss

    monkeypatch.setattr(AlbertGPT, "forward", forward)


class _NanGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def test_nan_loss_and_nan_gradient_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    """A NaN loss at step 3 and a NaN gradient at step 7 are skipped: the optimizer steps 18 of 20 times,
    train/skipped_steps reaches 2, logged losses stay finite, and the weights stay finite."""
    _plant(monkeypatch, nan_loss_calls={3}, nan_grad_calls={7})
    result = train(tiny_config(tmp_path))
    run_dir = tmp_path / "runs" / "tiny"
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [(r["step"], r["value"]) for r in records if r["tag"] == "train/skipped_steps"] == [
        (5, 1.0), (10, 2.0), (15, 2.0), (20, 2.0)]
    assert all(math.isfinite(r["value"]) for r in records if r["tag"] == "train/loss")
    assert result["skipped_steps"] == 2 and result["step"] == 20
    weights, state, _ = load_checkpoint(find_latest(run_dir))
    assert all(int(s["step"]) == 18 for s in state["optimizer"]["state"].values())
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_too_many_non_finite_steps_in_a_row_stop_the_run(tmp_path, monkeypatch):
    """With max_skipped_steps 2, NaN losses from step 7 on stop the run at step 9 with a message, and the
    checkpoint of step 5 stays the latest and loads."""
    _plant(monkeypatch, nan_loss_calls=set(range(7, 100)))
    cfg = tiny_config(tmp_path, train={"max_skipped_steps": 2, "checkpoint_interval": 5})
    expected = r"3 non-finite steps in a row \(steps 7-9\).*max_skipped_steps=2.*is .*step_00000005"
    with pytest.raises(TrainingError, match=expected):
        train(cfg)
    latest = find_latest(tmp_path / "runs" / "tiny")
    assert latest.name == "step_00000005"
    weights, state, _ = load_checkpoint(latest)
    assert state["step"] == 5 and all(torch.isfinite(w).all() for w in weights.values())
