"""Learning-rate schedules and AdamW parameter groups (albert_gpt/training/optim.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from albert_gpt.config import Config, ModelConfig, TrainConfig
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.training.optim import build_optimizer, lr_at, param_groups, total_steps


def _train(**kw) -> TrainConfig:
    base = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "inverse_sqrt"])
def test_warmup_is_linear_for_every_schedule(schedule):
    """During warmup every schedule ramps lr * (step + 1) / warmup_steps, reaching lr at its last step."""
    t = _train(schedule=schedule)
    assert lr_at(0, t) == pytest.approx(0.1)
    assert lr_at(4, t) == pytest.approx(0.5)
    assert lr_at(9, t) == pytest.approx(1.0)


def test_cosine_values():
    """Cosine: lr at the start of decay, half way at the midpoint, min_lr at the end and after it."""
    t = _train(schedule="cosine")
    assert lr_at(10, t) == pytest.approx(1.0)
    # p = 50 / 100 -> cos(pi/2) = 0 -> halfway between 1.0 and 0.1
    assert lr_at(60, t) == pytest.approx(0.55)
    # p = 25 / 100 -> 0.1 + 0.9 * (1 + cos(pi/4)) / 2
    assert lr_at(35, t) == pytest.approx(0.1 + 0.9 * (1 + 2**-0.5) / 2)
    assert lr_at(110, t) == pytest.approx(0.1)
    assert lr_at(500, t) == pytest.approx(0.1)


def test_linear_values():
    """Linear: straight line from lr to min_lr over the steps after warmup, then flat."""
    t = _train(schedule="linear")
    assert lr_at(35, t) == pytest.approx(0.775)
    assert lr_at(60, t) == pytest.approx(0.55)
    assert lr_at(110, t) == pytest.approx(0.1)
    assert lr_at(1000, t) == pytest.approx(0.1)


def test_constant_values():
    """Constant: lr after warmup, at any step."""
    t = _train(schedule="constant")
    assert lr_at(10, t) == 1.0
    assert lr_at(10_000, t) == 1.0


def test_inverse_sqrt_values_and_floor():
    """inverse_sqrt: lr * sqrt(warmup / (step + 1)) after warmup, never below min_lr."""
    t = _train(schedule="inverse_sqrt", warmup_steps=16, min_lr=0.05)
    assert lr_at(63, t) == pytest.approx(0.5)
    assert lr_at(255, t) == pytest.approx(0.25)
    assert lr_at(100_000, t) == pytest.approx(0.05)


def test_no_warmup_starts_at_peak():
    """With warmup_steps 0 the first step already uses the peak lr."""
    assert lr_at(0, _train(schedule="cosine", warmup_steps=0)) == pytest.approx(1.0)


def test_total_steps_from_max_tokens():
    """max_tokens is turned into optimizer steps (rounded up) from batch x accumulation x context."""
    cfg = Config(
        model=ModelConfig(block_size=16),
        train=TrainConfig(batch_size=4, grad_accum_steps=2, max_tokens=1000, max_steps=7),
    )
    assert total_steps(cfg) == math.ceil(1000 / (4 * 2 * 16))
    assert total_steps(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_tokens=None))) == 7


def _tiny_model() -> AlbertGPT:
    torch.manual_seed(0)
    return AlbertGPT(ModelConfig(n_layers=2, n_groups=2, n_embd=32, n_heads=2, block_size=16, vocab_size=50))


def test_param_groups_decay_only_weight_matrices():
    """Every Linear weight is decayed; norm parameters, biases and embedding tables are not."""
    model = _tiny_model()
    decay, no_decay = (
        {id(p) for p in g["params"]} for g in param_groups(model, weight_decay=0.1)
    )
    assert decay and no_decay and not decay & no_decay
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            # id check: a tied LM head is a Linear whose weight is the embedding table
            if id(p) in embeddings or p.dim() < 2 or name == "bias":
                assert id(p) in no_decay, f"{type(module).__name__}.{name} is decayed"
            elif isinstance(module, nn.Linear):
                assert id(p) in decay, f"{type(module).__name__}.{name} is not decayed"
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_adamw_step_with_zero_gradients_only_decays_weight_matrices():
    """With zero gradients Adam's update is 0: one step scales exactly the decayed tensors by (1 - lr*wd)."""
    model = _tiny_model()
    train = TrainConfig(lr=0.5, min_lr=0.0, warmup_steps=0, weight_decay=0.2)
    opt = build_optimizer(model, train, torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if id(p) in decayed:
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.5 * 0.2))
        else:
            assert torch.equal(p.detach(), before[name]), f"{name} changed"


def test_adamw_matches_hand_computed_update():
    """Two steps of the built optimizer (fused on CPU) equal AdamW written out (Loshchilov & Hutter)."""
    model = nn.Linear(3, 2)
    train = TrainConfig(lr=0.1, min_lr=0.0, warmup_steps=0, weight_decay=0.2, beta1=0.9, beta2=0.99,
                        adam_eps=1e-8)
    opt = build_optimizer(model, train, torch.device("cpu"))
    assert opt.defaults["fused"]
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(2)]
    expected = [p.detach().clone() for p in model.parameters()]
    decays = [0.2, 0.0]  # weight, bias
    m = [torch.zeros_like(p) for p in expected]
    v = [torch.zeros_like(p) for p in expected]
    for t, step_grads in enumerate(grads, start=1):
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(step_grads):
            expected[i] = expected[i] * (1 - 0.1 * decays[i])
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.99 * v[i] + 0.01 * g * g
            m_hat, v_hat = m[i] / (1 - 0.9**t), v[i] / (1 - 0.99**t)
            expected[i] = expected[i] - 0.1 * m_hat / (v_hat.sqrt() + 1e-8)
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-6)
