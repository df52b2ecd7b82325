"""Claim o: the trainability frontier of a shared block: how deep, with what warmup and at what learning
rate post-LN trains, against pre-LN, DeepNorm and no norm with a final LN (issue 26).

Xiong et al. 2020: post-LN's gradients near the output are large at initialization, so it needs learning-
rate warmup, and pre-LN does not. Liu et al. 2020: post-LN's output depends on its residual branches more
the deeper it is (row n measures that amplification). DeepNet (Wang et al. 2022) scales the residual and
the init so that post-LN trains 1,000 layers deep. Here one shared block is applied L = 6 ... 48 times and
trained at every learning rate of a half-decade grid, with warmup off and on. A cell is trainable when its
validation loss ends within MARGIN nats of the best cell of any arm at that depth and seed; an arm's
trainable range is the number of such grid points, in decades (0.5 per point).

Shapes: B batch, T tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.modeling.base import CausalLM
from albert_gpt.study.claims.common import eval_loss, prepared_data, runs_where, train_model, unigram_loss
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.rules import (
    Comparison,
    Evidence,
    GateResult,
    Pairs,
    PositiveControl,
    Rule,
    Trained,
    judge,
)
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
# Every arm starts from the project's default init (GPT-2's: N(0, 0.02), residual projections scaled by
# 1/sqrt(2N)), except DeepNorm, which takes DeepNet's beta = (8N)^(-1/4) there and alpha = (2N)^(1/4).
ARMS = {
    "post-LN": ["model.norm_placement=post"],
    "pre-LN": ["model.norm_placement=pre"],
    "DeepNorm": ["model.norm_placement=deepnorm"],
    "no norm + final LN": ["model.norm_placement=none", "model.final_norm=true"],
}
DEPTHS = {"cpu": (6, 12, 24, 48), "gpu": (6, 12, 24, 48, 96)}
LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # half a decade apart
WARMUPS = (0.0, 0.1)  # fraction of the steps
STEPS = {"cpu": 100, "gpu": 300}
# Seven seeds: a width is a count, judged by the exact paired permutation test, whose smallest two-sided p
# over 7 seeds is 2/128; Holm doubles it for the two comparisons (0.031 < 0.05).
SEEDS = {"cpu": (1, 2, 3, 4, 5, 6, 7), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
MARGIN = 0.2  # nats above the best cell of the depth (any arm, warmup, lr) that still counts as trained
TRAINED_MARGIN = 0.2  # the best cell of every depth ends this far below the unigram loss (gate)
MIN_EFFECT = 0.5  # decades: one grid step
DECADES_PER_POINT = 0.5


def cells(size: str) -> list[dict[str, Any]]:
    return [
        {"arm": arm, "n_layers": n, "warmup": w, "lr": lr, "seed": s, "steps": STEPS[size]}
        for n in DEPTHS[size]
        for arm in ARMS
        for w in WARMUPS
        for lr in LRS
        for s in SEEDS[size]
    ]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    n, lr, steps = cell["n_layers"], cell["lr"], cell["steps"]
    cfg = load_config(
        CONFIG,
        [
            *ARMS[cell["arm"]],
            f"model.n_layers={n}",
            "model.n_groups=1",
            f"run.seed={cell['seed']}",
            f"train.max_steps={steps}",
            f"train.warmup_steps={round(cell['warmup'] * steps)}",
            f"train.lr={lr}",
            f"train.min_lr={lr / 10}",
        ],
    )
    data = prepared_data(cfg)
    at_init: list[float] = []

    def record(step: int, model: CausalLM) -> None:
        if step == 0:
            at_init.append(eval_loss(model, data, cfg))

    trained = train_model(cfg, data, on_step=record)
    final = math.inf if trained.diverged else eval_loss(trained.model, data, cfg)
    finite = [x for x in trained.losses if math.isfinite(x)]
    return {
        "val_loss": final if math.isfinite(final) else None,
        "init_loss": at_init[0],
        "diverged": trained.diverged or not math.isfinite(final) or final > at_init[0],
        "nonfinite_steps": trained.skipped,
        "max_train_loss": max(finite) if finite else None,
        "unigram_loss": unigram_loss(data),
    }


# ---------------------------------------------------------------- the metric


def best_loss(results: list[dict[str, Any]], n_layers: int, seed: int) -> float:
    """The lowest validation loss of any arm, warmup and learning rate at this depth and seed."""
    losses = [
        r["val_loss"] for r in runs_where(results, n_layers=n_layers, seed=seed) if r["val_loss"] is not None
    ]
    return min(losses, default=math.inf)


def trainable(cell: dict[str, Any], best: float) -> bool:
    return cell["val_loss"] is not None and not cell["diverged"] and cell["val_loss"] <= best + MARGIN


def trainable_range(
    results: list[dict[str, Any]], arm: str, n_layers: int, warmup: float, seed: int
) -> float:
    """Decades of the learning-rate grid (0.5 per point) where this arm ends within MARGIN of the depth's
    best."""
    best = best_loss(results, n_layers, seed)
    runs = runs_where(results, arm=arm, n_layers=n_layers, warmup=warmup, seed=seed)
    return DECADES_PER_POINT * sum(trainable(r, best) for r in runs)


def range_lost(results: list[dict[str, Any]], arm: str, seed: int, warmup: float = 0.0) -> float:
    """Trainable range at the shallowest depth minus at the deepest (decades; positive: lost with depth)."""
    depths = sorted({r["n_layers"] for r in results})
    return trainable_range(results, arm, depths[0], warmup, seed) - trainable_range(
        results, arm, depths[-1], warmup, seed
    )


def _lr_ends_fail(results: list[dict[str, Any]]) -> tuple[int, int]:
    """(combinations whose lowest or highest grid lr is not trainable, all combinations) over arm, depth,
    warmup and seed."""
    lows, highs = min(r["lr"] for r in results), max(r["lr"] for r in results)
    ok = total = 0
    for n in sorted({r["n_layers"] for r in results}):
        for seed in sorted({r["seed"] for r in results}):
            best = best_loss(results, n, seed)
            for arm in ARMS:
                for w in WARMUPS:
                    ends = [
                        r
                        for r in runs_where(results, arm=arm, n_layers=n, warmup=w, seed=seed)
                        if r["lr"] in (lows, highs)
                    ]
                    if not ends:
                        continue
                    total += 1
                    ok += any(not trainable(r, best) for r in ends)
    return ok, total


# ---------------------------------------------------------------- the rule

_DEEP, _SHALLOW = DEPTHS["cpu"][-1], DEPTHS["cpu"][0]
_LOST = f"trainable range lost from L={_SHALLOW} to L={_DEEP} without warmup (decades)"

RULE = Rule(
    comparisons=(
        Comparison(_LOST, "post-LN", "pre-LN", "higher", MIN_EFFECT, kind="count"),
        Comparison(_LOST, "post-LN", "DeepNorm", "higher", MIN_EFFECT, kind="count"),
    ),
    gates=(
        Trained("the best cell of every depth (any arm, warmup and learning rate)", margin=TRAINED_MARGIN),
        PositiveControl(
            "a range can be measured: in every arm, depth, warmup and seed the lowest or the highest "
            "learning "
            "rate of the grid is not trainable (so no range is cut short by the grid on both sides)"
        ),
    ),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"A cell is trainable when it did not diverge and its validation loss ends within {MARGIN:g} nats of "
        f"the best cell of any arm, warmup and learning rate at that depth and seed; an arm's trainable "
        f"range "
        f"is the number of such grid points times {DECADES_PER_POINT:g} decades. Grid: learning rates "
        f"{', '.join(f'{lr:g}' for lr in LRS)}; warmup 0 and 10% of {STEPS['cpu']} steps; cosine decay to a "
        f"tenth; AdamW, batch 16 x 32 characters, gradient clipping at 1.0 (the trainer's defaults); the "
        "project's default init. Diverged: the trainer's non-finite guard stopped the run, or it ended above "
        "its loss at initialization. The literature's expectation (Xiong et al. 2020, Liu et al. 2020, "
        "Wang et al. 2022), pre-registered: post-LN without warmup loses range as the shared block is "
        "applied "
        "more times, and pre-LN and DeepNorm keep theirs. Reported, not judged: the same with warmup, the "
        "divergence rate, the best loss of each arm. Written after a pilot at warmup 0 (seed 99, L = 6 and "
        "48, not measured here) in which post-LN kept one trainable point at both depths, pre-LN lost "
        "its one point at L = 48 and DeepNorm had two there (100 steps)."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    seeds = sorted({r["seed"] for r in results})
    depths = sorted({r["n_layers"] for r in results})
    gaps = [
        r["unigram_loss"] - best_loss(results, n, s)
        for n in depths
        for s in seeds
        for r in runs_where(results, n_layers=n, seed=s)[:1]
    ]
    trained = GateResult(
        bool(gaps) and min(gaps) >= TRAINED_MARGIN,
        f"the best cell of each depth ends {min(gaps, default=math.nan):.2f} to "
        f"{max(gaps, default=math.nan):.2f} nats below the unigram loss across depths and seeds "
        f"(gate: {TRAINED_MARGIN:g})",
    )
    ok, total = _lr_ends_fail(results)
    ends = GateResult(
        total > 0 and ok == total,
        f"an end of the grid fails in {ok} of {total} arm, depth, warmup and seed combinations",
    )
    pairs = [
        Pairs([range_lost(results, c.a, s) for s in seeds], [range_lost(results, c.b, s) for s in seeds])
        for c in RULE.arm_comparisons()
    ]
    return Evidence([trained, ends], pairs)


# ---------------------------------------------------------------- report


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    seeds = sorted({r["seed"] for r in results})
    depths = sorted({r["n_layers"] for r in results})
    rows = []
    for arm in ARMS:
        for w in WARMUPS:
            row = [arm, f"{w:.0%}"]
            for n in depths:
                widths = [trainable_range(results, arm, n, w, s) for s in seeds]
                cells_ = runs_where(results, arm=arm, n_layers=n, warmup=w)
                diverged = sum(r["diverged"] for r in cells_)
                best = [
                    min(
                        (
                            r["val_loss"]
                            for r in runs_where(results, arm=arm, n_layers=n, warmup=w, seed=s)
                            if r["val_loss"] is not None
                        ),
                        default=math.inf,
                    )
                    for s in seeds
                ]
                row.append(
                    f"{sum(widths) / len(widths):.2f} ({min(widths):g}-{max(widths):g}); "
                    f"{mean_interval(best).mean:.2f}; {diverged}/{len(cells_)}"
                )
            rows.append(row)
    table = markdown_table(
        ["arm", "warmup", *[f"L={n}: range in decades, mean (min-max); best loss; diverged" for n in depths]],
        rows,
    )
    bests = " / ".join(f"{mean_interval([best_loss(results, n, s) for s in seeds]).mean:.2f}" for n in depths)
    table += (
        f"\n\nBest loss of any cell per depth (L={'/'.join(map(str, depths))}), mean over seeds: {bests}; "
        f"unigram loss {results[0]['unigram_loss']:.2f}. Warmup's gain in range at L={depths[-1]}: "
        + ", ".join(f"{arm} {_mean_gain(results, arm, depths[-1], seeds):+.2f}" for arm in ARMS)
        + " decades."
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def _mean_gain(results: list[dict[str, Any]], arm: str, n: int, seeds: list[int]) -> float:
    gains = [
        trainable_range(results, arm, n, WARMUPS[1], s) - trainable_range(results, arm, n, WARMUPS[0], s)
        for s in seeds
    ]
    return sum(gains) / len(gains)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    """For each arm a depth x learning-rate map of the median final loss, warmup off (top) and on (bottom);
    the number of diverged seeds is written in a cell, a dot marks cells trainable in most seeds."""
    import numpy as np

    from albert_gpt.study.claims.plots import pyplot

    plt = pyplot()
    depths = sorted({r["n_layers"] for r in results})
    lrs = sorted({r["lr"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    arms = [a for a in ARMS if runs_where(results, arm=a)]
    fig, axes = plt.subplots(
        len(WARMUPS),
        len(arms),
        figsize=(3.2 * len(arms), 2.2 * len(WARMUPS) + 0.8),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    unigram = results[0]["unigram_loss"]
    vmin = min((r["val_loss"] for r in results if r["val_loss"] is not None), default=unigram - 1)
    vmin = min(vmin, unigram - 0.1)  # the colour scale always spans the plateau
    image = None
    for row, w in enumerate(WARMUPS):
        for col, arm in enumerate(arms):
            ax = axes[row][col]
            grid = np.full((len(depths), len(lrs)), np.nan)
            for i, n in enumerate(depths):
                for j, lr in enumerate(lrs):
                    runs = [r for r in runs_where(results, arm=arm, n_layers=n, warmup=w) if r["lr"] == lr]
                    if not runs:
                        continue
                    finite = [r["val_loss"] for r in runs if r["val_loss"] is not None and not r["diverged"]]
                    if len(finite) * 2 > len(runs):
                        grid[i, j] = float(np.median(finite))
                    diverged = sum(r["diverged"] for r in runs)
                    if diverged:
                        ax.text(j, i, f"x{diverged}", ha="center", va="center", fontsize=7, color="black")
                    elif sum(trainable(r, best_loss(results, n, r["seed"])) for r in runs) * 2 > len(runs):
                        ax.plot(j, i, "o", color="white", markersize=4, markeredgecolor="black")
            image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=unigram)
            ax.set_facecolor("0.85")
            ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], rotation=45, fontsize=7)
            ax.set_yticks(range(len(depths)), [str(n) for n in depths])
            ax.set_title(f"{arm}, warmup {w:.0%}", fontsize=9)
            if col == 0:
                ax.set_ylabel("layer applications L")
            if row == len(WARMUPS) - 1:
                ax.set_xlabel("learning rate")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=f"median val loss (unigram {unigram:.2f})")
    fig.suptitle(
        f"Trainable cells (dot: within {MARGIN:g} nats of the depth's best in most of {len(seeds)} "
        "seeds); xk: diverged in k seeds; grey: no median",
        fontsize=9,
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary(results: list[dict[str, Any]]) -> str:
    """What the frontier found, in plain words, with the measured numbers."""
    seeds = sorted({r["seed"] for r in results})
    depths = sorted({r["n_layers"] for r in results})
    shallow, deep = depths[0], depths[-1]
    verdict = CLAIM.verdict_of(results)

    def width(arm: str, n: int, w: float) -> str:
        return f"{sum(trainable_range(results, arm, n, w, s) for s in seeds) / len(seeds):.1f}"

    def best(arm: str, n: int) -> str:
        """The arm's best run at depth n (any lr and warmup), mean over seeds."""
        per_seed = [min((r["val_loss"] for r in runs_where(results, arm=arm, n_layers=n, seed=sd)
                         if r["val_loss"] is not None), default=math.inf) for sd in seeds]
        return f"{sum(per_seed) / len(per_seed):.2f}"

    ranges = "; ".join(
        f"{arm} {width(arm, shallow, 0.0)} at L = {shallow} and {width(arm, deep, 0.0)} at L = {deep} "
        f"({width(arm, deep, WARMUPS[1])} with warmup)"
        for arm in ARMS
    )
    diverged = ", ".join(
        f"{arm} {sum(r['diverged'] for r in runs_where(results, arm=arm))}" for arm in ARMS
    )
    return (
        f"One shared 64-wide block applied L = {', '.join(map(str, depths))} times, each arm trained "
        f"{results[0]['steps']} steps at every learning rate from {min(LRS):g} to {max(LRS):g} (half a "
        f"decade apart), with and without 10% warmup, {len(seeds)} seeds. A run counts as trained when it "
        f"ends within {MARGIN:g} nats of the best run of any arm at its depth. The learning-rate range that "
        f"trains, in decades (mean over seeds), without warmup at the shallowest and deepest L and with "
        f"warmup at the deepest: {ranges}. Each arm's best run (any learning rate and warmup, mean over "
        f"seeds) at L = {' / '.join(map(str, depths))}: "
        + "; ".join(f"{arm} {' / '.join(best(arm, n) for n in depths)}" for arm in ARMS)
        + f" (the unigram loss is {results[0]['unigram_loss']:.2f}). Runs that diverged, of "
        f"{len(runs_where(results, arm=next(iter(ARMS))))} per arm: {diverged}. The rule written before the "
        f"runs expected post-LN without warmup to lose more range from L = {shallow} to L = {deep} than "
        f"pre-LN and DeepNorm; verdict: {verdict[0]} ({verdict[2]}).{_caution(results, seeds, depths)}"
    )


def _caution(results: list[dict[str, Any]], seeds: list[int], depths: list[int]) -> str:
    """When the trained gate fails: which depths did not leave the plateau, and what that does to the
    ranges, in words."""
    unigram = results[0]["unigram_loss"]
    short = [(n, min(unigram - best_loss(results, n, s) for s in seeds)) for n in depths]
    short = [(n, gap) for n, gap in short if gap < TRAINED_MARGIN]
    if not short:
        return ""
    where = ", ".join(f"L = {n} (in its worst seed {gap:.2f} nats below)" for n, gap in short)
    return (f" In plain words: within {results[0]['steps']} steps the best run of every arm at {where} "
            f"barely leaves the unigram plateau, so a run counted as trained there can be one that sits "
            "near the plateau, and the wide ranges at depth measure how alike the runs are, not how "
            "trainable they are. The question stays open at this size: it needs longer runs (`--size "
            "gpu`: 300 steps).")


CLAIM = Claim(
    letter="o",
    name="frontier",
    title="How deep a shared post-LN block trains, with and without warmup, against pre-LN and DeepNorm",
    sections="5, 6, 7.1",
    statement="Post-LN lets a small shared block train stably (the article); the papers add that post-LN "
    "needs learning-rate warmup and loses its trainable learning rates as it gets deeper, while pre-LN and "
    "DeepNorm keep them (Xiong et al. 2020, Liu et al. 2020, Wang et al. 2022).",
    experiment=f"One shared 64-wide block applied L = {', '.join(str(n) for n in DEPTHS['cpu'])} times: "
    f"{', '.join(ARMS)}; learning rates {', '.join(f'{lr:g}' for lr in LRS)} (half a decade apart), warmup "
    f"0 and 10%, {STEPS['cpu']} steps each, {len(SEEDS['cpu'])} seeds "
    f"({len(cells('cpu'))} runs; `--size gpu`: L up to 96, {STEPS['gpu']} steps, {len(SEEDS['gpu'])} seeds).",
    config=CONFIG,
    metric=f"trainable range = learning-rate decades (0.5 per grid point) whose run ends within {MARGIN:g} "
    "nats of the best run of any arm at that depth and seed; the divergence rate; the best loss.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
    summary=summary,
)
