"""Claim p: normalization stabilizes self-attention (article section 5). Without it, the attention logits
grow with the stream they are computed from and a head's attention can collapse onto one key (entropy near
0); the failure to look for at a high learning rate.

Per layer application, on 8 fixed windows, every CHECK_EVERY steps: the largest attention logit
(|q.k| / sqrt(head size), over heads and causal query-key pairs) and each head's attention entropy (mean
over queries). A run's value: the largest logit and the lowest head entropy seen over training (values after
a non-finite step are not measured).

Shapes: B batch, T tokens, H hidden, nh heads, hs head size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import load_config
from albert_gpt.modeling.base import CausalLM
from albert_gpt.study.claims.common import (
    eval_loss,
    prepared_data,
    probe_batch,
    runs_where,
    train_model,
    transformer_blocks,
    unigram_loss,
)
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
    trained_gate,
)
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table

CONFIG = "configs/claims/train.yaml"
# The project's default init for every arm, as in row o.
ARMS = {
    "post-LN": ["model.norm_placement=post"],
    "pre-LN": ["model.norm_placement=pre"],
    "no norm + final LN": ["model.norm_placement=none", "model.final_norm=true"],
}
N_LAYERS = {"cpu": 24, "gpu": 48}
LRS = {"safe": 1e-3, "high": 1e-2}
SEEDS = {"cpu": (1, 2, 3, 4, 5), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
STEPS = 300
CHECK_EVERY = 50
MIN_LOG_LOGIT = 0.3  # log10: a factor of 2
MIN_ENTROPY = 0.2  # nats
CONTROL_GROWTH = 0.3  # log10: the no-norm arm's largest logit at least doubles over training


def cells(size: str) -> list[dict[str, Any]]:
    return [{"arm": arm, "lr": name, "n_layers": N_LAYERS[size], "seed": s}
            for arm in ARMS for name in LRS for s in SEEDS[size]]


def attention_stats(model: CausalLM, idx: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per layer application: (largest |attention logit|, lowest head entropy in nats) on `idx`, computed
    from the attention's own input and its q/k projection; the model is left as it was."""
    inputs: dict[int, torch.Tensor] = {}
    pre = model.cfg.norm_placement == "pre"

    def tracer(depth: int, point: str, tensor: torch.Tensor) -> None:
        if point == ("attn_norm_out" if pre else "layer_in"):
            inputs[depth] = tensor.detach()

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(idx, tracer=tracer)
            largest, lowest = [], []
            for depth, i in enumerate(model.schedule):
                attn = transformer_blocks(model)[i].attn
                x = inputs[depth]  # (B, T, H)
                B, T, H = x.shape
                q, k, _ = attn.qkv(x).split(H, dim=2)
                q, k = (t.view(B, T, attn.n_heads, -1).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)
                scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, nh, T, T)
                causal = torch.ones(T, T, dtype=torch.bool).tril()
                largest.append(float(scores.abs().masked_fill(~causal, 0.0).amax()))
                p = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
                entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (B, nh, T)
                lowest.append(float(entropy.mean(dim=(0, 2)).min()))
    finally:
        model.train(was)
    return largest, lowest


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(
        CONFIG,
        [
            *ARMS[cell["arm"]],
            f"model.n_layers={cell['n_layers']}",
            "model.n_groups=1",
            f"run.seed={cell['seed']}",
            f"train.max_steps={STEPS}",
            f"train.lr={LRS[cell['lr']]}",
            f"train.min_lr={LRS[cell['lr']] / 10}",
        ],
    )
    data = prepared_data(cfg)
    x, _ = probe_batch(data, cfg)
    checks: list[dict[str, Any]] = []

    def record(step: int, model: CausalLM) -> None:
        if step % CHECK_EVERY == 0:
            largest, lowest = attention_stats(model, x)
            if all(math.isfinite(v) for v in largest + lowest):
                checks.append({"step": step, "max_logit": largest, "min_entropy": lowest})

    trained = train_model(cfg, data, on_step=record)
    final = math.inf if trained.diverged else eval_loss(trained.model, data, cfg)
    return {
        "checks": checks,
        "max_logit": max(max(c["max_logit"]) for c in checks),
        "min_entropy": min(min(c["min_entropy"]) for c in checks),
        "init_max_logit": max(checks[0]["max_logit"]),
        "val_loss": final if math.isfinite(final) else None,
        "diverged": trained.diverged,
        "unigram_loss": unigram_loss(data),
    }


_LOGIT = "largest attention logit over training at lr 1e-2 (log10)"
_ENTROPY = "lowest head entropy over training at lr 1e-2 (nats)"
RULE = Rule(
    comparisons=(
        Comparison(_LOGIT, "post-LN", "no norm + final LN", "lower", MIN_LOG_LOGIT),
        Comparison(_ENTROPY, "post-LN", "no norm + final LN", "higher", MIN_ENTROPY),
    ),
    gates=(
        Trained("post-LN at lr 1e-3"),
        PositiveControl(
            f"without normalization the logits do grow at lr 1e-2: no norm + final LN's largest logit rises "
            f"at least {CONTROL_GROWTH:g} in log10 (2x) above its value at initialization in every seed"
        ),
    ),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"One shared 64-wide, 4-head block applied {N_LAYERS['cpu']} times, the project's default init, "
        f"{STEPS} steps (10% warmup, cosine to a tenth), a safe (1e-3) and a high (1e-2) learning rate; "
        f"statistics every {CHECK_EVERY} steps on 8 fixed windows of 32 characters, over every layer "
        "application and head; a diverged run's values are those measured before it stopped. Judged at the "
        "high learning rate; the safe one and pre-LN are reported. No pilot was run for this row."
    ),
)


def _value(r: dict[str, Any], key: str) -> float:
    return math.log10(r[key]) if key == "max_logit" else r[key]


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    control_runs = runs_where(results, arm="no norm + final LN", lr="high")
    growth = [math.log10(r["max_logit"] / r["init_max_logit"]) for r in control_runs]
    control = GateResult(
        bool(growth) and min(growth) >= CONTROL_GROWTH,
        f"no norm + final LN's largest logit rises {min(growth, default=math.nan):.2f} to "
        f"{max(growth, default=math.nan):.2f} in log10 over training at lr 1e-2 "
        f"(control: {CONTROL_GROWTH:g})",
    )
    trained = trained_gate("post-LN at lr 1e-3", runs_where(results, arm="post-LN", lr="safe"), 0.3)
    pairs = []
    for c, key in zip(RULE.arm_comparisons(), ("max_logit", "min_entropy")):
        a = [_value(r, key) for r in runs_where(results, arm=c.a, lr="high")]
        b = [_value(r, key) for r in runs_where(results, arm=c.b, lr="high")]
        pairs.append(Pairs(a, b))
    return Evidence([trained, control], pairs)


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    rows = []
    for arm in ARMS:
        for name, lr in LRS.items():
            runs = runs_where(results, arm=arm, lr=name)
            if not runs:
                continue
            losses = [math.inf if r["val_loss"] is None else r["val_loss"] for r in runs]
            rows.append([
                arm,
                f"{lr:g}",
                str(mean_interval([math.log10(r["init_max_logit"]) for r in runs])),
                str(mean_interval([math.log10(r["max_logit"]) for r in runs])),
                str(mean_interval([r["min_entropy"] for r in runs])),
                f"{sum(r['min_entropy'] < 0.1 for r in runs)}/{len(runs)}",
                f"{sum(r['diverged'] for r in runs)}/{len(runs)}",
                str(mean_interval(losses)),
            ])
    table = markdown_table(
        ["arm", "lr", "largest logit at init (log10)", "largest logit over training (log10)",
         "lowest head entropy (nats)", "runs with a collapsed head (< 0.1 nats)", "diverged", "val loss"],
        rows,
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    """Per layer application, at the end of training (or the last finite check): largest logit and lowest
    head entropy, mean over seeds, each arm at both learning rates."""
    from albert_gpt.study.claims.plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, arm in enumerate(a for a in ARMS if runs_where(results, arm=a)):
        for name, style in (("safe", "-"), ("high", "--")):
            runs = runs_where(results, arm=arm, lr=name)
            if not runs:
                continue
            for ax, key in ((axes[0], "max_logit"), (axes[1], "min_entropy")):
                per_depth = [r["checks"][-1][key] for r in runs]
                mean = [sum(v) / len(v) for v in zip(*per_depth)]
                ax.plot(range(1, len(mean) + 1), mean, style, color=f"C{i}", label=f"{arm}, lr {LRS[name]:g}")
    axes[0].set(yscale="log", xlabel="layer application", ylabel="largest |attention logit|",
                title="at the end of training (last finite check)")
    axes[1].set(xlabel="layer application", ylabel="lowest head entropy (nats)", title="attention entropy")
    axes[0].legend(fontsize=7)
    save(fig, path)


CLAIM = Claim(
    letter="p",
    name="attention-stability",
    title="Normalization keeps self-attention stable: bounded logits, no entropy collapse",
    sections="5",
    statement="LayerNorm stabilizes self-attention: with it the attention logits stay bounded and no head's "
    "attention collapses onto a single key, where without it they grow and collapse at a high learning rate.",
    experiment=f"One shared block applied {N_LAYERS['cpu']} times: {', '.join(ARMS)}; lr 1e-3 and 1e-2, "
    f"{STEPS} steps, {len(SEEDS['cpu'])} seeds; attention logits and entropies every {CHECK_EVERY} steps.",
    config=CONFIG,
    metric="the largest |q.k|/sqrt(hs) over layer applications, heads and causal pairs, and the lowest "
    "head's mean attention entropy, over training.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
    figure=figure,
)
