"""The claims ledger: what a claim is, running its cells (in parallel, resumable), and docs/claims.md.

A claim module defines a `Claim`: the sentence tested, the experiment (a config under
configs/claims/ plus the grid of cells), the metric, the decision rule (written before any run),
`measure(cell)` (one cell, in a worker process), `analyze(results)` (the verdict, computed from the
results file) and `figure(results, path)`. `run_claim` measures every cell not measured yet and
writes docs/claims/<name>.json; `write_ledger` rebuilds docs/claims.md from those files alone.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import platform
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import torch
from tqdm.auto import tqdm

from albert_gpt.study.claims.rules import VERDICTS, Evidence, Rule, judge

DOCS = Path("docs")
LEDGER_FILE = DOCS / "claims.md"
RESULTS_DIR = DOCS / "claims"

# A cell is one point of a claim's grid (its arm, seed, depth, lr...: keys of the claim's own choosing), and
# a cell's result is that cell with the claim's measurements added plus "seconds"; each claim module documents
# its keys in `cells` and `measure`.
Cell = dict[str, Any]
CellResult = dict[str, Any]


class RuleRecord(TypedDict):
    text: str
    sha256: str


class VerdictRecord(TypedDict):
    verdict: str
    reason: str


class MachineRecord(TypedDict):
    torch: str
    python: str
    processor: str
    workers: int


class ResultsRecord(TypedDict):
    """docs/claims/<name>.json as run_claim writes it (files of the first edition lack the NotRequired
    keys: provenance_problem says why such a file cannot stand)."""

    claim: str
    name: str
    size: str
    rule: NotRequired[RuleRecord]
    commit: NotRequired[str]
    verdict: NotRequired[VerdictRecord]
    cells: list[CellResult]
    wall_seconds_this_call: NotRequired[float]
    cell_seconds_total: NotRequired[float]
    machine: NotRequired[MachineRecord]


@dataclass(frozen=True)
class Analysis:
    verdict: str  # one of VERDICTS
    reason: str  # one or two sentences: which part of the rule decided
    headline: str  # the key numbers, each a mean with its 95% interval
    table: str  # markdown, generated from the results


@dataclass(frozen=True)
class Claim:
    letter: str  # a..r: the row of the ledger
    name: str  # the command: albert-gpt study NAME
    title: str
    sections: str  # of the article
    statement: str  # the claim in one sentence, in the project's words
    experiment: str
    config: str  # the base config, under configs/claims/
    metric: str
    # The rule as data (rules.Rule: written and committed before the runs; it renders its own sentence)
    # and what the results give it (rules.Evidence); rules.judge computes the verdict from both.
    decision: Rule
    evidence: Callable[[list[CellResult]], Evidence]
    cells: Callable[[str], list[Cell]]  # size ("cpu" | "gpu") -> one dict per cell (smoke_cells)
    measure: Callable[[Cell], dict[str, Any]]  # runs in a worker; must be a module-level function
    analyze: Callable[[list[CellResult]], Analysis]  # the verdict (from judge) and the results table
    figure: Callable[[list[CellResult], Path], None] | None = None
    # Curves worth browsing, written as TensorBoard event files under the work directory.
    tensorboard: Callable[[list[CellResult], Path], None] | None = None
    # What was found, in plain words with the measured numbers (generated from the results), for rows a
    # newcomer should read first: shown at the top of docs/claims.md and in the README's findings block.
    summary: Callable[[list[CellResult]], str] | None = None

    def rule_text(self) -> str:
        return self.decision.text()

    def rule_sha256(self) -> str:
        return hashlib.sha256(self.rule_text().encode("utf-8")).hexdigest()

    def verdict_of(self, results: list[CellResult]) -> tuple[str, str, str]:
        """(verdict, reason, headline) of results under the current rule."""
        judged = judge(self.decision, self.evidence(results))
        return judged.verdict, judged.reason, judged.headline()


def smoke_cells(claim: Claim) -> list[Cell]:
    """`--size smoke`: a few cells of the cpu grid that exercise every arm's code once (the first seed, one
    cell per arm, else the first two cells), for CI and for checking a claim's code before a long run.
    Far too few seeds for the rule: its verdict is never a result."""
    cells = claim.cells("cpu")
    first_seed = [c for c in cells if c.get("seed") == cells[0].get("seed")]
    if not any("arm" in c for c in first_seed):
        return first_seed[:2]
    by_arm: dict[Any, Cell] = {}
    for c in first_seed:
        by_arm.setdefault(c.get("arm"), c)
    return list(by_arm.values())


def cell_key(cell: Cell) -> str:
    return ",".join(f"{k}={cell[k]}" for k in sorted(cell))


def _init_worker() -> None:
    torch.set_num_threads(1)  # tiny models: a second thread per worker only adds contention


def _measure(measure: Callable[[Cell], dict[str, Any]], cell: Cell) -> tuple[str, CellResult]:
    """One cell, in a worker: `measure` is the claim module's own function (pickled by name), so the
    worker imports that module alone, not the registry of every claim."""
    started = time.perf_counter()
    result = measure(cell)
    return cell_key(cell), {**cell, **result, "seconds": round(time.perf_counter() - started, 3)}


def run_claim(
    claim: Claim,
    size: str = "cpu",
    workers: int = 2,
    work_dir: Path = Path("claims_runs"),
    results_dir: Path = RESULTS_DIR,
    progress: bool = True,
    fresh: bool = False,
) -> Path:
    """Measure every cell of `claim` (cells already measured in `work_dir` are reused unless `fresh`),
    then write the results file `results_dir/<name>.json` and the claim's figure; returns that file."""
    commit = code_commit()  # the code that measures, as it is when measuring starts
    cells = smoke_cells(claim) if size == "smoke" else claim.cells(size)
    cache = work_dir / claim.name / size
    cache.mkdir(parents=True, exist_ok=True)
    done: dict[str, CellResult] = {}
    for cell in cells:
        path = cache / f"{cell_key(cell)}.json"
        if path.is_file() and not fresh:
            done[cell_key(cell)] = json.loads(path.read_text(encoding="utf-8"))
    todo = [c for c in cells if cell_key(c) not in done]
    started = time.perf_counter()
    bar = tqdm(
        total=len(cells),
        initial=len(done),
        desc=f"claim {claim.letter} ({claim.name})",
        unit="cell",
        disable=not progress,
    )
    if todo and workers > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            futures = {pool.submit(_measure, claim.measure, c): c for c in todo}
            for future in as_completed(futures):
                _keep(cache, done, future.result())
                bar.update()
    else:
        _init_worker()
        for cell in todo:
            _keep(cache, done, _measure(claim.measure, cell))
            bar.update()
    bar.close()
    results = [done[cell_key(c)] for c in cells]
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{claim.name}.json"
    verdict, reason, _ = claim.verdict_of(results)
    record: ResultsRecord = {
        "claim": claim.letter,
        "name": claim.name,
        "size": size,
        # Pre-registration, checkable: the rule as it was when these cells were judged, the code
        # that measured them, and the verdict computed then.
        "rule": {"text": claim.rule_text(), "sha256": claim.rule_sha256()},
        "commit": commit,
        "verdict": {"verdict": verdict, "reason": reason},
        "cells": results,
        "wall_seconds_this_call": round(time.perf_counter() - started, 1),
        "cell_seconds_total": round(sum(r.get("seconds", 0.0) for r in results), 1),
        "machine": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "workers": workers,
        },
    }
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if claim.figure is not None:
        claim.figure(results, results_dir / f"{claim.name}.png")
    if claim.tensorboard is not None:
        claim.tensorboard(results, cache / "tb")
    return out


def _keep(cache: Path, done: dict[str, CellResult], measured: tuple[str, CellResult]) -> None:
    key, result = measured
    (cache / f"{key}.json").write_text(json.dumps(result), encoding="utf-8")
    done[key] = result


def load_results(claim: Claim, results_dir: Path = RESULTS_DIR) -> list[CellResult] | None:
    record = load_record(claim, results_dir)
    return None if record is None else record["cells"]


def load_record(claim: Claim, results_dir: Path = RESULTS_DIR) -> ResultsRecord | None:
    path = results_dir / f"{claim.name}.json"
    if not path.is_file():
        return None
    return cast(ResultsRecord, json.loads(path.read_text(encoding="utf-8")))


def code_commit() -> str:
    """The git commit of the code measuring now, with `+uncommitted` when albert_gpt/ or configs/ differ
    from it (such results cannot show that their rule was committed first); `unknown` outside git."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "albert_gpt", "configs"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def provenance_problem(claim: Claim, record: ResultsRecord) -> str | None:
    """Why a results file cannot stand as pre-registered evidence for the claim's current rule; None when
    it can: it records the current rule's hash and was measured by committed code."""
    rule = record.get("rule")
    if not isinstance(rule, dict):
        return "measured before results recorded their rule: re-run to verify"
    if rule.get("sha256") != claim.rule_sha256():
        return "the rule changed after these results were measured: re-run"
    commit = str(record.get("commit", "unknown"))
    if commit == "unknown" or commit.endswith("+uncommitted"):
        return "measured by code that was not committed: the rule's pre-registration cannot be shown"
    return None


# ---------------------------------------------------------------- docs/claims.md

_HEADER = """# The claims ledger

Every claim the LayerNorm article makes that this framework can test, tested on it. Each row
names the experiment (a config under `configs/claims/` and a grid of cells), the metric, and a
decision rule written down and committed before the runs; the verdict is computed by code from the
results file (`docs/claims/NAME.json`), never typed. Where the measurement disagrees with the
article, the verdict says *contradicted*.

Second edition: a rule is data (`albert_gpt/study/claims/rules.py`) that both renders
the sentence below and computes the verdict with scipy's tests (paired t for continuous metrics, the
exact paired permutation test for counts and widths, Holm across comparisons), gated on "trained"
and, for a claimed failure, on a positive control; verdicts are symmetric (supported, contradicted,
undecided, not testable here). Each results file records its rule's text and sha256, the commit of
the code that measured it and the verdict computed then; a row whose file does not record the
current rule, or was measured by uncommitted code, is marked *unverified* with the reason.

Reproduce one row with `albert-gpt study claim NAME` (`--size gpu` for the larger grid), or all of
them with `albert-gpt study claim all`; results go to `claims_runs/` unless `--write-docs` asks for
`docs/`. `albert-gpt study claim ledger --write-docs` rewrites this file from the results files without
running anything. This file is generated: edit the claim modules under `albert_gpt/study/claims/`, not
this page.
"""


def write_ledger(claims: list[Claim], results_dir: Path = RESULTS_DIR, path: Path = LEDGER_FILE) -> Path:
    """docs/claims.md from the claims' results files: what was found (rows with a summary), a summary
    table, then a section per claim."""
    summary = ["| | claim | article | verdict | result (mean [95% CI]) |", "|---|---|---|---|---|"]
    sections = []
    for claim in claims:
        record = load_record(claim, results_dir)
        verdict, reason, headline, analysis = judged_row(claim, record)
        summary.append(
            f"| {claim.letter} | [{claim.title}](#{claim.letter}-{_anchor(claim.title)}) | "
            f"{claim.sections} | **{verdict}** | {headline.replace('|', '/')} |"
        )
        sections.append(_section(claim, analysis, results_dir, verdict, reason, record))
    found = findings(claims, results_dir, figures="claims")
    text = _HEADER + "\n" + (found + "\n\n" if found else "") + "\n".join(summary) + "\n\n" + \
        "\n\n".join(sections) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


FINDINGS_BEGIN, FINDINGS_END = "<!-- findings:begin -->", "<!-- findings:end -->"


def findings(claims: list[Claim], results_dir: Path = RESULTS_DIR, figures: str = "docs/claims") -> str:
    """The plain-words summaries of the rows that have one, each with its verdict and figure (`figures`: the
    figures' folder as seen from the page that shows them); empty when none has results."""
    parts = []
    for claim in claims:
        record = load_record(claim, results_dir)
        if claim.summary is None or not record or not record.get("cells"):
            continue
        verdict, _, _, _ = judged_row(claim, record)
        figure = f"![claim {claim.letter}]({figures}/{claim.name}.png)"
        parts.append(f"### {claim.title} (row {claim.letter}: {verdict})\n\n"
                     f"{claim.summary(record['cells'])}\n\n{figure}")
    return "\n\n".join(parts)


def write_findings(claims: list[Claim], readme: Path, results_dir: Path = RESULTS_DIR) -> bool:
    """Replace the README's findings block (between FINDINGS_BEGIN and FINDINGS_END) with `findings`;
    False when the README has no such block."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(FINDINGS_BEGIN), text.find(FINDINGS_END)
    if start < 0 or end < start:
        return False
    block = findings(claims, results_dir) or "(no row with a summary has been measured yet)"
    text = text[: start + len(FINDINGS_BEGIN)] + "\n" + block + "\n" + text[end:]
    readme.write_text(text, encoding="utf-8")
    return True


def judged_row(claim: Claim, record: ResultsRecord | None) -> tuple[str, str, str, Analysis | None]:
    """(verdict as shown, reason, headline, analysis) of a claim's results file under its current rule."""
    if not record or not record.get("cells"):
        return "not run yet", "", "-", None
    results = record["cells"]
    try:
        analysis = claim.analyze(results)
        verdict, reason, headline = claim.verdict_of(results)
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # a file from an older grid or metric
        return ("cannot be judged: its results file does not fit the current claim (re-run)",
                f"{type(exc).__name__}: {exc}", "-", None)
    if verdict not in VERDICTS:
        raise ValueError(f"claim {claim.letter}: verdict {verdict!r} is not one of {VERDICTS}")
    problem = provenance_problem(claim, record)
    if problem:
        verdict = f"{verdict} (unverified: {problem})"
    return verdict, reason, headline, analysis


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-").replace("--", "-")


def _run_time(record: ResultsRecord | None) -> str:
    """How long the row's cells took, from its results file."""
    if not record or "cell_seconds_total" not in record:
        return ""
    machine = record.get("machine", {})
    return (f"Run time: {len(record['cells'])} cells, {_duration(record['cell_seconds_total'])} of cell time "
            f"on {machine.get('processor', 'an unrecorded processor')} ({machine.get('workers', '?')} at a "
            f"time; the last call's wall time {_duration(record.get('wall_seconds_this_call', 0))}).")


def _sentence(text: str) -> str:
    return text if not text or text.endswith(".") else text + "."


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} minutes"


def _section(claim: Claim, analysis: Analysis | None, results_dir: Path, verdict: str, reason: str,
             record: ResultsRecord | None = None) -> str:
    lines = [
        f"## {claim.letter}. {claim.title}",
        "",
        f"**Claim** (article section {claim.sections}): {claim.statement}",
        "",
        f"**Experiment**: {claim.experiment} Base config: [`{claim.config}`](../{claim.config}). "
        f"Command: `albert-gpt study claim {claim.name}`.",
        "",
        f"**Metric**: {claim.metric}",
        "",
        f"**Decision rule** (fixed before the runs; sha256 {claim.rule_sha256()[:12]}): "
        f"{claim.rule_text()}",
        "",
    ]
    if analysis is None:
        shown = "not run yet." if verdict == "not run yet" else f"{verdict}. {reason}"
        lines.append(f"**Result**: {shown}")
        return "\n".join(lines)
    verdict_line = f"**Verdict: {verdict}.** {_sentence(reason)} {_run_time(record)}".rstrip()
    lines += ["**Result**:", "", analysis.table, "", verdict_line]
    if (results_dir / f"{claim.name}.png").is_file():
        lines += ["", f"![claim {claim.letter}](claims/{claim.name}.png)"]
    return "\n".join(lines)
