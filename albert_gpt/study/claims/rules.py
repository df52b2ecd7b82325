"""Decision rules as data: one typed object both renders the rule's sentence and computes the verdict, so
a rule exists once, and its text (with a hash) can be committed before any run and checked after.

A rule has gates and comparisons:

- a gate must pass for the row to decide at all: `Trained` (the reference arm ends clearly below the
  unigram loss in every seed) or `PositiveControl` (the failure the claim speaks of can be seen in a
  setting built to show it). A failed gate makes the row "not testable here".
- a comparison pairs two arms seed by seed on one metric; the claim says in which direction they differ
  and by how much at least (`min_effect`). Continuous metrics are tested with scipy's paired t test,
  counts and widths (integers, often with ties or no variance) with scipy's exact paired permutation
  test; where several comparisons decide, their p-values are Holm-corrected.

A comparison *supports* when its corrected p < alpha and the mean effect in the claimed direction is at
least `min_effect`; it *contradicts* when the corrected p < alpha and the mean effect is at least
`min_effect` the other way; otherwise it is *undecided*. A comparison marked `smaller_contradicts` also
contradicts when the effect is shown smaller than its minimum (95% interval entirely below it): for claims
whose denial is "no meaningful effect" rather than "the opposite effect". The verdict is symmetric:
"supported" when every deciding comparison supports, "contradicted" when every one contradicts, else
"undecided".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

VERDICTS = ("supported", "contradicted", "undecided", "not testable here")
Direction = Literal["lower", "higher"]
Kind = Literal["continuous", "count"]
ALPHA = 0.05


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError as exc:  # an optional extra: only the ledger's judgements need it
        from albert_gpt.errors import ConfigError

        raise ConfigError("the claims ledger's statistics need scipy: pip install -e '.[study]'") from exc
    return stats


# ---------------------------------------------------------------- the vocabulary


@dataclass(frozen=True)
class Trained:
    """Gate: `arm` ends at least `margin` nats below the unigram loss in every seed."""

    arm: str
    margin: float = 0.3

    def text(self) -> str:
        return f"{self.arm} ends at least {self.margin:g} nats below the unigram loss in every seed"


@dataclass(frozen=True)
class PositiveControl:
    """Gate: the failure the claim is about can be seen at all, in a setting built to show it."""

    description: str  # what must be seen, e.g. "the no-norm arm diverges at lr 1e-1 in >= 4 of 5 seeds"

    def text(self) -> str:
        return f"positive control: {self.description}"


@dataclass(frozen=True)
class Comparison:
    """Arm `a` against arm `b` on `metric`, seed by seed: the claim says a's value is `direction` than b's
    by at least `min_effect` (in the metric's unit)."""

    metric: str  # a readable name, e.g. "final val loss (nats)"
    a: str
    b: str
    direction: Direction
    min_effect: float
    kind: Kind = "continuous"
    # Also contradicts when the effect is shown smaller than the minimum: its 95% interval lies entirely
    # below min_effect (continuous metrics only). For claims whose denial is "no meaningful effect".
    smaller_contradicts: bool = False

    def __post_init__(self) -> None:
        if self.smaller_contradicts and self.kind != "continuous":
            raise ValueError("smaller_contradicts needs a continuous metric (its interval is a t interval)")

    def text(self) -> str:
        test = "paired t test" if self.kind == "continuous" else "exact paired permutation test"
        smaller = (f"; an effect shown smaller than {self.min_effect:g} (95% interval entirely below it) "
                   "also contradicts") if self.smaller_contradicts else ""
        return (f"{self.metric}: {self.a} {self.direction} than {self.b} by at least {self.min_effect:g} "
                f"({test}{smaller})")


@dataclass(frozen=True)
class Bound:
    """A deterministic check, no statistical test: `arm`'s `metric` is `at most` (or `at least`) `limit`
    in every seed. Supports when every seed is within the limit, contradicts when none is, else undecided.
    Its evidence is Pairs(values, [])."""

    metric: str
    arm: str
    limit: float
    direction: Literal["at most", "at least"] = "at most"

    def text(self) -> str:
        return f"{self.metric} of {self.arm} {self.direction} {self.limit:g} in every seed (a check, no test)"


@dataclass(frozen=True)
class Rule:
    """What decides a row: gates first, then comparisons (all of them decide, Holm-corrected)."""

    comparisons: tuple[Comparison | Bound, ...]
    gates: tuple[Trained | PositiveControl, ...] = ()
    min_seeds: int = 5
    alpha: float = ALPHA
    note: str = ""  # anything else the rule fixes in advance, rendered with it

    def __post_init__(self) -> None:
        # An exact two-sided permutation test over n paired seeds cannot go below 2 / 2^n, and Holm
        # multiplies the smallest p by the number of comparisons: a design whose count comparisons could
        # never decide, whatever the data, is refused here rather than run.
        tested = [c for c in self.comparisons if isinstance(c, Comparison)]
        floor = 2.0 / 2 ** self.min_seeds * len(tested)
        if any(c.kind == "count" for c in tested) and floor >= self.alpha:
            need = next(n for n in range(1, 64) if 2.0 / 2**n * len(tested) < self.alpha)
            raise ValueError(f"a count comparison over {self.min_seeds} seeds cannot reach p < "
                             f"{self.alpha:g} (the exact test's smallest p, Holm-corrected, is {floor:.3g}); "
                             f"use at least {need} seeds")
        if not self.comparisons:
            raise ValueError("a rule needs at least one comparison")

    def text(self) -> str:
        parts = []
        if self.gates:
            parts.append("Gates (else not testable here): " + "; ".join(g.text() for g in self.gates) + ".")
        listed = "; ".join(f"({i + 1}) {c.text()}" for i, c in enumerate(self.comparisons))
        parts.append(f"Comparisons over >= {self.min_seeds} seeds: {listed}.")
        tested = [c for c in self.comparisons if isinstance(c, Comparison)]
        holm = ", Holm-corrected across the comparisons" if len(tested) > 1 else ""
        parts.append(
            f"Each supports when p < {self.alpha:g}{holm} and the mean effect clears its minimum in the "
            "claimed direction, contradicts when it does so the other way, else is undecided. Supported when "
            "every comparison supports, contradicted when every one contradicts, else undecided."
        )
        if self.note:
            parts.append(self.note)
        return " ".join(parts)

    def sha256(self) -> str:
        return hashlib.sha256(self.text().encode("utf-8")).hexdigest()

    def arm_comparisons(self) -> tuple[Comparison, ...]:
        """The comparisons of a rule made of arm-against-arm comparisons only (no Bound), in order: what a
        claim's evidence builds one Pairs for each of."""
        if not all(isinstance(c, Comparison) for c in self.comparisons):
            raise ValueError("this rule also has Bounds; pair its comparisons one by one")
        return tuple(c for c in self.comparisons if isinstance(c, Comparison))


# ---------------------------------------------------------------- evidence and outcome


@dataclass(frozen=True)
class GateResult:
    passed: bool
    detail: str  # the numbers that decided it


@dataclass(frozen=True)
class Pairs:
    """One comparison's data: a's and b's values, seed by seed (same order)."""

    a: Sequence[float]
    b: Sequence[float]


@dataclass(frozen=True)
class Evidence:
    """What a claim extracts from its results for its rule: one GateResult per gate, one Pairs per
    comparison, in the rule's order."""

    gates: Sequence[GateResult]
    pairs: Sequence[Pairs]


@dataclass(frozen=True)
class ComparisonResult:
    comparison: Comparison | Bound
    n: int
    effect: float  # mean of the per-seed effects, positive in the claimed direction
    low: float  # 95% interval of the mean effect (t for continuous; bootstrap-free exact range for counts)
    high: float
    p: float  # two-sided, before correction
    p_holm: float
    outcome: str  # "supports" | "contradicts" | "undecided"
    why: str = ""  # when undecided for a reason other than the test (too few seeds, missing values)

    def text(self) -> str:
        """e.g. "log spread: post-LN lower than pre-LN by 0.41 [0.30, 0.52] (needs 0.223), p ..."; a negative
        effect is a difference the other way."""
        c = self.comparison
        if isinstance(c, Bound):
            return (f"{c.metric} of {c.arm}: worst {_fmt(self.effect)} across {self.n} seeds, {c.direction} "
                    f"{c.limit:g} in {self.low:g} of them: {self.outcome}")
        interval = f" [{_fmt(self.low)}, {_fmt(self.high)}]" if math.isfinite(self.low) else ""
        extra = f"; {self.why}" if self.why else ""
        return (f"{c.metric}: {c.a} {c.direction} than {c.b} by {_fmt(self.effect)}{interval} "
                f"(needs {c.min_effect:.3g}), p {_fmt_p(self.p)}, Holm {_fmt_p(self.p_holm)}, n {self.n}: "
                f"{self.outcome}{extra}")


@dataclass(frozen=True)
class Judgement:
    verdict: str
    reason: str
    results: tuple[ComparisonResult, ...] = field(default_factory=tuple)
    gates: tuple[GateResult, ...] = field(default_factory=tuple)

    def headline(self) -> str:
        """Every sub-result, not just the deciding one."""
        parts = [g.detail for g in self.gates if not g.passed]
        parts += [r.text() for r in self.results]
        return "; ".join(parts) if parts else self.reason


def trained_gate(what: str, runs: Sequence[dict], margin: float) -> GateResult:
    """The Trained gate from runs that record `val_loss` and `unigram_loss`: `what` ends at least `margin`
    nats below the unigram loss in every run (a run without them, or diverged, fails it)."""
    gaps = [r["unigram_loss"] - r["val_loss"] if r.get("val_loss") is not None and "unigram_loss" in r
            else -math.inf for r in runs]
    low, high = (min(gaps), max(gaps)) if gaps else (-math.inf, -math.inf)
    return GateResult(bool(gaps) and low >= margin, f"{what} ends {low:.2f} to {high:.2f} nats below the "
                      f"unigram loss across seeds (gate: {margin:g})")


def judge(rule: Rule, evidence: Evidence) -> Judgement:
    """The verdict `rule` gives on `evidence`."""
    if len(evidence.gates) != len(rule.gates) or len(evidence.pairs) != len(rule.comparisons):
        raise ValueError("evidence must hold one result per gate and one pair of lists per comparison")
    gates = tuple(evidence.gates)
    failed = [g for g in gates if not g.passed]
    if failed:
        return Judgement("not testable here", "gate not passed: " + "; ".join(g.detail for g in failed),
                         gates=gates)
    raw = [_test(c, p, rule) for c, p in zip(rule.comparisons, evidence.pairs) if isinstance(c, Comparison)]
    adjusted = iter(holm([r[3] for r in raw]))  # over the tested comparisons only
    tested = iter(raw)
    results = []
    for c, pairs in zip(rule.comparisons, evidence.pairs):
        if isinstance(c, Bound):
            results.append(_check(c, pairs, rule.min_seeds))
            continue
        c, effect, (low, high), p, n, why = next(tested)
        p_adj = next(adjusted)
        outcome = _outcome(c, effect, p_adj, rule, why, high)
        results.append(ComparisonResult(c, n, effect, low, high, p, p_adj, outcome, why))
    outcomes = {r.outcome for r in results}
    if outcomes == {"supports"}:
        verdict, reason = "supported", "every comparison supports the claim"
    elif outcomes == {"contradicts"}:
        verdict, reason = "contradicted", "every comparison contradicts the claim"
    else:
        counts = {o: sum(r.outcome == o for r in results) for o in ("supports", "contradicts", "undecided")}
        verdict = "undecided"
        reason = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    return Judgement(verdict, reason, tuple(results), gates)


def _check(c: Bound, pairs: Pairs, min_seeds: int) -> ComparisonResult:
    """A Bound: how many seeds are within the limit (kept in `low`), and the worst value (in `effect`);
    undecided with fewer seeds than the rule asks for."""
    values = [float(v) for v in pairs.a]
    within = [v <= c.limit if c.direction == "at most" else v >= c.limit for v in values]
    worst = (max(values) if c.direction == "at most" else min(values)) if values else math.nan
    outcome = "supports" if values and all(within) else "contradicts" if values and not any(within) \
        else "undecided"
    why = f"{len(values)} seeds, the rule needs {min_seeds}" if len(values) < min_seeds else ""
    return ComparisonResult(c, len(values), worst, float(sum(within)), float(len(values)), math.nan, math.nan,
                            "undecided" if why else outcome, why)


def _outcome(c: Comparison, effect: float, p: float, rule: Rule, why: str, high: float) -> str:
    if why:
        return "undecided"
    if math.isfinite(p) and p < rule.alpha:
        if effect >= c.min_effect:
            return "supports"
        if effect <= -c.min_effect:
            return "contradicts"
    if c.smaller_contradicts and math.isfinite(high) and high < c.min_effect:
        return "contradicts"
    return "undecided"


def _test(c: Comparison, pairs: Pairs, rule: Rule):
    """(comparison, mean effect, 95% interval, two-sided p, n, why-undecided) for one comparison."""
    a, b = np.asarray(pairs.a, dtype=float), np.asarray(pairs.b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{c.metric}: {len(a)} values for {c.a}, {len(b)} for {c.b}")
    effects = (b - a) if c.direction == "lower" else (a - b)  # positive: as the claim says
    n = len(effects)
    if n < rule.min_seeds:
        why = f"{n} seeds, the rule needs {rule.min_seeds}"
        return c, _mean(effects), (math.nan, math.nan), math.nan, n, why
    if not np.all(np.isfinite(effects)):
        return c, math.nan, (math.nan, math.nan), math.nan, n, "a value is missing or not finite"
    mean = float(effects.mean())
    if c.kind == "count" or float(effects.std()) == 0.0:  # ties or no variance: the t test is undefined
        p = permutation_p(effects)
        return c, mean, (float(effects.min()), float(effects.max())), p, n, ""
    stats = _scipy_stats()
    test = stats.ttest_rel(a, b)
    interval = test.confidence_interval(0.95)
    low, high = (-interval.high, -interval.low) if c.direction == "lower" else (interval.low, interval.high)
    return c, mean, (float(low), float(high)), float(test.pvalue), n, ""


def permutation_p(effects: np.ndarray) -> float:
    """Two-sided p of scipy's exact paired permutation test (every sign flip of the per-seed effects)
    for a mean effect of zero."""
    stats = _scipy_stats()
    if not np.any(effects):
        return 1.0
    result = stats.permutation_test((effects,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                    alternative="two-sided")
    return float(result.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest p times (m - k + 1), kept monotone, capped at 1.
    Non-finite p-values stay as they are and count in m."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i] if math.isfinite(pvalues[i]) else math.inf)
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = pvalues[i]
        if not math.isfinite(p):
            adjusted[i] = p
            continue
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.3f}"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"
