"""The two sub-layers of a block: causal self-attention (with a KV cache) and the FFN.

Shapes: B batch, T new tokens, S cached + new tokens, H hidden, nh heads, hs = H / nh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from albert_gpt.config import ModelConfig


class KVCache:
    """Keys and values of one layer *application* during generation.

    A shared block is applied at several depths, each with its own keys and values, so the
    cache belongs to the depth, not to the module. Storage is allocated on first use (in the
    dtype autocast produced) for `max_len` positions, then filled in place.
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.k: torch.Tensor | None = None  # (B, nh, max_len, hs)
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T, hs) keys/values after the cached ones; return all (B, nh, S, hs)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        if self.k is None or self.v is None:
            shape = (k.size(0), k.size(1), self.max_len, k.size(3))
            self.k = k.new_empty(shape)
            self.v = v.new_empty(shape)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection.

    The fused `qkv` weight is laid out [q; k; v] like nn.MultiheadAttention's in_proj_weight.
    The output includes the residual-branch dropout.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)  # (B, T, H) each
        q, k, v = (t.view(B, T, self.n_heads, H // self.n_heads).transpose(1, 2) for t in (q, k, v))
        mask, causal = None, True  # (B, nh, T, hs) above
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)  # (B, nh, S, hs)
            if past > 0:
                # is_causal aligns the mask to the top-left corner, which is wrong once queries
                # start after cached keys; query i may see keys 0 .. past + i.
                causal = False
                if T > 1:
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        p = self.dropout if self.training else 0.0
        y = _attention(q, k, v, mask, p, causal)
        y = y.transpose(1, 2).contiguous().view(B, T, H)
        return self.resid_dropout(self.proj(y))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               dropout_p: float, causal: bool) -> torch.Tensor:
    """Attention of (B, nh, T, hs) queries over (B, nh, S, hs) keys/values -> (B, nh, T, hs).

    `mask` (T, S) is True where a query may attend; `causal` is a lower triangle from the
    top-left corner (used when S == T). SDPA, except for bf16 on CPU (`_attention_cpu_bf16`).
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return _attention_cpu_bf16(q, k, v, mask, dropout_p, causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


def _attention_cpu_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        dropout_p: float, causal: bool) -> torch.Tensor:
    """Attention written out: bf16 batched matmuls around an fp32 softmax.

    torch's CPU flash-attention backward is about 5x slower in bf16 than in fp32. Written out,
    attention costs the same as fp32 flash in eager mode and lets torch.compile fuse the scale,
    mask and softmax into one kernel: 3-5% faster compiled steps (docs/performance.md).
    """
    T, S = q.size(-2), k.size(-2)
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5)  # (B, nh, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (B, nh, T, hs)


class FeedForward(nn.Module):
    """Linear(H, ffn_mult*H) -> exact GELU -> Linear(ffn_mult*H, H) -> dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.ffn_mult * cfg.n_embd, bias=cfg.bias)
        # Exact erf GELU, as nn.TransformerEncoderLayer(activation="gelu") uses; the tanh
        # approximation would break the equivalence test at 1e-5.
        self.act = nn.GELU()
        self.proj = nn.Linear(cfg.ffn_mult * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))
