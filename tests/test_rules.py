"""The claims ledger's rule engine on planted results: every verdict, the trained gate, the positive
control, Holm's correction, a count metric with zero variance, and the statistics against hand
computations. No test here asserts a measured scientific result."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from scipy import stats

from albert_gpt.study.claims.rules import (
    Comparison,
    Evidence,
    GateResult,
    Pairs,
    PositiveControl,
    Rule,
    Trained,
    holm,
    judge,
    permutation_p,
)

NOISE = np.array([0.010, -0.020, 0.015, -0.005, 0.000])
LOSS = Comparison("final val loss (nats)", "post-LN", "no norm", "lower", min_effect=0.05)


def _pairs(a_mean: float, b_mean: float) -> Pairs:
    return Pairs(list(a_mean + NOISE), list(b_mean - NOISE[::-1]))


def _judge(rule: Rule, *pairs: Pairs, gates: tuple[bool, ...] = ()) -> str:
    results = [GateResult(ok, f"gate {i} {'passed' if ok else 'failed'}") for i, ok in enumerate(gates)]
    evidence = Evidence(results, list(pairs))
    return judge(rule, evidence).verdict


def test_a_clear_effect_in_the_claimed_direction_supports_and_the_other_way_contradicts():
    rule = Rule((LOSS,))
    assert _judge(rule, _pairs(2.0, 2.5)) == "supported"
    assert _judge(rule, _pairs(2.5, 2.0)) == "contradicted"


def test_an_effect_below_its_minimum_is_undecided_however_significant():
    rule = Rule((LOSS,))
    a, b = [2.000, 2.001, 1.999, 2.002, 2.000], [2.030, 2.032, 2.029, 2.031, 2.030]
    judged = judge(rule, Evidence([], [Pairs(a, b)]))
    assert judged.results[0].p < 0.001 and judged.verdict == "undecided"
    assert _judge(rule, Pairs(b, a)) == "undecided"  # symmetric: nor does it contradict


def test_an_effect_shown_smaller_than_its_minimum_contradicts_only_where_the_rule_says_so():
    """The same data (a 0.03-nat effect, 95% interval inside [0.02, 0.04]) is undecided under a plain rule,
    contradicts under one whose denial is 'no meaningful effect'; a wide interval reaching the minimum stays
    undecided, and the mode changes the rule's text (and hash)."""
    a, b = [2.000, 2.001, 1.999, 2.002, 2.000], [2.030, 2.032, 2.029, 2.031, 2.030]
    small = Comparison("val loss", "post-LN", "noisy", "lower", 0.05, smaller_contradicts=True)
    judged = judge(Rule((small,)), Evidence([], [Pairs(a, b)]))
    assert judged.results[0].high < 0.05 and judged.verdict == "contradicted"
    assert _judge(Rule((LOSS,)), Pairs(a, b)) == "undecided"
    wide = [2.0, 2.1, 1.9, 2.05, 1.95]
    assert _judge(Rule((small,)), Pairs(wide, [v + 0.03 for v in wide[::-1]])) == "undecided"
    assert _judge(Rule((small,)), _pairs(2.0, 2.5)) == "supported"
    assert "also contradicts" in Rule((small,)).text() and Rule((small,)).sha256() != Rule((LOSS,)).sha256()
    with pytest.raises(ValueError, match="continuous"):
        Comparison("count", "a", "b", "higher", 1.0, kind="count", smaller_contradicts=True)


def test_noise_alone_is_undecided():
    rule = Rule((LOSS,))
    a = [2.0, 2.6, 1.7, 2.4, 2.1]
    b = [2.3, 2.0, 2.2, 1.9, 2.5]
    assert _judge(rule, Pairs(a, b)) == "undecided"


def test_the_trained_gate_and_the_positive_control_make_a_row_not_testable():
    rule = Rule((LOSS,), gates=(Trained("post-LN", 0.3), PositiveControl("no norm diverges at lr 1e-1")))
    assert _judge(rule, _pairs(2.0, 2.5), gates=(True, True)) == "supported"
    judged = judge(
        rule,
        Evidence(
            [
                GateResult(False, "post-LN 0.1 nats below unigram in seed 3"),
                GateResult(True, "diverged in 5 of 5"),
            ],
            [_pairs(2.0, 2.5)],
        ),
    )
    assert judged.verdict == "not testable here"
    assert "seed 3" in judged.reason and "seed 3" in judged.headline()
    assert _judge(rule, _pairs(2.0, 2.5), gates=(True, False)) == "not testable here"
    assert "0.3 nats below the unigram loss" in rule.text() and "positive control" in rule.text()


def test_mixed_comparisons_are_undecided_and_every_sub_result_is_in_the_headline():
    other = Comparison("final val loss (nats)", "post-LN", "pre-LN", "lower", min_effect=0.05)
    rule = Rule((LOSS, other))
    judged = judge(rule, Evidence([], [_pairs(2.0, 2.5), _pairs(2.5, 2.0)]))
    assert judged.verdict == "undecided" and judged.reason == "1 supports, 1 contradicts"
    assert "post-LN lower than no norm by 0.5" in judged.headline()
    assert "post-LN lower than pre-LN by -0.5" in judged.headline()


def test_holm_matches_a_hand_computation_and_can_turn_a_verdict():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert math.isnan(holm([0.01, math.nan])[1]) and holm([0.01, math.nan])[0] == pytest.approx(0.02)
    # two comparisons each at p ~ 0.03 alone: each would support, together neither does
    a, b = [1.00, 1.02, 0.95, 1.10, 0.99], [1.12, 1.09, 1.13, 1.08, 1.15]
    p_alone = stats.ttest_rel(a, b).pvalue
    assert 0.025 < p_alone < 0.05
    small = Comparison("loss", "x", "y", "lower", min_effect=0.01)
    assert _judge(Rule((small,)), Pairs(a, b)) == "supported"
    twice = Rule((small, Comparison("loss", "x", "z", "lower", min_effect=0.01)))
    assert _judge(twice, Pairs(a, b), Pairs(a, b)) == "undecided"


def test_a_count_with_zero_variance_uses_the_exact_permutation_test():
    widths = Comparison("trainable lr range (decades)", "post-LN", "no norm", "higher", 1.0, kind="count")
    rule = Rule((widths,), min_seeds=6)
    judged = judge(rule, Evidence([], [Pairs([3] * 6, [1] * 6)]))  # +2 in every seed: no variance at all
    assert judged.results[0].p == pytest.approx(2 / 2**6)  # only all-plus and all-minus are as extreme
    assert judged.verdict == "supported" and (judged.results[0].low, judged.results[0].high) == (2.0, 2.0)
    assert judge(rule, Evidence([], [Pairs([1] * 6, [1] * 6)])).verdict == "undecided"
    with pytest.raises(ValueError, match="cannot reach p < 0.05.*at least 6 seeds"):
        Rule((widths,), min_seeds=5)  # 2 / 32 > 0.05: no data could ever decide
    with pytest.raises(ValueError, match="at least 7 seeds"):
        Rule((widths, widths), min_seeds=6)  # Holm: 2 x 2 / 64 > 0.05
    assert Rule((widths, widths), min_seeds=7).min_seeds == 7  # 2 x 2 / 128 < 0.05


def test_the_permutation_p_equals_an_enumeration_of_every_sign_flip():
    effects = np.array([0.5, 1.0, -0.25, 2.0, 0.75, 1.5])
    observed = abs(effects.mean())
    flips = [abs((effects * np.array(signs)).mean()) for signs in product((1, -1), repeat=len(effects))]
    expected = sum(f >= observed - 1e-12 for f in flips) / len(flips)
    assert permutation_p(effects) == pytest.approx(expected)


def test_the_paired_t_test_equals_a_hand_computation():
    a = np.array([2.01, 1.97, 2.05, 2.10, 1.99])
    b = np.array([2.31, 2.20, 2.41, 2.33, 2.29])
    d = b - a
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    p = 2 * stats.t.sf(abs(t), len(d) - 1)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    result = judge(Rule((LOSS,)), Evidence([], [Pairs(list(a), list(b))])).results[0]
    assert result.p == pytest.approx(p) and result.effect == pytest.approx(d.mean())
    assert (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half))


def test_too_few_seeds_or_a_diverged_value_is_undecided_with_the_reason():
    judged = judge(Rule((LOSS,)), Evidence([], [Pairs([2.0, 2.0, 2.0], [2.5, 2.5, 2.5])]))
    assert judged.verdict == "undecided" and "3 seeds, the rule needs 5" in judged.headline()
    judged = judge(Rule((LOSS,)), Evidence([], [Pairs([2.0, 2.0, math.inf, 2.0, 2.0], [2.5] * 5)]))
    assert judged.verdict == "undecided" and "not finite" in judged.headline()


def test_the_rule_text_and_hash_follow_every_parameter():
    base = Rule((LOSS,))
    assert base.sha256() == Rule((LOSS,)).sha256()
    changed = Rule((Comparison(LOSS.metric, LOSS.a, LOSS.b, LOSS.direction, 0.1),))
    assert changed.sha256() != base.sha256() and "at least 0.1" in changed.text()
    assert Rule((LOSS,), min_seeds=6).sha256() != base.sha256()
    assert "paired t test" in base.text() and "post-LN lower than no norm by at least 0.05" in base.text()
    with pytest.raises(ValueError, match="one pair of lists per comparison"):
        judge(base, Evidence([], []))


def _planted_lr_results(trainable: dict[str, int], unigram: float | None = 3.25) -> list[dict]:
    """f1's cells: each arm ends at 2.0 at its first `trainable[arm]` learning rates, 3.2 at the others."""
    from albert_gpt.study.claims import sensitivity

    cells = []
    for arm in sensitivity.LR_ARMS:
        for i, lr in enumerate(sensitivity.LRS):
            for warmup in (True, False):
                for seed in sensitivity.LR_SEEDS["cpu"]:
                    loss = 2.0 + 0.01 * seed * (i == 0) if i < trainable[arm] else 3.2
                    cells.append(
                        {
                            "arm": arm,
                            "lr": lr,
                            "warmup": warmup,
                            "seed": seed,
                            "val_loss": loss,
                            "diverged": False,
                            "unigram_loss": unigram,
                        }
                    )
    return cells


def test_f1_judges_planted_ranges_under_its_rule():
    from albert_gpt.study.claims.sensitivity import LR_CLAIM, lr_width

    wide = {"post-LN": 4, "pre-LN": 4, "no norm + final LN": 2, "no norm, bare": 1}
    results = _planted_lr_results(wide)
    assert lr_width(results, "post-LN", 3, True) == 2.0  # 4 half-decade settings within the margin
    assert LR_CLAIM.verdict_of(results)[0] == "supported"
    narrow = {"post-LN": 1, "pre-LN": 4, "no norm + final LN": 3, "no norm, bare": 3}
    assert LR_CLAIM.verdict_of(_planted_lr_results(narrow))[0] == "contradicted"
    verdict, reason, _ = LR_CLAIM.verdict_of(_planted_lr_results(wide, unigram=2.1))
    assert verdict == "not testable here" and "below the unigram loss" in reason
    saturated = {**wide, "pre-LN": 7}
    verdict, reason, _ = LR_CLAIM.verdict_of(_planted_lr_results(saturated))
    assert verdict == "not testable here" and "pre-LN seed 1" in reason


def test_f2_judges_planted_init_ranges_under_its_rule():
    from albert_gpt.study.claims import sensitivity

    def planted(trainable: dict[str, int]) -> list[dict]:
        return [
            {
                "arm": arm,
                "init_std": std,
                "seed": seed,
                "diverged": False,
                "unigram_loss": 3.25,
                "val_loss": 2.0 + 0.01 * seed * (i == 0) if i < trainable[arm] else 3.2,
            }
            for arm in sensitivity.LR_ARMS
            for i, std in enumerate(sensitivity.INIT_STDS)
            for seed in sensitivity.LR_SEEDS["cpu"]
        ]

    claim = sensitivity.INIT_CLAIM
    assert (
        claim.verdict_of(planted({"post-LN": 5, "pre-LN": 5, "no norm + final LN": 2, "no norm, bare": 1}))[0]
        == "supported"
    )
    assert (
        claim.verdict_of(planted({"post-LN": 1, "pre-LN": 5, "no norm + final LN": 4, "no norm, bare": 4}))[0]
        == "contradicted"
    )
    assert (
        claim.verdict_of(planted({"post-LN": 6, "pre-LN": 6, "no norm + final LN": 6, "no norm, bare": 6}))[0]
        == "not testable here"
    )  # the grid never fails: widths cannot differ


def test_a_bound_is_a_check_on_every_seed_and_stays_out_of_holm():
    from albert_gpt.study.claims.rules import Bound

    bound = Bound("max error", "formula", 1e-5)
    rule = Rule((bound,), min_seeds=3)
    assert judge(rule, Evidence([], [Pairs([1e-7, 2e-6, 9e-6], [])])).verdict == "supported"
    assert judge(rule, Evidence([], [Pairs([1e-3, 2e-2, 1.0], [])])).verdict == "contradicted"
    mixed = judge(rule, Evidence([], [Pairs([1e-7, 1.0, 1e-7], [])]))
    assert (
        mixed.verdict == "undecided"
        and "worst 1.000 across 3 seeds, at most 1e-05 in 2 of them" in mixed.headline()
    )
    assert judge(rule, Evidence([], [Pairs([1e-7, 2e-6], [])])).verdict == "undecided"  # 2 seeds of 3
    at_least = Rule((Bound("gradcheck passed", "formula", 1.0, "at least"),), min_seeds=3)
    assert judge(at_least, Evidence([], [Pairs([1.0, 1.0, 0.0], [])])).verdict == "undecided"
    # with a bound beside one t test, Holm multiplies by 1: the test's p is unchanged
    both = judge(Rule((bound, LOSS)), Evidence([], [Pairs([0.0] * 5, []), _pairs(2.0, 2.5)]))
    assert both.results[1].p_holm == both.results[1].p and both.verdict == "supported"
