"""The decision rules of the ledger rows on LSTM and convolutional models (i to m), applied to planted
results, and their measurements on tiny models."""

from __future__ import annotations

import pytest
import torch

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.convolution import ConvLM
from albert_gpt.study.claims import adaptive, conv_depth, conv_norms, padded_batchnorm, recurrent

SEEDS = (1, 2, 3)
JITTER = (0.0, 0.01, -0.01)


def _recurrent(ln_reach: int, ln_width: int, plain_width: int, ln_final: float = 2.0) -> list[dict]:
    """Planted LSTM cells over 7 seeds: the LN-LSTM reaches the target (unigram 3.25 - 0.5) at step
    `ln_reach`, the others at step 150; an arm's first `width` learning rates end at `ln_final` (2.0 for
    the others)."""
    out = []
    seeds, jitter = (1, 2, 3, 4, 5, 6, 7), (0.0, 0.01, -0.01, 0.005, -0.004, 0.002, -0.003)
    for arm in recurrent.ARMS:
        width = ln_width if arm == "LN-LSTM" else plain_width
        reach = ln_reach if arm == "LN-LSTM" else 150
        for s, j in zip(seeds, jitter):
            for k, lr in enumerate(recurrent.LRS):
                final = ((ln_final if arm == "LN-LSTM" else 2.0) + j) if k < width else 4.0
                curve = [[step, 2.6 if step >= reach + 25 * (s % 2) else 3.0] for step in range(25, 301, 25)]
                out.append(
                    {
                        "arm": arm,
                        "lr": lr,
                        "seed": s,
                        "val_loss": final,
                        "early_val_loss": 2.5,
                        "diverged": False,
                        "seconds_per_step": 0.01,
                        "curve": curve,
                        "unigram_loss": 3.25,
                    }
                )
    return out


@pytest.mark.parametrize(
    ("reach", "ln_width", "plain_width", "ln_final", "verdict"),
    [
        (50, 4, 2, 2.0, "supported"),
        (250, 2, 4, 2.0, "contradicted"),
        (50, 2, 2, 2.0, "undecided"),  # faster, but the same range
        (50, 4, 2, 3.1, "not testable here"),  # the LN-LSTM never left the plateau
    ],
)
def test_lstm_rule(reach, ln_width, plain_width, ln_final, verdict):
    results = _recurrent(reach, ln_width, plain_width, ln_final)
    assert recurrent.analyze(results).verdict == verdict
    if ln_final == 2.0:
        assert recurrent.trainable_lrs(results, "LN-LSTM", 1) == ln_width
    assert recurrent.steps_to_target(results[0] | {"curve": [[25, 3.0], [50, 2.7], [75, 2.74]]}) == 50
    assert recurrent.steps_to_target(results[0] | {"curve": [[25, 3.0]]}) == 325  # never: a lower bound


def _snapshot(rms_growth: float, grad_growth: float, pert_growth: float) -> dict:
    n = 16
    return {
        "rms": [rms_growth ** (d / (n - 1)) for d in range(n)],
        "grad": [grad_growth ** ((n - 1 - d) / (n - 1)) for d in range(n)],
        "perturbation": [conv_depth.RELATIVE * pert_growth] * (n - conv_depth.INJECT_AT),
    }


def _conv_depth(none_growth: float, post_growth: float, pre_growth: float = 4.0) -> list[dict]:
    """Planted growth factors over the 16 blocks, each arm with its own seed noise."""
    out = []
    growth = {"no norm + final LN": none_growth, "post-LN": post_growth, "pre-LN": pre_growth}
    for init in conv_depth.INITS:
        for k, arm in enumerate(conv_depth.ARMS):
            g = growth.get(arm, 1.0)
            for s, j in zip((1, 2, 3, 4, 5), (0.0, 0.01, -0.01, 0.005, -0.004)):
                snap = _snapshot(g * (1 + j * (1 + k)), g * (1 + j * (1 + k)), g * (1 + j * (1 + k)))
                out.append(
                    {"arm": arm, "init": init, "seed": s, "at_init": snap, "trained": snap, "diverged": False}
                )
    return out


def test_conv_depth_measures_in_doublings():
    snap = {"trained": _snapshot(8.0, 4.0, 2.0)}
    m = conv_depth.measures(snap, "trained")
    assert m == pytest.approx({"activation": 3.0, "gradient": 2.0, "perturbation": 1.0})


@pytest.mark.parametrize(
    ("none", "post", "pre", "verdict"),
    [
        (16.0, 1.1, 4.0, "supported"),
        (1.1, 16.0, 4.0, "contradicted"),
        (1.5, 1.1, 4.0, "undecided"),  # 0.45 doublings apart: below the 0.5 minimum
        (16.0, 1.1, 1.2, "not testable here"),  # the control: pre-LN grew less than one doubling
    ],
)
def test_conv_depth_rule(none, post, pre, verdict):
    assert conv_depth.analyze(_conv_depth(none, post, pre)).verdict == verdict


def test_conv_depth_propagation_is_zero_before_injection_and_measured_after():
    torch.manual_seed(0)
    model = ConvLM(ModelConfig(arch="conv", n_layers=6, n_groups=6, n_embd=16, block_size=8, vocab_size=11))
    x = torch.randint(0, 11, (2, 8))
    rel = conv_depth.propagate(model, x, at=2, relative=1e-3, seed=0)
    assert len(rel) == 4 and rel[0] == pytest.approx(1e-3, rel=1e-4)


CONV_SEEDS = (1, 2, 3, 4, 5)
CONV_JITTER = (0.0, 0.01, -0.01, 0.005, -0.004)


def _conv_norms(instance_delta: float, gn_delta: float) -> list[dict]:
    out = []
    for k, norm in enumerate(conv_norms.NORMS):
        for lr in conv_norms.LRS:
            for s, j in zip(CONV_SEEDS, CONV_JITTER):
                base = 2.0 + j * (1 + k)  # each norm its own seed noise: paired differences vary
                if norm == "instance (causal)":
                    base += instance_delta
                if norm == f"GroupNorm G={conv_norms.DECIDING_GROUPS}":
                    base += gn_delta
                out.append(
                    {
                        "norm": norm,
                        "lr": lr,
                        "seed": s,
                        "val_loss": base,
                        "diverged": False,
                        "unigram_loss": 3.25,
                    }
                )
    return out


@pytest.mark.parametrize(
    ("inst", "gn", "verdict"),
    [(-0.1, -0.1, "supported"), (0.1, 0.2, "contradicted"), (-0.1, 0.1, "undecided")],
)
def test_conv_norms_rule(inst, gn, verdict):
    assert conv_norms.analyze(_conv_norms(inst, gn)).verdict == verdict


def _padded(naive_gap: float, small_gap: float, ln_loss: float = 2.0) -> list[dict]:
    """Planted losses: LN at `ln_loss`, the masked causal BN at 2.0, the naive one `naive_gap` above LN,
    ghost batches of 2 `small_gap` above the masked BN; seed noise differs between arms."""
    out = []
    wobble = (0.0, 0.01, -0.012, 0.006, -0.004, 0.008)
    for arch in padded_batchnorm.ARCHS:
        for k, arm in enumerate(padded_batchnorm.ARMS):
            planted = {
                "LN": ln_loss,
                padded_batchnorm.NAIVE: ln_loss + naive_gap,
                padded_batchnorm.SMALL: 2.0 + small_gap,
            }.get(arm, 2.0)
            for s, w in zip(padded_batchnorm.SEEDS["cpu"], wobble[k:] + wobble[:k]):
                out.append(
                    {
                        "arch": arch,
                        "arm": arm,
                        "seed": s,
                        "val_loss": planted + w,
                        "val_loss_train_mode": planted + w,
                        "future_leak": 0.0,
                        "diverged": False,
                        "unigram_loss": 3.25,
                    }
                )
    return out


@pytest.mark.parametrize(
    ("naive", "small", "ln", "verdict"),
    [
        (0.2, 0.3, 2.0, "supported"),
        (-0.2, -0.3, 2.0, "contradicted"),
        (0.2, 0.0, 2.0, "undecided"),  # ghost batches of 2 cost nothing
        (0.2, 0.3, 3.1, "not testable here"),  # LN never left the plateau
    ],
)
def test_padded_batchnorm_rule(naive, small, ln, verdict):
    results = _padded(naive, small, ln)
    assert padded_batchnorm.CLAIM.verdict_of(results)[0] == verdict
    assert "| LSTM | causal BN, padding masked, groups of 2 |" in padded_batchnorm.analyze(results).table


def test_future_leak_is_zero_for_a_causal_model_and_positive_for_batchnorm():
    torch.manual_seed(0)
    cfg = dict(arch="conv", n_layers=2, n_groups=2, n_embd=16, block_size=8, vocab_size=11)
    x = torch.randint(0, 11, (4, 8))
    assert padded_batchnorm.future_leak(ConvLM(ModelConfig(**cfg, norm="layernorm")), x) == 0.0
    assert padded_batchnorm.future_leak(ConvLM(ModelConfig(**cfg, norm="batchnorm")), x) > 1e-4
    causal = ConvLM(ModelConfig(**cfg, norm="batchnorm", batch_axes="batch"))
    assert padded_batchnorm.future_leak(causal, x) == 0.0


def test_adaptive_table_shows_the_gain_per_added_parameter():
    """0.1 nats for 100 added parameters: 1 nat per 1k; unsharing 0.2 for 4000: 0.05."""
    losses = {
        "shared": 2.2,
        "shared + per-depth LN gain and bias": 2.1,
        "shared + input-conditioned LN": 2.15,
        "unshared": 2.0,
    }
    params = {
        "shared": 1000,
        "shared + per-depth LN gain and bias": 1100,
        "shared + input-conditioned LN": 1500,
        "unshared": 5000,
    }
    results = [
        {
            "arm": arm,
            "seed": s,
            "val_loss": losses[arm] + j,  # the same noise in every arm: exact paired means
            "params": params[arm],
            "diverged": False,
            "unigram_loss": 3.25,
        }
        for arm in adaptive.ARMS
        for s, j in zip(CONV_SEEDS, CONV_JITTER)
    ]
    table = adaptive.analyze(results).table
    assert "| shared + per-depth LN gain and bias | 1,100 | 100 |" in table and "| 1 |" in table
    assert "| 0.05 |" in table
