"""Claim b: without normalization, gradients vanish or explode with depth; post-LN keeps them steady.

Two inits: GPT-2's, which scales residual output projections by 1/sqrt(2L) and so hides part of the
no-norm arms' growth with depth, and a depth-independent one (`init_scheme: normal`). Judged under the
ledger's second edition (rules.py).

Shapes: B batch, T tokens, L layer applications.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.study.claims.common import ARMS, build_model, prepared_data, probe_batch, sharing_overrides
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.rules import (
    Comparison,
    Evidence,
    GateResult,
    Pairs,
    PositiveControl,
    Rule,
    judge,
)
from albert_gpt.study.claims.stats import loglog_slope, mean_interval
from albert_gpt.study.grad_at_init import ffn_out_grad_norms, unshared_copy
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/gradients.yaml"
PLACEMENTS = ("post-LN", "pre-LN", "DeepNorm", "no norm + final LN", "no norm, bare")
INITS = ("gpt2", "normal")  # GPT-2's depth-scaled residual init, and a depth-independent one
SIZES = {
    "cpu": {"depths": (2, 4, 8, 16, 32, 64), "stds": (0.02, 0.125), "seeds": (1, 2, 3, 4, 5, 6)},
    "gpu": {"depths": (2, 4, 8, 16, 32, 64, 128), "stds": (0.02, 0.125), "seeds": (1, 2, 3, 4, 5, 6, 7, 8)},
}
MIN_EFFECT = 0.2  # in |b|: over L = 2 ... 64, a gradient 2x steadier (32^0.2 = 2)
CONTROL = 0.5  # |b| the positive control must reach: the gradient changes 5.7x over L = 2 ... 64
FLOAT32_MAX = 3.4028234663852886e38  # an overflowing gradient counts as this: a lower bound of its size


def cells(size: str) -> list[dict[str, Any]]:
    s = SIZES[size]
    return [
        {"arm": arm, "sharing": sharing, "init": init, "init_std": std, "n_layers": L, "seed": seed}
        for arm in PLACEMENTS
        for sharing in ("shared", "unshared")
        for init in INITS
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
            f"model.init_scheme={cell.get('init', 'gpt2')}",
            f"run.seed={cell['seed']}",
        ],
    )
    data = prepared_data(cfg)
    model = build_model(cfg, data.tokenizer.vocab_size)
    assert isinstance(model, AlbertGPT)  # the config's arch is transformer
    copy = unshared_copy(model) if cell["sharing"] == "shared" else model
    x, y = probe_batch(data, cfg, cfg.train.batch_size)
    norms = ffn_out_grad_norms(copy, x, y)
    return {"per_layer": [n if math.isfinite(n) else None for n in norms]}


def _value(v: float | None) -> float:
    return math.inf if v is None else v


def exponents(
    results: list[dict[str, Any]],
    arm: str,
    sharing: str,
    std: float,
    init: str = "gpt2",
    capped: bool = False,
) -> list[float]:
    """Per seed: the slope b of log ||dL/dW2 (last layer)|| against log L; with `capped`, a gradient that
    overflowed float32 counts as float32's largest value (a lower bound), else the slope is infinite."""
    out = []
    for seed in sorted({r["seed"] for r in results}):
        pts = sorted(
            (r["n_layers"], _value(r["per_layer"][-1]))
            for r in results
            if (r["arm"], r["sharing"], r["init_std"], r["seed"], r.get("init", "gpt2"))
            == (arm, sharing, std, seed, init)
        )
        if capped:
            pts = [(L, min(g, FLOAT32_MAX)) for L, g in pts]
        if any(not math.isfinite(g) for _, g in pts):
            out.append(math.inf)  # overflowed: the gradient exploded beyond float32
        else:
            out.append(loglog_slope([p[0] for p in pts], [p[1] for p in pts]))
    return out


_METRIC_NAME = "|b|, shared, init std 0.02"
RULE = Rule(
    comparisons=tuple(
        Comparison(f"{_METRIC_NAME}, {init} init", "post-LN", "no norm, bare", "lower", MIN_EFFECT)
        for init in INITS
    ),
    gates=(
        PositiveControl(
            f"the bare no-norm model's |b| is at least {CONTROL} in every seed with the "
            "depth-independent init at std 0.125, shared: the measurement sees a gradient that "
            "explodes or vanishes with depth"
        ),
    ),
    min_seeds=len(SIZES["cpu"]["seeds"]),
    note=(
        "b is the least-squares slope of log ||dLoss/dW2|| of the last layer against log L over L = 2 ... 64 "
        "at initialization, per seed; a gradient that overflowed float32 counts as float32's largest value "
        f"(a lower bound). Minimum effect {MIN_EFFECT:g} in |b| (2x steadier over the depth range). pre-LN, "
        "DeepNorm, no norm + final LN, init std 0.125 and the unshared models are reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    control = [abs(b) for b in exponents(results, "no norm, bare", "shared", 0.125, "normal", capped=True)]
    gate = GateResult(
        bool(control) and min(control) >= CONTROL,
        f"bare model, depth-independent init, std 0.125: |b| {min(control, default=math.nan):.2f} "
        f"to {max(control, default=math.nan):.2f} across seeds (control: {CONTROL:g})",
    )
    pairs = [
        Pairs(
            [abs(b) for b in exponents(results, "post-LN", "shared", 0.02, init, capped=True)],
            [abs(b) for b in exponents(results, "no norm, bare", "shared", 0.02, init, capped=True)],
        )
        for init in INITS
    ]
    return Evidence([gate], pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    stds = sorted({r["init_std"] for r in results})
    inits = [i for i in INITS if any(r.get("init", "gpt2") == i for r in results)]
    rows = [
        [
            arm,
            sharing,
            *[
                _show(mean_interval(exponents(results, arm, sharing, std, init)))
                for init in inits
                for std in stds
            ],
        ]
        for arm in PLACEMENTS
        if any(r["arm"] == arm for r in results)
        for sharing in ("shared", "unshared")
    ]
    table = markdown_table(
        ["arm", "sharing", *[f"b, {init} init, std {std}" for init in inits for std in stds]], rows
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def _show(iv: Any) -> str:
    return "overflow" if not math.isfinite(iv.mean) else str(iv)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    stds = sorted({r["init_std"] for r in results})
    fig, axes = plt.subplots(1, len(stds) + 1, figsize=(4 * (len(stds) + 1), 3.4))
    colours = dict(zip(PLACEMENTS, ("C0", "C1", "C4", "C2", "C3")))
    results = [
        r for r in results if r.get("init", "gpt2") == "normal"
    ] or results  # the depth-independent init
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
    f"every layer's FFN output projection W2 for {', '.join(PLACEMENTS)}, shared (one block applied L times; "
    "the gradient of each application, taken on an unshared copy) and unshared, GPT-2's init (residual "
    "projections scaled by 1/sqrt(2L)) and a depth-independent N(0, std) init, std "
    f"{' / '.join(str(s) for s in SIZES['cpu']['stds'])}, L = {SIZES['cpu']['depths'][0]} ... "
    f"{SIZES['cpu']['depths'][-1]}, {len(SIZES['cpu']['seeds'])} seeds. The figure shows the "
    "depth-independent init.",
    config=CONFIG,
    metric="the exponent b in ||dLoss/dW2 of the last layer|| ~ L^b, fitted per seed over L (least squares "
    "on logs); mean and 95% t interval over seeds in the table ('overflow': a gradient was not finite in "
    "float32).",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
