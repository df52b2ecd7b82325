"""Claim i: in a recurrent network, LayerNorm makes training faster and stable over a wider range of
learning rates (the layer-normalized LSTM of Ba et al. 2016 against the plain LSTM, and an LSTM with LN on
its input term only). Both start from PyTorch's own LSTM init and N(0, 1) embeddings (the config), so the
plain LSTM is not starved. Judged under the ledger's second edition (rules.py).

Shapes: B batch, T tokens.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.modeling.base import CausalLM
from albert_gpt.study.claims.common import eval_loss, prepared_data, runs_where, train_model, unigram_loss
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

CONFIG = "configs/claims/lstm.yaml"
ARMS = {
    "LSTM": ["model.norm=none"],
    "LN-LSTM": ["model.norm=layernorm"],
    "LN on the input term only": ["model.norm=layernorm", "model.lstm_norm_sites=input"],
}
SEEDS = {"cpu": (1, 2, 3, 4, 5, 6, 7), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}  # two count comparisons: >= 7
EVERY = 25  # validation every 25 steps at the base lr: the step at which the target loss is first reached
TARGET_BELOW_UNIGRAM = 0.5  # nats: the target validation loss is the unigram loss minus this
MARGIN = 0.1  # nats: a learning rate trains when it ends this close to the best of all arms (same seed)
TRAINED_MARGIN = 0.3
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # half-decade steps around the config's 3e-3
BASE_LR = 3e-3
EARLY_STEP = 75  # a quarter of the 300 steps: "faster" is the validation loss here, at the base lr


def cells(size: str) -> list[dict[str, Any]]:
    return [{"arm": arm, "lr": lr, "seed": s} for arm in ARMS for lr in LRS for s in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    lr = cell["lr"]
    cfg = load_config(
        CONFIG, [*ARMS[cell["arm"]], f"run.seed={cell['seed']}", f"train.lr={lr}", f"train.min_lr={lr / 100}"]
    )
    data = prepared_data(cfg)
    early: dict[str, float] = {}
    curve: list[list[float | None]] = []  # [step, val loss] every EVERY steps, at the base lr only

    def at_early_step(step: int, model: CausalLM) -> None:
        if step == EARLY_STEP or (lr == BASE_LR and step % EVERY == 0 and step > 0):
            loss = eval_loss(model, data, cfg)
            if step == EARLY_STEP:
                early["loss"] = loss
            if lr == BASE_LR and step % EVERY == 0:
                curve.append([step, loss if math.isfinite(loss) else None])
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
        "curve": curve,
        "unigram_loss": unigram_loss(data),
    }


def _loss(r: dict[str, Any], key: str = "val_loss") -> float:
    return math.inf if r[key] is None else r[key]


def trainable_lrs(results: list[dict[str, Any]], arm: str, seed: int) -> int:
    """How many learning rates end within MARGIN of the best final loss of all arms (same seed)."""
    same = [r for r in results if r["seed"] == seed]
    best = min(_loss(r) for r in same)
    return sum(_loss(r) <= best + MARGIN for r in same if r["arm"] == arm)


def steps_to_target(r: dict[str, Any], max_steps: int = 300) -> float:
    """The first evaluated step whose validation loss is at or below the target; a run that never gets there
    counts as max_steps + EVERY (a lower bound)."""
    target = r["unigram_loss"] - TARGET_BELOW_UNIGRAM
    reached = [step for step, loss in r.get("curve", []) if loss is not None and loss <= target]
    return float(min(reached)) if reached else float(max_steps + EVERY)


RULE = Rule(
    comparisons=(
        Comparison(
            f"steps to the target loss at lr {BASE_LR:g}", "LN-LSTM", "LSTM", "lower", EVERY, kind="count"
        ),
        Comparison(
            "trainable learning rates (settings of the grid)", "LN-LSTM", "LSTM", "higher", 1.0, kind="count"
        ),
    ),
    gates=(Trained("LN-LSTM", TRAINED_MARGIN),),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"The target is the unigram loss minus {TARGET_BELOW_UNIGRAM:g} nats, checked every {EVERY} steps "
        f"(never reached in 300 steps: {300 + EVERY}); a learning rate of "
        f"{', '.join(f'{v:g}' for v in LRS)} trains when its final validation loss is within {MARGIN:g} nats "
        "of the best of all arms at that seed. "
        "The gate takes the LN-LSTM at the base learning rate. The input-only arm is reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    seeds = sorted({r["seed"] for r in results})
    ln = runs_where(results, arm="LN-LSTM", lr=BASE_LR)
    gate = trained_gate(f"the LN-LSTM at lr {BASE_LR:g}", ln, TRAINED_MARGIN)
    steps = {
        arm: [
            steps_to_target(r) if "unigram_loss" in r else math.nan
            for r in runs_where(results, arm=arm, lr=BASE_LR)
        ]
        for arm in ("LN-LSTM", "LSTM")
    }
    widths = {arm: [trainable_lrs(results, arm, s) for s in seeds] for arm in ("LN-LSTM", "LSTM")}
    return Evidence(
        [gate], [Pairs(steps["LN-LSTM"], steps["LSTM"]), Pairs(widths["LN-LSTM"], widths["LSTM"])]
    )


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    seeds = sorted({r["seed"] for r in results})
    arms = [arm for arm in ARMS if runs_where(results, arm=arm)]
    rows = []
    for arm in arms:
        base = runs_where(results, arm=arm, lr=BASE_LR)
        steps = [steps_to_target(r) for r in base] if all("unigram_loss" in r for r in base) else []
        at = [mean_interval([_loss(r) for r in runs_where(results, arm=arm, lr=lr)]) for lr in LRS]
        step_time = mean_interval([r["seconds_per_step"] for r in base])
        rows.append(
            [
                arm,
                f"{sum(steps) / len(steps):.0f} ({min(steps):.0f}-{max(steps):.0f})" if steps else "-",
                str(mean_interval([_loss(r, "early_val_loss") for r in base])),
                str(mean_interval([trainable_lrs(results, arm, s) for s in seeds])),
                *[str(iv) for iv in at],
                str(sum(r["diverged"] for r in results if r["arm"] == arm)),
                f"{1000 * step_time.mean:.1f}",
            ]
        )
    table = markdown_table(
        [
            "arm",
            f"steps to the target at lr {BASE_LR:g}: mean (min-max)",
            f"val loss at step {EARLY_STEP}",
            f"trainable lrs (of {len(LRS)})",
            *[f"final, lr {lr:g}" for lr in LRS],
            "diverged runs",
            "ms per step",
        ],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, arm in enumerate(a for a in ARMS if runs_where(results, arm=a)):
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
    experiment="A 2-layer, 64-wide LSTM language model: plain (torch's nn.LSTM), layer-normalized (Ba et al. "
    "2016: LN on the input and recurrent gate terms and on the cell), or with LN on the input term only; "
    f"peak learning rate {' / '.join(f'{lr:g}' for lr in LRS)} (warmup 30 steps, cosine to lr/100), 300 "
    f"steps at batch 16 and context 32, {len(SEEDS['cpu'])} seeds; PyTorch's own LSTM init and N(0, 1) "
    "embeddings for every arm.",
    config=CONFIG,
    metric=f"steps to a fixed validation loss (the unigram loss minus {TARGET_BELOW_UNIGRAM:g} nats) at lr "
    f"{BASE_LR:g}; the number of learning rates that train (within {MARGIN:g} nats of the best of all arms, "
    "same seed).",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
