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
from albert_gpt.study.claims.rules import (
    Comparison,
    Evidence,
    Pairs,
    Rule,
    Trained,
    judge,
    trained_gate,
)
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
ARMS_HERE = ("post-LN", "pre-LN", "no norm + final LN", "no norm, bare")
SEEDS = {"cpu": (1, 2, 3, 4, 5, 6), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}


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


JUDGED = ("pre-LN", "no norm + final LN")  # arms that train here; the bare model is reported
TRAINED_MARGIN = 0.3  # nats below the unigram loss the shared post-LN model must end, in every seed
MIN_LOG_RATIO = math.log(1.25)  # a spread at least 25% larger (or smaller) decides

RULE = Rule(
    comparisons=tuple(
        Comparison(
            "log RMS spread over depth after training, shared", "post-LN", other, "lower", MIN_LOG_RATIO
        )
        for other in JUDGED
    ),
    gates=(Trained("post-LN", TRAINED_MARGIN),),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"The spread is max / min over the 6 layer applications of the stream's RMS; natural log, minimum "
        f"effect log 1.25 = {MIN_LOG_RATIO:.3f}. Judged after training: at initialization post-LN hands on "
        "a LayerNorm's output with unit gains, so its spread is 1 by construction. Init, the unshared "
        "models and the bare model are reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    post = runs_where(results, arm="post-LN", sharing="shared")
    gate = trained_gate("shared post-LN", post, TRAINED_MARGIN)
    pairs = [
        Pairs(
            [math.log(spread(r["rms_trained"])) for r in post],
            [math.log(spread(r["rms_trained"])) for r in runs_where(results, arm=other, sharing="shared")],
        )
        for other in JUDGED
    ]
    return Evidence([gate], pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    rows = []
    for arm in ARMS_HERE:
        for sharing in ("shared", "unshared"):
            runs = runs_where(results, arm=arm, sharing=sharing)
            init = mean_interval([spread(r["rms_init"]) for r in runs])
            trained = mean_interval([spread(r["rms_trained"]) for r in runs])
            margin = mean_interval(
                [
                    r["unigram_loss"] - r["val_loss"] if r.get("val_loss") is not None else math.nan
                    for r in runs
                ]
            )
            rows.append([arm, sharing, str(init), str(trained), str(margin)])
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
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


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
    "initialization and after 300 steps (lr 1e-3), for "
    f"{', '.join(ARMS_HERE)}, shared (one block) and unshared; {len(SEEDS['cpu'])} seeds. A post-LN block "
    "hands on the output of a LayerNorm, so its RMS is set by the gains (1 at init) by construction: the "
    "measurement shows how far training moves it, and how far the other arms drift from it.",
    config=CONFIG,
    metric="spread = max / min over depth of the per-layer RMS (1 = perfectly steady); whether the model "
    "trained: unigram loss minus validation loss.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
