"""Normalization layers, and `build_norm`, which picks one from the model config.

Shapes: B batch, T time (tokens), H features (the normalized dimension).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.errors import ConfigError


class LayerNorm(nn.Module):
    """Layer normalization (Ba et al. 2016) over the last dimension of each token.

    `impl="reference"` runs the formula exactly as written in docs/design.md section 3;
    `impl="fused"` runs torch.nn.functional.layer_norm. A test holds the two equal.
    """

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True, impl: str = "fused") -> None:
        super().__init__()
        if impl not in ("fused", "reference"):
            raise ValueError(f"LayerNorm impl must be fused or reference, got {impl!r}")
        self.dim, self.eps, self.impl = dim, eps, impl
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None  # gamma
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None  # beta

    def reset_parameters(self) -> None:
        if self.weight is not None and self.bias is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "fused":
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        return self.reference(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        # The statistics are taken in at least fp32, as the fused kernel does under autocast:
        # a bf16 mean of squares loses the small variances that matter most here.
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mu = x32.mean(dim=-1, keepdim=True)  # (B, T, 1)
        var = ((x32 - mu) ** 2).mean(dim=-1, keepdim=True)  # biased, (B, T, 1)
        y = (x32 - mu) / torch.sqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:
            y = self.weight * y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}, impl={self.impl}"


class RMSNorm(nn.Module):
    """y = gamma * x / sqrt(mean(x^2) + eps): no centring and no beta (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


class SequenceBatchNorm(nn.Module):
    """BatchNorm over batch x time for (B, T, H) input: one mean/var per feature.

    In train mode the statistics mix every position of every sequence, so a token sees
    (through them) tokens after it: a causal LM trained this way leaks the future. It is
    here as the comparison point the project measures LayerNorm against, not as a
    recommendation. In eval mode it uses running statistics and is causal.
    """

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=affine)

    def reset_parameters(self) -> None:
        self.bn.reset_parameters()

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """`valid` (B, T) marks real tokens of right-padded sequences: in train mode the statistics
        then come from those alone and padding positions output 0 (nothing real attends to them)."""
        flat = x.reshape(-1, x.size(-1))  # (B*T, H)
        if not self.training:
            return self.bn(flat).view_as(x)
        if valid is None:
            return self._train_rows(flat).view_as(x)
        keep = valid.reshape(-1)
        out = flat.new_zeros(flat.shape)
        out[keep] = self._train_rows(flat[keep])
        return out.view_as(x)

    def _train_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Batch statistics of (N, H) rows; with fewer than two rows there are none to take (an LSTM step
        where one sequence is left), so the running statistics stand in."""
        if rows.size(0) >= 2:
            return self.bn(rows)
        bn = self.bn
        return F.batch_norm(rows, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class CausalBatchNorm(nn.Module):
    running_mean: torch.Tensor  # (positions, H) buffers
    running_var: torch.Tensor

    """BatchNorm for (B, T, H) sequences that never looks at a later position: in train mode each
    position takes its mean and variance over the sequences of the batch at that position only (or over
    ghost batches of `group` sequences), and keeps running statistics per position, as Cooijmans et al.
    2016 keep them per time step. Eval mode uses the running statistics of each position (positions
    beyond the last one trained use the last one's).

    `start` is the position of x's first step (an LSTM normalizes one step at a time). A position with
    fewer than two real tokens in a group has no statistics to take; the running ones stand in.
    """

    def __init__(self, dim: int, positions: int, group: int = 0, eps: float = 1e-5, affine: bool = True,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self.group, self.eps, self.momentum = group, eps, momentum
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None
        self.register_buffer("running_mean", torch.zeros(positions, dim))
        self.register_buffer("running_var", torch.ones(positions, dim))

    def reset_parameters(self) -> None:
        if self.weight is not None and self.bias is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        B, T, H = x.shape
        at = torch.arange(start, start + T, device=x.device).clamp(max=self.running_mean.size(0) - 1)
        mean, var = self.running_mean[at], self.running_var[at]  # (T, H)
        if self.training:
            y = self._train(x, valid, at, mean, var)
        else:
            y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:
            y = y * self.weight + self.bias
        return y if valid is None else y * valid[..., None].to(y.dtype)

    def _train(self, x: torch.Tensor, valid: torch.Tensor | None, at: torch.Tensor, run_mean: torch.Tensor,
               run_var: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        g = self.group or B
        if B % g:
            raise ValueError(f"CausalBatchNorm: a batch of {B} sequences does not split into groups of {g}")
        xs = x.reshape(B // g, g, T, H)
        m = (torch.ones(B, T, device=x.device, dtype=x.dtype) if valid is None else valid.to(x.dtype))
        m = m.reshape(B // g, g, T, 1)
        n = m.sum(1)  # (G, T, 1): real tokens per group and position
        mean = (xs * m).sum(1) / n.clamp(min=1)
        var = (((xs - mean[:, None]) ** 2) * m).sum(1) / n.clamp(min=1)  # biased, as BatchNorm normalizes
        has = n >= 2
        mean = torch.where(has, mean, run_mean)
        var = torch.where(has, var, run_var)
        with torch.no_grad():  # running statistics: each position's mean over groups that had statistics
            counted = has.to(x.dtype)
            groups = counted.sum(0)  # (T, 1)
            unbiased = var * n / (n - 1).clamp(min=1)
            seen = groups[:, 0] > 0
            new_mean = (mean * counted).sum(0) / groups.clamp(min=1)
            new_var = (unbiased * counted).sum(0) / groups.clamp(min=1)
            upd = self.momentum * seen[:, None].to(x.dtype)
            self.running_mean[at] = (1 - upd) * self.running_mean[at] + upd * new_mean
            self.running_var[at] = (1 - upd) * self.running_var[at] + upd * new_var
        return ((xs - mean[:, None]) / torch.sqrt(var[:, None] + self.eps)).reshape(B, T, H)

    def extra_repr(self) -> str:
        return (f"{self.weight.numel() if self.weight is not None else self.running_mean.size(1)}, "
                f"positions={self.running_mean.size(0)}, group={self.group or 'batch'}, eps={self.eps}")


BATCH_NORMS = (SequenceBatchNorm, CausalBatchNorm)  # the norms that take statistics across sequences


class AdaptiveLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are computed per token from the normalized token.

    y = n * (1 + s) + b with n = LN(x) (no affine) and [s, b] = W n + c. W and c start at
    zero, so a fresh layer is exactly a plain LayerNorm with gamma = 1, beta = 0. Each token's
    modulation depends on that token alone, which keeps the model causal. `affine=False`
    drops c (the static gamma - 1 and beta); the input-dependent part is what this norm is.
    """

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True, impl: str = "fused") -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps, affine=False, impl=impl)
        self.modulation = nn.Linear(dim, 2 * dim, bias=affine)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.modulation.weight)
        if self.modulation.bias is not None:
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)  # (B, T, H)
        scale, shift = self.modulation(n).chunk(2, dim=-1)  # (B, T, H) each
        return n * (1 + scale) + shift


class _GainAndBias(nn.Module):
    """A norm's learnable per-feature gain (gamma, `weight`) and shift (beta, `bias`), or neither."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def reset_parameters(self) -> None:
        if self.weight is not None and self.bias is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)


class GroupNorm(_GainAndBias):
    """GroupNorm at each position: the H features of a token split into `groups` groups of H / groups,
    each normalized alone (Wu & He 2018, with the spatial extent of one position, which keeps it causal).
    groups = 1 is LayerNorm; a group of one feature has no spread, so groups < H."""

    def __init__(self, dim: int, groups: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(dim, eps, affine)
        if dim % groups:
            raise ValueError(f"GroupNorm: {groups} groups do not divide {dim} features")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.dim)  # (B*T, H): F.group_norm reads (N, C) as N samples of C channels
        return F.group_norm(flat, self.groups, self.weight, self.bias, self.eps).view_as(x)

    def extra_repr(self) -> str:
        return f"{self.dim}, groups={self.groups}, eps={self.eps}, affine={self.weight is not None}"


class CausalInstanceNorm(_GainAndBias):
    """Instance norm made causal: each feature of each sequence is normalized by its mean and variance over
    positions 0..t (a running mean), so no position sees a later one. Position 0 has one sample and no
    spread: its output is beta, whatever the input (the price of causality at the start of a window)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # (B, T, H); running sums in fp32
        count = torch.arange(1, x.size(1) + 1, device=x.device, dtype=torch.float32).view(1, -1, 1)
        mean = x32.cumsum(dim=1) / count
        var = (x32.square().cumsum(dim=1) / count - mean.square()).clamp_min(0.0)  # biased, (B, T, H)
        y = (x32 - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:
            y = self.weight * y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}, causal over positions"


# Every module whose parameters count as "norm parameters" (never weight-decayed).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    LayerNorm, RMSNorm, SequenceBatchNorm, CausalBatchNorm, AdaptiveLayerNorm, GroupNorm, CausalInstanceNorm
)


def reset_norms(model: nn.Module) -> None:
    """Every norm of `model` back to its own default (gains 1, biases 0, fresh running statistics): the
    last step of each family's init."""
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            cast(Any, m).reset_parameters()  # every norm type defines it


def build_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The norm named by `cfg.norm` over `dim` features (default `cfg.n_embd`)."""
    dim = cfg.n_embd if dim is None else dim
    eps, affine = cfg.norm_eps, cfg.norm_affine
    if cfg.norm == "layernorm":
        return LayerNorm(dim, eps, affine, cfg.norm_impl)
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps, affine)
    if cfg.norm == "batchnorm" and cfg.batch_axes == "batch":
        return CausalBatchNorm(dim, cfg.block_size, cfg.batch_group, eps, affine)
    if cfg.norm == "batchnorm":
        return SequenceBatchNorm(dim, eps, affine)
    if cfg.norm == "adaptive_layernorm":
        return AdaptiveLayerNorm(dim, eps, affine, cfg.norm_impl)
    if cfg.norm == "groupnorm":
        return GroupNorm(dim, cfg.norm_groups, eps, affine)
    if cfg.norm == "instancenorm":
        return CausalInstanceNorm(dim, eps, affine)
    if cfg.norm == "none":
        return nn.Identity()
    raise ConfigError(f"model.norm: unknown value {cfg.norm!r}")
