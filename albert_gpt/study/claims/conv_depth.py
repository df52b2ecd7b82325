"""Claim j: in a deep convolutional network, activations and gradients grow with depth without
normalization, LayerNorm keeps them bounded, and a perturbation injected at a layer grows less with it.

A 16-block causal convolutional LM, measured at initialization and after training on fixed windows:
the RMS of every block's output, the gradient norm of the loss with respect to it, and the relative
size, at the last block, of a perturbation of relative size 1e-3 added after block INJECT_AT.

Shapes: B batch, T tokens, H channels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
from albert_gpt.study.claims.common import arm_seed_cells, prepared_data, probe_batch, runs_where, train_model
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
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table
from albert_gpt.training.diagnostics import DepthDiagnostics

CONFIG = "configs/claims/conv.yaml"
# One change at a time from the post-LN blocks; the no-norm arm keeps the final LayerNorm before the
# head, so it differs from post-LN only inside the blocks.
ARMS = {
    "no norm + final LN": ["model.norm_placement=none", "model.final_norm=true"],
    "post-LN": ["model.norm_placement=post"],
    "pre-LN": ["model.norm_placement=pre", "model.final_norm=true"],
    # post-LN with DeepNet's residual scale alpha = (2N)^(1/4); beta = (8N)^(-1/4) on the branch under the
    # depth-independent init (PyTorch's default init has no beta)
    "DeepNorm": ["model.norm_placement=deepnorm"],
}
# The first edition ran GPT-2's init, which starts the blocks near the identity (residual projections scaled
# by 1/sqrt(N)) and hides growth with depth: now a depth-independent N(0, 0.02) init, and PyTorch's default
# (fan-in) init, what convolutional networks are usually trained from.
INITS = {"normal": ["model.init_scheme=normal"], "torch default": ["model.init_scheme=torch"]}
SEEDS = {"cpu": (1, 2, 3, 4, 5), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
MIN_DOUBLINGS = 0.5  # a factor of sqrt(2)
CONTROL_DOUBLINGS = 1.0
RELATIVE = 1e-3
INJECT_AT = 3  # after the fourth block (0-based 3): 12 blocks follow


def depth_profile(model: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    """Per block: the output's RMS over tokens and the norm of dLoss/d(output), on one batch."""
    model.zero_grad(set_to_none=True)
    diag = DepthDiagnostics(model)
    _, loss = diag.forward(model, x, y)
    assert loss is not None  # targets were given
    loss.backward()
    scalars = diag.after_backward()
    model.zero_grad(set_to_none=True)
    depths = range(len(model.schedule))
    return {
        "rms": [scalars[f"diag/depth_{d:02d}/layer_out_rms"] for d in depths],
        "grad": [scalars[f"diag/depth_{d:02d}/grad_norm_out"] for d in depths],
    }


def propagate(model: Any, idx: torch.Tensor, at: int, relative: float, seed: int) -> list[float]:
    """Relative size ||h' - h|| / ||h|| after every block from `at` on, when a random perturbation of
    relative size `relative` is added to the stream after block `at`."""
    model.eval()
    with torch.no_grad():
        clean = model.embed_tokens(idx)
        noisy = None
        rel = []
        for depth, i in enumerate(model.schedule):
            clean = model.blocks[i](clean, model.dilations[depth])
            if noisy is not None:
                noisy = model.blocks[i](noisy, model.dilations[depth])
            if depth == at:
                e = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
                noisy = clean + e * (relative * clean.norm() / e.norm())
            if noisy is not None:
                rel.append(float((noisy - clean).norm() / clean.norm()))
    model.train()
    return rel


def _finite(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def cells(size: str) -> list[dict[str, Any]]:
    return [{**c, "init": init} for c in arm_seed_cells(ARMS, SEEDS[size]) for init in INITS]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(CONFIG, [*ARMS[cell["arm"]], *INITS[cell["init"]], f"run.seed={cell['seed']}"])
    data = prepared_data(cfg)
    x, y = probe_batch(data, cfg)
    out: dict[str, Any] = {}

    def snapshot(model: Any) -> dict[str, Any]:
        profile = depth_profile(model, x, y)
        return {
            "rms": _finite(profile["rms"]),
            "grad": _finite(profile["grad"]),
            "perturbation": _finite(propagate(model, x, INJECT_AT, RELATIVE, cell["seed"])),
        }

    def at_init(step: int, model: Any) -> None:
        if step == 0:
            out["at_init"] = snapshot(model)  # not "init": that key names the cell's init scheme

    trained = train_model(cfg, data, on_step=at_init)
    out["trained"] = snapshot(trained.model)
    out["diverged"] = trained.diverged
    return out


def _log2_ratio(values: list[float | None], top: int, bottom: int) -> float:
    a, b = values[top], values[bottom]
    if a is None or b is None or a <= 0 or b <= 0:
        return math.inf
    return abs(math.log2(a / b))


def measures(r: dict[str, Any], when: str) -> dict[str, float]:
    """The three quantities of the rule, in doublings (log2): how far activation RMS moves from the first
    block to the last, how far gradient norms move from the last block back to the first, and how much
    the injected perturbation grows by the last block."""
    snap = r[when]
    last = len(snap["rms"]) - 1
    pert = snap["perturbation"][-1]
    return {
        "activation": _log2_ratio(snap["rms"], last, 0),
        "gradient": _log2_ratio(snap["grad"], 0, last),
        "perturbation": math.log2(pert / RELATIVE) if pert is not None and pert > 0 else math.inf,
    }


LABELS = {
    "activation": "|log2| activation RMS, last / first block",
    "gradient": "|log2| gradient norm, first / last block",
    "perturbation": f"log2 growth of a perturbation from block {INJECT_AT} to the last",
}


RULE = Rule(
    comparisons=tuple(
        Comparison(
            f"{LABELS[k]}, trained, {init} init", "post-LN", "no norm + final LN", "lower", MIN_DOUBLINGS
        )
        for init in INITS
        for k in LABELS
    ),
    gates=(
        PositiveControl(
            f"the measurement sees growth with depth: pre-LN's trained activation RMS changes by at least "
            f"{CONTROL_DOUBLINGS:g} doubling from the first block to the last in every seed under PyTorch's "
            "default init"
        ),
    ),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"Doublings are log2; a minimum effect of {MIN_DOUBLINGS:g} doubling (a factor of sqrt 2); a value "
        "that is not finite (an overflow) leaves its comparison undecided. At initialization, pre-LN and "
        "DeepNorm are reported, not judged."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    control = [
        measures(r, "trained")["activation"] for r in runs_where(results, arm="pre-LN", init="torch default")
    ]
    gate = GateResult(
        bool(control) and min(control) >= CONTROL_DOUBLINGS,
        f"pre-LN, trained, PyTorch's default init: activation change {min(control, default=math.nan):.2f} to "
        f"{max(control, default=math.nan):.2f} doublings across seeds (control: {CONTROL_DOUBLINGS:g})",
    )
    pairs = [
        Pairs(
            [measures(r, "trained")[k] for r in runs_where(results, arm="post-LN", init=init)],
            [measures(r, "trained")[k] for r in runs_where(results, arm="no norm + final LN", init=init)],
        )
        for init in INITS
        for k in LABELS
    ]
    return Evidence([gate], pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    inits = [i for i in dict.fromkeys(r["init"] for r in results)]
    rows = []
    for init in inits:
        for when in ("at_init", "trained"):
            for arm in [a for a in ARMS if runs_where(results, arm=a, init=init)]:
                ms = [measures(r, when) for r in runs_where(results, arm=arm, init=init)]
                rows.append([init, when, arm, *[str(mean_interval([m[k] for m in ms])) for k in LABELS]])
    table = markdown_table(["init", "model", "arm", *LABELS.values()], rows)
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    from albert_gpt.study.claims.plots import error_bars, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = (
        ("rms", 0, "output RMS"),
        ("grad", 0, "||dLoss/d output||"),
        ("perturbation", INJECT_AT, "relative perturbation"),
    )
    for row, init in enumerate(list(dict.fromkeys(r["init"] for r in results))[:2]):
        for i, arm in enumerate(a for a in ARMS if runs_where(results, arm=a, init=init)):
            runs = runs_where(results, arm=arm, init=init)
            for ax, (key, start, label) in zip(axes[row], panels):
                values = [r["trained"][key] for r in runs]
                n = len(values[0])
                intervals = [
                    mean_interval([math.inf if v[d] is None else v[d] for v in values]) for d in range(n)
                ]
                means, err = error_bars(intervals, log_scale=True)
                ax.errorbar(
                    range(start, start + n), means, yerr=err, color=f"C{i}", marker=".", capsize=2, label=arm
                )
                ax.set(yscale="log", xlabel="block", ylabel=label, title=f"{label}, trained, {init} init")
    axes[0][0].legend(fontsize=7)
    save(fig, path)


CLAIM = Claim(
    letter="j",
    name="conv-depth",
    title="In a deep conv LM, LayerNorm keeps activations, gradients and errors from growing with depth",
    sections="4, 4.1",
    statement="Without normalization the activations of deeper convolutional layers grow and gradients "
    "become unstable, and small errors accumulate through depth; LayerNorm keeps activations consistent "
    "across layers and limits that accumulation.",
    experiment="A causal convolutional LM of 16 unshared residual blocks (64 channels, kernel 3, dilations 1 "
    f"2 4 8 repeated), {', '.join(ARMS)} (the no-norm and pre-LN models keep a final LayerNorm before the "
    "head), "
    "from a depth-independent N(0, 0.02) init and from PyTorch's default fan-in init, 300 steps at lr 1e-3, "
    f"{len(SEEDS['cpu'])} seeds; measured at initialization and after training on 8 fixed training windows, "
    f"with a perturbation of relative size {RELATIVE:g} added after block {INJECT_AT}.",
    config=CONFIG,
    metric="in doublings (log2): |change| of the output RMS from the first block to the last; |change| of "
    "the loss gradient norm from the last block back to the first; growth of the injected perturbation "
    "by the last block; on the trained models, paired by seed.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
