"""The claims ledger's parts against known answers: statistics by hand, the drift and perturbation
metrics on models whose answer is known, every decision rule on synthetic results (each way), and a
ledger written end to end from a real (cheap) claim.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.study.claims import drift, generalization, gradients, perturbation, sensitivity
from albert_gpt.study.claims.ledger import provenance_problem, run_claim, write_ledger
from albert_gpt.study.claims.registry import all_claims, get_claim
from albert_gpt.study.claims.stats import loglog_slope, mean_interval, paired_difference, spearman, t_critical

V, H, T = 13, 16, 8


def tiny(**overrides) -> AlbertGPT:
    torch.manual_seed(0)
    return AlbertGPT(
        ModelConfig(
            **{**dict(n_layers=4, n_groups=1, n_embd=H, n_heads=2, block_size=T, vocab_size=V), **overrides}
        )
    )


# ---------------------------------------------------------------- statistics


def test_t_interval_by_hand():
    iv = mean_interval([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) = 4.303
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.high - 2.0 == pytest.approx(4.303 / math.sqrt(3))
    assert iv.low == pytest.approx(2.0 - 4.303 / math.sqrt(3))
    assert t_critical(100) == 1.96
    assert not iv.excludes_zero() and mean_interval([5.0, 5.1, 4.9]).excludes_zero()


def test_a_diverged_run_or_a_single_seed_concludes_nothing():
    for values in ([1.0, math.inf, 2.0], [3.0]):
        iv = mean_interval(values)
        assert iv.low == -math.inf and iv.high == math.inf and not iv.excludes_zero()


def test_paired_difference_uses_pairs_not_groups():
    a, b = [10.0, 20.0, 30.0], [9.0, 19.0, 29.0]  # far apart as groups, exactly +1 as pairs
    iv = paired_difference(a, b)
    assert iv.mean == 1.0 and iv.low == iv.high == 1.0 and iv.excludes_zero()


def test_slope_and_rank_correlation_by_hand():
    xs = [2, 4, 8, 16, 32]
    assert loglog_slope(xs, [3 * x**-0.5 for x in xs]) == pytest.approx(-0.5)
    assert math.isnan(loglog_slope([2], [1.0]))
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


# ---------------------------------------------------------------- metrics with known answers


def test_a_model_that_does_not_change_has_zero_drift():
    model = tiny()
    idx = torch.randint(0, V, (3, T))
    before, after = drift.sublayer_inputs(model, idx), drift.sublayer_inputs(model, idx)
    assert set(before) == {(d, s) for d in range(4) for s in ("attn", "ffn")}
    assert all(drift.drift(before[k], after[k]) == 0.0 for k in before)


def test_drift_of_a_known_shift_and_rescale():
    x = torch.randn(1000, 4, dtype=torch.float64)
    m0 = drift.moments(x)
    shifted = drift.moments(x + 0.5 * m0[1])  # every feature's mean moves by half its std
    assert drift.drift(m0, shifted) == pytest.approx(0.5, rel=1e-4)
    scaled = drift.moments((x - m0[0]) * 2 + m0[0])  # every std doubles, means stay
    assert drift.drift(m0, scaled) == pytest.approx(math.log(2), rel=1e-4)


def test_sublayer_inputs_read_what_the_branch_reads():
    """Pre-LN branches read the normalized stream; post-LN branches read the stream itself."""
    idx = torch.randint(0, V, (2, T))
    for placement in ("pre", "post"):
        model = tiny(norm_placement=placement).eval()
        seen: list[torch.Tensor] = []
        hook = model.blocks[0].attn.register_forward_pre_hook(lambda m, args, out=seen: out.append(args[0]))
        model(idx)
        hook.remove()
        expected = drift.moments(seen[0])  # the first application's attention input
        got = drift.sublayer_inputs(model, idx)[0, "attn"]
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])


def test_injected_noise_scales_and_shifts_each_norm_output_but_the_heads():
    """Santurkar et al.'s noisy norm: every norm call of a forward pass but the last (what the head reads)
    gets its own per-feature scale and shift; `on=False` gives the clean model back, and a redraw moves
    the drift measured at the sub-layer inputs."""
    model = tiny(norm_placement="post").eval()
    idx = torch.randint(0, V, (2, T))
    clean_outputs: list[torch.Tensor] = []
    norms = {id(n): n for b in model.blocks for n in (b.attn_norm, b.ffn_norm)}
    grab = [
        n.register_forward_hook(lambda m, a, o: clean_outputs.append(o.detach().clone()))
        for n in norms.values()
    ]
    with torch.no_grad():
        clean = model(idx)[0]
    for h in grab:
        h.remove()
    noise = drift.InjectedNoise(model, 0.25, seed=3)
    assert noise.calls == 8 and float((noise.scale - 1).abs().max()) <= 0.25
    noisy_outputs: list[torch.Tensor] = []
    grab = [
        n.register_forward_hook(lambda m, a, o: noisy_outputs.append(o.detach().clone()))
        for n in norms.values()
    ]  # registered after the noise, so it sees the noisy output
    with torch.no_grad():
        model(idx)
    for h in grab:
        h.remove()
    first = clean_outputs[0] * noise.scale[0] + noise.shift[0]
    torch.testing.assert_close(noisy_outputs[0], first)
    # the head's input is a LayerNorm's output as it is (unit gains at init): zero mean, unit variance per
    # token; the call before it carries the noise, so its moments are off
    last, before_last = noisy_outputs[-1], noisy_outputs[-2]
    torch.testing.assert_close(last.mean(-1), torch.zeros(2, T), atol=1e-5, rtol=0)
    torch.testing.assert_close(last.var(-1, correction=0), torch.ones(2, T), atol=1e-3, rtol=0)
    assert float(before_last.mean(-1).abs().max()) > 0.01
    noise.on = False
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], clean)
    noise.on = True
    before = drift.sublayer_inputs(model, idx)
    noise.redraw()
    after = drift.sublayer_inputs(model, idx)
    assert drift.drift(before[0, "attn"], after[0, "attn"]) == 0.0  # the embeddings carry no noise
    assert drift.drift(before[1, "attn"], after[1, "attn"]) > 0.05


def test_a_perturbation_through_an_identity_stack_keeps_its_relative_size():
    model = tiny(norm_placement="none", final_norm=False)
    with torch.no_grad():  # every residual branch outputs 0: each block is the identity
        for block in model.blocks:
            for proj in (block.attn.proj, block.ffn.proj):
                proj.weight.zero_()
                proj.bias.zero_()
    out = perturbation.propagate(model, torch.randint(0, V, (2, T)), at=1, relative=1e-3)
    assert out["per_layer"] == pytest.approx([1e-3] * 3, rel=1e-4)


def test_a_perturbation_through_post_ln_is_measured_at_every_later_layer():
    out = perturbation.propagate(tiny(), torch.randint(0, V, (2, T)), at=0, relative=1e-3)
    assert len(out["per_layer"]) == 4 and out["per_layer"][0] == pytest.approx(1e-3, rel=1e-4)
    assert all(v > 0 for v in out["per_layer"]) and out["logits"] > 0


def test_masked_batchnorm_takes_statistics_from_real_tokens_only():
    from albert_gpt.modeling.norms import SequenceBatchNorm

    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    masked = SequenceBatchNorm(4).train()
    y = masked(x, valid)
    real = x[valid]  # (10, 4)
    expected = (real - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y[valid], expected)
    assert torch.all(y[~valid] == 0)
    torch.testing.assert_close(masked.bn.running_mean, 0.1 * real.mean(0))
    unmasked = SequenceBatchNorm(4).train()
    unmasked(x)
    assert not torch.allclose(unmasked.bn.running_mean, masked.bn.running_mean)


# ---------------------------------------------------------------- decision rules, each way


def _batch_results(post_penalty: float, bare_penalty: float, post_large: float = 2.7) -> list[dict]:
    """Batch-size results: each arm's loss at the largest batch, plus its small-batch penalty spread
    linearly over the smaller batches; seed noise differs between arms."""
    wobble = (0.0, 0.01, -0.012, 0.006, -0.004, 0.008, -0.003)
    results = []
    for k, arm in enumerate(sensitivity.LR_ARMS):
        pen = {"post-LN": post_penalty, "no norm + final LN": bare_penalty, "no norm, bare": bare_penalty}
        for seed, w in zip(sensitivity.LR_SEEDS["cpu"], wobble[k:] + wobble[:k]):
            large = post_large if arm == "post-LN" else 2.8
            for i, b in enumerate(reversed(sensitivity.BATCHES)):  # 32, 16, 8, 4
                loss = large + (pen.get(arm, 0.3) + w) * i / (len(sensitivity.BATCHES) - 1)
                results.append(
                    {
                        "arm": arm,
                        "batch_size": b,
                        "seed": seed,
                        "val_loss": loss,
                        "diverged": False,
                        "unigram_loss": 3.25,
                    }
                )
    return results


@pytest.mark.parametrize(
    "post, bare, post_large, verdict",
    [
        (0.2, 0.5, 2.7, "supported"),
        (0.5, 0.2, 2.7, "contradicted"),
        (0.3, 0.32, 2.7, "undecided"),
        (0.2, 0.5, 3.1, "not testable here"),  # post-LN never left the unigram plateau
        (0.02, 0.05, 2.7, "not testable here"),  # the batch size hardly matters: no control
    ],
)
def test_batch_sensitivity_rule(post, bare, post_large, verdict):
    results = _batch_results(post, bare, post_large)
    if verdict == "not testable here" and post < 0.1:
        for r in results:  # every arm's penalty small
            r["val_loss"] = 2.8 + (0.02 if r["batch_size"] == 4 else 0.0) + 0.001 * r["seed"]
    assert sensitivity.BATCH_CLAIM.verdict_of(results)[0] == verdict
    assert "| post-LN |" in sensitivity.BATCH_CLAIM.analyze(results).table


def _gradient_results(post_b: float, bare_b: float, control_b: float = 1.5) -> list[dict]:
    """Planted gradients ~ L^b: post-LN's b, the bare model's b at std 0.02 (both inits), and the bare
    model's b at std 0.125 with the depth-independent init (the positive control)."""
    results = []
    for arm in gradients.PLACEMENTS:
        for sharing in ("shared", "unshared"):
            for init in gradients.INITS:
                for std in (0.02, 0.125):
                    b = post_b if arm == "post-LN" else 0.0
                    if arm == "no norm, bare":
                        b = control_b if (std, init) == (0.125, "normal") else bare_b
                    for seed, noise in zip(
                        gradients.SIZES["cpu"]["seeds"], (0.0, 0.01, -0.01, 0.02, -0.02, 0.0)
                    ):
                        for L in (2, 4, 8, 16):
                            results.append(
                                {
                                    "arm": arm,
                                    "sharing": sharing,
                                    "init": init,
                                    "init_std": std,
                                    "n_layers": L,
                                    "seed": seed,
                                    "per_layer": [0.1 * L ** (b + noise)] * L,
                                }
                            )
    return results


@pytest.mark.parametrize(
    "post_b, bare_b, control_b, verdict",
    [
        (0.0, 1.5, 1.5, "supported"),
        (0.8, 0.0, 1.5, "contradicted"),
        (0.0, 0.05, 1.5, "undecided"),
        (0.0, 1.5, 0.1, "not testable here"),
    ],
)
def test_gradient_rule(post_b, bare_b, control_b, verdict):
    assert gradients.CLAIM.verdict_of(_gradient_results(post_b, bare_b, control_b))[0] == verdict
    assert gradients.analyze(_gradient_results(post_b, bare_b, control_b)).verdict == verdict


def test_gradient_rule_counts_overflow_as_a_lower_bound():
    """An overflowing gradient is float32's largest value: a steep, finite slope, not a missing one."""
    results = _gradient_results(0.0, 0.0)
    for r in results:
        if r["arm"] == "no norm, bare" and r["n_layers"] == 16:
            r["per_layer"][-1] = None  # the gradient overflowed
    assert gradients.CLAIM.verdict_of(results)[0] == "supported"
    assert math.isinf(gradients.exponents(results, "no norm, bare", "shared", 0.02)[0])  # shown as overflow


def _generalization_results(
    post_best: float,
    post_rise: float,
    other_best: float = 2.1,
    other_rise: float = 0.4,
    dropout_final: float = 2.0,
) -> list[dict]:
    """Planted curves: each arm's held-out loss reaches its best at step 1000, then rises by the end;
    the seed noise differs between arms."""
    wobble = (0.0, 0.01, -0.012, 0.006, -0.004, 0.008)
    results = []
    for k, arm in enumerate(generalization.ARMS_HERE):
        best, rise = (post_best, post_rise) if arm == "post-LN" else (other_best, other_rise)
        for seed, w in zip(generalization.SEEDS["cpu"], wobble[k:] + wobble[:k]):
            final = dropout_final + w if arm == generalization.DROPOUT else best + rise + w
            best_w = min(best + w, final)
            curve = [[0, 4.0, 4.0], [1000, 1.5, best_w], [2400, 0.8, final]]
            results.append(
                {"arm": arm, "seed": seed, "curve": curve, "diverged": False, "unigram_loss_test": 3.2}
            )
    return results


@pytest.mark.parametrize(
    "best, rise, dropout_final, verdict",
    [
        (1.9, 0.2, 2.0, "supported"),  # lower best held-out loss and a smaller rise than no norm + final LN
        (2.3, 0.6, 2.0, "contradicted"),
        (1.9, 0.6, 2.0, "undecided"),  # better best loss, but overfits more
        (1.9, 0.05, 1.9, "not testable here"),  # post-LN's held-out loss never turned upward
        (1.9, 0.2, 2.2, "not testable here"),  # dropout did not help: the regularizer control fails
        (3.0, 0.2, 2.0, "not testable here"),  # post-LN stayed near the unigram loss
    ],
)
def test_generalization_rule(best, rise, dropout_final, verdict):
    results = _generalization_results(best, rise, dropout_final=dropout_final)
    assert generalization.CLAIM.verdict_of(results)[0] == verdict
    assert "| post-LN + dropout 0.2 |" in generalization.analyze(results).table


@pytest.mark.parametrize(
    "bare_drift, noisy_drift, noisy_loss, post_final, verdict",
    [
        (0.4, 0.6, 2.95, 2.7, "supported"),  # less drift, faster than no norm, and the noise slows it
        (0.4, 0.6, 2.851, 2.7, "undecided"),  # the noise costs nothing: (3) contradicts, (1), (2) support
        (0.4, 0.25, 2.95, 2.7, "not testable here"),  # the noise did not double the drift: no control
        (0.4, 0.6, 2.95, 3.1, "not testable here"),  # post-LN never left the unigram plateau
    ],
)
def test_drift_rule(bare_drift, noisy_drift, noisy_loss, post_final, verdict):
    """Planted drift series and validation curves, with seed noise, judged under claim c's rule."""
    wobble = (0.0, 0.004, -0.003, 0.002, -0.001, 0.001)
    results = []
    for k, arm in enumerate(drift.ARMS_HERE):
        for seed, w in zip(drift.SEEDS["cpu"], wobble[k:] + wobble[:k]):  # arms' noise differs
            level = {"post-LN": 0.2, "no norm + final LN": bare_drift, drift.NOISY: noisy_drift}.get(arm, 0.3)
            at_150 = {"post-LN": 2.85, "no norm + final LN": 2.95, drift.NOISY: noisy_loss}.get(arm, 3.0)
            results.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "drift": [[10, level * (1 + 10 * w), level], [20, level * (1 + 10 * w), level]],
                    "curve": [[150, at_150 + w], [300, post_final + w]],
                    "val_loss": post_final + w,
                    "mean_train_loss": 3.0,
                    "diverged": False,
                    "unigram_loss": 3.25,
                }
            )
    assert drift.CLAIM.verdict_of(results)[0] == verdict


@pytest.mark.parametrize(
    "post_amp, untrained, verdict",
    [
        (0.5, False, "supported"),
        (50.0, False, "contradicted"),
        (5.0, False, "undecided"),
        (0.5, True, "not testable here"),
    ],
)
def test_perturbation_rule(post_amp, untrained, verdict):
    """Planted amplifications (the other arms: 5x): post-LN's 0.5x or 50x decides either way, an equal one
    is undecided, and a comparator that never left the unigram plateau makes the row not testable."""
    results = []
    for arm in perturbation.ARMS_HERE:
        amp = post_amp if arm == "post-LN" else 5.0
        for seed, noise in zip(perturbation.SEEDS["cpu"], (1.0, 1.05, 0.95, 1.02, 0.98, 1.01)):
            run = {
                "per_layer": [1e-3, 1e-3 * amp * noise],
                "absolute_per_layer": [1.0, amp * noise],
                "logits": 1e-3 * amp,
            }
            stuck = untrained and arm == "no norm + final LN"
            results.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "init": run,
                    "trained": run,
                    "val_loss": 3.2 if stuck else 2.4,
                    "unigram_loss": 3.25,
                }
            )
    assert perturbation.analyze(results).verdict == verdict
    assert perturbation.CLAIM.verdict_of(results)[0] == verdict


# ---------------------------------------------------------------- running a claim, writing the ledger


def test_a_claim_runs_resumes_and_lands_in_the_ledger(tmp_path):
    claim = get_claim("a")
    results_dir, work = tmp_path / "claims", tmp_path / "work"
    path = run_claim(claim, workers=1, work_dir=work, results_dir=results_dir, progress=False)
    data = json.loads(path.read_text())
    assert [c["seed"] for c in data["cells"]] == [1, 2, 3, 4, 5]
    assert all(c["gradcheck"] and c["max_value_error"] < 1e-5 for c in data["cells"])
    cached = sorted(p.name for p in (work / "formula" / "cpu").iterdir())
    assert cached == [f"seed={s}.json" for s in (1, 2, 3, 4, 5)]
    planted = {"seed": 2, "max_value_error": 1.0, "max_grad_error": 0.0, "gradcheck": True}
    (work / "formula" / "cpu" / "seed=2.json").write_text(json.dumps(planted))
    rerun = json.loads(
        run_claim(claim, workers=1, work_dir=work, results_dir=results_dir, progress=False).read_text()
    )
    assert rerun["cells"][1]["max_value_error"] == 1.0  # a measured cell is reused, not measured again

    assert rerun["rule"] == {"text": claim.rule_text(), "sha256": claim.rule_sha256()}
    assert re.fullmatch(r"[0-9a-f]{40}(\+uncommitted)?", rerun["commit"])
    # one seed of five out of bounds: neither supported nor contradicted (the rule is symmetric)
    assert rerun["verdict"]["verdict"] == "undecided"  # the verdict computed when it was measured

    ledger = write_ledger(all_claims(), results_dir=results_dir, path=tmp_path / "claims.md").read_text()
    row = next(line for line in ledger.splitlines() if line.startswith("| a |"))
    assert "**undecided" in row  # computed from the (planted) result file, not typed
    assert "**not run yet**" in next(line for line in ledger.splitlines() if line.startswith("| h |"))
    assert f"**Decision rule** (fixed before the runs; sha256 {claim.rule_sha256()[:12]}):" in ledger


def test_a_results_file_stands_only_under_its_own_committed_rule():
    claim = get_claim("a")
    good = {"rule": {"sha256": claim.rule_sha256()}, "commit": "0" * 40, "cells": []}
    assert provenance_problem(claim, good) is None
    assert "rule changed" in provenance_problem(claim, {**good, "rule": {"sha256": "f" * 64}})
    assert "before results recorded their rule" in provenance_problem(claim, {"cells": []})
    assert "not committed" in provenance_problem(claim, {**good, "commit": "0" * 40 + "+uncommitted"})


def test_every_committed_results_file_records_the_current_rule():
    """A results file that records a rule must record the one the code holds now: a rule edited after
    its results were measured would otherwise pass them off as pre-registered."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for claim in all_claims():
        path = root / "docs" / "claims" / f"{claim.name}.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        if "rule" in record:
            assert record["rule"]["sha256"] == claim.rule_sha256(), claim.name
            assert record["rule"]["text"] == claim.rule_text(), claim.name


def test_every_claim_has_its_parts_and_a_shipped_config():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    letters = [c.letter for c in all_claims()]
    assert letters == ["a", "b", "c", "d", "e", "f1", "f2", "f3", "g", "h", "i", "j", "k", "l", "m", "n", "o",
                       "p", "q", "r"]
    for claim in all_claims():
        assert (root / claim.config).is_file(), claim.config
        assert claim.rule_text() == claim.decision.text()  # one rule, rendered from data
        cells = claim.cells("cpu")
        assert len({c.get("seed") for c in cells}) >= 3, claim.name
        assert get_claim(claim.name) is claim and get_claim(claim.letter) is claim


def test_unknown_claim_is_one_line(capsys):
    from albert_gpt.cli import main

    assert main(["study", "claim", "zz"]) == 2
    assert "unknown claim 'zz' (known: a (formula), b (gradients)" in capsys.readouterr().err


def test_drift_curves_are_written_for_tensorboard(tmp_path):
    """The drift claim's curves, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = [{"arm": "post-LN", "seed": 1, "drift": [[10, 0.5, 0.4, 0.6], [20, 0.25, 0.2, 0.3]]}]
    drift.tensorboard(results, tmp_path)
    acc = EventAccumulator(str(tmp_path / "post-LN_seed1"))
    acc.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("ics/drift")] == [(10, 0.5), (20, 0.25)]
    assert [round(e.value, 6) for e in acc.Scalars("ics/depth_01/drift")] == [0.6, 0.3]


def test_evaluation_in_train_mode_uses_batch_statistics():
    """train_mode scores with BatchNorm's batch statistics (the train/eval gap claim h reports); a
    LayerNorm model scores the same either way, and the model's own mode is restored."""
    from albert_gpt.inference.evaluate import evaluate_tokens

    tokens = torch.randint(0, V, (200,), generator=torch.Generator().manual_seed(0))
    for model, differs in ((tiny(norm="batchnorm"), True), (tiny(), False)):
        model.eval()
        eval_mode = evaluate_tokens(model, tokens, T, 4, "cpu", max_batches=3)["loss"]
        train_mode = evaluate_tokens(model, tokens, T, 4, "cpu", max_batches=3, train_mode=True)["loss"]
        assert (abs(eval_mode - train_mode) > 1e-4) == differs
        assert not model.training
    model = tiny(norm="batchnorm").eval()
    x = torch.stack([tokens[i * T : i * T + T] for i in range(4)])
    y = torch.stack([tokens[i * T + 1 : i * T + T + 1] for i in range(4)])
    with torch.no_grad():
        by_hand = model.train()(x, y)[1].item()
    model.eval()
    got = evaluate_tokens(model, tokens, T, 4, "cpu", max_batches=1, train_mode=True)["loss"]
    assert got == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize(
    "others_spread, post_loss, verdict",
    [
        (3.0, 2.4, "supported"),
        (1.1, 2.4, "undecided"),
        (3.0, 3.1, "not testable here"),
    ],
)
def test_activations_rule(others_spread, post_loss, verdict):
    """Planted per-layer RMS: post-LN's trained spread 1.2 against the others' (with seed noise); a post-LN
    model that ended near the unigram loss makes the row not testable."""
    from albert_gpt.study.claims import activations

    results = []
    for arm in activations.ARMS_HERE:
        for sharing in ("shared", "unshared"):
            for seed, noise in zip(activations.SEEDS["cpu"], (1.0, 1.04, 0.97, 1.02, 0.99, 1.01)):
                top = (1.2 if arm == "post-LN" else others_spread) * noise
                results.append(
                    {
                        "arm": arm,
                        "sharing": sharing,
                        "seed": seed,
                        "rms_init": [1.0] * 6,
                        "rms_trained": [1.0] * 5 + [top],
                        "unigram_loss": 3.25,
                        "val_loss": post_loss if arm == "post-LN" else 2.6,
                    }
                )
    assert activations.CLAIM.verdict_of(results)[0] == verdict


def test_the_smoke_size_runs_one_cell_per_arm_and_never_writes_docs(tmp_path, monkeypatch, capsys):
    from albert_gpt.cli import main
    from albert_gpt.study.claims.ledger import smoke_cells

    cells = smoke_cells(drift.CLAIM)
    assert [c["arm"] for c in cells] == list(drift.ARMS_HERE) and {c["seed"] for c in cells} == {1}
    assert smoke_cells(get_claim("formula")) == [{"seed": 1}]
    monkeypatch.chdir(tmp_path)
    assert main(["study", "claim", "formula", "--size", "smoke", "--workers", "1", "--work-dir", "w"]) == 0
    record = json.loads((tmp_path / "w" / "results" / "formula.json").read_text())
    assert record["size"] == "smoke" and len(record["cells"]) == 1
    assert record["verdict"]["verdict"] == "undecided"  # one seed: never a result
    assert main(["study", "claim", "formula", "--size", "smoke", "--write-docs"]) == 2
    assert "never go to docs/" in capsys.readouterr().err


def test_study_claim_leaves_the_committed_ledger_alone_unless_asked(tmp_path, monkeypatch):
    """`study claim` writes its results and ledger under --work-dir; docs/ only with --write-docs."""
    from albert_gpt.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    assert main(["study", "claim", "formula", "--workers", "1", "--work-dir", "work"]) == 0
    assert (tmp_path / "work" / "results" / "formula.json").is_file()
    assert (tmp_path / "work" / "claims.md").is_file()
    assert list((tmp_path / "docs").iterdir()) == []
    assert main(["study", "claim", "ledger", "--work-dir", "work", "--write-docs"]) == 0
    assert (tmp_path / "docs" / "claims.md").is_file()


@pytest.mark.parametrize(
    "per_depth, conditioned, shared_loss, verdict",
    [
        (2.60, 2.55, 2.70, "supported"),
        (2.80, 2.85, 2.70, "contradicted"),
        (2.69, 2.55, 2.70, "undecided"),
        (2.60, 2.55, 3.10, "not testable here"),
    ],
)
def test_adaptive_rule(per_depth, conditioned, shared_loss, verdict):
    """Planted losses: both adaptive arms 0.1 nats better (or worse) than the shared block decide; one
    within the 0.02 minimum leaves it undecided; a shared model near the unigram loss is not testable."""
    from albert_gpt.study.claims import adaptive

    loss = {
        "shared": shared_loss,
        "shared + per-depth LN gain and bias": per_depth,
        "shared + input-conditioned LN": conditioned,
        "unshared": 2.5,
    }
    results = [
        {
            "arm": arm,
            "seed": seed,
            "val_loss": loss[arm] + noise * (1 + k),
            "params": 1000,
            "unigram_loss": 3.25,
        }
        for k, arm in enumerate(adaptive.ARMS)
        for seed, noise in zip(adaptive.SEEDS["cpu"], (0.0, 0.004, -0.003, 0.002, -0.001))
    ]
    assert adaptive.CLAIM.verdict_of(results)[0] == verdict


def test_claim_help_lists_every_claim_from_an_index_that_matches_the_claims(capsys):
    """`study claim --help` lists every row (letter, name, title) without importing the claim modules;
    the index it reads must be the claims themselves."""
    from albert_gpt.cli import main
    from albert_gpt.study.claims.registry import INDEX

    assert list(INDEX) == [(c.letter, c.name, c.title) for c in all_claims()]
    with pytest.raises(SystemExit) as exit_:
        main(["study", "claim", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for letter, name, title in INDEX:
        assert re.search(rf"^  {re.escape(letter)}\s+{re.escape(name)}\s+{re.escape(title)}$", out, re.M), (
            name
        )


def test_amplification_is_a_second_order_measure_that_leaves_the_model_as_it_was():
    """||dF||^2 / ||F||^2 for a change of relative size eps: 0 for eps 0, ~4x for twice the eps (the change
    is small enough to be linear), the same draws for the same seed, and the weights untouched."""
    from albert_gpt.study.claims import amplification

    model = tiny(init_std=0.125, init_scheme="normal")
    idx = torch.randint(0, V, (3, T))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = amplification.amplification(model, idx, seed=5, eps=1e-4)
    assert amplification.amplification(model, idx, seed=5, eps=0.0) == 0.0
    assert amplification.amplification(model, idx, seed=5, eps=2e-4) == pytest.approx(4 * small, rel=0.02)
    assert amplification.amplification(model, idx, seed=5, eps=1e-4) == small
    assert small > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "post, deep, control, verdict",
    [
        (1.0, 0.2, 1.0, "supported"),  # post-LN grows like L, pre-LN (0.2) and DeepNorm do not
        (0.2, 1.5, 1.0, "undecided"),  # post-LN equal to pre-LN, DeepNorm grows faster: one contradicts
        (0.2, 1.0, 0.1, "not testable here"),  # the unshared control shows no post-/pre-LN contrast
    ],
)
def test_amplification_rule(post, deep, control, verdict):
    """Planted amplifications ~ L^slope per arm, with seed noise that differs between arms."""
    from albert_gpt.study.claims import amplification

    slopes = {
        "post-LN": post,
        "pre-LN": 0.2,
        "DeepNorm": deep,
        "no norm + final LN": 0.5,
        "post-LN, unshared": 0.3 + control,
        "pre-LN, unshared": 0.3,
    }
    wobble = (0.0, 0.02, -0.03, 0.01, -0.01, 0.015)
    results = []
    for k, arm in enumerate(amplification.ARMS):
        for seed, w in zip(amplification.SEEDS["cpu"], wobble[k:] + wobble[:k]):
            for n in amplification.DEPTHS["cpu"]:
                amp = 1e-5 * n ** (slopes[arm] + w)
                results.append(
                    {
                        "arm": arm,
                        "n_layers": n,
                        "seed": seed,
                        "amp_init": amp,
                        "amp_trained": amp,
                        "val_loss": 2.8,
                        "diverged": False,
                        "unigram_loss": 3.25,
                    }
                )
    assert amplification.CLAIM.verdict_of(results)[0] == verdict
    assert "| post-LN, unshared |" in amplification.analyze(results).table


def test_the_ledger_runs_a_claims_own_measure_without_the_registry(tmp_path):
    """No circle: ledger.py never imports the registry (which imports every claim); two worker processes
    run the claim module's own measure function and land its cells."""
    import ast
    from pathlib import Path

    import albert_gpt.study.claims.ledger as ledger_module

    tree = ast.parse(Path(ledger_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "albert_gpt.study.claims.registry" not in imported
    claim = get_claim("formula")
    path = run_claim(claim, size="smoke", workers=2, work_dir=tmp_path / "w", results_dir=tmp_path / "r",
                     progress=False)
    assert [c["seed"] for c in json.loads(path.read_text())["cells"]] == [1]


def test_the_readmes_findings_block_is_generated_from_the_committed_results(tmp_path):
    """The README's findings block is what --write-docs generates from docs/claims/*.json, so a newcomer's
    first paragraph cannot drift from the measured numbers; write_findings replaces only that block."""
    from pathlib import Path

    from albert_gpt.study.claims.ledger import FINDINGS_BEGIN, FINDINGS_END, findings, write_findings

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme[readme.index(FINDINGS_BEGIN) + len(FINDINGS_BEGIN): readme.index(FINDINGS_END)]
    expected = findings(all_claims(), root / "docs" / "claims")
    expected = expected or "(no row with a summary has been measured yet)"
    assert block.strip() == expected.strip()

    copy = tmp_path / "README.md"
    copy.write_text(f"before\n{FINDINGS_BEGIN}\nstale\n{FINDINGS_END}\nafter\n")
    assert write_findings(all_claims(), copy, tmp_path / "no-results")
    assert copy.read_text() == (f"before\n{FINDINGS_BEGIN}\n(no row with a summary has been measured yet)\n"
                                f"{FINDINGS_END}\nafter\n")
    (tmp_path / "plain.md").write_text("no block\n")
    assert not write_findings(all_claims(), tmp_path / "plain.md", tmp_path / "no-results")
