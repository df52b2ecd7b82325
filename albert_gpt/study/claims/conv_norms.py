"""Claim k: group and instance normalization next to LayerNorm, RMSNorm and BatchNorm in a causal
convolutional LM, and GroupNorm's group count from 1 (LayerNorm) to groups of two channels.

A stand-in: the article speaks of combining LayerNorm with group and instance norms; here each replaces
LayerNorm. Judged under the ledger's second edition (rules.py).

Shapes: B batch, T tokens, H channels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import eval_loss, prepared_data, runs_where, train_model, unigram_loss
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.rules import (
    Comparison,
    Evidence,
    Pairs,
    Rule,
    Trained,
    judge,
    trained_gate,
)
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/conv.yaml"
DEPTH = ["model.n_layers=8", "model.n_groups=8"]  # 8 blocks: the comparison of norms, not of depth
CHANNELS = 64
GROUPS = (1, 2, 4, 8, 16, 32)  # 1 is LayerNorm; 32 groups of two channels. 64 would leave one channel per
# group, whose normalized value is always 0 (the block would output beta): not a norm worth running.
NORMS = {
    "LayerNorm": ["model.norm=layernorm"],
    "RMSNorm": ["model.norm=rmsnorm"],
    "BatchNorm": ["model.norm=batchnorm"],
    "instance (causal)": ["model.norm=instancenorm"],
    **{f"GroupNorm G={g}": ["model.norm=groupnorm", f"model.norm_groups={g}"] for g in GROUPS[1:]},
}
DECIDING_GROUPS = 8  # fixed before the runs: the config's default group count
LRS = (1e-3, 1e-2)
SEEDS = {"cpu": (1, 2, 3, 4, 5), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
JUDGED = ("instance (causal)", f"GroupNorm G={DECIDING_GROUPS}")
MIN_GAIN = 0.02  # nats of validation loss
TRAINED_MARGIN = 0.3


def cells(size: str) -> list[dict[str, Any]]:
    return [{"norm": n, "lr": lr, "seed": s} for n in NORMS for lr in LRS for s in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    lr = cell["lr"]
    overrides = [
        *DEPTH,
        *NORMS[cell["norm"]],
        f"run.seed={cell['seed']}",
        f"train.lr={lr}",
        f"train.min_lr={lr / 100}",
    ]
    cfg = load_config(CONFIG, overrides)
    data = prepared_data(cfg)
    trained = train_model(cfg, data)
    loss = math.inf if trained.diverged else eval_loss(trained.model, data, cfg)
    return {
        "val_loss": loss if math.isfinite(loss) else None,
        "diverged": trained.diverged,
        "unigram_loss": unigram_loss(data),
    }


def _group_arm(groups: int) -> str:
    return "LayerNorm" if groups == 1 else f"GroupNorm G={groups}"


def _loss(r: dict[str, Any]) -> float:
    return math.inf if r["val_loss"] is None else r["val_loss"]


def _losses(results: list[dict[str, Any]], norm: str, lr: float) -> list[float]:
    return [_loss(r) for r in runs_where(results, norm=norm, lr=lr)]


RULE = Rule(
    comparisons=tuple(
        Comparison(f"validation loss at lr {lr:g}", norm, "LayerNorm", "lower", MIN_GAIN)
        for norm in JUDGED
        for lr in LRS
    ),
    gates=(Trained("LayerNorm", TRAINED_MARGIN),),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"GroupNorm's group count {DECIDING_GROUPS} was fixed before the runs (the config's default); a "
        "diverged run counts as a non-finite loss (undecided). A stand-in: the article speaks of combining "
        "LayerNorm with group and instance norms, and here each replaces it. RMSNorm, BatchNorm and the "
        "other group counts are reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    ln = runs_where(results, norm="LayerNorm", lr=LRS[0])
    gate = trained_gate(f"LayerNorm at lr {LRS[0]:g}", ln, TRAINED_MARGIN)
    pairs = [
        Pairs(_losses(results, norm, lr), _losses(results, "LayerNorm", lr)) for norm in JUDGED for lr in LRS
    ]
    return Evidence([gate], pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    rows = []
    for norm in [n for n in NORMS if runs_where(results, norm=n)]:
        cells_ = [mean_interval(_losses(results, norm, lr)) for lr in LRS]
        vs_ln = [
            paired_difference(_losses(results, norm, lr), _losses(results, "LayerNorm", lr))
            if norm != "LayerNorm"
            else None
            for lr in LRS
        ]
        rows.append([norm, *[str(c) for c in cells_], *["-" if d is None else str(d) for d in vs_ln]])
    table = markdown_table(
        ["norm", *[f"val loss, lr {lr:g}" for lr in LRS], *[f"minus LayerNorm, lr {lr:g}" for lr in LRS]],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(NORMS)
    for i, lr in enumerate(LRS):
        means, err = error_bars(
            [mean_interval([min(v, 6.0) for v in _losses(results, n, lr)]) for n in names]
        )
        axes[0].errorbar(
            [x + 0.15 * i for x in range(len(names))], means, yerr=err, fmt="o", capsize=3, label=f"lr {lr:g}"
        )
        labels = [_group_arm(g) for g in GROUPS]
        means, err = error_bars(
            [mean_interval([min(v, 6.0) for v in _losses(results, n, lr)]) for n in labels]
        )
        axes[1].errorbar(GROUPS, means, yerr=err, marker="o", capsize=3, label=f"lr {lr:g}")
    axes[0].set_xticks(
        range(len(names)),
        [n.replace(" (causal)", "").replace("GroupNorm ", "GN ") for n in names],
        rotation=45,
        fontsize=7,
    )
    axes[0].set(ylabel="val loss", title="8-block causal conv LM: norms")
    axes[1].set(
        xscale="log",
        xlabel="GroupNorm groups (1 = LayerNorm, 32 = pairs of channels)",
        ylabel="val loss",
        title="group count",
    )
    axes[1].set_xticks(GROUPS, [str(g) for g in GROUPS])
    axes[0].legend(fontsize=7)
    save(fig, path)


CLAIM = Claim(
    letter="k",
    name="conv-norms",
    title="Group and instance norms in place of LayerNorm in a conv LM (a stand-in for combining them)",
    sections="10",
    statement="Combining layer normalization with group and instance normalization is a direction that can "
    "further improve training stability.",
    experiment=f"A causal convolutional LM of 8 unshared post-norm residual blocks ({CHANNELS} channels, "
    "kernel 3, dilations 1 2 4 8 1 2 4 8) with LayerNorm, RMSNorm, BatchNorm (batch and time statistics), "
    "causal instance norm (each channel over positions 0..t), or GroupNorm at each position with "
    f"{', '.join(str(g) for g in GROUPS[1:])} groups; peak lr {' and '.join(f'{lr:g}' for lr in LRS)}, 300 "
    f"steps, {len(SEEDS['cpu'])} seeds. GroupNorm with one group is LayerNorm (tested), so LayerNorm is the "
    "G=1 point. Each norm replaces LayerNorm: a stand-in for the article's combination.",
    config=CONFIG,
    metric="final validation loss (eval mode), paired by seed against LayerNorm.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
