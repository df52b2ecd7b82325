"""Every speed option computes what the plain path computes: torch.compile, the fused AdamW kernel and
the evaluation batch size each give the same losses within 1e-3 over 20 steps of a tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from albert_gpt.config import ModelConfig, TrainConfig
from albert_gpt.inference.evaluate import evaluate_tokens
from albert_gpt.modeling.factory import build_model
from albert_gpt.training.optim import build_optimizer, lr_at, set_lr
from albert_gpt.training.step import train_step

V, B, T, STEPS = 50, 4, 16, 20
CPU, F32 = torch.device("cpu"), torch.float32


def _batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, V, (STEPS, B, T + 1), generator=g)
    data[:, :, 1::2] = data[:, :, 0:-1:2]  # something to learn: every other token repeats the one before
    return [(d[:, :-1], d[:, 1:]) for d in data]


def _losses(compile: bool = False, fused: bool = False, **model: object) -> list[float]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layers=2, n_groups=1, n_embd=32, n_heads=2, block_size=T, vocab_size=V, dropout=0.0, **model
    )
    net = build_model(cfg)
    train = TrainConfig(lr=3e-3, warmup_steps=2, max_steps=STEPS)
    optimizer = build_optimizer(net, train, CPU, fused=fused)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step_model = torch.compile(net) if compile else net
    batches, losses = _batches(), []
    for step in range(STEPS):
        set_lr(optimizer, lr_at(step, train))
        result = train_step(step_model, optimizer, scaler, lambda m, s=step: batches[s], 1, CPU, F32, 1.0)
        losses.append(float(result.loss))
    return losses


@pytest.fixture(scope="module")
def plain() -> list[float]:
    return _losses()


def test_fused_adamw_trains_as_the_foreach_path(plain):
    assert _losses(fused=True) == pytest.approx(plain, abs=1e-3)
    assert plain[-1] < plain[0] - 0.2  # and the model learned something, so the comparison means something


def test_compiled_model_trains_as_the_eager_one(plain):
    assert _losses(compile=True, fused=True) == pytest.approx(plain, abs=1e-3)


@pytest.mark.parametrize("arch", ["transformer", "conv"])
def test_evaluation_batch_size_changes_nothing(arch):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_layers=2, n_groups=1, n_embd=32, n_heads=2, block_size=T, vocab_size=V)
    net = build_model(dataclasses.replace(cfg)).eval()
    tokens = torch.randint(0, V, (1000,), generator=torch.Generator().manual_seed(1)).numpy()
    one = evaluate_tokens(net, tokens, T, 1, CPU, F32)
    many = evaluate_tokens(net, tokens, T, 64, CPU, F32)
    assert many["loss"] == pytest.approx(one["loss"], abs=1e-3) and many["tokens"] == one["tokens"]
    with torch.inference_mode():
        again = evaluate_tokens(net, tokens, T, 64, CPU, F32)
    assert again["loss"] == pytest.approx(one["loss"], abs=1e-3)
