"""The transformer Block: two sub-layers (attention, feed-forward), each with its norm and residual.

Shapes: B batch, T tokens, H hidden. Every tensor a Block traces is (B, T, H).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.layers import CausalSelfAttention, FeedForward, KVCache
from albert_gpt.modeling.norms import BATCH_NORMS, build_norm
from albert_gpt.modeling.wiring import wiring

# trace(point, tensor): told about each tensor at TRACE_POINTS of one layer application.
Trace = Callable[[str, torch.Tensor], None]

# The same points for every placement (each traced when it is computed). Per sub-layer (attn, ffn):
#   residual   what the branch is added to: the stream entering the sub-layer (alpha times it in DeepNorm)
#   norm_in    the norm's input: the stream itself (pre-LN) or residual + branch (post-LN)
#   norm_out   the norm's output
#   branch     the sub-layer's output f(.)
#   stream     the residual stream leaving the sub-layer (post-LN: the norm's output)
class _Points(NamedTuple):
    residual: str
    norm_in: str
    norm_out: str
    branch: str
    stream: str


def sublayer_points(sub: str) -> _Points:
    """The trace point names of one sub-layer (built once per sub-layer kind, not per forward pass)."""
    return _Points(*(f"{sub}_{field}" for field in _Points._fields))


_POINTS = {sub: sublayer_points(sub) for sub in ("attn", "ffn")}
TRACE_POINTS = ("layer_in", *_POINTS["attn"], *_POINTS["ffn"], "layer_out")


def ignore_trace(point: str, tensor: torch.Tensor) -> None:
    """The trace of an untraced forward: nothing is kept, so nothing changes."""


def make_norm(cfg: ModelConfig) -> nn.Module:
    """A block's norm: the configured kind, or the identity when the placement is `none`."""
    return build_norm(cfg) if wiring(cfg).has_norm else nn.Identity()


def masked_norm(norm: nn.Module, valid: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The norm as a function of x; a BatchNorm given the padding mask takes its statistics from real
    tokens only (per-token norms never look at other tokens, so they need no mask)."""
    if valid is not None and isinstance(norm, BATCH_NORMS):
        return functools.partial(norm, valid=valid)
    return norm


class Block(nn.Module):
    """One transformer layer; `model.norm_placement` decides, once, where its two norms sit.

        post      x = LN(x + attn(x))             x = LN(x + ffn(x))
        pre       x = x + attn(LN(x))             x = x + ffn(LN(x))
        deepnorm  x = LN(alpha * x + attn(x))     x = LN(alpha * x + ffn(x))
        none      x = x + attn(x)                 x = x + ffn(x)      (the norms are identities)

    `attn_norm` belongs with attention and `ffn_norm` with the FFN, whichever placement: with
    partial sharing a norm is shared exactly when the sub-layer it sits next to is.
    """

    def __init__(self, cfg: ModelConfig, attn: CausalSelfAttention, attn_norm: nn.Module, ffn: FeedForward,
                 ffn_norm: nn.Module) -> None:
        """The block of the given sub-layers, which sharing.py builds (and shares) for it."""
        super().__init__()
        # The wiring (wiring.py): the norm before the branch or after the residual sum, and the weight of
        # the residual in that sum (DeepNet's alpha keeps post-LN updates bounded).
        w = wiring(cfg)
        self.norm_first, self.alpha = w.norm_first, w.alpha
        self.attn, self.attn_norm, self.ffn, self.ffn_norm = attn, attn_norm, ffn, ffn_norm

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, trace: Trace | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, H) -> (B, T, H). `trace`, when given, sees every TRACE_POINT; it changes nothing.
        `valid` (B, T) marks the real tokens of right-padded batches; only BatchNorm needs it."""
        trace = trace or ignore_trace
        trace("layer_in", x)
        attn_norm, ffn_norm = (masked_norm(n, valid) for n in (self.attn_norm, self.ffn_norm))
        x = self._sublayer("attn", x, functools.partial(self.attn, cache=cache), attn_norm, trace)
        x = self._sublayer("ffn", x, self.ffn, ffn_norm, trace)
        trace("layer_out", x)
        return x

    def _sublayer(self, name: str, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                  norm: Callable[[torch.Tensor], torch.Tensor], trace: Trace) -> torch.Tensor:
        return residual_sublayer(_POINTS[name], x, f, norm, trace, self.norm_first, self.alpha)


def residual_sublayer(point: _Points, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                      norm: Callable[[torch.Tensor], torch.Tensor], trace: Trace, norm_first: bool,
                      alpha: float = 1.0) -> torch.Tensor:
    """One residual sub-layer, wired as its block decided: x + f(N(x)) when `norm_first`, else
    N(alpha * x + f(x)); every tensor of `point` is traced where it is computed."""
    residual = x if alpha == 1.0 else alpha * x
    trace(point.residual, residual)
    if norm_first:  # x + f(LN(x))
        trace(point.norm_in, x)
        h = norm(x)
        trace(point.norm_out, h)
        branch = f(h)
        trace(point.branch, branch)
        out = residual + branch
    else:  # LN(alpha * x + f(x))
        branch = f(x)
        trace(point.branch, branch)
        s = residual + branch
        trace(point.norm_in, s)
        out = norm(s)
        trace(point.norm_out, out)
    trace(point.stream, out)
    return out
