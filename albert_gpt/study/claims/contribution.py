"""Claim q: post-LN balances each layer's contribution (article section 2.1). In pre-LN the stream grows
with every branch added to it, so later applications of the block change it less and less; post-LN
renormalizes the stream after each sub-layer, so each application's branch is measured against a stream of
the same size.

Per layer application and sub-layer, on 8 fixed windows: r = ||f(x)|| / ||x||, the branch's output norm
over the norm of what it is added to (alpha x in DeepNorm). An application's contribution is the geometric
mean of its two sub-layers' r; the imbalance of a run is the standard deviation over applications of
ln r (0: every application contributes alike). Measured at initialization and after training (judged).

Shapes: B batch, T tokens, H hidden.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
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

CONFIG = "configs/claims/train.yaml"
# The project's default init; DeepNorm with its own alpha and beta (as in row o).
ARMS = {
    "post-LN": ["model.norm_placement=post"],
    "pre-LN": ["model.norm_placement=pre"],
    "DeepNorm": ["model.norm_placement=deepnorm"],
    "no norm + final LN": ["model.norm_placement=none", "model.final_norm=true"],
}
N_LAYERS = {"cpu": 24, "gpu": 48}
SEEDS = {"cpu": (1, 2, 3, 4, 5), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
STEPS = 300
MIN_EFFECT = 0.1  # in the standard deviation of ln r: about 10% more spread between applications


def cells(size: str) -> list[dict[str, Any]]:
    return [{"arm": arm, "n_layers": N_LAYERS[size], "seed": s} for arm in ARMS for s in SEEDS[size]]


def contributions(model: Any, idx: torch.Tensor) -> list[float]:
    """Per layer application: the geometric mean over its attention and FFN sub-layers of
    ||branch|| / ||what the branch is added to||, on `idx`; the model is left as it was."""
    norms: dict[tuple[int, str], float] = {}

    def tracer(depth: int, point: str, tensor: torch.Tensor) -> None:
        if point.endswith(("_branch", "_residual")):
            norms[(depth, point)] = float(tensor.double().norm())

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(idx, tracer=tracer)
    finally:
        model.train(was)
    out = []
    for depth in range(len(model.schedule)):
        ratios = [norms[(depth, f"{s}_branch")] / norms[(depth, f"{s}_residual")] for s in ("attn", "ffn")]
        out.append(math.sqrt(ratios[0] * ratios[1]))
    return out


def imbalance(per_depth: list[float]) -> float:
    """Standard deviation over applications of ln r (population, so a constant profile gives 0); inf when
    a ratio is 0 or not finite."""
    if not all(math.isfinite(r) and r > 0 for r in per_depth):
        return math.inf
    logs = [math.log(r) for r in per_depth]
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((v - mean) ** 2 for v in logs) / len(logs))


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(
        CONFIG,
        [
            *ARMS[cell["arm"]],
            f"model.n_layers={cell['n_layers']}",
            "model.n_groups=1",
            f"run.seed={cell['seed']}",
            f"train.max_steps={STEPS}",
        ],
    )
    data = prepared_data(cfg)
    x, _ = probe_batch(data, cfg)
    at_init: list[list[float]] = []

    def record(step: int, model: Any) -> None:
        if step == 0:
            at_init.append(contributions(model, x))

    trained = train_model(cfg, data, on_step=record)
    final = math.inf if trained.diverged else eval_loss(trained.model, data, cfg)
    after = None if trained.diverged else contributions(trained.model, x)
    return {
        "ratio_init": at_init[0],
        "ratio_trained": after,
        "imbalance_init": imbalance(at_init[0]),
        "imbalance_trained": math.inf if after is None else imbalance(after),
        "val_loss": final if math.isfinite(final) else None,
        "diverged": trained.diverged,
        "unigram_loss": unigram_loss(data),
    }


_METRIC = "imbalance after training: std over layer applications of ln(||f(x)|| / ||x||)"
RULE = Rule(
    comparisons=(
        Comparison(_METRIC, "post-LN", "pre-LN", "lower", MIN_EFFECT),
        Comparison(_METRIC, "post-LN", "no norm + final LN", "lower", MIN_EFFECT),
    ),
    gates=(Trained("post-LN"),),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"One shared 64-wide block applied {N_LAYERS['cpu']} times, the project's default init, "
        f"{STEPS} steps at lr 1e-3 (the ledger's training setting); ratios on 8 fixed windows of 32 "
        "characters. An application's r is the geometric mean of its attention and FFN sub-layers' "
        "ratios. DeepNorm and the imbalance at initialization are reported, not judged. "
        "No pilot was run for this row."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    trained = trained_gate("post-LN", runs_where(results, arm="post-LN"), 0.3)
    pairs = [
        Pairs([r["imbalance_trained"] for r in runs_where(results, arm=c.a)],
              [r["imbalance_trained"] for r in runs_where(results, arm=c.b)])
        for c in RULE.arm_comparisons()
    ]
    return Evidence([trained], pairs)


def _profile(runs: list[dict[str, Any]], key: str) -> list[float] | None:
    profiles = [r[key] for r in runs if r[key] is not None]
    if not profiles:
        return None
    return [math.exp(sum(math.log(v) for v in col) / len(col)) for col in zip(*profiles)]


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    rows = []
    for arm in ARMS:
        runs = runs_where(results, arm=arm)
        if not runs:
            continue
        row = [arm]
        for key in ("ratio_init", "ratio_trained"):
            profile = _profile(runs, key)
            row.append("-" if profile is None else
                       f"{profile[0]:.3g} / {profile[len(profile) // 2]:.3g} / {profile[-1]:.3g}")
        row += [
            str(mean_interval([r["imbalance_init"] for r in runs])),
            str(mean_interval([r["imbalance_trained"] for r in runs])),
            str(mean_interval([math.inf if r["val_loss"] is None else r["val_loss"] for r in runs])),
        ]
        rows.append(row)
    table = markdown_table(
        ["arm", "r at init (first / middle / last application)", "r after training (first / middle / last)",
         "imbalance at init", "imbalance after training", "val loss"],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    """r per layer application (geometric mean over seeds), at initialization and after training."""
    from albert_gpt.study.claims.plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, key, title in ((axes[0], "ratio_init", "at initialization"),
                           (axes[1], "ratio_trained", f"after {STEPS} steps")):
        for i, arm in enumerate(a for a in ARMS if runs_where(results, arm=a)):
            profile = _profile(runs_where(results, arm=arm), key)
            if profile is not None:
                ax.plot(range(1, len(profile) + 1), profile, color=f"C{i}", marker=".", label=arm)
        ax.set(yscale="log", xlabel="layer application", title=title)
    axes[0].set_ylabel("||f(x)|| / ||x||")
    axes[0].legend(fontsize=7)
    save(fig, path)


CLAIM = Claim(
    letter="q",
    name="contribution",
    title="Post-LN balances each layer application's contribution to the stream",
    sections="2.1",
    statement="LayerNorm balances each layer's contribution: with post-LN every application of the shared "
    "block changes the stream by a similar relative amount, where in pre-LN (and without a norm) later "
    "applications are drowned out by the growing stream.",
    experiment=f"One shared block applied {N_LAYERS['cpu']} times: {', '.join(ARMS)}; {STEPS} steps at lr "
    f"1e-3, {len(SEEDS['cpu'])} seeds; ||f(x)|| / ||x|| per application and sub-layer at init and after "
    "training.",
    config=CONFIG,
    metric="imbalance = standard deviation over layer applications of ln r, r = ||f(x)|| / ||x|| (geometric "
    "mean of the attention and FFN sub-layers).",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
