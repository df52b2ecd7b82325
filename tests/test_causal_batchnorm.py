"""The causal BatchNorm (model.batch_axes: batch): statistics over the batch at each position, never over
later positions, running statistics per position, ghost batches, padding; checked against torch's own
batch_norm applied position by position, and end to end: in a training-mode forward no logit of a causal
BatchNorm model depends on a later token, while the batch x time BatchNorm's do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from albert_gpt.config import ModelConfig, load_config
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.factory import build_model
from albert_gpt.modeling.norms import CausalBatchNorm

B, T, H = 8, 6, 5


def _by_position(x: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
    """torch's batch_norm on each position's (B, H) slice, updating that position's running statistics."""
    return torch.stack(
        [
            F.batch_norm(x[:, t], rm[t], rv[t], training=True, momentum=0.1, eps=1e-5)
            for t in range(x.size(1))
        ],
        dim=1,
    )


def test_train_mode_matches_torch_batch_norm_at_every_position():
    torch.manual_seed(0)
    x = torch.randn(B, T, H) * 3 + 1
    norm = CausalBatchNorm(H, positions=T + 2).train()
    rm, rv = torch.zeros(T, H), torch.ones(T, H)
    torch.testing.assert_close(norm(x), _by_position(x, rm, rv))
    torch.testing.assert_close(norm.running_mean[:T], rm)
    torch.testing.assert_close(norm.running_var[:T], rv)  # torch keeps the unbiased variance, as here
    assert torch.all(norm.running_mean[T:] == 0)  # positions not seen keep their start
    norm.eval()
    expected = (x - rm) / torch.sqrt(rv + 1e-5)
    torch.testing.assert_close(norm(x), expected)


def test_a_later_position_never_changes_an_earlier_one():
    torch.manual_seed(1)
    x = torch.randn(B, T, H)
    later = x.clone()
    later[:, 3:] += 10 * torch.randn(B, T - 3, H)
    norm = CausalBatchNorm(H, positions=T).train()
    torch.testing.assert_close(norm(x)[:, :3], norm(later)[:, :3])


def test_ghost_batches_normalize_each_group_alone():
    torch.manual_seed(2)
    x = torch.randn(B, T, H)
    grouped = CausalBatchNorm(H, positions=T, group=2).train()(x)
    for k in range(B // 2):
        alone = CausalBatchNorm(H, positions=T).train()(x[2 * k : 2 * k + 2])
        torch.testing.assert_close(grouped[2 * k : 2 * k + 2], alone)
    with pytest.raises(ValueError, match="groups of 3"):
        CausalBatchNorm(H, positions=T, group=3).train()(x)


def test_padding_is_left_out_and_a_lone_token_uses_the_running_statistics():
    torch.manual_seed(3)
    x = torch.randn(3, 4, H)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    norm = CausalBatchNorm(H, positions=4, affine=False).train()
    norm.running_mean[3] = 0.5
    norm.running_var[3] = 4.0
    y = norm(x, valid)
    real = x[:2, 2]  # position 2: two real tokens
    expected = (real - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y[:2, 2], expected)
    torch.testing.assert_close(y[0, 3], (x[0, 3] - 0.5) / torch.sqrt(torch.tensor(4.0) + 1e-5))
    assert torch.all(y[~valid] == 0)
    assert float(norm.running_mean[3, 0]) == 0.5  # no statistics at position 3: nothing to update


def _model(arch: str, axes: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch=arch,
        n_layers=2,
        n_groups=2,
        n_embd=16,
        n_heads=2,
        block_size=T,
        vocab_size=11,
        norm="batchnorm",
        batch_axes=axes,
        **extra,
    )
    return build_model(cfg).train()


@pytest.mark.parametrize("arch", ["transformer", "lstm", "conv"])
def test_causal_batchnorm_models_never_see_a_later_token_in_training(arch):
    """Change the last token of every sequence: with statistics over the batch at each position the
    logits of every earlier position stay as they were; over batch x time they move (the leak)."""
    idx = torch.randint(0, 11, (B, T))
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    for axes, leaks in (("batch", False), ("batch_time", True)):
        model = _model(arch, axes)
        with torch.no_grad():
            before, after = model(idx)[0][:, :-1], model(changed)[0][:, :-1]
        assert (not torch.allclose(before, after, atol=1e-6)) == leaks, (arch, axes)


def test_an_lstm_keeps_running_statistics_for_every_step():
    model = _model("lstm", "batch")
    model(torch.randint(0, 11, (B, T)))
    layer = model.blocks[0]
    for norm in (layer.input_norm, layer.recurrent_norm, layer.cell_norm):
        # every position's statistics moved, not only position 0's (where the recurrent term is 0: h0 = 0)
        assert torch.all((norm.running_var - 1).abs().sum(1) > 0), norm
    model.eval()
    with torch.no_grad():  # generation carries the state past the positions trained: the last one stands in
        logits, states = model.next_logits(torch.randint(0, 11, (2, T)), None)
        for n in range(T + 1, T + 4):
            logits, states = model.next_logits(torch.randint(0, 11, (2, n)), states)
    assert torch.isfinite(logits).all()


def test_per_depth_statistics_in_a_shared_block_share_gamma_and_beta():
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layers=3,
        n_groups=1,
        n_embd=16,
        n_heads=2,
        block_size=T,
        vocab_size=11,
        norm="batchnorm",
        batch_axes="batch",
    )
    model = build_model(cfg)
    norms = [b.attn_norm for b in model.blocks]
    assert len({id(n) for n in norms}) == 3 and len({id(n.weight) for n in norms}) == 1
    model.train()(torch.randint(0, 11, (B, T)))
    assert not torch.allclose(norms[0].running_mean, norms[1].running_mean)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.norm=layernorm", "model.batch_axes=batch"],
            "model.batch_axes applies to model.norm: batchnorm",
        ),
        (["model.norm=batchnorm", "model.batch_group=4"], "with model.batch_axes: batch"),
        (["model.norm=batchnorm", "model.batch_axes=batch", "model.batch_group=1"], "no batch statistics"),
        (
            ["model.norm=batchnorm", "model.batch_axes=batch", "model.batch_group=3", "train.batch_size=8"],
            "must divide train.batch_size",
        ),
        (["model.norm=batchnorm", "model.batch_axes=future"], "model.batch_axes"),
    ],
)
def test_bad_batchnorm_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "small, padded_bn, full_final, verdict",
    [
        (3.2, 3.0, 2.75, "supported"),  # groups of 2 and padding both hurt BatchNorm; LN does not suffer
        (2.60, 2.60, 2.75, "contradicted"),  # BatchNorm at groups of 2 and padded beats LN and its full self
        (2.80, 3.0, 2.75, "undecided"),  # groups of 2 cost nothing: (1) and (2) fail to decide
        (3.2, 3.0, 3.1, "not testable here"),  # the full-batch causal BN never left the plateau
    ],
)
def test_batch_dependence_rule(small, padded_bn, full_final, verdict):
    """Planted validation losses with seed noise that differs between arms, judged under claim h's rule."""
    from albert_gpt.study.claims import batch_dependence as h

    wobble = (0.0, 0.01, -0.012, 0.006, -0.004, 0.008)
    planted = {"LN": 2.75, h.SMALL: small, h.FULL: full_final, "LN, padded": 2.80, h.PADDED_BN: padded_bn}
    results = []
    for k, arm in enumerate(h.ARMS_HERE):
        for seed, w in zip(h.SEEDS["cpu"], wobble[k % 6 :] + wobble[: k % 6]):
            loss = planted.get(arm, 2.9) + w
            results.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "val_loss": loss,
                    "val_loss_train_mode": loss,
                    "unigram_loss": 3.25,
                }
            )
    assert h.CLAIM.verdict_of(results)[0] == verdict
    assert f"| {h.LEAKY} |" in h.analyze(results).table
