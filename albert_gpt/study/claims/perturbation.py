"""Claim d: small errors accumulate through depth, and LayerNorm limits that.

A perturbation of relative size 1e-3 is added to the residual stream after layer k; its size is then
measured after every later layer and at the logits, relative to the stream (relative amplification) and
in absolute norm against the injected perturbation's (absolute amplification): a normalized stream keeps
its own norm fixed, so the two can differ. Judged under the ledger's second edition (rules.py).

Shapes: B batch, T tokens, H hidden, V vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
from albert_gpt.modeling.base import CausalLM
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.study.claims.common import (
    ARMS,
    arm_seed_cells,
    eval_loss,
    prepared_data,
    probe_batch,
    runs_where,
    train_model,
    unigram_loss,
)
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

CONFIG = "configs/claims/train.yaml"
ARMS_HERE = ("post-LN", "pre-LN", "no norm + final LN", "no norm, bare")
SEEDS = {"cpu": (1, 2, 3, 4, 5, 6), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
JUDGED = ("post-LN", "no norm + final LN")  # the bare arm stayed on the unigram plateau in the first edition
TRAINED_MARGIN = 0.3  # nats below the unigram loss each judged arm must end, in every seed
MIN_LOG_RATIO = math.log(1.25)  # post-LN's amplification must be at least 25% smaller (or larger) to decide
RELATIVE = 1e-3
INJECT_AT = 1  # after the second layer application (0-based), so 4 of the 6 follow


def propagate(model: CausalLM, idx: torch.Tensor, at: int, relative: float, seed: int = 0) -> dict[str, Any]:
    """Relative size ||h' - h|| / ||h|| after every layer from `at` on, and at the logits, when a random
    perturbation of relative size `relative` is added to the stream after layer `at`; and the absolute
    size ||h' - h|| over the injected perturbation's norm."""
    assert isinstance(model, AlbertGPT)  # the row's models are transformers
    model.eval()
    with torch.no_grad():
        clean, noisy = model.embed(idx), None
        rel, absolute, injected = [], [], math.nan
        for depth, i in enumerate(model.schedule):
            clean = model.blocks[i](clean)
            if noisy is not None:
                noisy = model.blocks[i](noisy)
            if depth == at:
                g = torch.Generator().manual_seed(seed)
                e = torch.randn(clean.shape, generator=g)
                delta = e * (relative * clean.norm() / e.norm())
                injected = float(delta.norm())
                noisy = clean + delta
            if noisy is not None:
                rel.append(float((noisy - clean).norm() / clean.norm()))
                absolute.append(float((noisy - clean).norm()) / injected)
        assert noisy is not None, f"perturbation after layer {at} of {len(model.schedule)}"
        logits = float((model.head(noisy) - model.head(clean)).norm() / model.head(clean).norm())
    return {
        "per_layer": [v if math.isfinite(v) else None for v in rel],
        "absolute_per_layer": [v if math.isfinite(v) else None for v in absolute],
        "logits": logits if math.isfinite(logits) else None,
    }


def cells(size: str) -> list[dict[str, Any]]:
    return arm_seed_cells(ARMS_HERE, SEEDS[size])


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(CONFIG, [*ARMS[cell["arm"]], f"run.seed={cell['seed']}"])
    data = prepared_data(cfg)
    x, _ = probe_batch(data, cfg)
    out: dict[str, Any] = {}

    def at_init(step: int, model: CausalLM) -> None:
        if step == 0:
            out["init"] = propagate(model, x, INJECT_AT, RELATIVE, cell["seed"])
            model.train()

    trained = train_model(cfg, data, on_step=at_init)
    out["trained"] = propagate(trained.model, x, INJECT_AT, RELATIVE, cell["seed"])
    loss = math.inf if trained.diverged else eval_loss(trained.model, data, cfg)
    out["val_loss"] = loss if math.isfinite(loss) else None
    out["unigram_loss"] = unigram_loss(data)
    return out


def amplification(r: dict[str, Any], when: str, where: str) -> float:
    """How much the perturbation grew: relative size at the last layer (or logits) over the injected one;
    `where` "absolute": the last layer's absolute size over the injected perturbation's norm."""
    if where == "absolute":
        if "absolute_per_layer" not in r[when]:
            return math.nan  # measured before the absolute size was kept
        value = r[when]["absolute_per_layer"][-1]
        return math.inf if value is None else value
    value = r[when]["logits"] if where == "logits" else r[when]["per_layer"][-1]
    return math.inf if value is None else value / RELATIVE


_MEASURES = (
    ("relative", "last layer", "log relative amplification"),
    ("absolute", "absolute", "log absolute amplification"),
)
RULE = Rule(
    comparisons=tuple(
        Comparison(
            f"{label} {'at init' if when == 'init' else 'after training'}",
            JUDGED[0],
            JUDGED[1],
            "lower",
            MIN_LOG_RATIO,
        )
        for when in ("init", "trained")
        for _, _, label in _MEASURES
    ),
    gates=tuple(Trained(arm, TRAINED_MARGIN) for arm in JUDGED),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"Amplification at the last of the 6 layer applications, natural log; a minimum effect of "
        f"log 1.25 = {MIN_LOG_RATIO:.3f} (25% less or more). pre-LN and the bare no-norm model are "
        "reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    gates = [trained_gate(arm, runs_where(results, arm=arm), TRAINED_MARGIN) for arm in JUDGED]
    pairs = []
    for when in ("init", "trained"):
        for _, where, _ in _MEASURES:
            a, b = (
                [math.log(amplification(r, when, where)) for r in runs_where(results, arm=arm)]
                for arm in JUDGED
            )
            pairs.append(Pairs(a, b))
    return Evidence(gates, pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    rows = []
    for arm in ARMS_HERE:
        runs = runs_where(results, arm=arm)
        losses = [r["val_loss"] for r in runs if r.get("val_loss") is not None]
        rows.append(
            [
                arm,
                *[
                    str(mean_interval([amplification(r, w, p) for r in runs]))
                    for w in ("init", "trained")
                    for p in ("last layer", "absolute", "logits")
                ],
                str(mean_interval(losses)) if len(losses) == len(runs) else "diverged",
            ]
        )
    table = markdown_table(
        [
            "arm",
            "relative, init",
            "absolute, init",
            "logits, init",
            "relative, trained",
            "absolute, trained",
            "logits, trained",
            "val loss, trained",
        ],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


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
    "model, at initialization and after 300 steps (lr 1e-3), for "
    f"{', '.join(ARMS_HERE)}; {len(SEEDS['cpu'])} seeds.",
    config=CONFIG,
    metric="amplification at the last layer: the perturbation's relative size over "
    f"{RELATIVE:g} (relative), and its norm over the injected perturbation's norm (absolute); the logits' "
    "relative change and each arm's final validation loss are reported.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
