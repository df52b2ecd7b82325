"""Claim d: small errors accumulate through depth, and LayerNorm limits that.

A perturbation of relative size 1e-3 is added to the residual stream after layer k; its relative
size is then measured after every later layer and at the logits.

Shapes: B batch, T tokens, H hidden, V vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import (
    ARMS,
    arm_seed_cells,
    prepared_data,
    probe_batch,
    runs_where,
    train_model,
)
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
ARMS_HERE = ("post-LN", "pre-LN", "no norm + final LN", "no norm, bare")
SEEDS = {"cpu": (1, 2, 3), "gpu": (1, 2, 3, 4, 5)}
RELATIVE = 1e-3
INJECT_AT = 1  # after the second layer application (0-based), so 4 of the 6 follow


def propagate(model: Any, idx: torch.Tensor, at: int, relative: float, seed: int = 0) -> dict[str, Any]:
    """Relative size ||h' - h|| / ||h|| after every layer from `at` on, and at the logits, when a random
    perturbation of relative size `relative` is added to the stream after layer `at`."""
    model.eval()
    with torch.no_grad():
        clean, noisy = model.embed(idx), None
        rel = []
        for depth, i in enumerate(model.schedule):
            clean = model.blocks[i](clean)
            if noisy is not None:
                noisy = model.blocks[i](noisy)
            if depth == at:
                g = torch.Generator().manual_seed(seed)
                e = torch.randn(clean.shape, generator=g)
                noisy = clean + e * (relative * clean.norm() / e.norm())
            if noisy is not None:
                rel.append(float((noisy - clean).norm() / clean.norm()))
        logits = float((model.head(noisy) - model.head(clean)).norm() / model.head(clean).norm())
    return {
        "per_layer": [v if math.isfinite(v) else None for v in rel],
        "logits": logits if math.isfinite(logits) else None,
    }


def cells(size: str) -> list[dict[str, Any]]:
    return arm_seed_cells(ARMS_HERE, SEEDS[size])


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(CONFIG, [*ARMS[cell["arm"]], f"run.seed={cell['seed']}"])
    data = prepared_data(cfg)
    x, _ = probe_batch(data, cfg)
    out: dict[str, Any] = {}

    def at_init(step: int, model: Any) -> None:
        if step == 0:
            out["init"] = propagate(model, x, INJECT_AT, RELATIVE, cell["seed"])
            model.train()

    trained = train_model(cfg, data, on_step=at_init)
    out["trained"] = propagate(trained.model, x, INJECT_AT, RELATIVE, cell["seed"])
    return out


def amplification(r: dict[str, Any], when: str, where: str) -> float:
    """How much the perturbation grew: relative size at the last layer (or logits) over the injected one."""
    value = r[when]["logits"] if where == "logits" else r[when]["per_layer"][-1]
    return math.inf if value is None else value / RELATIVE


def analyze(results: list[dict[str, Any]]) -> Analysis:
    rows = []
    for arm in ARMS_HERE:
        runs = runs_where(results, arm=arm)
        rows.append(
            [
                arm,
                *[
                    str(mean_interval([amplification(r, w, p) for r in runs]))
                    for w in ("init", "trained")
                    for p in ("last layer", "logits")
                ],
            ]
        )
    table = markdown_table(
        ["arm", "last layer, at init", "logits, at init", "last layer, trained", "logits, trained"], rows
    )
    post = runs_where(results, arm="post-LN")
    diffs = {}
    for other in ("no norm + final LN", "no norm, bare"):
        for when in ("init", "trained"):
            a = [math.log(amplification(r, when, "last layer")) for r in post]
            b = [math.log(amplification(r, when, "last layer")) for r in runs_where(results, arm=other)]
            diffs[other, when] = paired_difference(a, b)
    d_init, d_trained = diffs["no norm + final LN", "init"], diffs["no norm + final LN", "trained"]
    headline = (
        f"log(post-LN / no norm + final LN amplification), last layer: init {d_init}, trained {d_trained}"
    )
    if all(d.high < 0 for d in diffs.values()):
        verdict, reason = (
            "supported",
            "a perturbation grows less through post-LN layers than through "
            "unnormalized ones, at init and after training.",
        )
    elif any(d.low > 0 for d in diffs.values()):
        verdict, reason = (
            "contradicted",
            "a perturbation grows more through post-LN layers than through "
            "unnormalized ones in some setting (interval above 0).",
        )
    else:
        verdict, reason = (
            "mixed",
            "post-LN damps perturbations in some settings only, or the intervals "
            "do not resolve the difference.",
        )
    details = "; ".join(f"against {other} {when}: {d}" for (other, when), d in diffs.items())
    reason += f" Log ratio of post-LN's last-layer amplification to the other arm's, {details}."
    grows = [
        arm
        for arm in ARMS_HERE
        for r in runs_where(results, arm=arm)
        for w in ("init", "trained")
        if amplification(r, w, "last layer") > 1
    ]
    if not grows:
        reason += " In no arm and no seed did the perturbation grow: every amplification is below 1."
    return Analysis(verdict, reason, headline, table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    for ax, when in zip(axes, ("init", "trained")):
        for i, arm in enumerate(ARMS_HERE):
            runs = runs_where(results, arm=arm)
            cols = list(
                zip(
                    *(
                        [v if v is not None else math.inf for v in r[when]["per_layer"]]
                        + [r[when]["logits"] or math.inf]
                        for r in runs
                    )
                )
            )
            means, err = error_bars([mean_interval(c) for c in cols], log_scale=True)
            xs = list(range(INJECT_AT + 1, INJECT_AT + len(means))) + [INJECT_AT + len(means)]
            ax.errorbar(xs, means, yerr=err, color=f"C{i}", marker="o", ms=3, capsize=2, label=arm)
        ax.axhline(RELATIVE, color="grey", ls=":", lw=1)
        ax.set(
            yscale="log",
            xlabel="layer application (last point: logits)",
            title=f"{'at initialization' if when == 'init' else 'after 300 steps'}",
        )
    axes[0].set_ylabel("relative size of the perturbation")
    axes[0].legend(fontsize=7)
    save(fig, path)


CLAIM = Claim(
    letter="d",
    name="perturbation",
    title="LayerNorm limits the accumulation of small errors through depth",
    sections="4, 4.1",
    statement="Small errors accumulate as they pass through a deep network, and LayerNorm keeps them small.",
    experiment=f"A random perturbation of relative size {RELATIVE:g} (Frobenius norm, over a fixed batch) "
    f"added to the residual stream after layer application {INJECT_AT + 1} of 6 in the shared "
    "model, at initialization and after 300 steps (lr 1e-3), for post-LN, pre-LN, no norm with a "
    "final LN and no norm at all; 3 seeds.",
    config=CONFIG,
    metric="amplification: the perturbation's relative size at the last layer (and at the logits) divided by "
    f"{RELATIVE:g}.",
    rule="supported if post-LN's log amplification at the last layer is below both no-norm arms' (paired 95% "
    "intervals below 0) at init and after training; contradicted if above either in some setting "
    "(interval above 0); otherwise mixed.",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
