"""`albert-gpt info`: a config's model size and cost (unique and applied parameters, FLOPs per
token), with the vocabulary size resolved from the tokenizer settings, as a table or JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from albert_gpt.config import Config
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.base import padded_vocab_size
from albert_gpt.modeling.counting import count_parameters, flops_of, meta_model

CHAR_VOCAB = 256  # char tokenizers map bytes/characters; the real size is known only after training


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

    path = Path(tok.path or "")
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
    model_cfg = cfg.model.with_vocab(vocab)
    model = meta_model(model_cfg)
    counts = count_parameters(model)
    return {
        "arch": model_cfg.arch,
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
        "flops_per_token": flops_of(model, counts["params_applied"]),
        "breakdown": counts["breakdown"],
    }


def _flops_formula(arch: str) -> str:
    return "(6 x applied without positions + 12 L H T)" if arch == "transformer" else "(6 x applied)"


def format_info(info: dict[str, Any]) -> str:
    """A human-readable summary with the breakdown as an aligned table."""
    vocab = f"{info['vocab_size']:,}"
    if info["padded_vocab_size"] != info["vocab_size"]:
        vocab += f" (table padded to {info['padded_vocab_size']:,})"
    if info["vocab_note"]:
        vocab += f"; {info['vocab_note']}"
    lines = [
        f"model   {info['arch']}: {info['n_layers']} layers from {info['n_groups']} group(s), sharing "
        f"{info['sharing']}; H {info['n_embd']}, "
        + (f"{info['n_heads']} heads, " if info["arch"] == "transformer" else "")
        + f"E {info['embedding_dim']}, context {info['block_size']}",
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
        f"FLOPs per token     {info['flops_per_token']:,}  " + _flops_formula(info["arch"]),
    ]
    return "\n".join(lines)
