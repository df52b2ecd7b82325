"""Claim m: adaptive normalization for shared blocks. Giving every application of the shared block its
own LayerNorm gain and bias (a few hundred parameters) against unsharing the block (every weight): how
much of the gap between shared and unshared does it close, per added parameter?

Shapes: B batch, T tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.modeling.counting import count_parameters
from albert_gpt.study.claims.common import arm_seed_cells, eval_loss, prepared_data, runs_where, train_model
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
ARMS = {
    "shared": ["model.n_groups=1"],
    "shared + per-depth LN gain and bias": ["model.n_groups=1", "model.norm_per_depth_affine=true"],
    "unshared": ["model.n_groups=6"],
}
SEEDS = {"cpu": (1, 2, 3, 4, 5), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}


def cells(size: str) -> list[dict[str, Any]]:
    return arm_seed_cells(ARMS, SEEDS[size])


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(CONFIG, [*ARMS[cell["arm"]], f"run.seed={cell['seed']}"])
    data = prepared_data(cfg)
    trained = train_model(cfg, data)
    loss = math.inf if trained.diverged else eval_loss(trained.model, data, cfg, batches=32)
    return {
        "val_loss": loss if math.isfinite(loss) else None,
        "params": count_parameters(trained.model)["params_unique"],
        "diverged": trained.diverged,
    }


def _loss(r: dict[str, Any]) -> float:
    return math.inf if r["val_loss"] is None else r["val_loss"]


def analyze(results: list[dict[str, Any]]) -> Analysis:
    names = list(ARMS)
    losses = {arm: [_loss(r) for r in runs_where(results, arm=arm)] for arm in names}
    params = {arm: runs_where(results, arm=arm)[0]["params"] for arm in names}
    added = {arm: params[arm] - params["shared"] for arm in names}
    gain = {arm: paired_difference(losses["shared"], losses[arm]) for arm in names[1:]}  # shared minus arm
    rows = []
    for arm in names:
        per_k = "-" if arm == "shared" else f"{1000 * gain[arm].mean / added[arm]:.3g}"
        rows.append(
            [
                arm,
                f"{params[arm]:,}",
                f"{added[arm]:,}",
                str(mean_interval(losses[arm])),
                "-" if arm == "shared" else str(gain[arm]),
                per_k,
            ]
        )
    table = markdown_table(
        ["arm", "parameters", "added", "val loss", "shared minus arm (paired)", "nats gained per 1k added"],
        rows,
    )
    adaptive, unshared = gain[names[1]], gain[names[2]]
    fraction = adaptive.mean / unshared.mean if unshared.mean > 0 else math.nan
    headline = (
        f"gain over shared: per-depth gain and bias {adaptive} with {added[names[1]]:,} parameters; unshared "
        f"{unshared} with {added[names[2]]:,}"
    )
    if adaptive.low > 0:
        verdict, reason = "supported", "per-depth gains and biases lower the shared model's loss."
    elif adaptive.high < 0:
        verdict, reason = "contradicted", "per-depth gains and biases raise the shared model's loss."
    else:
        verdict, reason = "mixed", "the effect of per-depth gains and biases is not resolved from zero."
    per_param = {arm: gain[arm].mean / added[arm] for arm in names[1:]}
    reason += (
        f" Loss gained over the shared model, paired by seed: {adaptive} with per-depth gains and biases "
        f"({added[names[1]]:,} parameters), {unshared} unshared ({added[names[2]]:,}); the per-depth norms "
        f"close {fraction:.0%} of the shared-unshared gap (ratio of means), at "
        f"{per_param[names[1]] / per_param[names[2]]:.0f}x the gain per added parameter of unsharing."
        if unshared.mean > 0
        else f" Unsharing did not lower the loss here ({unshared}), so no fraction of a gap is defined."
    )
    return Analysis(verdict, reason, headline, table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(ARMS)
    means, err = error_bars([mean_interval([_loss(r) for r in runs_where(results, arm=a)]) for a in names])
    params = [runs_where(results, arm=a)[0]["params"] for a in names]
    ax.errorbar(params, means, yerr=err, fmt="o", capsize=3)
    for p, m, a in zip(params, means, names):
        ax.annotate(a, (p, m), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(
        xscale="log",
        xlabel="unique parameters",
        ylabel="val loss",
        title="adaptive normalization for a shared block",
    )
    save(fig, path)


CLAIM = Claim(
    letter="m",
    name="per-depth-affine",
    title="Adaptive normalization: per-depth LN gain and bias for a shared block",
    sections="10",
    statement="Adaptive normalization, scale and shift parameters that adjust to conditions, can further "
    "improve models like AlbertAGPT.",
    experiment="The shared 6-layer, 64-wide post-LN transformer of the other rows (one block applied 6 "
    "times), the same with every application's LayerNorms given their own gain and bias (initialized to the "
    "shared ones: `model.norm_per_depth_affine`), and the unshared model (6 blocks); 300 steps at lr 1e-3, "
    "5 seeds; validation loss on 32 fixed batches.",
    config=CONFIG,
    metric="validation loss gained over the shared model (shared minus arm, paired by seed); the fraction "
    "of the shared-unshared gap closed, and the gain per added parameter.",
    rule="supported if the per-depth gain and bias lower the shared model's validation loss (paired 95% "
    "interval above 0); contradicted if they raise it (interval below 0); otherwise mixed. The fraction of "
    "the gap and the gain per parameter are reported, not judged.",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
