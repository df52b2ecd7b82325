"""E1: gradient norm of the last layer at initialization against depth (after Xiong et al. 2020).

    python scripts/grad_at_init.py configs/experiments/e1_grad_at_init.yaml --out sweeps/e1_grad_at_init

For L in --depths, post-LN and pre-LN, shared and unshared, and two inits (the model as built,
with GPT-2's 1/sqrt(2L) residual-projection scaling, and the unscaled init Xiong et al. analyse),
measures ||dLoss/dW2|| of the last layer's FFN output projection, averaged over --batches
training batches and --seeds initializations. No training. Writes e1.json, e1.md (tables and the
fitted exponent of L) and e1_grad_vs_depth.png to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from albert_gpt.config import load_config
from albert_gpt.errors import AlbertGPTError
from albert_gpt.experiments import fit_depth_exponent, gradients_at_init
from albert_gpt.report import markdown_table
from albert_gpt.runtime import set_threads

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--out", default="sweeps/e1_grad_at_init")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(args.config, args.set)
        set_threads(cfg.run)
        started = time.perf_counter()
        rows = gradients_at_init(cfg, args.depths, seeds=tuple(args.seeds), batches=args.batches)
        wall = time.perf_counter() - started
    except AlbertGPTError as exc:
        print(f"grad_at_init: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "e1.json").write_text(json.dumps({"rows": rows, "wall_time_s": wall}, indent=2), encoding="utf-8")
    text = f"# E1: gradient norm at initialization ({wall:.0f} s)\n\n" + tables(rows, args.depths)
    if plot(rows, args.depths, out / "e1_grad_vs_depth.png"):
        text += "\n![E1](e1_grad_vs_depth.png)\n"
    (out / "e1.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
