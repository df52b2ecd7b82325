"""Claim h: BatchNorm depends on batch statistics, so it suffers with small batches and with
variable-length (padded) sequences; LayerNorm, which normalizes each token alone, does not.

Shapes: B batch, T tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from albert_gpt.config import load_config
from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.study.claims.common import ARMS, eval_loss, prepared_data, runs_where, train_model
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
SEEDS = {"cpu": (1, 2, 3), "gpu": (1, 2, 3, 4, 5)}
BATCHES = (1, 2, 4, 16, 64)
TOKENS = 64 * 32 * 50  # equal budget for every batch size: 3200 steps at B=1 ... 50 at B=64
PADDED = ("LN", "BN, statistics over padding too", "BN, padding masked")
ARM_OF = {"LN": "post-LN", "BN": "BN per depth"}
MIN_LENGTH = 8


class Padded(nn.Module):
    """Trains on right-padded batches: targets of padding are -1; with `masked`, BatchNorm is told which
    positions are real (derived from those targets)."""

    def __init__(self, model: nn.Module, masked: bool) -> None:
        super().__init__()
        self.model, self.masked = model, masked

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model(x, y, valid=(y != -1) if self.masked else None)


def padded_batch(sampler: RandomWindowSampler, step: int, seed: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    """A batch whose sequences are cut to random lengths (MIN_LENGTH .. T) and right-padded."""
    x, y = sampler.batch(step)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    lengths = torch.randint(MIN_LENGTH, x.size(1) + 1, (x.size(0),), generator=g)
    pad = torch.arange(x.size(1))[None, :] >= lengths[:, None]  # (B, T)
    return x.masked_fill(pad, pad_id), y.masked_fill(pad, -1)


def cells(size: str) -> list[dict[str, Any]]:
    by_batch = [{"norm": n, "batch_size": b, "seed": s} for n in ARM_OF for b in BATCHES for s in SEEDS[size]]
    return by_batch + [{"padded": p, "seed": s} for p in PADDED for s in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    if "padded" in cell:
        arm, batch, masked = (
            ("post-LN" if cell["padded"] == "LN" else "BN per depth"),
            16,
            "masked" in cell["padded"],
        )
    else:
        arm, batch, masked = ARM_OF[cell["norm"]], cell["batch_size"], False
    steps = TOKENS // (batch * 32)
    cfg = load_config(
        CONFIG,
        [
            *ARMS[arm],
            f"run.seed={cell['seed']}",
            f"train.batch_size={batch}",
            f"train.max_steps={steps}",
            f"train.warmup_steps={steps // 10}",
        ],
    )
    data = prepared_data(cfg)
    batch_of, wrap = None, None
    if "padded" in cell:
        sampler = RandomWindowSampler(data.splits["train"].tokens, 32, batch, cfg.run.seed)

        def batch_of(step: int, micro: int) -> tuple[torch.Tensor, ...]:
            return padded_batch(sampler, step, cfg.run.seed, data.tokenizer.eot_id)

        def wrap(model: nn.Module) -> nn.Module:
            return Padded(model, masked)

    trained = train_model(cfg, data, batch_of=batch_of, wrap=wrap)
    model = trained.model
    eval_mode = eval_loss(model, data, cfg)
    train_mode = eval_loss(model, data, cfg, batch_size=batch, train_mode=True)
    return {
        "val_loss": eval_mode if math.isfinite(eval_mode) else None,
        "val_loss_train_mode": train_mode if math.isfinite(train_mode) else None,
        "skipped_any": trained.skipped > 0,
    }


def _loss(r: dict[str, Any], key: str = "val_loss") -> float:
    return math.inf if r[key] is None else r[key]


def analyze(results: list[dict[str, Any]]) -> Analysis:
    rows = []
    gaps = {}
    for b in BATCHES:
        ln, bn = runs_where(results, norm="LN", batch_size=b), runs_where(results, norm="BN", batch_size=b)
        gaps[b] = paired_difference([_loss(r) for r in bn], [_loss(r) for r in ln])
        mode_gap = mean_interval([_loss(r, "val_loss_train_mode") - _loss(r) for r in bn])
        rows.append(
            [
                f"batch {b}",
                str(mean_interval([_loss(r) for r in ln])),
                str(mean_interval([_loss(r) for r in bn])),
                str(gaps[b]),
                str(mode_gap),
            ]
        )
    table = markdown_table(
        [
            "batches of equal tokens",
            "LN val loss",
            "BN val loss (eval mode)",
            "BN - LN",
            "BN train-mode - eval-mode loss",
        ],
        rows,
    )
    pad = {p: runs_where(results, padded=p) for p in PADDED}
    pad_rows = [
        [
            p,
            str(mean_interval([_loss(r) for r in pad[p]])),
            str(mean_interval([_loss(r, "val_loss_train_mode") - _loss(r) for r in pad[p]])),
        ]
        for p in PADDED
    ]
    table += "\n\nVariable-length batches (lengths 8 to 32, right-padded), batch 16:\n\n" + markdown_table(
        ["arm", "val loss (eval mode, full windows)", "train-mode - eval-mode loss"], pad_rows
    )
    small, large = gaps[min(BATCHES)], gaps[16]
    pad_gap = paired_difference(
        [_loss(r) for r in pad["BN, statistics over padding too"]], [_loss(r) for r in pad["LN"]]
    )
    headline = f"BN - LN val loss: batch 1 {small}, batch 16 {large}; padded (unmasked BN) {pad_gap}"
    small_hurts = small.low > 0 and small.mean > max(large.mean, 0)
    if small_hurts and pad_gap.low > 0:
        verdict, reason = (
            "supported",
            (
                "BatchNorm falls behind LayerNorm at batch size 1 (more than at 16) and "
                "on padded variable-length batches."
            ),
        )
    elif small.high < 0 or pad_gap.high < 0:
        verdict, reason = (
            "contradicted",
            "BatchNorm does better than LayerNorm where the article says it suffers.",
        )
    else:
        verdict, reason = (
            "mixed",
            "only part of the predicted BatchNorm penalty is resolved by the intervals.",
        )
    masked_gap = paired_difference(
        [_loss(r) for r in pad["BN, padding masked"]], [_loss(r) for r in pad["LN"]]
    )
    by_size = ", ".join(f"batch {b} {gaps[b]}" for b in BATCHES)
    reason += (
        f" BN minus LN, paired by seed: {by_size}; on padded batches {pad_gap} with padding in BN's "
        f"statistics and {masked_gap} with it masked out."
    )
    return Analysis(verdict, reason, headline, table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for i, norm in enumerate(ARM_OF):
        means, err = error_bars(
            [
                mean_interval([min(_loss(r), 10) for r in runs_where(results, norm=norm, batch_size=b)])
                for b in BATCHES
            ]
        )
        axes[0].errorbar(BATCHES, means, yerr=err, color=f"C{i}", marker="o", capsize=2, label=norm)
    axes[0].set(
        xscale="log", xlabel="batch size (equal tokens)", ylabel="val loss (eval mode)", title="batch size"
    )
    axes[0].legend(fontsize=7)
    means, err = error_bars(
        [mean_interval([min(_loss(r), 10) for r in runs_where(results, padded=p)]) for p in PADDED]
    )
    axes[1].bar(range(len(PADDED)), means, yerr=err, capsize=3, color=["C0", "C1", "C2"])
    axes[1].set_xticks(range(len(PADDED)), ["LN", "BN, pads\nin stats", "BN, pads\nmasked"])
    axes[1].set(ylabel="val loss", title="variable-length padded batches")
    axes[1].set_ylim(bottom=min(means) - 0.2)
    save(fig, path)


CLAIM = Claim(
    letter="h",
    name="batch-dependence",
    title="BatchNorm needs batch statistics; LayerNorm does not",
    sections="9, 9.1",
    statement="BatchNorm normalizes with statistics of the batch, so it suffers with small batches and with "
    "variable-length sequences; LayerNorm normalizes each token alone and does not.",
    experiment=f"The shared 6-layer post-LN model with LayerNorm or with BatchNorm (per-depth statistics), "
    f"batch size 1 / 2 / 4 / 16 / 64 at an equal budget of {TOKENS:,} tokens, lr 1e-3; and, at batch "
    f"16, batches of sequences cut to random lengths ({MIN_LENGTH} to 32) and right-padded, with "
    "BatchNorm's statistics taken over padding too or over real tokens only (masked); 3 seeds. "
    "Evaluation on full windows in eval mode (running statistics).",
    config=CONFIG,
    metric="validation loss (eval mode) of BN minus LN, paired by seed; BN's train- minus eval-mode loss.",
    rule="supported if BN's loss exceeds LN's at batch size 1 (paired 95% interval above 0) by more than at "
    "batch size 16, and BN with padding in its statistics exceeds LN on padded batches (interval above 0); "
    "contradicted if BN beats LN at batch size 1 or on padded batches (interval below 0); otherwise mixed.",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
