"""Counting a model: unique and applied parameters (a shared block once per application) and
training FLOPs per token.

`meta_model` builds the real model on the meta device (shapes only, no memory, no init cost), so
counts from a config always describe what training would build.
"""

from __future__ import annotations

from typing import Any

import torch

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.base import CausalLM
from albert_gpt.modeling.factory import build_model


def _numel(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _numel_all(modules: list[torch.nn.Module]) -> int:
    """Parameters of several modules, a parameter they share counted once."""
    seen = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(seen.values())


def _layers(depths: list[int]) -> str:
    if len(depths) == 1:
        return f"layer {depths[0]}"
    if depths == list(range(depths[0], depths[-1] + 1)):
        return f"layers {depths[0]}-{depths[-1]}"
    return "layers " + ",".join(map(str, depths))


def _row(component: str, params: int, applications: int = 1) -> dict[str, Any]:
    return {
        "component": component,
        "params": params,
        "applications": applications,
        "applied": params * applications,
    }


def _block_rows(model: CausalLM) -> list[dict[str, Any]]:
    """One row per distinct block, or per distinct sub-layer (with its norms) when a block is built per
    depth around shared sub-layers (partial sharing, per-depth norms). A per-depth norm is applied once,
    so a row's applied count is its shared sub-layer's times its applications plus its norms once each."""
    if model.cfg.sharing == "all" and len(model.blocks) == model.cfg.n_groups:
        rows = []
        for i, block in enumerate(model.blocks):
            depths = [d for d, b in enumerate(model.schedule) if b == i]
            rows.append(_row(f"block {i} ({_layers(depths)})", _numel(block), len(depths)))
        return rows
    # (kind, id of the sub-layer) -> [sub-layer, {id: norm}, depths]
    units: dict[tuple[str, int], list[Any]] = {}
    for depth, i in enumerate(model.schedule):
        block = model.blocks[i]
        parts = (("attention", block.attn, block.attn_norm), ("ffn", block.ffn, block.ffn_norm))
        for kind, layer, norm in parts:
            unit = units.setdefault((kind, id(layer)), [layer, {}, []])
            unit[1][id(norm)] = norm
            unit[2].append(depth)
    shared_kind = "ffn" if model.cfg.sharing == "ffn" else "attention"
    rows = []
    for key in sorted(units, key=lambda k: (k[0] != shared_kind, units[k][2][0])):
        kind, (layer, norms, depths) = key[0], units[key]
        shared = "shared " if len(depths) > 1 else ""
        norm_list = list(norms.values())
        per_depth = len(norm_list) > 1
        label = f"{shared}{kind} + {'per-depth norms' if per_depth else 'norm'} ({_layers(depths)})"
        row = _row(label, _numel_all([layer, *norm_list]), len(depths))
        if per_depth:  # each depth's norm is applied once, the sub-layer at every depth
            row["applied"] = _numel(layer) * len(depths) + _numel_all(norm_list)
        rows.append(row)
    return rows


def count_parameters(model: CausalLM) -> dict[str, Any]:
    """Unique parameters, applied parameters (a shared block once per application), breakdown."""
    cfg = model.cfg
    E = cfg.embedding_dim or cfg.n_embd
    rows = [_row(f"token embedding ({model.tok_emb.num_embeddings} x {E})", _numel(model.tok_emb))]
    if model.emb_proj is not None:
        rows.append(_row(f"embedding projection ({E} -> {cfg.n_embd})", _numel(model.emb_proj)))
    pos_emb = getattr(model, "pos_emb", None)  # the transformer's; the conv and LSTM LMs have none
    if pos_emb is not None:
        rows.append(_row(f"position embedding ({cfg.block_size} x {cfg.n_embd})", _numel(pos_emb)))
    rows += _block_rows(model)
    if _numel(model.final_norm):
        rows.append(_row("final norm", _numel(model.final_norm)))
    if model.head_proj is not None:
        rows.append(_row(f"head projection ({cfg.n_embd} -> {E})", _numel(model.head_proj)))
    rows.append(_row("LM head (tied to the token embedding)", 0))
    return {
        "params_unique": sum(p.numel() for p in model.parameters()),
        "params_applied": sum(r["applied"] for r in rows),
        "breakdown": rows,
    }


def meta_model(model_cfg: ModelConfig) -> CausalLM:
    with torch.device("meta"):
        return build_model(model_cfg)


def flops_of(model: CausalLM, params_applied: int) -> int:
    # nanoGPT/PaLM: 6 FLOPs per applied weight (forward + backward) plus, in a transformer, the
    # attention score and value matmuls; position embeddings are a lookup, not a matmul, so they do
    # not count. An LSTM or conv weight is used once per token, so 6 per weight covers them.
    cfg = model.cfg
    pos = getattr(model, "pos_emb", None)
    n = params_applied - (0 if pos is None else pos.weight.numel())
    attention = 12 * cfg.n_layers * cfg.n_embd * cfg.block_size if cfg.arch == "transformer" else 0
    return 6 * n + attention


def flops_per_token(model_cfg: ModelConfig) -> int:
    """Training FLOPs per token: 6 * N_applied + 12 * n_layers * n_embd * block_size."""
    model = meta_model(model_cfg)
    return flops_of(model, count_parameters(model)["params_applied"])
