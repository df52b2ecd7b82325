"""Claim i: in a recurrent network, LayerNorm makes training faster and stable over a wider range of
learning rates (the layer-normalized LSTM of Ba et al. 2016 against the plain LSTM).

Shapes: B batch, T tokens.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import eval_loss, prepared_data, runs_where, train_model
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/lstm.yaml"
ARMS = {"LSTM": ["model.norm=none"], "LN-LSTM": ["model.norm=layernorm"]}
SEEDS = {"cpu": (1, 2, 3), "gpu": (1, 2, 3, 4, 5)}
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # half-decade steps around the config's 3e-3
BASE_LR = 3e-3
EARLY_STEP = 75  # a quarter of the 300 steps: "faster" is the validation loss here, at the base lr
NEAR_BEST = 0.05  # nats: a learning rate "trains" when its final val loss is this close to the arm's best


def cells(size: str) -> list[dict[str, Any]]:
    return [{"arm": arm, "lr": lr, "seed": s} for arm in ARMS for lr in LRS for s in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    lr = cell["lr"]
    cfg = load_config(
        CONFIG, [*ARMS[cell["arm"]], f"run.seed={cell['seed']}", f"train.lr={lr}", f"train.min_lr={lr / 100}"]
    )
    data = prepared_data(cfg)
    early: dict[str, float] = {}

    def at_early_step(step: int, model: Any) -> None:
        if step == EARLY_STEP:
            early["loss"] = eval_loss(model, data, cfg)
            model.train()

    started = time.perf_counter()
    trained = train_model(cfg, data, on_step=at_early_step)
    seconds_per_step = (time.perf_counter() - started) / cfg.train.max_steps
    final = math.inf if trained.diverged else eval_loss(trained.model, data, cfg)
    early_loss = early.get("loss", math.inf)
    return {
        "val_loss": final if math.isfinite(final) else None,
        "early_val_loss": early_loss if math.isfinite(early_loss) else None,
        "diverged": trained.diverged,
        "skipped": trained.skipped,
        "seconds_per_step": seconds_per_step,
    }


def _loss(r: dict[str, Any], key: str = "val_loss") -> float:
    return math.inf if r[key] is None else r[key]


def trainable_lrs(results: list[dict[str, Any]], arm: str, seed: int) -> int:
    """How many learning rates end within NEAR_BEST of this arm's best final loss (same seed)."""
    runs = runs_where(results, arm=arm, seed=seed)
    best = min(_loss(r) for r in runs)
    return sum(_loss(r) <= best + NEAR_BEST for r in runs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    seeds = sorted({r["seed"] for r in results})
    widths = {arm: [trainable_lrs(results, arm, s) for s in seeds] for arm in ARMS}
    early = {
        arm: [_loss(r, "early_val_loss") for r in runs_where(results, arm=arm, lr=BASE_LR)] for arm in ARMS
    }
    rows = []
    for arm in ARMS:
        at = [mean_interval([_loss(r) for r in runs_where(results, arm=arm, lr=lr)]) for lr in LRS]
        diverged = sum(r["diverged"] for r in results if r["arm"] == arm)
        step_time = mean_interval([r["seconds_per_step"] for r in runs_where(results, arm=arm, lr=BASE_LR)])
        rows.append(
            [
                arm,
                str(mean_interval(early[arm])),
                str(mean_interval(widths[arm])),
                *[str(iv) for iv in at],
                str(diverged),
                f"{1000 * step_time.mean:.1f}",
            ]
        )
    table = markdown_table(
        [
            "arm",
            f"val loss at step {EARLY_STEP} (lr {BASE_LR:g})",
            f"trainable lrs (of {len(LRS)})",
            *[f"final, lr {lr:g}" for lr in LRS],
            "diverged runs",
            "ms per step",
        ],
        rows,
    )
    faster = paired_difference(early["LN-LSTM"], early["LSTM"])
    wider = paired_difference(widths["LN-LSTM"], widths["LSTM"])
    wins = sum(a > b for a, b in zip(widths["LN-LSTM"], widths["LSTM"]))
    headline = f"LN - plain: val loss at step {EARLY_STEP} {faster}; trainable learning rates {wider}"
    if faster.high < 0 and wider.low > 0 and wins >= 2:
        verdict, reason = "supported", "the LN-LSTM is ahead early and trains over more learning rates."
    elif faster.low > 0 or wider.high < 0:
        verdict, reason = (
            "contradicted",
            "the plain LSTM is ahead early or trains over more learning rates (interval excludes 0).",
        )
    else:
        parts = []
        parts.append("ahead early" if faster.high < 0 else "not resolved as ahead early")
        parts.append("wider" if wider.low > 0 and wins >= 2 else "not resolved as wider in learning rate")
        verdict, reason = "mixed", f"the LN-LSTM is {parts[0]} and {parts[1]}."
    plain_ms = mean_interval(
        [r["seconds_per_step"] for r in runs_where(results, arm="LSTM", lr=BASE_LR)]
    ).mean
    ln_ms = mean_interval(
        [r["seconds_per_step"] for r in runs_where(results, arm="LN-LSTM", lr=BASE_LR)]
    ).mean
    reason += (
        f" LN minus plain, paired by seed: val loss at step {EARLY_STEP} {faster}, trainable learning rates "
        f"{wider}. Per step, the LN cell (a Python loop over time) costs {ln_ms / plain_ms:.1f}x "
        "torch's fused nn.LSTM here, so 'faster' holds per step, not per second."
    )
    return Analysis(verdict, reason, headline, table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, arm in enumerate(ARMS):
        means, err = error_bars(
            [mean_interval([min(_loss(r), 6.0) for r in runs_where(results, arm=arm, lr=lr)]) for lr in LRS]
        )
        ax.errorbar(LRS, means, yerr=err, color=f"C{i}", marker="o", capsize=2, label=arm)
    ax.set(
        xscale="log",
        xlabel="peak learning rate",
        ylabel="final val loss (capped at 6)",
        title="LSTM language model: learning-rate range",
    )
    ax.legend(fontsize=8)
    save(fig, path)


CLAIM = Claim(
    letter="i",
    name="lstm-norm",
    title="LayerNorm makes an LSTM train faster over more learning rates",
    sections="3.1",
    statement="In a recurrent network the hidden state varies widely over time; LayerNorm stabilizes each "
    "step, so the network trains faster and keeps a stable learning rate.",
    experiment=f"A 2-layer, 64-wide LSTM language model, plain (torch's nn.LSTM) or layer-normalized (Ba et "
    f"al. 2016: LN on the input and recurrent gate terms and on the cell), peak learning rate "
    f"{' / '.join(f'{lr:g}' for lr in LRS)} (warmup 30 steps, cosine to lr/100), 300 steps at batch 16 and "
    "context 32, 3 seeds; the same initialization (torch's LSTM default) for both.",
    config=CONFIG,
    metric=f"validation loss at step {EARLY_STEP} at lr {BASE_LR:g} (faster: lower); the number of learning "
    f"rates whose final validation loss is within {NEAR_BEST} nats of the arm's best (wider: more).",
    rule=f"supported if the LN-LSTM's step-{EARLY_STEP} loss is lower (paired 95% interval below 0) and it "
    "trains over more learning rates (paired interval above 0, and more in at least 2 of 3 seeds); "
    "contradicted if the plain LSTM is significantly ahead on either; otherwise mixed.",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
