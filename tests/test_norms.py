"""Norm layers against torch.nn.functional references and hand computations.

Shapes: B batch, T tokens, H features.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.norms import AdaptiveLayerNorm, LayerNorm, RMSNorm, SequenceBatchNorm, build_norm

H = 16


def _affine_layernorm(impl: str, eps: float) -> LayerNorm:
    norm = LayerNorm(H, eps=eps, impl=impl)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(H))
        norm.bias.copy_(torch.randn(H))
    return norm


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_layernorm_matches_functional_values_and_gradients(impl, eps):
    """Both LayerNorm paths equal F.layer_norm in value and in input/gamma/beta gradients (fp32)."""
    torch.manual_seed(0)
    norm = _affine_layernorm(impl, eps)
    # Small spread so that a large eps weighs heavily and any misplacement would show.
    x = (0.3 * torch.randn(3, 5, H) + 2.0).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = norm.weight.detach().clone().requires_grad_(True)
    b_ref = norm.bias.detach().clone().requires_grad_(True)
    upstream = torch.randn(3, 5, H)

    (norm(x) * upstream).sum().backward()
    ref = F.layer_norm(x_ref, (H,), w_ref, b_ref, eps)
    (ref * upstream).sum().backward()

    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.weight.grad, w_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.bias.grad, b_ref.grad, atol=1e-5, rtol=1e-5)


def test_layernorm_reference_puts_eps_inside_the_square_root():
    """On a hand-computed row the reference path gives (x - mu) / sqrt(var + eps), not / (sqrt(var) + eps)."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    eps = 0.75
    # mu = 2.5, biased var = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25, var + eps = 2
    expected = torch.tensor([[-1.5, -0.5, 0.5, 1.5]]) / math.sqrt(2.0)
    eps_outside = torch.tensor([[-1.5, -0.5, 0.5, 1.5]]) / (math.sqrt(1.25) + eps)
    got = LayerNorm(4, eps=eps, impl="reference")(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, eps_outside, atol=1e-3)
    torch.testing.assert_close(LayerNorm(4, eps=eps, impl="fused")(x), expected)


def test_layernorm_reference_keeps_low_precision_dtype():
    """The reference path on bf16 input returns bf16 close to the fp32 result."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, H)
    norm = LayerNorm(H, impl="reference")
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.layer_norm(x, (H,)), atol=3e-2, rtol=3e-2)


def test_rmsnorm_matches_hand_formula():
    """RMSNorm = gamma * x / sqrt(mean(x^2) + eps), value and input gradient."""
    torch.manual_seed(0)
    norm = RMSNorm(H, eps=1e-3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(H))
    x = torch.randn(2, 4, H, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    norm(x).sum().backward()
    ref = norm.weight.detach() * x_ref / torch.sqrt(x_ref.pow(2).mean(-1, keepdim=True) + 1e-3)
    ref.sum().backward()
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


def test_sequence_batchnorm_uses_batch_and_time_statistics():
    """In train mode each feature is normalized with the mean/var over all B*T tokens."""
    torch.manual_seed(0)
    norm = SequenceBatchNorm(H, eps=1e-5)
    x = 3 * torch.randn(4, 6, H) + 1
    mean = x.mean(dim=(0, 1))
    var = x.var(dim=(0, 1), unbiased=False)
    torch.testing.assert_close(norm(x), (x - mean) / torch.sqrt(var + 1e-5), atol=1e-5, rtol=1e-5)
    # Independent reference: BatchNorm1d on the (B, H, T) layout it was written for.
    ref = F.batch_norm(x.transpose(1, 2), None, None, training=True, eps=1e-5).transpose(1, 2)
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)


def test_sequence_batchnorm_eval_uses_running_statistics_per_token():
    """In eval mode a token's output does not depend on the other tokens of the batch."""
    torch.manual_seed(0)
    norm = SequenceBatchNorm(H)
    norm(3 * torch.randn(8, 6, H))  # update the running statistics
    norm.eval()
    x = torch.randn(2, 5, H)
    y = x.clone()
    y[1] = 100 * torch.randn(5, H)
    torch.testing.assert_close(norm(x)[0], norm(y)[0])
    expected = (x - norm.bn.running_mean) / torch.sqrt(norm.bn.running_var + norm.bn.eps)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_adaptive_layernorm_starts_as_plain_layernorm():
    """With its zero-initialized modulation, AdaptiveLayerNorm equals LN with gamma=1, beta=0."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, H)
    torch.testing.assert_close(AdaptiveLayerNorm(H)(x), F.layer_norm(x, (H,)), atol=1e-6, rtol=1e-6)


def test_adaptive_layernorm_modulates_per_token():
    """Trained modulation follows n * (1 + s) + b from that token's own LN output only."""
    torch.manual_seed(0)
    norm = AdaptiveLayerNorm(H)
    with torch.no_grad():
        norm.modulation.weight.normal_(0, 0.3)
        norm.modulation.bias.normal_(0, 0.3)
    x = torch.randn(1, 5, H)
    n = F.layer_norm(x, (H,))
    s, b = (n @ norm.modulation.weight.T + norm.modulation.bias).chunk(2, dim=-1)
    torch.testing.assert_close(norm(x), n * (1 + s) + b, atol=1e-5, rtol=1e-5)
    changed = x.clone()
    changed[:, 3:] = torch.randn(1, 2, H)
    torch.testing.assert_close(norm(changed)[:, :3], norm(x)[:, :3])


@pytest.mark.parametrize(
    "norm, cls, params_affine",
    [
        ("layernorm", LayerNorm, 2 * H),
        ("rmsnorm", RMSNorm, H),
        ("batchnorm", SequenceBatchNorm, 2 * H),
        ("adaptive_layernorm", AdaptiveLayerNorm, H * 2 * H + 2 * H),
    ],
)
def test_build_norm_type_and_affine_switch(norm, cls, params_affine):
    """build_norm picks the configured class; norm_affine=false removes gamma/beta (static terms)."""
    cfg = ModelConfig(n_embd=H, n_heads=1, norm=norm)
    with_affine = build_norm(cfg)
    without = build_norm(dataclasses.replace(cfg, norm_affine=False))
    assert isinstance(with_affine, cls) and isinstance(without, cls)
    assert sum(p.numel() for p in with_affine.parameters()) == params_affine
    # Adaptive LN keeps its input-dependent weight matrix; every other norm has none left.
    expected_without = H * 2 * H if norm == "adaptive_layernorm" else 0
    assert sum(p.numel() for p in without.parameters()) == expected_without


def test_build_norm_none_is_identity_and_dim_overrides_width():
    """`norm: none` gives an identity; `dim` overrides n_embd; eps and impl come from the config."""
    cfg = ModelConfig(n_embd=H, n_heads=1)
    assert isinstance(build_norm(dataclasses.replace(cfg, norm="none")), nn.Identity)
    norm = build_norm(dataclasses.replace(cfg, norm_eps=1e-3, norm_impl="reference"), dim=8)
    assert (norm.dim, norm.eps, norm.impl) == (8, 1e-3, "reference")
    assert norm.weight.shape == (8,)


def _bn_model(batch_stats: str, n_layers: int = 3):
    from albert_gpt.config import ModelConfig
    from albert_gpt.modeling.model import AlbertGPT

    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=n_layers, n_groups=1, n_embd=8, n_heads=2, block_size=6, vocab_size=11,
                      norm="batchnorm", batch_stats=batch_stats)
    return AlbertGPT(cfg)


def test_per_depth_batchnorm_keeps_each_applications_statistics():
    """A shared block's BatchNorm applied at 3 depths keeps 3 sets of running statistics, each the
    momentum update of its own depth's input, while gamma and beta are one pair of Parameters."""
    model = _bn_model("per_depth")
    norms = [model.blocks[i].attn_norm for i in model.schedule]
    assert len({id(n) for n in norms}) == 3
    assert len({id(n.bn.weight) for n in norms}) == 1 and len({id(n.bn.bias) for n in norms}) == 1
    assert all(model.blocks[i].attn is model.blocks[0].attn for i in model.schedule)
    seen = []
    handles = [n.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach())) for n in norms]
    idx = torch.randint(0, 11, (4, 6))
    model.train()(idx)
    for h in handles:
        h.remove()
    for norm, x in zip(norms, seen):
        flat = x.reshape(-1, 8)
        torch.testing.assert_close(norm.bn.running_mean, 0.1 * flat.mean(0))
        torch.testing.assert_close(norm.bn.running_var, 0.9 + 0.1 * flat.var(0, unbiased=True))
    assert not torch.allclose(norms[0].bn.running_mean, norms[2].bn.running_mean)
    # unique parameters: gamma and beta counted once although three modules hold them
    shared = _bn_model("shared")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in shared.parameters())


def test_shared_batchnorm_mixes_the_depths_statistics():
    """With batch_stats: shared, one module is applied at every depth: its running mean is three
    momentum updates, one per application, in depth order."""
    model = _bn_model("shared")
    norm = model.blocks[0].attn_norm
    assert len(model.blocks) == 1 and model.schedule == [0, 0, 0]
    seen = []
    handle = norm.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
    model.train()(torch.randint(0, 11, (4, 6)))
    handle.remove()
    expected = torch.zeros(8)
    for x in seen:
        expected = 0.9 * expected + 0.1 * x.reshape(-1, 8).mean(0)
    assert len(seen) == 3
    torch.testing.assert_close(norm.bn.running_mean, expected)


def test_per_depth_batchnorm_round_trips_through_a_checkpoint(tmp_path):
    """The per-depth statistics and the tied gamma / beta survive save and load; eval outputs match."""
    from albert_gpt.checkpoint.weights import load_strict, load_weights, save_weights

    model = _bn_model("per_depth")
    model.train()(torch.randint(0, 11, (4, 6)))
    save_weights(model.state_dict(), tmp_path / "m.safetensors")
    fresh = _bn_model("per_depth")
    load_strict(fresh, load_weights(tmp_path / "m.safetensors"), tmp_path)
    assert fresh.blocks[1].attn_norm.bn.weight is fresh.blocks[0].attn_norm.bn.weight
    idx = torch.randint(0, 11, (2, 6))
    assert torch.equal(fresh.eval()(idx)[0], model.eval()(idx)[0])
