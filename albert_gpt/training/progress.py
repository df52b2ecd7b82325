"""What the user sees while training: a tqdm bar over steps, or (log.progress: false) one log
line per log interval; and the per-interval averages both are made from."""

from __future__ import annotations

import logging
import sys
import time

import torch
from tqdm import tqdm

log = logging.getLogger("albert_gpt")


class IntervalMeter:
    """Sums over the steps since the last log: loss (kept on the device, so adding costs no
    host sync), steps, tokens and training time (evaluation and checkpoint time excluded)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0
        self._tokens = 0
        self._start = time.perf_counter()

    def add(self, loss: torch.Tensor | None, tokens: int) -> None:
        """Count one step; `loss` None for a skipped step (it would turn the mean into NaN)."""
        if loss is not None:
            self.loss_sum += loss
            self.steps += 1
        self._tokens += tokens

    def restart_clock(self) -> None:
        """Start timing afresh (after an evaluation or a checkpoint, which are not training)."""
        self._start = time.perf_counter()
        self._tokens = 0

    def take(self) -> dict[str, float]:
        """Mean loss and tokens/s since the last take(); resets the sums."""
        elapsed = time.perf_counter() - self._start
        loss = (self.loss_sum / self.steps).item() if self.steps else float("nan")
        result = {"loss": loss, "tokens_per_sec": self._tokens / elapsed if elapsed > 0 else 0.0}
        self.loss_sum = torch.zeros((), device=self.device)
        self.steps = 0
        self.restart_clock()
        return result

    def state_dict(self) -> dict:
        # Part of a checkpoint, so a run resumed between two log steps logs the same mean loss.
        return {"loss_sum": self.loss_sum.detach().cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum = state["loss_sum"].to(self.device)
        self.steps = int(state["steps"])


def interactive() -> bool:
    """Whether stderr is a terminal: bars redraw themselves with carriage returns and cursor moves, which
    a log file or a pipe keeps as clutter, so there the training speaks in log lines instead."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Progress:
    """A tqdm bar (log.progress on a terminal) or periodic log lines (log.progress: false, or stderr
    redirected to a file or a pipe)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total = total
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True) \
            if enabled and interactive() else None

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, step: int, loss: float, lr: float, tokens_per_sec: float, grad_norm: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}  lr {lr:.2e}  {tokens_per_sec / 1000:.1f}k tok/s",
                                     refresh=False)
        else:
            log.info("step %d/%d  loss %.4f  lr %.2e  grad norm %.3f  %.1fk tok/s",
                     step, self.total, loss, lr, grad_norm, tokens_per_sec / 1000)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
