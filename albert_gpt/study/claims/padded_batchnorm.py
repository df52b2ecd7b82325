"""Claim l: BatchNorm against LayerNorm in the LSTM and the convolutional LM on variable-length, padded
batches (row h asks the same of the transformer).

The judged BatchNorm is the causal one (`model.batch_axes: batch`: statistics over the sequences at each
position, running statistics per position); BatchNorm over batch x time is reported beside it, labelled as
leaking later tokens in training. A ghost-batch sweep (statistics from 2, 4 or all 16 sequences, padding
masked) asks whether BatchNorm needs its batch statistics here. Judged under the ledger's second edition.

Shapes: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.study.claims.batch_dependence import MIN_LENGTH, Padded, padded_batch
from albert_gpt.study.claims.common import (
    eval_loss,
    prepared_data,
    probe_batch,
    runs_where,
    train_model,
    unigram_loss,
)
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.rules import Comparison, Evidence, Pairs, Rule, Trained, judge, trained_gate
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table

ARCHS = {
    "LSTM": ("configs/claims/lstm.yaml", []),
    "conv": ("configs/claims/conv.yaml", ["model.n_layers=8", "model.n_groups=8"]),
}
CAUSAL = ["model.norm=batchnorm", "model.batch_axes=batch"]
LEAKY = ["model.norm=batchnorm", "model.batch_axes=batch_time"]
# arm -> (overrides, BatchNorm told which tokens are real?)
ARMS = {
    "LN": (["model.norm=layernorm"], False),
    "causal BN, padding in the statistics": (CAUSAL, False),
    "causal BN, padding masked": (CAUSAL, True),
    "causal BN, padding masked, groups of 2": ([*CAUSAL, "model.batch_group=2"], True),
    "causal BN, padding masked, groups of 4": ([*CAUSAL, "model.batch_group=4"], True),
    "BN over batch x time (sees later tokens), padding in the statistics": (LEAKY, False),
}
NAIVE, MASKED, SMALL = (
    "causal BN, padding in the statistics",
    "causal BN, padding masked",
    "causal BN, padding masked, groups of 2",
)
SEEDS = {"cpu": (1, 2, 3, 4, 5, 6), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
MIN_LOSS = 0.05  # nats of validation loss
TRAINED_MARGIN = 0.3


def future_leak(model: Any, x: torch.Tensor) -> float:
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
    train_mode = (
        math.inf
        if trained.diverged
        else eval_loss(model, data, cfg, batch_size=cfg.train.batch_size, train_mode=True)
    )
    x, _ = probe_batch(data, cfg)
    return {
        "val_loss": eval_mode if math.isfinite(eval_mode) else None,
        "val_loss_train_mode": train_mode if math.isfinite(train_mode) else None,
        "future_leak": future_leak(model, x),
        "diverged": trained.diverged,
        "unigram_loss": unigram_loss(data),
    }


def _loss(r: dict[str, Any], key: str = "val_loss") -> float:
    return math.inf if r[key] is None else r[key]


RULE = Rule(
    comparisons=tuple(
        c
        for arch in ARCHS
        for c in (
            Comparison(f"{arch}: val loss (nats)", f"{arch} LN", f"{arch} {NAIVE}", "lower", MIN_LOSS),
            Comparison(f"{arch}: val loss (nats)", f"{arch} {MASKED}", f"{arch} {SMALL}", "lower", MIN_LOSS),
        )
    ),
    gates=tuple(Trained(f"{arch} LN", TRAINED_MARGIN) for arch in ARCHS),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"Both models train 300 steps at batch 16 on windows cut to random lengths ({MIN_LENGTH} to 32) and "
        "right-padded; validation loss in eval mode (running statistics) on full windows. Per model, "
        "comparison one says LayerNorm trains better than a BatchNorm whose statistics take in the padding, "
        "comparison two that BatchNorm needs its batch statistics (all 16 sequences against ghost batches "
        "of 2, padding masked). The batch x time BatchNorm, groups of 4 and the train-mode losses are "
        "reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    gates = [
        trained_gate(f"{arch} LN", runs_where(results, arch=arch, arm="LN"), TRAINED_MARGIN) for arch in ARCHS
    ]
    pairs = []
    for arch in ARCHS:
        for a, b in (("LN", NAIVE), (MASKED, SMALL)):
            pairs.append(
                Pairs(
                    [_loss(r) for r in runs_where(results, arch=arch, arm=a)],
                    [_loss(r) for r in runs_where(results, arch=arch, arm=b)],
                )
            )
    return Evidence(gates, pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    rows = []
    for arch in ARCHS:
        for arm in ARMS:
            runs = runs_where(results, arch=arch, arm=arm)
            if not runs:
                continue
            rows.append(
                [
                    arch,
                    arm,
                    str(mean_interval([_loss(r) for r in runs])),
                    str(mean_interval([_loss(r, "val_loss_train_mode") for r in runs])),
                    str(mean_interval([r["future_leak"] for r in runs])),
                    str(sum(bool(r.get("diverged")) for r in runs)),
                ]
            )
    table = markdown_table(
        [
            "model",
            "arm",
            "val loss (eval mode, full windows)",
            "val loss, train mode (batch statistics)",
            "future leak in train mode (relative)",
            "diverged runs",
        ],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


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
        ax.bar(range(len(ARMS)), means, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(ARMS))])
        ax.set_xticks(
            range(len(ARMS)),
            [
                "LN",
                "causal BN,\npads in\nstats",
                "causal BN,\nmasked",
                "masked,\ngroups\nof 2",
                "masked,\ngroups\nof 4",
                "BN batch\nx time,\npads in\nstats",
            ],
            fontsize=6,
        )
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
    experiment="The 2-layer, 64-wide LSTM LM (Ba et al.'s normed cell, PyTorch's LSTM init, lr 3e-3) and the "
    "8-block causal conv LM (lr 1e-3), trained 300 steps at batch 16 on windows cut to random lengths "
    f"({MIN_LENGTH} to 32) and right-padded, with LayerNorm; with a causal BatchNorm (statistics over the "
    "sequences at each position; in the LSTM on the input term, the recurrent term and the cell) whose "
    "statistics take in the padding, or only real tokens (masked) from all 16 sequences or from ghost "
    "batches of 2 or 4; and with BatchNorm over batch x time (labelled: it sees later tokens in training); "
    f"{len(SEEDS['cpu'])} seeds. Evaluation on full windows in eval mode.",
    config="configs/claims/lstm.yaml",
    metric="validation loss in eval mode; the train-mode loss and how much earlier logits move in train "
    "mode when only the last token changes (BatchNorm's leak) are reported.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
