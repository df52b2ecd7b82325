"""Losses of a trained run in train mode vs eval mode, and on train vs val windows (a sweep's
`post_eval`): the BatchNorm train/eval gap and the generalization gap.

Shapes: B batch, T tokens.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from albert_gpt.modeling.base import CausalLM

EVAL_SEED = 20_240_601  # windows for post-training measurements; any fixed seed, apart from training's


def _mean_loss(model: CausalLM, sampler: Any, batches: int, training: bool, device: torch.device) -> float:
    model.train(training)
    losses = []
    with torch.no_grad():
        for i in range(batches):
            x, y = sampler.batch(i)  # (B, T) each
            losses.append(model(x.to(device), y.to(device))[1].item())
    return statistics.fmean(losses)


def measure_modes(run_dir: Path, batches: int = 8, train_mode: bool = False) -> dict[str, float]:
    """Loss of a run's final weights on train and val windows in eval mode; with `train_mode`,
    the val loss again in train mode (BatchNorm on batch statistics, at the training batch size).

    Both splits use the same number of windows and the same seed, so `generalization_gap`
    (val - train) compares like with like; `mode_gap` is train mode minus eval mode on val.
    """
    from albert_gpt.checkpoint import load_for_inference
    from albert_gpt.data.batches import RandomWindowSampler
    from albert_gpt.data.pipeline import prepare_data
    from albert_gpt.runtime import resolve_device

    cfg, model, _ = load_for_inference(run_dir, "latest")
    device = resolve_device(cfg.run)
    model.to(device)
    data = prepare_data(cfg, progress=False)
    T, B = cfg.model.block_size, cfg.train.batch_size

    def sampler(split: str) -> Any:
        return RandomWindowSampler(data.splits[split].tokens, T, B, EVAL_SEED)

    out = {
        "eval_train_loss": _mean_loss(model, sampler("train"), batches, False, device),
        "eval_val_loss": _mean_loss(model, sampler("val"), batches, False, device),
    }
    out["generalization_gap"] = out["eval_val_loss"] - out["eval_train_loss"]
    if train_mode:
        out["val_loss_train_mode"] = _mean_loss(model, sampler("val"), batches, True, device)
        out["mode_gap"] = out["val_loss_train_mode"] - out["eval_val_loss"]
    return out
