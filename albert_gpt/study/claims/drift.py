"""Claim c: LayerNorm reduces internal covariate shift (the drift of each sub-layer's input
distribution as the parameters below it change), and that speeds up learning.

Every 10 steps, on one fixed batch, the per-feature mean and standard deviation of the input of
every sub-layer (attention, FFN) at every depth; drift is how much they moved since the last
measurement, in units of the earlier standard deviation.

Shapes: B batch, T tokens, H hidden.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import (
    ARMS,
    arm_seed_cells,
    eval_loss,
    prepared_data,
    probe_batch,
    runs_where,
    train_model,
)
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import mean_interval, paired_difference, spearman
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
ARMS_HERE = ("post-LN", "pre-LN", "no norm + final LN", "no norm, bare", "BN per depth")
SEEDS = {"cpu": (1, 2, 3), "gpu": (1, 2, 3, 4, 5)}
EVERY = 10
EPS = 1e-6


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of (..., H) over every other dimension."""
    flat = x.detach().reshape(-1, x.size(-1)).double()
    return flat.mean(0), flat.std(0, correction=0)


def drift(before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean over features of |mean change| / earlier std + |log std change|: 0 when nothing moved."""
    (m0, s0), (m1, s1) = before, after
    shift = ((m1 - m0).abs() / (s0 + EPS)).mean()
    scale = (torch.log(s1 + EPS) - torch.log(s0 + EPS)).abs().mean()
    return float(shift + scale)


def sublayer_inputs(
    model: Any, idx: torch.Tensor
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """Moments of what each sub-layer's branch reads, per (depth, "attn" | "ffn"): the normalized stream
    in a norm-first block, the stream itself in a post-norm block (whose norm comes after the branch)."""
    out = {}

    def tracer(depth: int, point: str, tensor: torch.Tensor) -> None:
        block = model.blocks[model.schedule[depth]]
        name, _, what = point.partition("_")
        if what == ("norm_out" if block.norm_first else "residual"):
            out[depth, name] = moments(tensor / block.alpha if what == "residual" else tensor)

    was = model.training
    model.eval()
    with torch.no_grad():
        model(idx, tracer=tracer)
    model.train(was)
    return out


def cells(size: str) -> list[dict[str, Any]]:
    return arm_seed_cells(ARMS_HERE, SEEDS[size])


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(CONFIG, [*ARMS[cell["arm"]], f"run.seed={cell['seed']}"])
    data = prepared_data(cfg)
    x, _ = probe_batch(data, cfg)
    last: dict[str, Any] = {}
    series: list[list[float]] = []  # [step, mean drift over sub-layers, then one value per depth]

    def record(step: int, model: Any) -> None:
        if step % EVERY:
            return
        now = sublayer_inputs(model, x)
        if last:
            per = {key: drift(last[key], now[key]) for key in now}
            depths = sorted({d for d, _ in per})
            by_depth = [statistics.fmean(v for (d, _), v in per.items() if d == depth) for depth in depths]
            series.append([step, statistics.fmean(per.values()), *by_depth])
        last.clear()
        last.update(now)

    trained = train_model(cfg, data, on_step=record)
    losses = [v for v in trained.losses if math.isfinite(v)]
    return {
        "drift": series,
        "val_loss": eval_loss(trained.model, data, cfg),
        "mean_train_loss": statistics.fmean(losses) if losses else None,
        "diverged": trained.diverged,
    }


def mean_drift(r: dict[str, Any]) -> float:
    values = [row[1] for row in r["drift"]]
    return statistics.fmean(values) if values and all(math.isfinite(v) for v in values) else math.inf


def analyze(results: list[dict[str, Any]]) -> Analysis:
    rows = [
        [
            arm,
            str(mean_interval([mean_drift(r) for r in runs_where(results, arm=arm)])),
            str(mean_interval([r["mean_train_loss"] or math.inf for r in runs_where(results, arm=arm)])),
            str(mean_interval([r["val_loss"] for r in runs_where(results, arm=arm)])),
        ]
        for arm in ARMS_HERE
    ]
    table = markdown_table(
        ["arm", "mean drift per 10 steps", "mean training loss (speed)", "final val loss"], rows
    )
    post = [mean_drift(r) for r in runs_where(results, arm="post-LN")]
    diffs = {
        other: paired_difference(post, [mean_drift(r) for r in runs_where(results, arm=other)])
        for other in ("no norm + final LN", "no norm, bare")
    }
    finite = [r for r in results if math.isfinite(mean_drift(r)) and r["mean_train_loss"] is not None]
    rho = spearman([mean_drift(r) for r in finite], [r["mean_train_loss"] for r in finite])
    went = "went" if rho > 0 else "did not go"
    link = (
        f"Across all {len(finite)} runs, the rank correlation between drift and mean training loss is "
        f"{rho:+.2f}: lower drift {went} with faster training."
    )
    headline = (
        f"drift, post-LN minus no norm + final LN: {diffs['no norm + final LN']}; "
        f"Spearman(drift, training loss) {rho:+.2f}"
    )
    if all(d.high < 0 for d in diffs.values()):
        verdict, reason = "supported", "post-LN's sub-layer inputs drift less than without norms. " + link
    elif any(d.low > 0 for d in diffs.values()):
        verdict, reason = "contradicted", "post-LN's sub-layer inputs drift more than without norms. " + link
    else:
        verdict, reason = "mixed", "the drift difference is not resolved against both no-norm arms. " + link
    return Analysis(verdict, reason, headline, table)


def tensorboard(results: list[dict[str, Any]], log_dir: Path) -> None:
    """One TensorBoard run per cell: `ics/drift` and `ics/depth_DD/drift` against the step."""
    from torch.utils.tensorboard import SummaryWriter

    for r in results:
        with SummaryWriter(
            log_dir=str(log_dir / f"{r['arm'].replace(' ', '_').replace(',', '')}_seed{r['seed']}")
        ) as w:
            for step, mean, *per_depth in r["drift"]:
                w.add_scalar("ics/drift", mean, step)
                for depth, value in enumerate(per_depth):
                    w.add_scalar(f"ics/depth_{depth:02d}/drift", value, step)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, arm in enumerate(ARMS_HERE):
        runs = runs_where(results, arm=arm)
        steps = [row[0] for row in runs[0]["drift"]]
        means, err = error_bars(
            [mean_interval([r["drift"][j][1] for r in runs]) for j in range(len(steps))], log_scale=True
        )
        axes[0].errorbar(steps, means, yerr=err, color=f"C{i}", capsize=1, lw=1, label=arm)
        depth_cols = list(zip(*(row[2:] for r in runs for row in r["drift"])))
        means, err = error_bars([mean_interval(c) for c in depth_cols], log_scale=True)
        axes[1].errorbar(
            range(1, len(means) + 1), means, yerr=err, color=f"C{i}", marker="o", ms=3, capsize=2
        )
    axes[0].set(yscale="log", xlabel="step", ylabel="input drift per 10 steps", title="drift during training")
    axes[1].set(yscale="log", xlabel="layer application", title="mean drift by depth")
    axes[0].legend(fontsize=7)
    save(fig, path)


CLAIM = Claim(
    letter="c",
    name="drift",
    title="LayerNorm reduces internal covariate shift",
    sections="3",
    statement="LayerNorm reduces internal covariate shift, the change of each layer's input distribution as "
    "the layers below it learn, and so speeds up training.",
    experiment=f"300 steps (lr 1e-3) of the shared 6-layer model; every {EVERY} steps, on one fixed batch, "
    "the per-feature mean and standard deviation of every sub-layer's input at every depth. Arms: "
    "post-LN, pre-LN, no norm with a final LN, no norm at all, BatchNorm per depth; 3 seeds.",
    config=CONFIG,
    metric="drift = mean over features of |change of mean| / earlier std + |change of log std| between "
    f"measurements {EVERY} steps apart, averaged over sub-layers, depths and the run; training speed = "
    "mean training loss over the run (lower = faster).",
    rule="supported if post-LN's drift is below both no-norm arms' (paired 95% intervals below 0); "
    "contradicted if above either (interval above 0); otherwise mixed. Whether lower drift goes with "
    "faster training is reported (Spearman correlation across runs) but does not decide the verdict "
    "(Santurkar et al. 2018 argue it need not).",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
