"""Measurements the experiments need beyond training: losses in train vs eval mode (sweep
`post_eval`), and gradient norms at initialization against depth (experiment E1).

Shapes: B batch, T tokens, L layer applications.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import Config
from albert_gpt.model import AlbertGPT

EVAL_SEED = 20_240_601  # windows for post-training measurements; any fixed seed, apart from training's


def _mean_loss(model: AlbertGPT, sampler: Any, batches: int, training: bool, device: torch.device) -> float:
    model.train(training)
    losses = []
    with torch.no_grad():
        for i in range(batches):
            x, y = sampler.batch(i)  # (B, T) each
            losses.append(model(x.to(device), y.to(device))[1].item())
    return statistics.fmean(losses)


def measure_modes(run_dir: Path, batches: int = 8, train_mode: bool = False) -> dict[str, float]:
    """Loss of a run's final weights on train and val windows in eval mode; with `train_mode`,
    the val loss again in train mode (BatchNorm on batch statistics, at the training batch size).

    Both splits use the same number of windows and the same seed, so `generalization_gap`
    (val - train) compares like with like; `mode_gap` is train mode minus eval mode on val.
    """
    from albert_gpt.data.batches import RandomWindowSampler
    from albert_gpt.data.pipeline import prepare_data
    from albert_gpt.runtime import resolve_device
    from albert_gpt.training.checkpoint import load_for_inference

    cfg, model, _ = load_for_inference(run_dir, "latest")
    device = resolve_device(cfg.run)
    model.to(device)
    data = prepare_data(cfg, progress=False)
    T, B = cfg.model.block_size, cfg.train.batch_size

    def sampler(split: str) -> Any:
        return RandomWindowSampler(data.splits[split].tokens, T, B, EVAL_SEED)

    out = {
        "eval_train_loss": _mean_loss(model, sampler("train"), batches, False, device),
        "eval_val_loss": _mean_loss(model, sampler("val"), batches, False, device),
    }
    out["generalization_gap"] = out["eval_val_loss"] - out["eval_train_loss"]
    if train_mode:
        out["val_loss_train_mode"] = _mean_loss(model, sampler("val"), batches, True, device)
        out["mode_gap"] = out["val_loss_train_mode"] - out["eval_val_loss"]
    return out


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
    return [torch.linalg.vector_norm(model.blocks[i].ffn.proj.weight.grad).item() for i in model.schedule]


def unscale_residual_init(model: AlbertGPT) -> None:
    """Redraw the residual output projections with plain N(0, init_std), undoing the model's
    1/sqrt(2N) depth scaling: the depth-independent init that Xiong et al. 2020 analyse."""
    with torch.no_grad():
        for block in model.blocks:
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
                cfg.model, vocab_size=vocab, n_layers=n_layers, norm_placement=placement,
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
                        summed = sum(copy.blocks[i].ffn.proj.weight.grad for i in copy.schedule)
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
