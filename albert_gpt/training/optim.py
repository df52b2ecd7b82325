"""AdamW with decay on weight matrices only, and the learning-rate schedules.

Schedules are pure functions of the step, so a resumed run needs nothing but the step to
continue on the same curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from albert_gpt.config import Config, TrainConfig


def total_steps(cfg: Config, world_size: int = 1) -> int:
    """Optimizer steps of the run: from train.max_tokens when set, else train.max_steps."""
    t = cfg.train
    if t.max_tokens is None:
        return t.max_steps
    tokens_per_step = t.batch_size * t.grad_accum_steps * cfg.model.block_size * world_size
    return math.ceil(t.max_tokens / tokens_per_step)


def lr_at(step: int, train: TrainConfig, total: int | None = None) -> float:
    """Learning rate for the optimizer step with 0-based index `step`.

    Warmup: lr * (step + 1) / warmup_steps for step < warmup_steps (so the first step is not 0).
    After warmup, with p = (step - warmup) / max(1, total - warmup) clipped to [0, 1]:
      cosine        min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2
      linear        lr - (lr - min_lr) * p
      constant      lr
      inverse_sqrt  max(min_lr, lr * sqrt(max(1, warmup) / (step + 1)))
    `total` defaults to train.max_steps (pass total_steps(cfg) when train.max_tokens is set).
    """
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "inverse_sqrt":
        return max(train.min_lr, train.lr * math.sqrt(max(1, train.warmup_steps) / (step + 1)))
    total = train.max_steps if total is None else total
    p = min(1.0, max(0.0, (step - train.warmup_steps) / max(1, total - train.warmup_steps)))
    if train.schedule == "linear":
        return train.lr - (train.lr - train.min_lr) * p
    return train.min_lr + (train.lr - train.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices, and everything else.

    Decay shrinks a weight toward zero; for a norm's gain that would fight the normalization,
    for a bias it only adds noise, and for embeddings it penalizes rare tokens. So only
    tensors of 2 or more dimensions that are not nn.Embedding weights are decayed. A tied
    LM head shares the embedding's Parameter object, so it is excluded with it.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():  # parameters() already yields a shared tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# Devices with a fused AdamW kernel: one pass over all tensors instead of a chain of
# foreach ops. On the CPU config it is 2.7x faster than foreach (docs/performance.md).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def build_optimizer(
    model: nn.Module, train: TrainConfig, device: torch.device, fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW over `param_groups`: fused where torch has the kernel (unless `fused` says), foreach
    elsewhere. Both compute the same update (tests/test_speed_options.py)."""
    fused = device.type in FUSED_ADAMW_DEVICES if fused is None else fused
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=lr_at(0, train),
        betas=(train.beta1, train.beta2),
        eps=train.adam_eps,
        fused=fused,
        foreach=None if fused else True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
