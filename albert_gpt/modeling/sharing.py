"""ALBERT cross-layer sharing: a list of unique blocks and the schedule that applies them across depth."""

from __future__ import annotations

from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.base import group_of_depth
from albert_gpt.modeling.block import Block, make_norm
from albert_gpt.modeling.layers import CausalSelfAttention, FeedForward
from albert_gpt.modeling.norms import CausalBatchNorm, SequenceBatchNorm


def build_stack(cfg: ModelConfig) -> tuple[nn.ModuleList, list[int]]:
    """The unique blocks and the schedule (block index of each layer application).

    ALBERT's grouping: layer i belongs to group i * n_groups // n_layers. With sharing "all"
    the blocks are the groups. With "attention" or "ffn" every layer gets its own Block whose
    shared sub-layer (with its norm) is the same module object across the group. BatchNorm with
    per-depth statistics in a block applied more than once also gets a Block per layer, and so does a
    shared block whose norms get a gain and bias per depth (`model.norm_per_depth_affine`), below.
    """
    groups = group_of_depth(cfg)
    if per_depth_batch_stats(cfg) or per_depth_affine(cfg):
        return _per_depth_norm_stack(cfg, groups), list(range(cfg.n_layers))
    if cfg.sharing == "all":
        return nn.ModuleList(new_block(cfg) for _ in range(cfg.n_groups)), groups
    if cfg.sharing == "attention":
        attns = [(CausalSelfAttention(cfg), make_norm(cfg)) for _ in range(cfg.n_groups)]
        blocks = [new_block(cfg, attn=attns[g][0], attn_norm=attns[g][1]) for g in groups]
    else:  # "ffn" (the config allows nothing else)
        ffns = [(FeedForward(cfg), make_norm(cfg)) for _ in range(cfg.n_groups)]
        blocks = [new_block(cfg, ffn=ffns[g][0], ffn_norm=ffns[g][1]) for g in groups]
    return nn.ModuleList(blocks), list(range(cfg.n_layers))


def new_block(cfg: ModelConfig, attn: CausalSelfAttention | None = None, attn_norm: nn.Module | None = None,
              ffn: FeedForward | None = None, ffn_norm: nn.Module | None = None) -> Block:
    """A Block of the given (shared) sub-layers, the missing ones built here, in the block's own order
    (attention, its norm, FFN, its norm: the order the init draws them in)."""
    attn = CausalSelfAttention(cfg) if attn is None else attn
    attn_norm = make_norm(cfg) if attn_norm is None else attn_norm
    ffn = FeedForward(cfg) if ffn is None else ffn
    ffn_norm = make_norm(cfg) if ffn_norm is None else ffn_norm
    return Block(cfg, attn, attn_norm, ffn, ffn_norm)


def per_depth_batch_stats(cfg: ModelConfig) -> bool:
    """BatchNorm whose running statistics must be kept per application: some norm is applied at
    several depths (a shared block), and `model.batch_stats` asks for per-depth statistics."""
    return (cfg.norm == "batchnorm" and cfg.norm_placement != "none" and cfg.batch_stats == "per_depth"
            and cfg.n_groups < cfg.n_layers)


def per_depth_affine(cfg: ModelConfig) -> bool:
    """Adaptive normalization: each application of a shared block has its own norm gain and bias."""
    return cfg.norm_per_depth_affine and cfg.norm_placement != "none" and cfg.n_groups < cfg.n_layers


def _per_depth_norm_stack(cfg: ModelConfig, groups: list[int]) -> nn.ModuleList:
    """One Block per layer application. The group's sub-layers are shared as configured. Their norms
    are each application's own: a BatchNorm keeps its own running mean and variance (so evaluation
    normalizes each depth with its own statistics) and shares gamma and beta (the same Parameter
    objects), unless `model.norm_per_depth_affine` gives every application its own gamma and beta too,
    initialized as the shared ones are (ones and zeros)."""
    first: dict[int, Block] = {}
    blocks = []
    for g in groups:
        if g not in first:
            first[g] = new_block(cfg)
            blocks.append(first[g])
            continue
        owner = first[g]
        shared_attn = cfg.sharing in ("all", "attention")
        shared_ffn = cfg.sharing in ("all", "ffn")
        block = new_block(cfg, attn=owner.attn if shared_attn else None,
                          ffn=owner.ffn if shared_ffn else None)
        for name, shared in (("attn_norm", shared_attn), ("ffn_norm", shared_ffn)):
            if shared and not cfg.norm_per_depth_affine:
                _share_affine(getattr(block, name), getattr(owner, name))
            else:
                setattr(block, name, make_norm(cfg))
        blocks.append(block)
    return nn.ModuleList(blocks)


def _share_affine(norm: nn.Module, owner: nn.Module) -> None:
    """Make `norm` use `owner`'s gamma and beta, keeping its own running statistics."""
    if isinstance(norm, CausalBatchNorm) and isinstance(owner, CausalBatchNorm):
        norm.weight, norm.bias = owner.weight, owner.bias
        return
    assert isinstance(norm, SequenceBatchNorm) and isinstance(owner, SequenceBatchNorm)
    norm.bn.weight, norm.bn.bias = owner.bn.weight, owner.bn.bias
