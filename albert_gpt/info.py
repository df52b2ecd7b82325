"""Model size and cost from a config: unique and applied parameters, FLOPs per token.

Counting builds the real model on the meta device (shapes only, no memory, no init cost),
so the counts always describe what training would build.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from albert_gpt.config import Config, ModelConfig
from albert_gpt.errors import ConfigError
from albert_gpt.model import AlbertGPT, padded_vocab_size

CHAR_VOCAB = 256  # char tokenizers map bytes/characters; the real size is known only after training


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


def _block_rows(model: AlbertGPT) -> list[dict[str, Any]]:
    """One row per distinct block, or per distinct sub-layer (with its norm) when sharing is partial."""
    if model.cfg.sharing == "all":
        rows = []
        for i, block in enumerate(model.blocks):
            depths = [d for d, b in enumerate(model.schedule) if b == i]
            rows.append(_row(f"block {i} ({_layers(depths)})", _numel(block), len(depths)))
        return rows
    units: dict[tuple[str, int], list[Any]] = {}  # (kind, id of the sub-layer) -> [modules, depths]
    for depth, i in enumerate(model.schedule):
        block = model.blocks[i]
        for kind, parts in (("attention", (block.attn, block.norm1)), ("ffn", (block.ffn, block.norm2))):
            units.setdefault((kind, id(parts[0])), [list(parts), []])[1].append(depth)
    shared_kind = "attention" if model.cfg.sharing == "attention" else "ffn"
    rows = []
    for key in sorted(units, key=lambda k: (k[0] != shared_kind, units[k][1][0])):
        kind, (parts, depths) = key[0], units[key]
        shared = "shared " if len(depths) > 1 else ""
        rows.append(_row(f"{shared}{kind} + norm ({_layers(depths)})", _numel_all(parts), len(depths)))
    return rows


def count_parameters(model: AlbertGPT) -> dict[str, Any]:
    """Unique parameters, applied parameters (a shared block once per application), breakdown."""
    cfg = model.cfg
    E = cfg.embedding_dim or cfg.n_embd
    rows = [_row(f"token embedding ({model.tok_emb.num_embeddings} x {E})", _numel(model.tok_emb))]
    if model.emb_proj is not None:
        rows.append(_row(f"embedding projection ({E} -> {cfg.n_embd})", _numel(model.emb_proj)))
    rows.append(_row(f"position embedding ({cfg.block_size} x {cfg.n_embd})", _numel(model.pos_emb)))
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


def _meta_model(model_cfg: ModelConfig) -> AlbertGPT:
    with torch.device("meta"):
        return AlbertGPT(model_cfg)


def _flops(model: AlbertGPT, params_applied: int) -> int:
    # nanoGPT/PaLM: 6 FLOPs per applied weight (forward + backward) plus the attention score
    # and value matmuls; position embeddings are a lookup, not a matmul, so they do not count.
    cfg = model.cfg
    n = params_applied - model.pos_emb.weight.numel()
    return 6 * n + 12 * cfg.n_layers * cfg.n_embd * cfg.block_size


def flops_per_token(model_cfg: ModelConfig) -> int:
    """Training FLOPs per token: 6 * N_applied + 12 * n_layers * n_embd * block_size."""
    model = _meta_model(model_cfg)
    return _flops(model, count_parameters(model)["params_applied"])


def resolve_vocab(cfg: Config) -> tuple[int, str | None]:
    """The vocabulary size to count with, and a note when it is not the final one."""
    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size, None
    tok = cfg.tokenizer
    if tok.type == "bpe":
        return tok.vocab_size, "tokenizer.vocab_size, the BPE target (the trained vocabulary can be smaller)"
    if tok.type == "char":
        return CHAR_VOCAB, f"assumed {CHAR_VOCAB} for a char tokenizer (the corpus decides the real size)"
    from tokenizers import Tokenizer

    path = Path(tok.path)
    if not path.is_file():
        raise ConfigError(f"tokenizer.path: file not found: {path}")
    try:
        size = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as exc:  # the tokenizers library raises bare Exceptions for bad files
        raise ConfigError(f"tokenizer.path: cannot read {path} as a tokenizer.json ({exc})") from None
    return size, f"read from {path}"


def model_info(cfg: Config) -> dict[str, Any]:
    """Shape, parameter counts and FLOPs per token of the model `cfg` describes."""
    vocab, note = resolve_vocab(cfg)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab)
    model = _meta_model(model_cfg)
    counts = count_parameters(model)
    return {
        "n_layers": model_cfg.n_layers,
        "n_groups": model_cfg.n_groups,
        "sharing": model_cfg.sharing,
        "n_embd": model_cfg.n_embd,
        "n_heads": model_cfg.n_heads,
        "embedding_dim": model_cfg.embedding_dim or model_cfg.n_embd,
        "block_size": model_cfg.block_size,
        "norm": model_cfg.norm,
        "norm_placement": model_cfg.norm_placement,
        "vocab_size": vocab,
        "vocab_note": note,
        "padded_vocab_size": padded_vocab_size(model_cfg),
        "params_unique": counts["params_unique"],
        "params_applied": counts["params_applied"],
        "flops_per_token": _flops(model, counts["params_applied"]),
        "breakdown": counts["breakdown"],
    }


def format_info(info: dict[str, Any]) -> str:
    """A human-readable summary with the breakdown as an aligned table."""
    vocab = f"{info['vocab_size']:,}"
    if info["padded_vocab_size"] != info["vocab_size"]:
        vocab += f" (table padded to {info['padded_vocab_size']:,})"
    if info["vocab_note"]:
        vocab += f"; {info['vocab_note']}"
    lines = [
        f"model   {info['n_layers']} layers from {info['n_groups']} group(s), sharing {info['sharing']}; "
        f"H {info['n_embd']}, {info['n_heads']} heads, E {info['embedding_dim']}, "
        f"context {info['block_size']}",
        f"norm    {info['norm']}, placement {info['norm_placement']}",
        f"vocab   {vocab}",
        "",
    ]
    table = [("component", "params", "x", "applied")]
    table += [
        (r["component"], f"{r['params']:,}", str(r["applications"]), f"{r['applied']:,}")
        for r in info["breakdown"]
    ]
    table.append(("total", f"{info['params_unique']:,}", "", f"{info['params_applied']:,}"))
    widths = [max(len(row[c]) for row in table) for c in range(4)]
    for n, row in enumerate(table):
        if n == len(table) - 1:
            lines.append("-" * (sum(widths) + 6))
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
        )
    lines += [
        "",
        f"unique parameters   {info['params_unique']:,}",
        f"applied parameters  {info['params_applied']:,}",
        f"FLOPs per token     {info['flops_per_token']:,}  (6 x applied without positions + 12 L H T)",
    ]
    return "\n".join(lines)
