"""E1: gradient norms at initialization against depth (after Xiong et al. 2020), no training.

For every depth L, post-LN and pre-LN, shared and unshared, and two inits (the model as built,
with GPT-2's 1/sqrt(2L) residual-projection scaling, and the unscaled init Xiong et al. analyse):
||dLoss/dW2|| of every layer's FFN output projection, averaged over training batches and seeds.
`albert-gpt study grad-at-init CONFIG` writes e1.json, e1.md and e1_grad_vs_depth.png.

Shapes: B batch, T tokens, L layer applications.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, cast

import torch

from albert_gpt.config import Config
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.study.report import markdown_table

# ---------------------------------------------------------------- E1: gradients at initialization

def unshared_copy(model: AlbertGPT) -> AlbertGPT:
    """An unshared model computing exactly what `model` computes: every layer gets its own copy
    of the weights its application uses. Its per-layer gradients are then the per-application
    contributions whose sum is the shared model's gradient."""
    cfg = dataclasses.replace(model.cfg, n_groups=model.cfg.n_layers, sharing="all")
    copy = AlbertGPT(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for depth, i in enumerate(model.schedule):
        for key, value in model.blocks[i].state_dict().items():
            state[f"blocks.{depth}.{key}"] = value
    copy.load_state_dict(state)
    return copy


def ffn_out_grad_norms(model: AlbertGPT, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """||dLoss/dW2|| of every layer (W2 = the FFN's output projection), in depth order.

    `model` must be unshared (see `unshared_copy`), so each layer has its own W2.
    """
    model.zero_grad(set_to_none=True)
    model(x, y)[1].backward()
    blocks: list[Any] = list(model.blocks)  # Blocks (an nn.ModuleList types them as Module)
    return [torch.linalg.vector_norm(blocks[i].ffn.proj.weight.grad).item() for i in model.schedule]


def unscale_residual_init(model: AlbertGPT) -> None:
    """Redraw the residual output projections with plain N(0, init_std), undoing the model's
    1/sqrt(2N) depth scaling: the depth-independent init that Xiong et al. 2020 analyse."""
    with torch.no_grad():
        blocks: list[Any] = list(model.blocks)
        for block in blocks:
            for proj in (block.attn.proj, block.ffn.proj):
                proj.weight.normal_(0.0, model.cfg.init_std)


def gradients_at_init(
    cfg: Config,
    depths: list[int],
    placements: tuple[str, ...] = ("post", "pre"),
    inits: tuple[str, ...] = ("model", "unscaled"),
    seeds: tuple[int, ...] = (1, 2),
    batches: int = 3,
) -> list[dict[str, Any]]:
    """Gradient norm of the last layer's W2 at initialization, for every init x placement x
    sharing x depth. `init` "model" is the model as built (GPT-2's depth-scaled residual
    projections); "unscaled" applies `unscale_residual_init`.

    For a shared model the norm is that of the last *application*'s contribution (Xiong et
    al. 2020 bound this per layer); `shared_total` is the norm of the summed gradient the
    optimizer sees. Averaged over `batches` training batches and `seeds` initializations.
    """
    if cfg.model.arch != "transformer":
        raise ConfigError(f"grad-at-init studies transformer blocks; model.arch is {cfg.model.arch}")
    from albert_gpt.data.batches import RandomWindowSampler
    from albert_gpt.data.pipeline import prepare_data

    data = prepare_data(cfg, progress=False)
    vocab = data.tokenizer.vocab_size
    sampler = RandomWindowSampler(data.splits["train"].tokens, cfg.model.block_size, cfg.train.batch_size,
                                  cfg.run.seed)
    rows = []
    for init, placement, sharing in itertools.product(inits, placements, ("shared", "unshared")):
        for n_layers in depths:
            model_cfg = dataclasses.replace(
                cfg.model, vocab_size=vocab, n_layers=n_layers, norm_placement=cast(Any, placement),
                n_groups=1 if sharing == "shared" else n_layers, sharing="all", dropout=0.0,
            )
            last, total, per_layer = [], [], []
            for seed in seeds:
                torch.manual_seed(seed)
                model = AlbertGPT(model_cfg)
                if init == "unscaled":
                    unscale_residual_init(model)
                copy = unshared_copy(model) if sharing == "shared" else model
                for b in range(batches):
                    x, y = sampler.batch(b)  # (B, T) each
                    norms = ffn_out_grad_norms(copy, x, y)
                    last.append(norms[-1])
                    per_layer.append(norms)
                    if sharing == "shared":
                        blocks: list[Any] = list(copy.blocks)
                        summed = sum(blocks[i].ffn.proj.weight.grad for i in copy.schedule)
                        total.append(torch.linalg.vector_norm(summed).item())
            rows.append({
                "init": init, "placement": placement, "sharing": sharing, "n_layers": n_layers,
                "last_w2_grad": statistics.fmean(last), "last_w2_grad_std": statistics.pstdev(last),
                "shared_total_w2_grad": statistics.fmean(total) if total else None,
                "per_layer_w2_grad": [statistics.fmean(col) for col in zip(*per_layer)],
            })
    return rows


def fit_depth_exponent(rows: list[dict[str, Any]], init: str, placement: str, sharing: str) -> float:
    """Slope of log(last-layer gradient norm) against log(L): 0 = flat, -0.5 = 1/sqrt(L)."""
    pts = [(math.log(r["n_layers"]), math.log(r["last_w2_grad"])) for r in rows
           if (r["init"], r["placement"], r["sharing"]) == (init, placement, sharing)]
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


# ---------------------------------------------------------------- tables, figure, files

INIT_TITLES = {
    "model": "init as built (residual projections / sqrt(2L))",
    "unscaled": "unscaled init (Xiong)",
}


def _select(rows: list[dict[str, Any]], init: str, placement: str, sharing: str) -> dict[int, dict[str, Any]]:
    """n_layers -> row, for one init x placement x sharing."""
    key = (init, placement, sharing)
    return {r["n_layers"]: r for r in rows if (r["init"], r["placement"], r["sharing"]) == key}


def tables(rows: list[dict[str, Any]], depths: list[int]) -> str:
    """Last-layer gradient norm per depth, and the slope of log(norm) against log(L)."""
    lines = []
    for init in dict.fromkeys(r["init"] for r in rows):
        table = []
        for placement in dict.fromkeys(r["placement"] for r in rows):
            for sharing in ("shared", "unshared"):
                sel = _select(rows, init, placement, sharing)
                slope = fit_depth_exponent(rows, init, placement, sharing)
                table.append([f"{placement}-LN", sharing] + [sel[L]["last_w2_grad"] for L in depths]
                             + [f"{slope:+.2f}"])
        headers = ["placement", "sharing"] + [f"L={L}" for L in depths] + ["slope"]
        lines += [f"### {INIT_TITLES[init]}", "", markdown_table(headers, table), ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], depths: list[int], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    inits = list(dict.fromkeys(r["init"] for r in rows))
    fig, axs = plt.subplots(1, len(inits) + 1, figsize=(4.2 * (len(inits) + 1), 3.3))
    styles = {("post", "shared"): ("C0", "-"), ("post", "unshared"): ("C0", "--"),
              ("pre", "shared"): ("C1", "-"), ("pre", "unshared"): ("C1", "--")}
    for ax, init in zip(axs, inits):
        for (placement, sharing), (colour, ls) in styles.items():
            sel = sorted((L, r["last_w2_grad"]) for L, r in _select(rows, init, placement, sharing).items())
            if sel:
                ax.plot(*zip(*sel), color=colour, ls=ls, marker="o", ms=3, label=f"{placement}-LN {sharing}")
        first = _select(rows, init, "pre", "unshared")[depths[0]]["last_w2_grad"]
        reference = [first * (depths[0] / L) ** 0.5 for L in depths]
        ax.plot(depths, reference, color="grey", ls=":", label="1/sqrt(L)")
        ax.set(xscale="log", yscale="log", title=INIT_TITLES[init], xlabel="L (layer applications)")
        ax.set_xticks(depths, [str(L) for L in depths])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=7)
    axs[0].set_ylabel("||dLoss/dW2|| of the last layer", fontsize=8)
    axs[0].legend(fontsize=6)
    ax = axs[-1]
    deepest = max(depths)
    for init, ls in zip(inits, ("-", "--")):
        for placement, colour in (("post", "C0"), ("pre", "C1")):
            r = _select(rows, init, placement, "unshared")[deepest]
            ax.plot(range(1, deepest + 1), r["per_layer_w2_grad"], color=colour, ls=ls,
                    label=f"{placement}-LN, {init} init")
    ax.set(yscale="log", title=f"every layer, L={deepest}, unshared", xlabel="layer")
    ax.title.set_fontsize(8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return True

def run_grad_at_init(cfg: Config, out: Path, depths: list[int], seeds: tuple[int, ...] = (1, 2),
                     batches: int = 3) -> Path:
    """Measure, then write e1.json, e1.md (tables and fitted exponents) and e1_grad_vs_depth.png
    under `out`; returns the path of e1.md."""
    started = time.perf_counter()
    rows = gradients_at_init(cfg, depths, seeds=seeds, batches=batches)
    wall = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "e1.json").write_text(json.dumps({"rows": rows, "wall_time_s": wall}, indent=2), encoding="utf-8")
    text = f"# E1: gradient norm at initialization ({wall:.0f} s)\n\n" + tables(rows, depths)
    if plot(rows, depths, out / "e1_grad_vs_depth.png"):
        text += "\n![E1](e1_grad_vs_depth.png)\n"
    (out / "e1.md").write_text(text, encoding="utf-8")
    return out / "e1.md"
