"""Claim l: BatchNorm against LayerNorm in the LSTM and the convolutional LM on variable-length, padded
batches (row h asks the same of the transformer).

Shapes: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from albert_gpt.config import load_config
from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.study.claims.batch_dependence import MIN_LENGTH, Padded, padded_batch
from albert_gpt.study.claims.common import eval_loss, prepared_data, probe_batch, runs_where, train_model
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

ARCHS = {
    "LSTM": ("configs/claims/lstm.yaml", []),
    "conv": ("configs/claims/conv.yaml", ["model.n_layers=8", "model.n_groups=8"]),
}
ARMS = {
    "LN": (["model.norm=layernorm"], False),
    "BN, statistics over padding too": (["model.norm=batchnorm"], False),
    "BN, padding masked": (["model.norm=batchnorm"], True),
}
SEEDS = {"cpu": (1, 2, 3), "gpu": (1, 2, 3, 4, 5)}


def future_leak(model: nn.Module, x: torch.Tensor) -> float:
    """In train mode: how much the logits of positions 0..T-2 move, relative to their size, when only the
    last position's token changes. 0 for a causal model; BatchNorm's batch-and-time statistics leak."""
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.vocab_size
    model.train()
    with torch.no_grad():
        base = model(x)[0][:, :-1]
        moved = model(changed)[0][:, :-1]
    return float((moved - base).abs().mean() / base.abs().mean())


def cells(size: str) -> list[dict[str, Any]]:
    return [{"arch": a, "arm": arm, "seed": s} for a in ARCHS for arm in ARMS for s in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    config, depth = ARCHS[cell["arch"]]
    overrides, masked = ARMS[cell["arm"]]
    cfg = load_config(config, [*depth, *overrides, f"run.seed={cell['seed']}"])
    data = prepared_data(cfg)
    sampler = RandomWindowSampler(
        data.splits["train"].tokens, cfg.model.block_size, cfg.train.batch_size, cfg.run.seed
    )

    def batch_of(step: int, micro: int) -> tuple[torch.Tensor, ...]:
        return padded_batch(sampler, step, cfg.run.seed, data.tokenizer.eot_id)

    trained = train_model(cfg, data, batch_of=batch_of, wrap=lambda m: Padded(m, masked))
    model = trained.model
    eval_mode = math.inf if trained.diverged else eval_loss(model, data, cfg)
    train_mode = eval_loss(model, data, cfg, batch_size=cfg.train.batch_size, train_mode=True)
    x, _ = probe_batch(data, cfg)
    return {
        "val_loss": eval_mode if math.isfinite(eval_mode) else None,
        "val_loss_train_mode": train_mode if math.isfinite(train_mode) else None,
        "future_leak": future_leak(model, x),
        "diverged": trained.diverged,
    }


def _loss(r: dict[str, Any], key: str = "val_loss") -> float:
    return math.inf if r[key] is None else r[key]


def analyze(results: list[dict[str, Any]]) -> Analysis:
    rows = []
    gaps, masked_gaps = {}, {}
    for arch in ARCHS:
        ln = [_loss(r) for r in runs_where(results, arch=arch, arm="LN")]
        for arm in ARMS:
            runs = runs_where(results, arch=arch, arm=arm)
            losses = [_loss(r) for r in runs]
            rows.append(
                [
                    arch,
                    arm,
                    str(mean_interval(losses)),
                    "-" if arm == "LN" else str(paired_difference(losses, ln)),
                    str(mean_interval([_loss(r, "val_loss_train_mode") - _loss(r) for r in runs])),
                    str(mean_interval([r["future_leak"] for r in runs])),
                ]
            )
        gaps[arch] = paired_difference(
            [_loss(r) for r in runs_where(results, arch=arch, arm=list(ARMS)[1])], ln
        )
        masked_gaps[arch] = paired_difference(
            [_loss(r) for r in runs_where(results, arch=arch, arm=list(ARMS)[2])], ln
        )
    table = markdown_table(
        [
            "model",
            "arm",
            "val loss (eval mode, full windows)",
            "minus LN (paired)",
            "train-mode minus eval-mode loss",
            "future leak in train mode (relative)",
        ],
        rows,
    )
    headline = "BN (padding in its statistics) minus LN: " + "; ".join(f"{a} {gaps[a]}" for a in ARCHS)
    if all(g.low > 0 for g in gaps.values()):
        verdict, reason = "supported", "BatchNorm falls behind LayerNorm on padded batches in both models."
    elif all(g.high < 0 for g in gaps.values()):
        verdict, reason = "contradicted", "BatchNorm beats LayerNorm on padded batches in both models."
    else:
        verdict, reason = "mixed", "BatchNorm is not resolved as behind LayerNorm in both models."
    reason += (
        " BN minus LN, paired by seed, with padding in BN's statistics: "
        + "; ".join(f"{a} {gaps[a]}" for a in ARCHS)
        + "; with padding masked out: "
        + "; ".join(f"{a} {masked_gaps[a]}" for a in ARCHS)
        + "."
    )
    return Analysis(verdict, reason, headline, table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, arch in zip(axes, ARCHS):
        means, err = error_bars(
            [
                mean_interval([min(_loss(r), 6.0) for r in runs_where(results, arch=arch, arm=arm)])
                for arm in ARMS
            ]
        )
        ax.bar(range(len(ARMS)), means, yerr=err, capsize=3, color=["C0", "C1", "C2"])
        ax.set_xticks(range(len(ARMS)), ["LN", "BN, pads\nin stats", "BN, pads\nmasked"])
        ax.set(ylabel="val loss", title=f"{arch}: padded batches")
        ax.set_ylim(bottom=min(means) - 0.2)
    save(fig, path)


CLAIM = Claim(
    letter="l",
    name="padded-batchnorm",
    title="On padded variable-length batches, BatchNorm trails LayerNorm in LSTM and conv LMs",
    sections="9, 9.1",
    statement="Layer normalization does not depend on batch statistics, so on sequential, variable-length "
    "inputs it trains more reliably than batch normalization.",
    experiment="The 2-layer, 64-wide LSTM LM (Ba et al.'s normed cell; BatchNorm over batch and time on the "
    "input term, over the batch at each step on the recurrent term and the cell) and the 8-block causal "
    f"conv LM (BatchNorm over batch and time), trained 300 steps at batch 16 on windows cut to random "
    f"lengths ({MIN_LENGTH} to 32) and right-padded, with LayerNorm, or BatchNorm whose statistics include "
    "the padding or only real tokens (masked); 3 seeds. Evaluation on full windows in eval mode.",
    config="configs/claims/lstm.yaml",
    metric="validation loss (eval mode) of BN minus LN, paired by seed; BN's train- minus eval-mode loss; "
    "how much earlier logits move in train mode when only the last token changes (BatchNorm's leak).",
    rule="supported if BN with padding in its statistics has a higher validation loss than LN in both "
    "models (paired 95% intervals above 0); contradicted if it is lower in both (intervals below 0); "
    "otherwise mixed.",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
