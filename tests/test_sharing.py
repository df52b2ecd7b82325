"""ALBERT cross-layer sharing: schedule, object identity, gradients and parameter counts.

Shapes: B batch, T tokens, H hidden, V vocabulary, E token-embedding size.
"""

import pytest
import torch

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.counting import count_parameters
from albert_gpt.modeling.model import AlbertGPT

H, V, T, L = 16, 23, 10, 4


def tiny(**overrides) -> ModelConfig:
    base = dict(n_layers=L, n_embd=H, n_heads=2, block_size=T, vocab_size=V)
    return ModelConfig(**{**base, **overrides})


def test_groups_follow_albert_integer_schedule():
    """Layer i uses group i * n_groups // n_layers; reused blocks are the same object."""
    model = AlbertGPT(tiny(n_layers=6, n_groups=3))
    assert model.schedule == [0, 0, 1, 1, 2, 2]
    assert len(model.blocks) == 3
    shared = AlbertGPT(tiny(n_layers=6, n_groups=1))
    assert shared.schedule == [0] * 6 and len(shared.blocks) == 1
    unshared = AlbertGPT(tiny(n_layers=6, n_groups=6))
    assert unshared.schedule == list(range(6))
    assert len({id(b) for b in unshared.blocks}) == 6


@pytest.mark.parametrize(
    "sharing, shared_parts, own_parts",
    [
        ("attention", ("attn", "attn_norm"), ("ffn", "ffn_norm")),
        ("ffn", ("ffn", "ffn_norm"), ("attn", "attn_norm")),
    ],
)
def test_partial_sharing_shares_one_sublayer_with_its_norm(sharing, shared_parts, own_parts):
    """Within a group the shared sub-layer and its norm are one object; the other sub-layer is per layer."""
    model = AlbertGPT(tiny(sharing=sharing, n_groups=2))
    blocks = [model.blocks[i] for i in model.schedule]
    for part in shared_parts:
        assert getattr(blocks[0], part) is getattr(blocks[1], part)
        assert getattr(blocks[2], part) is getattr(blocks[3], part)
        assert getattr(blocks[1], part) is not getattr(blocks[2], part)
    for part in own_parts:
        assert len({id(getattr(b, part)) for b in blocks}) == L


def _copy_into_unrolled(shared: AlbertGPT, unrolled: AlbertGPT) -> None:
    """Give every unrolled layer the weights that the shared model applies at that depth."""
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("blocks.")}
    for depth, i in enumerate(shared.schedule):
        for k, v in shared.blocks[i].state_dict().items():
            state[f"blocks.{depth}.{k}"] = v
    unrolled.load_state_dict(state)


def _losses(shared: AlbertGPT, unrolled: AlbertGPT) -> None:
    torch.manual_seed(1)
    idx = torch.randint(0, V, (3, T))
    targets = torch.randint(0, V, (3, T))
    loss_shared = shared(idx, targets)[1]
    loss_unrolled = unrolled(idx, targets)[1]
    torch.testing.assert_close(loss_shared, loss_unrolled)
    loss_shared.backward()
    loss_unrolled.backward()


def test_shared_block_gradient_is_sum_of_unrolled_gradients():
    """n_groups=1: the block's gradient equals the sum over an unrolled copy's n_layers block gradients."""
    torch.manual_seed(0)
    shared = AlbertGPT(tiny(n_groups=1))
    unrolled = AlbertGPT(tiny(n_groups=L))
    _copy_into_unrolled(shared, unrolled)
    _losses(shared, unrolled)
    for name, p in shared.blocks[0].named_parameters():
        total = sum(unrolled.blocks[d].get_parameter(name).grad for d in range(L))
        torch.testing.assert_close(p.grad, total, atol=1e-6, rtol=1e-5)
        assert p.grad.abs().sum() > 0
    torch.testing.assert_close(shared.tok_emb.weight.grad, unrolled.tok_emb.weight.grad)


def test_partially_shared_gradients_sum_only_over_the_shared_sublayer():
    """sharing=attention: shared attention grads are sums over layers; per-layer FFN grads are unchanged."""
    torch.manual_seed(0)
    shared = AlbertGPT(tiny(sharing="attention", n_groups=1))
    unrolled = AlbertGPT(tiny(n_groups=L))
    _copy_into_unrolled(shared, unrolled)
    _losses(shared, unrolled)
    for name, p in shared.blocks[0].attn.named_parameters():
        total = sum(unrolled.blocks[d].attn.get_parameter(name).grad for d in range(L))
        torch.testing.assert_close(p.grad, total, atol=1e-6, rtol=1e-5)
    for d in range(L):
        for name, p in shared.blocks[d].ffn.named_parameters():
            torch.testing.assert_close(p.grad, unrolled.blocks[d].ffn.get_parameter(name).grad)


# Hand counts for H = 16, FFN 4H, biases on, LayerNorm with gamma and beta.
ATTN = 3 * H * H + 3 * H + H * H + H  # qkv + output projection
FFN = H * 4 * H + 4 * H + 4 * H * H + H  # up + down projection
LN = 2 * H
BLOCK = ATTN + FFN + 2 * LN
EMB = V * H + T * H  # token table + learned positions (the tied head adds nothing)


@pytest.mark.parametrize(
    "overrides, unique, applied",
    [
        ({"n_groups": 1}, EMB + BLOCK, EMB + L * BLOCK),
        ({"n_groups": 2}, EMB + 2 * BLOCK, EMB + L * BLOCK),
        ({"n_groups": L}, EMB + L * BLOCK, EMB + L * BLOCK),
        ({"sharing": "attention"}, EMB + (ATTN + LN) + L * (FFN + LN), EMB + L * BLOCK),
        ({"sharing": "ffn"}, EMB + L * (ATTN + LN) + (FFN + LN), EMB + L * BLOCK),
        ({"sharing": "ffn", "n_groups": 2}, EMB + L * (ATTN + LN) + 2 * (FFN + LN), EMB + L * BLOCK),
    ],
)
def test_parameter_counts_match_hand_counts(overrides, unique, applied):
    """Unique and applied parameter counts for all / attention / FFN sharing and unshared."""
    model = AlbertGPT(tiny(**overrides))
    counts = count_parameters(model)
    assert counts["params_unique"] == unique
    assert sum(p.numel() for p in model.parameters()) == unique
    assert counts["params_applied"] == applied


def test_factorized_embedding_counts():
    """E < H replaces V*H by V*E + (E*H + H) + (H*E + E); pre-LN adds a final norm."""
    E = 4
    model = AlbertGPT(tiny(embedding_dim=E))
    factorized = V * E + (E * H + H) + (H * E + E) + T * H
    assert count_parameters(model)["params_unique"] == factorized + BLOCK
    pre = AlbertGPT(tiny(embedding_dim=E, norm_placement="pre"))
    assert count_parameters(pre)["params_applied"] == factorized + L * BLOCK + LN
