"""The causal convolutional language model: token embedding, a stack of residual blocks of dilated
causal 1-D convolutions (in the spirit of WaveNet and ByteNet), and the tied LM head.

Each block is one residual sub-layer wired like the transformer's (`model.norm_placement`):

    post  x = N(x + f(x))      pre  x = x + f(N(x))      none  x = x + f(x)

with f(x) = W_out GELU(causal_conv_d(x)). Layer d dilates by 2 ** (d % conv_dilation_cycle), so the
receptive field doubles across each cycle. Blocks can be shared across depth (model.n_groups); a shared
block keeps one set of weights and takes each depth's dilation at call time.

Every norm but BatchNorm is causal: LayerNorm, RMSNorm and GroupNorm look at one position, the causal
instance norm at positions 0..t. BatchNorm takes its statistics over batch and time, as it is used in
practice, and so leaks later positions into earlier ones at train time (measured in docs/claims.md);
`model.batch_axes: batch` takes them over the batch at each position instead (causal).

Shapes: B batch, T tokens, H channels (= hidden size), k kernel taps.
"""

from __future__ import annotations

import functools
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.base import CausalLM, Tracer, lm_loss, torch_default_init
from albert_gpt.modeling.block import (
    Trace,
    ignore_trace,
    make_norm,
    masked_norm,
    residual_sublayer,
    sublayer_points,
)
from albert_gpt.modeling.norms import build_norm, reset_norms
from albert_gpt.modeling.wiring import needs_final_norm, wiring

_POINTS = sublayer_points("conv")


class CausalConvBranch(nn.Module):
    """f(x) = dropout(W_out GELU(conv(x))), the convolution padded on the left only, so output t reads
    inputs t - (k - 1) * dilation .. t."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H, k = cfg.n_embd, cfg.conv_kernel_size
        self.conv = nn.Conv1d(H, H, k, bias=cfg.bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(H, H, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, dilation: int) -> torch.Tensor:
        """(B, T, H) -> (B, T, H)."""
        left = (self.conv.kernel_size[0] - 1) * dilation
        h = F.pad(x.transpose(1, 2), (left, 0))  # (B, H, left + T)
        h = F.conv1d(h, self.conv.weight, self.conv.bias, dilation=dilation)  # (B, H, T)
        return self.dropout(self.proj(self.act(h.transpose(1, 2))))


class ConvBlock(nn.Module):
    """One residual block: the branch and its norm, wired by `model.norm_placement`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = wiring(cfg)
        self.norm_first, self.alpha = w.norm_first, w.alpha
        self.branch = CausalConvBranch(cfg)
        self.norm = make_norm(cfg)

    def forward(
        self, x: torch.Tensor, dilation: int, trace: Trace | None = None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        trace = trace or ignore_trace
        trace("layer_in", x)
        f = functools.partial(self.branch, dilation=dilation)
        norm = masked_norm(self.norm, valid)
        x = residual_sublayer(_POINTS, x, f, norm, trace, self.norm_first, self.alpha)
        trace("layer_out", x)
        return x


class ConvLM(CausalLM):
    """Embedding -> n_layers residual causal-conv block applications (n_groups distinct) -> tied head.
    It has no position embedding: the convolutions see relative positions within their receptive field."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self._build_embeddings_and_head(cfg)
        self.blocks = nn.ModuleList(ConvBlock(cfg) for _ in range(cfg.n_groups))
        self.dilations = [2 ** (d % cfg.conv_dilation_cycle) for d in range(cfg.n_layers)]
        self.final_norm = build_norm(cfg) if needs_final_norm(cfg) else nn.Identity()
        self.reset_parameters()

    def receptive_field(self) -> int:
        """Tokens that output t can read: t itself and (k - 1) * dilation more per layer."""
        return 1 + (self.cfg.conv_kernel_size - 1) * sum(self.dilations)

    def reset_parameters(self) -> None:
        """GPT-2's init, as the transformer: N(0, init_std) weights, zero biases, each block's output
        projection scaled by 1/sqrt(n_layers) (one residual branch per layer; not scaled with `init_scheme:
        normal`; DeepNorm scales the branch's conv and projection by beta = (8N)^(-1/4)); norms their
        defaults."""
        if self.cfg.init_scheme == "torch":
            torch_default_init(self)
            return
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv1d)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, (nn.Linear, nn.Conv1d)) and m.bias is not None:
                nn.init.zeros_(m.bias)
        w = wiring(self.cfg)
        with torch.no_grad():
            for block in cast(list[ConvBlock], list(self.blocks)):
                # DeepNet's beta on the branch, as on the FFN; unlike the transformer's, also under
                # `init_scheme: normal` (claim j's DeepNorm arm was measured so).
                if w.beta is not None:
                    nn.init.normal_(block.branch.conv.weight, mean=0.0, std=std * w.beta)
                    nn.init.normal_(block.branch.proj.weight, mean=0.0, std=std * w.beta)
                    continue
                nn.init.normal_(block.branch.proj.weight, mean=0.0, std=std * w.branch_scale(self.cfg, 1))
        reset_norms(self)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, tracer: Tracer | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) and, given targets (B, T), the mean cross entropy (ignore_index -1)."""
        if idx.size(1) > self.cfg.block_size:
            raise ValueError(
                f"sequence of {idx.size(1)} tokens exceeds model.block_size ({self.cfg.block_size})"
            )
        x = self.dropout(self.embed_tokens(idx))
        for depth, i in enumerate(self.schedule):
            trace = None if tracer is None else functools.partial(tracer, depth)
            x = self.blocks[i](x, self.dilations[depth], trace, valid)
        logits = self.head(x)
        return logits, (None if targets is None else lm_loss(logits, targets))

    def next_logits(self, idx: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        """The whole cropped context each time: a window of block_size tokens costs little here."""
        logits, _ = self(idx[:, -self.cfg.block_size :])
        return logits[:, -1, :], None
