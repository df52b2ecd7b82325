"""Claim r: LayerNorm is the more valuable the larger the model (article section 7.1). Does post-LN's
advantage over the other arms grow with width? One shared block applied 6 times (the ledger's depth) at
widths 64, 128 and 256 (512 and 1024 on a GPU), each arm tuned alike: the best of the same three learning
rates, per width and seed.

Shapes: B batch, T tokens, H hidden.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import eval_loss, prepared_data, runs_where, train_model, unigram_loss
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.rules import Comparison, Evidence, GateResult, Pairs, Rule, Trained, judge
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
# The project's default init for every arm, as in rows o to q.
ARMS = {
    "post-LN": ["model.norm_placement=post"],
    "pre-LN": ["model.norm_placement=pre"],
    "no norm + final LN": ["model.norm_placement=none", "model.final_norm=true"],
}
WIDTHS = {"cpu": (64, 128, 256), "gpu": (64, 128, 256, 512, 1024)}
LRS = (1e-3, 3e-3, 1e-2)  # the same tuning effort for every arm and width
SEEDS = {"cpu": (1, 2, 3, 4, 5), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
STEPS = 300
MIN_EFFECT = 0.05  # nats


def cells(size: str) -> list[dict[str, Any]]:
    return [{"arm": arm, "width": w, "lr": lr, "seed": s}
            for w in WIDTHS[size] for arm in ARMS for lr in LRS for s in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(
        CONFIG,
        [
            *ARMS[cell["arm"]],
            f"model.n_embd={cell['width']}",
            f"run.seed={cell['seed']}",
            f"train.max_steps={STEPS}",
            f"train.lr={cell['lr']}",
            f"train.min_lr={cell['lr'] / 10}",
        ],
    )
    data = prepared_data(cfg)
    trained = train_model(cfg, data)
    final = math.inf if trained.diverged else eval_loss(trained.model, data, cfg)
    return {
        "val_loss": final if math.isfinite(final) else None,
        "diverged": trained.diverged,
        "unigram_loss": unigram_loss(data),
    }


def tuned_loss(results: list[dict[str, Any]], arm: str, width: int, seed: int) -> float:
    """The arm's best validation loss over the learning-rate grid at this width and seed (inf if none)."""
    losses = [r["val_loss"] for r in runs_where(results, arm=arm, width=width, seed=seed)
              if r["val_loss"] is not None]
    return min(losses, default=math.inf)


def advantage(results: list[dict[str, Any]], other: str, width: int, seed: int) -> float:
    """How much lower post-LN's tuned loss is than `other`'s (nats; positive: post-LN better)."""
    return tuned_loss(results, other, width, seed) - tuned_loss(results, "post-LN", width, seed)


_NARROW, _WIDE = WIDTHS["cpu"][0], WIDTHS["cpu"][-1]
RULE = Rule(
    comparisons=(
        Comparison(
            "post-LN's advantage over no norm + final LN (nats, tuned loss)",
            f"width {_WIDE}",
            f"width {_NARROW}",
            "higher",
            MIN_EFFECT,
        ),
    ),
    gates=(Trained(f"post-LN, tuned, at every width ({', '.join(map(str, WIDTHS['cpu']))})"),),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"One shared block applied 6 times, 4 heads, widths {', '.join(map(str, WIDTHS['cpu']))}; every arm "
        f"trained {STEPS} steps at each of the learning rates {', '.join(f'{lr:g}' for lr in LRS)} (10% "
        "warmup, cosine to a tenth), its tuned loss the best of them per width and seed (the same selection "
        "for every arm). The article expects LayerNorm's value to grow with the model: post-LN's advantage "
        f"over the arm without normalization larger at width {_WIDE} than at {_NARROW}. Reported, not "
        "judged: the advantage over pre-LN, and every width between. No pilot was run for this row."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    seeds = sorted({r["seed"] for r in results})
    widths = sorted({r["width"] for r in results})
    gaps = [r["unigram_loss"] - tuned_loss(results, "post-LN", w, s) for w in widths for s in seeds
            for r in runs_where(results, arm="post-LN", width=w, seed=s)[:1]]
    trained = GateResult(
        bool(gaps) and min(gaps) >= 0.3,
        f"post-LN's tuned loss ends {min(gaps, default=math.nan):.2f} to {max(gaps, default=math.nan):.2f} "
        "nats below the unigram loss across widths and seeds (gate: 0.3)",
    )
    wide, narrow = max(widths), min(widths)
    pairs = [Pairs([advantage(results, "no norm + final LN", wide, s) for s in seeds],
                   [advantage(results, "no norm + final LN", narrow, s) for s in seeds])]
    return Evidence([trained], pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    seeds = sorted({r["seed"] for r in results})
    widths = sorted({r["width"] for r in results})
    rows = []
    for w in widths:
        row = [str(w)]
        for arm in ARMS:
            row.append(str(mean_interval([tuned_loss(results, arm, w, s) for s in seeds])))
        for other in ("no norm + final LN", "pre-LN"):
            row.append(str(mean_interval([advantage(results, other, w, s) for s in seeds])))
        row.append(f"{sum(r['diverged'] for r in results if r['width'] == w)}/"
                   f"{sum(r['width'] == w for r in results)}")
        rows.append(row)
    table = markdown_table(
        ["width", *[f"{arm}: tuned val loss" for arm in ARMS], "post-LN's advantage over no norm + final LN",
         "post-LN's advantage over pre-LN", "diverged runs"],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    """Post-LN's advantage (nats) over each other arm against width, mean and 95% interval over seeds."""
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    seeds = sorted({r["seed"] for r in results})
    widths = sorted({r["width"] for r in results})
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, other in enumerate(("no norm + final LN", "pre-LN")):
        ivs = [mean_interval([advantage(results, other, w, s) for s in seeds]) for w in widths]
        shown = [(w, iv) for w, iv in zip(widths, ivs) if math.isfinite(iv.mean)]
        if shown:
            means, err = error_bars([iv for _, iv in shown])
            ax.errorbar([w for w, _ in shown], means, yerr=err, color=f"C{i}", marker="o", capsize=2,
                        label=f"over {other}")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set(xscale="log", xlabel="width (n_embd)", ylabel="post-LN's advantage (nats, tuned loss)")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.legend(fontsize=8)
    save(fig, path)


CLAIM = Claim(
    letter="r",
    name="width",
    title="LayerNorm's value grows with the model's width",
    sections="7.1",
    statement="LayerNorm is valuable for large models: post-LN's advantage over a model without "
    "normalization grows as the model gets wider.",
    experiment=f"One shared block applied 6 times at widths {', '.join(map(str, WIDTHS['cpu']))}: "
    f"{', '.join(ARMS)}; each trained {STEPS} steps at lr {', '.join(f'{lr:g}' for lr in LRS)} and tuned to "
    f"the best of them; {len(SEEDS['cpu'])} seeds (`--size gpu`: widths up to 1024, 8 seeds).",
    config=CONFIG,
    metric="post-LN's advantage = the other arm's tuned val loss minus post-LN's (nats), per width and seed.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
