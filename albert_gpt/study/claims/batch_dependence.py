"""Claim h: BatchNorm depends on batch statistics, so it suffers when they come from few sequences and
on variable-length (padded) sequences; LayerNorm, which normalizes each token alone, does not.

BatchNorm over batch x time (how it is usually put into a sequence model) lets a token see later tokens
through its statistics at train time, so its training is not a causal LM's. The judged arms use the causal
BatchNorm (`model.batch_axes: batch`): statistics over the sequences of a (ghost) batch at each position,
running statistics per position. The group-size sweep changes how many sequences the statistics come from
at a fixed batch of 16, so nothing else changes. Judged under the ledger's second edition (rules.py).

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
from albert_gpt.study.claims.common import (
    ARMS,
    eval_loss,
    prepared_data,
    runs_where,
    train_model,
    unigram_loss,
)
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.rules import Comparison, Evidence, Pairs, Rule, Trained, judge, trained_gate
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
SEEDS = {"cpu": (1, 2, 3, 4, 5, 6), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
BATCH = 16
GROUPS = (2, 4, 8, 16)  # sequences per set of statistics, at a fixed batch of 16
MIN_LENGTH = 8
CAUSAL = ["model.norm=batchnorm", "model.batch_axes=batch", "model.batch_stats=per_depth"]
LEAKY = "BN over batch x time (sees later tokens)"
# arm -> (overrides, padded batches?, BatchNorm told which tokens are real?)
ARMS_HERE: dict[str, tuple[list[str], bool, bool]] = {
    "LN": (ARMS["post-LN"], False, False),
    LEAKY: (ARMS["BN per depth"], False, False),
    **{f"causal BN, groups of {g}": ([*CAUSAL, f"model.batch_group={g}"], False, False) for g in GROUPS},
    "LN, padded": (ARMS["post-LN"], True, False),
    "causal BN, padded, padding in the statistics": (CAUSAL, True, False),
    "causal BN, padded, padding masked": (CAUSAL, True, True),
    f"{LEAKY}, padded, padding in the statistics": (ARMS["BN per depth"], True, False),
}
SMALL, FULL = f"causal BN, groups of {min(GROUPS)}", f"causal BN, groups of {max(GROUPS)}"
PADDED_BN = "causal BN, padded, padding in the statistics"
MIN_LOSS = 0.05  # nats of validation loss
TRAINED_MARGIN = 0.3


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
    return [{"arm": arm, "seed": seed} for arm in ARMS_HERE for seed in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    overrides, padded, masked = ARMS_HERE[cell["arm"]]
    cfg = load_config(CONFIG, [*overrides, f"run.seed={cell['seed']}", f"train.batch_size={BATCH}"])
    data = prepared_data(cfg)
    batch_of, wrap = None, None
    if padded:
        sampler = RandomWindowSampler(data.splits["train"].tokens, cfg.model.block_size, BATCH, cfg.run.seed)

        def batch_of(step: int, micro: int) -> tuple[torch.Tensor, ...]:
            return padded_batch(sampler, step, cfg.run.seed, data.tokenizer.eot_id)

        def wrap(model: nn.Module) -> nn.Module:
            return Padded(model, masked)

    trained = train_model(cfg, data, batch_of=batch_of, wrap=wrap)
    model = trained.model
    eval_mode = math.inf if trained.diverged else eval_loss(model, data, cfg)
    train_mode = (
        math.inf if trained.diverged else eval_loss(model, data, cfg, batch_size=BATCH, train_mode=True)
    )
    return {
        "val_loss": eval_mode if math.isfinite(eval_mode) else None,
        "val_loss_train_mode": train_mode if math.isfinite(train_mode) else None,
        "diverged": trained.diverged,
        "skipped": trained.skipped,
        "unigram_loss": unigram_loss(data),
    }


def _loss(r: dict[str, Any], key: str = "val_loss") -> float:
    return math.inf if r[key] is None else r[key]


RULE = Rule(
    comparisons=(
        Comparison("val loss (nats)", FULL, SMALL, "lower", MIN_LOSS),
        Comparison("val loss (nats)", "LN", SMALL, "lower", MIN_LOSS),
        Comparison("val loss on padded batches (nats)", "LN, padded", PADDED_BN, "lower", MIN_LOSS),
    ),
    gates=(Trained("LN", TRAINED_MARGIN), Trained(FULL, TRAINED_MARGIN)),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"The shared 6-layer post-norm model, {BATCH} sequences a batch, 300 steps at lr 1e-3; the causal "
        "BatchNorm keeps per-depth running statistics and shares gamma and beta across depth. Validation "
        "loss in eval mode (running statistics) on full windows. Padded batches: each sequence cut to a "
        f"random length ({MIN_LENGTH} to the context) and right-padded. Comparison (1) says BatchNorm needs "
        "its batch statistics, (2) and (3) that LayerNorm does not suffer where BatchNorm does. The batch x "
        "time BatchNorm, the masked causal one and the train-mode losses are reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    gates = [trained_gate(arm, runs_where(results, arm=arm), TRAINED_MARGIN) for arm in ("LN", FULL)]
    pairs = [
        Pairs(
            [_loss(r) for r in runs_where(results, arm=c.a)], [_loss(r) for r in runs_where(results, arm=c.b)]
        )
        for c in RULE.arm_comparisons()
    ]
    return Evidence(gates, pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    rows = []
    for arm in ARMS_HERE:
        runs = runs_where(results, arm=arm)
        if not runs:
            continue
        rows.append(
            [
                arm,
                str(mean_interval([_loss(r) for r in runs])),
                str(mean_interval([_loss(r, "val_loss_train_mode") for r in runs])),
                str(sum(bool(r.get("diverged")) for r in runs)),
            ]
        )
    table = markdown_table(
        [
            "arm",
            "val loss (eval mode)",
            f"val loss, train mode (statistics of {BATCH}-sequence batches)",
            "diverged runs",
        ],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    groups = [g for g in GROUPS if runs_where(results, arm=f"causal BN, groups of {g}")]
    means, err = error_bars(
        [
            mean_interval([min(_loss(r), 10) for r in runs_where(results, arm=f"causal BN, groups of {g}")])
            for g in groups
        ]
    )
    axes[0].errorbar(groups, means, yerr=err, color="C1", marker="o", capsize=2, label="causal BN")
    for i, arm in ((0, "LN"), (2, LEAKY)):
        iv = mean_interval([min(_loss(r), 10) for r in runs_where(results, arm=arm)])
        axes[0].axhline(iv.mean, color=f"C{i}", ls="--", label=f"{arm} (batch {BATCH})")
    axes[0].set(
        xscale="log",
        xlabel=f"sequences per set of statistics (batch {BATCH})",
        ylabel="val loss (eval mode)",
        title="statistics from fewer sequences",
    )
    axes[0].legend(fontsize=7)
    padded = [a for a in ARMS_HERE if ARMS_HERE[a][1] and runs_where(results, arm=a)]
    means, err = error_bars(
        [mean_interval([min(_loss(r), 10) for r in runs_where(results, arm=a)]) for a in padded]
    )
    axes[1].bar(range(len(padded)), means, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(padded))])
    axes[1].set_xticks(
        range(len(padded)),
        ["LN", "causal BN,\npads in stats", "causal BN,\npads masked", "BN batch x time,\npads in stats"][
            : len(padded)
        ],
        fontsize=7,
    )
    axes[1].set(ylabel="val loss (eval mode)", title="variable-length padded batches")
    if means:
        axes[1].set_ylim(bottom=min(means) - 0.2)
    save(fig, path)


CLAIM = Claim(
    letter="h",
    name="batch-dependence",
    title="BatchNorm needs batch statistics; LayerNorm does not",
    sections="9, 9.1",
    statement="BatchNorm normalizes with statistics of the batch, so it suffers with small batches and with "
    "variable-length sequences; LayerNorm normalizes each token alone and does not.",
    experiment=f"The shared 6-layer post-norm model at batch {BATCH}, 300 steps at lr 1e-3, with LayerNorm; "
    "with a causal BatchNorm (statistics over the sequences at each position, never over later positions) "
    f"whose statistics come from ghost batches of {' / '.join(str(g) for g in GROUPS)} sequences; with "
    "BatchNorm over batch x time (labelled: it sees later tokens in training); and on batches of sequences "
    f"cut to random lengths ({MIN_LENGTH} to 32) and right-padded, with LayerNorm, the causal BatchNorm "
    "(padding in its statistics, or masked out) and the batch x time one; "
    f"{len(SEEDS['cpu'])} seeds. Evaluation on full windows in eval mode (running statistics).",
    config=CONFIG,
    metric="validation loss in eval mode; the train-mode loss (batch statistics) is reported.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
