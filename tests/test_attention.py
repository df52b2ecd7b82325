"""Attention paths: bf16 on CPU is written out (matmuls + fp32 softmax) and must match SDPA in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.layers import _attention
from albert_gpt.modeling.model import AlbertGPT

B, NH, T, HS = 2, 3, 8, 16


def _qkv(s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 queries (B, nh, T, hs) and keys/values (B, nh, S, hs), requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, NH, T, HS, generator=gen)
    k, v = (torch.randn(B, NH, s, HS, generator=gen) for _ in range(2))
    return tuple(t.requires_grad_() for t in (q, k, v))


CASES = {
    "causal": (T, None, True),
    # queries after 5 cached positions: query i sees keys 0 .. 5 + i, as KVCache builds it
    "cached prefix mask": (T + 5, torch.ones(T, T + 5, dtype=torch.bool).tril(diagonal=5), False),
    "no mask": (T, None, False),
}


@pytest.mark.parametrize("case", CASES)
def test_cpu_bf16_attention_matches_float32_sdpa(case):
    """Values and gradients within bf16 rounding of SDPA on the same inputs in fp32."""
    s, mask, causal = CASES[case]
    q, k, v = _qkv(s)
    grad_out = torch.randn(B, NH, T, HS, generator=torch.Generator().manual_seed(1))

    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)

    q16, k16, v16 = (t.detach().to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _attention(q16, k16, v16, mask, 0.0, causal)
    grads = torch.autograd.grad(y, (q16, k16, v16), grad_out.to(torch.bfloat16))

    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=0.03, atol=0.03)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


def test_cpu_bf16_causal_attention_ignores_future_keys():
    """Changing keys and values after position t leaves the first t + 1 outputs exactly as they were."""
    q, k, v = (t.detach().to(torch.bfloat16) for t in _qkv(T))
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 3.0
    v2[:, :, 4:] -= 3.0
    y1 = _attention(q, k, v, None, 0.0, True)
    y2 = _attention(q, k2, v2, None, 0.0, True)
    assert torch.equal(y1[:, :, :4], y2[:, :, :4])
    assert not torch.equal(y1[:, :, 4:], y2[:, :, 4:])


def test_cpu_bf16_attention_dropout_drops_attention_weights():
    """dropout_p applies to the attention weights: p=0.5 changes the output, and only on the kept scale."""
    q, k, v = (t.detach().to(torch.bfloat16) for t in _qkv(T))
    kept = _attention(q, k, v, None, 0.0, True)
    torch.manual_seed(0)
    dropped = _attention(q, k, v, None, 0.5, True)
    assert not torch.allclose(dropped.float(), kept.float(), atol=1e-2)
    # The first query attends only to key 0, so its output is v[0] kept (x2) or zeroed.
    first, v0 = dropped[:, :, 0].float(), v[:, :, 0].float()
    zeroed = first.abs().amax(dim=-1) == 0
    torch.testing.assert_close(first[~zeroed], 2 * v0[~zeroed], rtol=1e-2, atol=1e-2)


def test_training_forward_compiles_to_one_graph():
    """No graph breaks in the forward + loss (they would split torch.compile's graph and its fusions)."""
    cfg = ModelConfig(vocab_size=50, n_layers=3, n_embd=32, n_heads=2, block_size=16, n_groups=1)
    model = AlbertGPT(cfg)
    idx = torch.randint(0, 50, (2, 16))
    for dtype in (torch.float32, torch.bfloat16):
        torch._dynamo.reset()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            explained = torch._dynamo.explain(model)(idx, idx)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
