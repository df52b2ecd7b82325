"""ALBERT cross-layer sharing: a list of unique blocks and the schedule that applies them across depth."""

from __future__ import annotations

from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.block import Block, make_norm
from albert_gpt.modeling.layers import CausalSelfAttention, FeedForward


def build_stack(cfg: ModelConfig) -> tuple[nn.ModuleList, list[int]]:
    """The unique blocks and the schedule (block index of each layer application).

    ALBERT's grouping: layer i belongs to group i * n_groups // n_layers. With sharing "all"
    the blocks are the groups. With "attention" or "ffn" every layer gets its own Block whose
    shared sub-layer (with its norm) is the same module object across the group.
    """
    groups = [i * cfg.n_groups // cfg.n_layers for i in range(cfg.n_layers)]
    if cfg.sharing == "all":
        return nn.ModuleList(Block(cfg) for _ in range(cfg.n_groups)), groups
    if cfg.sharing == "attention":
        shared = [(CausalSelfAttention(cfg), make_norm(cfg)) for _ in range(cfg.n_groups)]
        blocks = [Block(cfg, attn=shared[g][0], attn_norm=shared[g][1]) for g in groups]
    else:  # "ffn" (the config allows nothing else)
        shared = [(FeedForward(cfg), make_norm(cfg)) for _ in range(cfg.n_groups)]
        blocks = [Block(cfg, ffn=shared[g][0], ffn_norm=shared[g][1]) for g in groups]
    return nn.ModuleList(blocks), list(range(cfg.n_layers))
