"""Claim a: LayerNorm normalizes each token over its features with mean, variance, eps, gain and bias.

The project's written-out formula (`LayerNorm(impl="reference")`) against torch's fused kernel, and
a finite-difference gradient check of the formula, on random inputs of several shapes and scales.

Shapes: B batch, T tokens, H features.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from albert_gpt.modeling.norms import LayerNorm
from albert_gpt.study.claims.ledger import Analysis, Claim
from albert_gpt.study.claims.rules import Bound, Evidence, Pairs, Rule, judge
from albert_gpt.study.claims.stats import mean_interval
from albert_gpt.study.report import markdown_table

SEEDS = {"cpu": (1, 2, 3, 4, 5), "gpu": (1, 2, 3, 4, 5, 6, 7, 8)}
SHAPES = ((2, 5, 8), (4, 16, 64), (1, 3, 384))
SCALES = (1e-3, 1.0, 1e3)
TOLERANCE = 1e-5  # relative to the output's unit scale: float32 rounding of a normalized value
TESTS = (
    "tests/test_norms.py::test_layernorm_matches_functional_values_and_gradients",
    "tests/test_norms.py::test_layernorm_reference_puts_eps_inside_the_square_root",
    "tests/test_model.py::test_block_matches_transformer_encoder_layer",
)


def cells(size: str) -> list[dict[str, Any]]:
    return [{"seed": s} for s in SEEDS[size]]


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(cell["seed"])
    worst_value, worst_grad = 0.0, 0.0
    for shape in SHAPES:
        for scale in SCALES:
            H = shape[-1]
            x = ((torch.randn(shape, generator=g) + 3 * torch.rand(1, generator=g)) * scale).requires_grad_()
            ours = LayerNorm(H, impl="reference")
            assert ours.weight is not None and ours.bias is not None  # affine by default
            with torch.no_grad():
                ours.weight.copy_(torch.randn(H, generator=g))
                ours.bias.copy_(torch.randn(H, generator=g))
            upstream = torch.randn(shape, generator=g)
            y = ours(x)
            ref = F.layer_norm(x, (H,), ours.weight, ours.bias, ours.eps)
            (gx,) = torch.autograd.grad((y * upstream).sum(), x)
            (rx,) = torch.autograd.grad((ref * upstream).sum(), x)
            worst_value = max(worst_value, float((y - ref).detach().abs().max()))
            worst_grad = max(worst_grad, float((gx - rx).abs().max() / rx.abs().max()))
    x64 = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ln64 = LayerNorm(6, impl="reference").double()
    gradcheck = bool(torch.autograd.gradcheck(ln64, (x64,), eps=1e-6, atol=1e-6))
    return {"max_value_error": worst_value, "max_grad_error": worst_grad, "gradcheck": gradcheck}


RULE = Rule(
    comparisons=(
        Bound("largest absolute output difference from torch", "the formula", TOLERANCE),
        Bound("largest relative input-gradient difference from torch", "the formula", TOLERANCE),
        Bound("float64 finite-difference gradient check passed (1 = yes)", "the formula", 1.0, "at least"),
    ),
    min_seeds=len(SEEDS["cpu"]),
    note=(
        f"Over shapes {SHAPES} at scales {SCALES}; {TOLERANCE:g} is float32 rounding of a normalized value."
    ),
)


def _evidence(results: list[dict[str, Any]]) -> Evidence:
    return Evidence(
        [],
        [
            Pairs([r["max_value_error"] for r in results], []),
            Pairs([r["max_grad_error"] for r in results], []),
            Pairs([float(r["gradcheck"]) for r in results], []),
        ],
    )


def analyze(results: list[dict[str, Any]]) -> Analysis:
    judged = judge(RULE, _evidence(results))
    values = mean_interval([r["max_value_error"] for r in results])
    grads = mean_interval([r["max_grad_error"] for r in results])
    checks = sum(r["gradcheck"] for r in results)
    table = (
        markdown_table(
            ["quantity", "mean [95% CI] over seeds", "worst"],
            [
                [
                    "largest absolute difference, formula against torch.nn.functional.layer_norm",
                    str(values),
                    f"{max(r['max_value_error'] for r in results):.2e}",
                ],
                [
                    "max relative gradient difference",
                    str(grads),
                    f"{max(r['max_grad_error'] for r in results):.2e}",
                ],
                [
                    "finite-difference gradient check (float64) passed",
                    f"{checks} of {len(results)} seeds",
                    "",
                ],
            ],
        )
        + "\n\nThe same properties are unit tests: "
        + ", ".join(f"`{t}`" for t in TESTS)
        + "."
    )
    return Analysis(judged.verdict, judged.reason, judged.headline(), table)


CLAIM = Claim(
    letter="a",
    name="formula",
    title="LayerNorm is per-token mean, variance, eps, gain and bias",
    sections="1, 1.1",
    statement="LayerNorm normalizes each token over its features: subtract the mean, divide by the square "
    "root of the variance plus eps, then scale by a learned gain and shift by a learned bias.",
    experiment=f"The written-out formula (`modeling/norms.py`, `norm_impl: reference`) against "
    f"`torch.nn.functional.layer_norm` with the same gain and bias, on inputs of shapes {SHAPES} "
    f"at scales {SCALES} (with a random offset), random gain and bias; and torch's "
    f"finite-difference gradient check of the formula in float64; {len(SEEDS['cpu'])} seeds.",
    config="configs/claims/base.yaml",
    metric="the largest absolute difference of outputs and the largest relative difference of input "
    "gradients over all shapes and scales.",
    decision=RULE,
    evidence=_evidence,
    cells=cells,
    measure=measure,
    analyze=analyze,
)
