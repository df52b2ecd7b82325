"""The training loop (albert_gpt/training/trainer.py, step.py): short real runs on a tiny corpus."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from train_utils import tiny_config

from albert_gpt.checkpoint import find_latest, load_checkpoint
from albert_gpt.config import ModelConfig, TrainConfig, load_config
from albert_gpt.data.tokenizer import TextTokenizer
from albert_gpt.errors import TrainingError
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.training.metrics import read_metrics
from albert_gpt.training.optim import build_optimizer
from albert_gpt.training.step import train_step
from albert_gpt.training.trainer import train
from albert_gpt.training.unigram import unigram_perplexity


def _series(run_dir, tag):
    return [(r["step"], r["value"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["tag"] == tag]


def test_short_run_lowers_the_loss(tmp_path):
    """40 steps on the tiny corpus: logged train loss and val loss both fall, val below the unigram model."""
    result = train(tiny_config(tmp_path, train={"max_steps": 40}, eval={"interval": 20}))
    run_dir = tmp_path / "runs" / "tiny"
    losses = [v for _, v in _series(run_dir, "train/loss")]
    val = [v for _, v in _series(run_dir, "val/loss")]
    assert len(losses) == 8 and len(val) == 2
    assert losses[-1] < losses[0] - 0.3
    assert val[-1] < val[0]
    assert result["step"] == 40 and result["tokens"] == 40 * 4 * 16
    assert result["val_loss"] == pytest.approx(val[-1])
    assert result["val_perplexity"] < result["unigram_perplexity"]


def test_run_directory_holds_resolved_config_tokenizer_and_checkpoint(tmp_path):
    """config.yaml has model.vocab_size from the tokenizer; tokenizer.json loads; the checkpoint verifies."""
    train(tiny_config(tmp_path, train={"max_steps": 4}, eval={"interval": 0}))
    run_dir = tmp_path / "runs" / "tiny"
    saved = load_config(run_dir / "config.yaml")
    tokenizer = TextTokenizer.load(run_dir / "tokenizer.json")
    assert saved.model.vocab_size == tokenizer.vocab_size
    assert saved.train == tiny_config(tmp_path, train={"max_steps": 4}).train
    assert find_latest(run_dir).name == "step_00000004"


def test_refuses_to_overwrite_a_run_directory(tmp_path):
    """A second run into the same directory fails with a message naming --resume and run.overwrite."""
    train(tiny_config(tmp_path, train={"max_steps": 2}, eval={"interval": 0}))
    with pytest.raises(TrainingError, match=r"already holds a run.*--resume.*run\.overwrite=true"):
        train(tiny_config(tmp_path, train={"max_steps": 2}, eval={"interval": 0}))


def test_overwrite_replaces_the_run(tmp_path):
    """With run.overwrite the old run's metrics and checkpoints are gone, only the new run's remain."""
    train(tiny_config(tmp_path, train={"max_steps": 10, "checkpoint_interval": 5}, eval={"interval": 0}))
    train(tiny_config(tmp_path, run={"overwrite": True}, train={"max_steps": 3}, eval={"interval": 0}))
    run_dir = tmp_path / "runs" / "tiny"
    assert [s for s, _ in _series(run_dir, "train/loss")] == [3]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000003"]


def test_max_tokens_sets_the_number_of_steps(tmp_path):
    """train.max_tokens stops after ceil(max_tokens / tokens per step) steps, whatever max_steps says."""
    result = train(tiny_config(tmp_path, train={"max_steps": 1000, "max_tokens": 700}, eval={"interval": 0}))
    assert result["step"] == math.ceil(700 / (4 * 16))


def test_quiet_mode_logs_a_line_per_interval(tmp_path, caplog):
    """log.progress false: one 'step N/M  loss ...' line per log interval and an evaluation line."""
    with caplog.at_level(logging.INFO, logger="albert_gpt"):
        train(tiny_config(tmp_path, train={"max_steps": 10}))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[1] for line in lines if line.startswith("step ") and "loss" in line
            and "val" not in line] == ["5/10", "10/10"]
    assert any(line.startswith("step 10: val loss") and "unigram" in line for line in lines)


def test_progress_bar_goes_to_stderr(tmp_path, capsys, monkeypatch):
    """log.progress true on a terminal: a tqdm bar labelled 'train' reaching the last step is drawn on
    stderr; on a stderr that is not a terminal (pytest's capture is not), no bar is drawn."""
    from albert_gpt.training import progress

    bar = "| 6/6 ["  # tqdm's own rendering of the last step (a log line says "step 6/6")
    train(tiny_config(tmp_path, train={"max_steps": 6}, eval={"interval": 0}, log={"progress": True}))
    assert bar not in capsys.readouterr().err
    monkeypatch.setattr(progress, "interactive", lambda: True)
    cfg = tiny_config(tmp_path, train={"max_steps": 6}, eval={"interval": 0}, log={"progress": True},
                      run={"overwrite": True})
    train(cfg)
    err = capsys.readouterr().err
    assert "train:" in err and bar in err


def _model_and_optimizer() -> tuple[AlbertGPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = AlbertGPT(ModelConfig(n_layers=2, n_embd=32, n_heads=2, block_size=16, vocab_size=40))
    train_cfg = TrainConfig(lr=1e-2, warmup_steps=0, weight_decay=0.1)
    return model, build_optimizer(model, train_cfg, torch.device("cpu"))


def test_gradient_accumulation_matches_one_large_batch():
    """One step over 2 micro-batches of B rows equals one step over those 2B rows at once (fp32, 1e-5)."""
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 40, (8, 17), generator=gen)  # (2B, T + 1)
    x, y = rows[:, :-1], rows[:, 1:]
    cpu, scaler = torch.device("cpu"), torch.amp.GradScaler("cpu", enabled=False)

    big, big_opt = _model_and_optimizer()
    big_result = train_step(big, big_opt, scaler, lambda micro: (x, y), 1, cpu, torch.float32, 1.0)
    small, small_opt = _model_and_optimizer()
    halves = lambda micro: (x[micro * 4:(micro + 1) * 4], y[micro * 4:(micro + 1) * 4])  # noqa: E731
    small_result = train_step(small, small_opt, scaler, halves, 2, cpu, torch.float32, 1.0)

    torch.testing.assert_close(small_result.loss, big_result.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small_result.grad_norm, big_result.grad_norm, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5, msg=name)
    assert not torch.equal(big.tok_emb.weight, _model_and_optimizer()[0].tok_emb.weight)  # the step did move


def test_grad_norm_is_measured_before_clipping(monkeypatch):
    """The reported norm is the unclipped global norm (computed by hand here), and clipping still applies."""
    model, opt = _model_and_optimizer()
    rows = torch.randint(0, 40, (4, 17), generator=torch.Generator().manual_seed(2))
    reference, _ = _model_and_optimizer()
    _, loss = reference(rows[:, :-1], rows[:, 1:])
    loss.backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
    grads_seen = {}
    original_step = opt.step

    def step_and_record(*args, **kwargs):
        norms = [p.grad.norm() for p in model.parameters()]
        grads_seen["norm"] = torch.linalg.vector_norm(torch.stack(norms))
        return original_step(*args, **kwargs)

    monkeypatch.setattr(opt, "step", step_and_record)
    result = train_step(model, opt, torch.amp.GradScaler("cpu", enabled=False),
                        lambda micro: (rows[:, :-1], rows[:, 1:]), 1, torch.device("cpu"), torch.float32,
                        grad_clip=1e-3)
    torch.testing.assert_close(result.grad_norm, expected)
    assert grads_seen["norm"] == pytest.approx(1e-3, rel=1e-4)
    assert result.skipped is False


def test_unigram_perplexity_by_hand():
    """Train counts [2, 1, 0] over V=3 with add-one give p = [3, 2, 1] / 6; val predicts tokens 0 and 1
    (its first token is never predicted), so perplexity = 1 / sqrt(1/2 * 1/3) = sqrt(6)."""
    train_tokens = np.array([0, 0, 1], dtype=np.uint16)
    val_tokens = np.array([2, 0, 1], dtype=np.uint16)
    assert unigram_perplexity(train_tokens, val_tokens, vocab_size=3) == pytest.approx(math.sqrt(6))


def test_bfloat16_autocast_run_on_cpu(tmp_path):
    """run.dtype bfloat16 trains under CPU autocast: finite falling losses, float32 master weights."""
    cfg = tiny_config(tmp_path, run={"dtype": "bfloat16"}, train={"max_steps": 20}, eval={"interval": 0})
    result = train(cfg)
    run_dir = tmp_path / "runs" / "tiny"
    losses = [v for _, v in _series(run_dir, "train/loss")]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert math.isfinite(result["val_loss"])
    weights, _, _ = load_checkpoint(find_latest(run_dir))
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_compiled_run_evaluates_with_the_uncompiled_model(tmp_path):
    """run.compile wraps only what training steps call; evaluation (other batch shapes) stays eager."""
    from albert_gpt.training.trainer import build_run

    run = build_run(tiny_config(tmp_path, run={"compile": True}), resume=False)
    assert isinstance(run.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    assert run.forward_model._orig_mod is run.model
    assert run.eval_model is run.model
