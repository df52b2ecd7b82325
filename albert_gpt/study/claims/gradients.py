"""Claim b: without normalization, gradients vanish or explode with depth; post-LN keeps them steady.

Shapes: B batch, T tokens, L layer applications.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import ARMS, build_model, prepared_data, probe_batch, sharing_overrides
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.stats import loglog_slope, mean_interval
from albert_gpt.study.grad_at_init import ffn_out_grad_norms, unshared_copy
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/gradients.yaml"
PLACEMENTS = ("post-LN", "pre-LN", "no norm + final LN", "no norm, bare")
SIZES = {
    "cpu": {"depths": (2, 4, 8, 16, 32, 64), "stds": (0.02, 0.06, 0.125, 0.25), "seeds": (1, 2, 3)},
    "gpu": {
        "depths": (2, 4, 8, 16, 32, 64, 128),
        "stds": (0.02, 0.06, 0.125, 0.25),
        "seeds": (1, 2, 3, 4, 5),
    },
}
STEADY = 0.3  # |b| at most this: steady; a gradient that changes 6x over 2..64 layers has |b| = 0.52


def cells(size: str) -> list[dict[str, Any]]:
    s = SIZES[size]
    return [
        {"arm": arm, "sharing": sharing, "init_std": std, "n_layers": L, "seed": seed}
        for arm in PLACEMENTS
        for sharing in ("shared", "unshared")
        for std in s["stds"]
        for L in s["depths"]
        for seed in s["seeds"]
    ]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    """||dLoss/dW2|| of every layer's FFN output projection at init, on one fixed batch."""
    L = cell["n_layers"]
    cfg = load_config(
        CONFIG,
        [
            *ARMS[cell["arm"]],
            *sharing_overrides(cell["sharing"], L),
            f"model.n_layers={L}",
            f"model.init_std={cell['init_std']}",
            f"run.seed={cell['seed']}",
        ],
    )
    data = prepared_data(cfg)
    model = build_model(cfg, data.tokenizer.vocab_size)
    copy = unshared_copy(model) if cell["sharing"] == "shared" else model
    x, y = probe_batch(data, cfg, cfg.train.batch_size)
    norms = ffn_out_grad_norms(copy, x, y)
    return {"per_layer": [n if math.isfinite(n) else None for n in norms]}


def _value(v: float | None) -> float:
    return math.inf if v is None else v


def exponents(results: list[dict[str, Any]], arm: str, sharing: str, std: float) -> list[float]:
    """Per seed: the slope b of log ||dL/dW2 (last layer)|| against log L."""
    out = []
    for seed in sorted({r["seed"] for r in results}):
        pts = sorted(
            (r["n_layers"], _value(r["per_layer"][-1]))
            for r in results
            if (r["arm"], r["sharing"], r["init_std"], r["seed"]) == (arm, sharing, std, seed)
        )
        if any(not math.isfinite(g) for _, g in pts):
            out.append(math.inf)  # overflowed: the gradient exploded beyond float32
        else:
            out.append(loglog_slope([p[0] for p in pts], [p[1] for p in pts]))
    return out


def analyze(results: list[dict[str, Any]]) -> Analysis:
    stds = sorted({r["init_std"] for r in results})
    post_steady, post_unsteady, bare_unsteady = True, False, True
    rows = []
    for arm in PLACEMENTS:
        for sharing in ("shared", "unshared"):
            ivs = [mean_interval(exponents(results, arm, sharing, std)) for std in stds]
            rows.append([arm, sharing, *[_show(iv) for iv in ivs]])
            for std, iv in zip(stds, ivs):
                inside = math.isfinite(iv.mean) and -STEADY <= iv.low and iv.high <= STEADY
                outside = not math.isfinite(iv.mean) or iv.low > STEADY or iv.high < -STEADY
                if arm == "post-LN":
                    post_steady &= inside
                    post_unsteady |= outside
                if arm == "no norm, bare" and std >= 0.125:
                    bare_unsteady &= outside
    table = markdown_table(["arm", "sharing", *[f"b at init std {s}" for s in stds]], rows)
    at = {
        (arm, sh): _show(mean_interval(exponents(results, arm, sh, 0.125)))
        for arm in ("post-LN", "no norm, bare")
        for sh in ("shared", "unshared")
    }
    headline = (
        f"b at init std 0.125: post-LN {at['post-LN', 'shared']} shared, {at['post-LN', 'unshared']} "
        f"unshared; no norm, bare {at['no norm, bare', 'shared']} shared, "
        f"{at['no norm, bare', 'unshared']} unshared"
    )
    if post_steady and bare_unsteady:
        verdict, reason = (
            "supported",
            (
                f"post-LN's interval of b lies inside ±{STEADY} at every init scale, shared and unshared, "
                "and the bare model's lies outside it at init std 0.125 and 0.25."
            ),
        )
    elif post_unsteady:
        verdict = "contradicted"
        reason = f"post-LN's interval of b lies outside ±{STEADY} at some init scale."
    else:
        post_part = "stays" if post_steady else "does not always stay"
        bare_part = "leaves" if bare_unsteady else "does not always leave"
        verdict, reason = (
            "mixed",
            (
                f"post-LN {post_part} within ±{STEADY}; the bare model {bare_part} "
                "it at init std 0.125 and 0.25."
            ),
        )
    return Analysis(verdict, reason, headline, table)


def _show(iv: Any) -> str:
    return "overflow" if not math.isfinite(iv.mean) else str(iv)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    stds = sorted({r["init_std"] for r in results})
    fig, axes = plt.subplots(1, len(stds) + 1, figsize=(4 * (len(stds) + 1), 3.4))
    colours = dict(zip(PLACEMENTS, ("C0", "C1", "C2", "C3")))
    for ax, std in zip(axes, stds):
        for arm in PLACEMENTS:
            for sharing, ls in (("unshared", "-"), ("shared", "--")):
                by_l: dict[int, list[float]] = {}
                for r in results:
                    if (r["arm"], r["sharing"], r["init_std"]) == (arm, sharing, std):
                        by_l.setdefault(r["n_layers"], []).append(_value(r["per_layer"][-1]))
                xs = sorted(L for L, v in by_l.items() if all(math.isfinite(g) for g in v))
                if not xs:
                    continue
                means, err = error_bars([mean_interval(by_l[L]) for L in xs], log_scale=True)
                ax.errorbar(
                    xs,
                    means,
                    yerr=err,
                    color=colours[arm],
                    ls=ls,
                    marker="o",
                    ms=2,
                    capsize=2,
                    label=f"{arm}, {sharing}",
                )
        ax.set(xscale="log", yscale="log", title=f"init std {std}", xlabel="L (layer applications)")
        depths = sorted({r["n_layers"] for r in results})
        ax.set_xticks(depths, [str(L) for L in depths])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.title.set_fontsize(9)
    axes[0].set_ylabel("||dLoss/dW2||, last layer")
    axes[0].legend(fontsize=5)
    ax = axes[-1]
    deepest = max(r["n_layers"] for r in results)
    for arm in PLACEMENTS:
        rows = [
            r
            for r in results
            if (r["arm"], r["sharing"], r["init_std"], r["n_layers"]) == (arm, "unshared", 0.125, deepest)
        ]
        per = [[_value(v) for v in r["per_layer"]] for r in rows]
        if not per or any(not math.isfinite(v) for p in per for v in p):
            continue
        means, err = error_bars([mean_interval(col) for col in zip(*per)], log_scale=True)
        ax.errorbar(range(1, deepest + 1), means, yerr=err, color=colours[arm], label=arm, capsize=1, lw=1)
    ax.set(yscale="log", title=f"every layer, L={deepest}, unshared, init std 0.125", xlabel="layer")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
    save(fig, path)


CLAIM = Claim(
    letter="b",
    name="gradients",
    title="Normalization keeps gradients steady across depth",
    sections="2, 2.1",
    statement="Without normalization the gradients of a deep stack vanish or explode with depth; post-LN "
    "keeps each layer's gradient about the same size whatever the depth.",
    experiment="At initialization (no training), one fixed batch of 8 x 64 characters: the gradient norm of "
    "every layer's FFN output projection W2 for post-LN, pre-LN, no norm with a final LN and no "
    "norm at all, shared (one block applied L times; the gradient of each application, taken on "
    "an unshared copy) and unshared, init std 0.02 / 0.06 / 0.125 / 0.25, L = 2 ... 64, 3 seeds.",
    config=CONFIG,
    metric="the exponent b in ||dLoss/dW2 of the last layer|| ~ L^b, fitted per seed over L (least squares "
    "on logs); mean and 95% t interval over seeds. 'overflow': a gradient was not finite in float32.",
    rule=f"supported if post-LN's interval of b lies inside [-{STEADY}, {STEADY}] at every init std, shared "
    f"and unshared, and the bare no-norm model's lies entirely outside it at init std 0.125 and 0.25; "
    f"contradicted if post-LN's lies entirely outside it at some init std; otherwise mixed.",
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
