"""One optimizer step: gradient accumulation, mixed precision, clipping, non-finite guard.

Shapes: B = micro-batch size, T = context length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from albert_gpt.errors import TrainingError
from albert_gpt.runtime import autocast
from albert_gpt.training.diagnostics import DepthDiagnostics
from albert_gpt.training.distributed import all_reduce_mean, full_tensor, grad_sync

BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # micro_step -> (x, y), each (B, T)


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar on the device: mean loss of the step's micro-batches
    grad_norm: torch.Tensor  # scalar: global gradient norm before clipping
    skipped: bool  # non-finite loss or gradient: the optimizer did not step
    diagnostics: dict[str, float] | None = None  # diag/ scalars, on steps that collected them


def train_step(
    model: Any,  # the model, its DDP/FSDP wrapper, or torch.compile of either
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    next_batch: BatchFn,
    accum_steps: int,
    device: torch.device,
    dtype: torch.dtype,
    grad_clip: float,
    diag: DepthDiagnostics | None = None,
) -> StepResult:
    """Accumulate gradients over `accum_steps` micro-batches, clip, and step unless non-finite.

    Each micro-batch loss is divided by accum_steps, so with equal-sized micro-batches the summed
    gradient equals that of one batch holding all of them (the loss is a per-token mean).
    """
    loss_sum = torch.zeros((), device=device)
    for micro in range(accum_steps):
        x, y = next_batch(micro)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        # DDP / FSDP reduce gradients only after the last micro-batch (no_sync before it).
        with grad_sync(model, sync=micro == accum_steps - 1):
            with autocast(device, dtype):
                _, loss = diag.forward(model, x, y) if diag is not None and micro == 0 else model(x, y)
            assert loss is not None  # targets were given
            loss = loss / accum_steps
            scaler.scale(loss).backward()
        loss_sum += loss.detach().float()
    # Under torchrun: the global batch's loss, so every rank takes the same skip decision below.
    loss_sum = all_reduce_mean(loss_sum)

    scaler.unscale_(optimizer)  # clipping and the norm must see true gradients, not fp16-scaled ones
    # Before clipping, like train/grad_norm. The traced micro-batch's loss was scaled by
    # loss_scale / accum_steps on its way into backward.
    diagnostics = diag.after_backward(scaler.get_scale() / accum_steps) if diag is not None else None
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if grad_clip > 0:
        grad_norm = nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        grad_norm = nn.utils.get_total_norm([p.grad for p in params])
    grad_norm = full_tensor(grad_norm)  # FSDP: a DTensor over the shards

    # The one host sync of a step: whether to apply it must be known on the host. With fp16 an
    # overflowing gradient under a finite loss is the scaler's routine (it skips and lowers the
    # scale), so there only the loss decides.
    watched = loss_sum if scaler.is_enabled() else loss_sum + grad_norm
    skipped = not bool(torch.isfinite(watched))
    if not skipped:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss_sum, grad_norm=grad_norm, skipped=skipped, diagnostics=diagnostics)


class NonFiniteGuard:
    """Counts skipped steps, and stops the run after more than `limit` in a row."""

    def __init__(self, limit: int, total: int = 0, in_a_row: int = 0, grad_clip: float = 0.0):
        self.limit = limit
        self.grad_clip = grad_clip  # only to advise: clipping is suggested when it is off
        self.total = total
        self.in_a_row = in_a_row

    def record(self, step: int, skipped: bool, last_checkpoint: str | None) -> None:
        """`step` is the 1-based number of the step just taken."""
        if not skipped:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row > self.limit:
            kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint"
            first = step - self.in_a_row + 1
            raise TrainingError(
                f"{self.in_a_row} non-finite steps in a row (steps {first}-{step}) is more "
                f"than train.max_skipped_steps={self.limit}; stopped, {kept}. Lower train.lr"
                + (" or raise train.warmup_steps" if self.grad_clip > 0 else
                   ", raise train.warmup_steps or set train.grad_clip (it is 0: off)")
            )
