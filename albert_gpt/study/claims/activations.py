"""Claim e: post-LN keeps the activation scale steady between layers, and a small shared parameter
set trains stably with it.

Shapes: B batch, T tokens, H hidden, L layer applications.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import (
    ARMS,
    eval_loss,
    prepared_data,
    probe_batch,
    runs_where,
    sharing_overrides,
    train_model,
    unigram_loss,
)
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
ARMS_HERE = ("post-LN", "pre-LN", "no norm + final LN", "no norm, bare")
SEEDS = {"cpu": (1, 2, 3), "gpu": (1, 2, 3, 4, 5)}
STEADY = 1.5  # max/min of the per-layer RMS at most this: steady


def cells(size: str) -> list[dict[str, Any]]:
    return [
        {"arm": arm, "sharing": sharing, "seed": seed}
        for arm in ARMS_HERE
        for sharing in ("shared", "unshared")
        for seed in SEEDS[size]
    ]


def layer_rms(model: Any, x: torch.Tensor) -> list[float]:
    """RMS of the residual stream leaving every layer application (mean over tokens of ||h|| / sqrt(H))."""
    with torch.no_grad():
        was = model.training
        model.eval()
        outs = model.layer_outputs(x)
        model.train(was)
    return [float((o.norm(dim=-1) / math.sqrt(o.size(-1))).mean()) for o in outs]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(
        CONFIG, [*ARMS[cell["arm"]], *sharing_overrides(cell["sharing"], 6), f"run.seed={cell['seed']}"]
    )
    data = prepared_data(cfg)
    x, _ = probe_batch(data, cfg)
    at_init: list[float] = []

    def record(step: int, model: Any) -> None:
        if step == 0:
            at_init.extend(layer_rms(model, x))

    trained = train_model(cfg, data, on_step=record)
    return {
        "rms_init": at_init,
        "rms_trained": layer_rms(trained.model, x),
        "val_loss": eval_loss(trained.model, data, cfg),
        "unigram_loss": unigram_loss(data),
        "diverged": trained.diverged,
    }


def spread(rms: list[float]) -> float:
    """max / min of the per-layer RMS: 1 when every layer hands on the same scale."""
    finite = [v for v in rms if math.isfinite(v) and v > 0]
    return max(finite) / min(finite) if len(finite) == len(rms) else math.inf


def analyze(results: list[dict[str, Any]]) -> Analysis:
    rows = []
    post_steady, others_wider, post_trains = True, True, True
    for arm in ARMS_HERE:
        for sharing in ("shared", "unshared"):
            runs = runs_where(results, arm=arm, sharing=sharing)
            init = mean_interval([spread(r["rms_init"]) for r in runs])
            trained = mean_interval([spread(r["rms_trained"]) for r in runs])
            margin = mean_interval([r["unigram_loss"] - r["val_loss"] for r in runs])
            rows.append([arm, sharing, str(init), str(trained), str(margin)])
            if arm == "post-LN":
                post_steady &= init.high <= STEADY and trained.high <= STEADY
                post_trains &= all(r["unigram_loss"] - r["val_loss"] > 0.2 for r in runs)
            else:
                post_runs = runs_where(results, arm="post-LN", sharing=sharing)
                for key in ("rms_init", "rms_trained"):
                    ours, post = [spread(r[key]) for r in runs], [spread(r[key]) for r in post_runs]
                    diff = paired_difference(ours, post)
                    others_wider &= diff.low > 0
    table = markdown_table(
        [
            "arm",
            "sharing",
            "RMS spread over depth at init",
            "after 300 steps",
            "unigram loss - val loss (nats)",
        ],
        rows,
    )
    post, pre = (
        mean_interval([spread(r["rms_trained"]) for r in runs_where(results, arm=arm, sharing="shared")])
        for arm in ("post-LN", "pre-LN")
    )
    headline = f"RMS spread after training, shared: post-LN {post}, pre-LN {pre}"
    if post_steady and others_wider and post_trains:
        verdict, reason = (
            "supported",
            (
                f"post-LN's spread stays at most {STEADY} (upper end of its interval), every other arm's is "
                "larger "
                "(paired interval above 0), and the shared post-LN model trains in every seed."
            ),
        )
    elif not post_steady:
        verdict, reason = "contradicted", f"post-LN's spread interval reaches above {STEADY}."
    else:
        verdict, reason = (
            "mixed",
            (
                "post-LN stays steady, but "
                + (
                    "some other arm is not clearly wider"
                    if not others_wider
                    else "the shared post-LN model did not train in every seed"
                )
                + "."
            ),
        )
    return Analysis(verdict, reason, headline, table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.3), sharey=True)
    panels = [(s, k) for s in ("shared", "unshared") for k in ("rms_init", "rms_trained")]
    for ax, (sharing, key) in zip(axes, panels):
        for i, arm in enumerate(ARMS_HERE):
            runs = runs_where(results, arm=arm, sharing=sharing)
            per_layer = [mean_interval(col) for col in zip(*(r[key] for r in runs))]
            means, err = error_bars(per_layer, log_scale=True)
            ax.errorbar(
                range(1, len(means) + 1),
                means,
                yerr=err,
                color=f"C{i}",
                marker="o",
                ms=3,
                capsize=2,
                label=arm,
            )
        ax.set(
            yscale="log",
            xlabel="layer application",
            title=f"{sharing}, {'at init' if key == 'rms_init' else 'after 300 steps'}",
        )
        ax.title.set_fontsize(9)
    axes[0].set_ylabel("residual stream RMS")
    axes[0].legend(fontsize=7)
    save(fig, path)


CLAIM = Claim(
    letter="e",
    name="activations",
    title="Post-LN keeps the activation scale steady between layers",
    sections="5, 6, 6.1",
    statement="Post-LN hands every layer a stream of the same scale, and lets a small shared set of "
    "parameters train stably.",
    experiment="The residual stream's RMS after each of 6 layer applications, on fixed windows, at "
    "initialization and after 300 steps (lr 1e-3), for post-LN, pre-LN, no norm with a final LN "
    "and no norm at all, shared (one block) and unshared; 3 seeds. A post-LN block hands on the output "
    "of a LayerNorm, so its RMS is set by the gains (about 1) by construction: the measurement checks that "
    "and shows how far the other arms drift from it.",
    config=CONFIG,
    metric="spread = max / min over depth of the per-layer RMS (1 = perfectly steady); whether the model "
    "trained: unigram loss minus validation loss.",
    rule=f"supported if post-LN's spread interval stays at or below {STEADY} at init and after training, "
    "shared and unshared, every other arm's spread exceeds post-LN's (paired 95% interval above 0) in "
    "the same four settings, and the shared post-LN model ends at least 0.2 nats below the unigram loss "
    f"in every seed; contradicted if post-LN's interval reaches above {STEADY}; otherwise mixed.",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
