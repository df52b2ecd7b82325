"""The claims ledger: what a claim is, running its cells (in parallel, resumable), and docs/claims.md.

A claim module defines a `Claim`: the sentence tested, the experiment (a config under
configs/claims/ plus the grid of cells), the metric, the decision rule (written before any run),
`measure(cell)` (one cell, in a worker process), `analyze(results)` (the verdict, computed from the
results file) and `figure(results, path)`. `run_claim` measures every cell not measured yet and
writes docs/claims/<name>.json; `write_ledger` rebuilds docs/claims.md from those files alone.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

VERDICTS = ("supported", "contradicted", "mixed", "not testable here")
DOCS = Path("docs")
LEDGER_FILE = DOCS / "claims.md"
RESULTS_DIR = DOCS / "claims"


@dataclass(frozen=True)
class Analysis:
    verdict: str  # one of VERDICTS
    reason: str  # one or two sentences: which part of the rule decided
    headline: str  # the key numbers, each a mean with its 95% interval
    table: str  # markdown, generated from the results


@dataclass(frozen=True)
class Claim:
    letter: str  # a..h: the row of the ledger
    name: str  # the command: albert-gpt study NAME
    title: str
    sections: str  # of the article
    statement: str  # the claim in one sentence, in the project's words
    experiment: str
    config: str  # the base config, under configs/claims/
    metric: str
    rule: str  # written before the runs; analyze() applies exactly this
    cells: Callable[[str], list[dict[str, Any]]]  # size ("cpu" | "gpu") -> one dict per cell
    measure: Callable[[dict[str, Any]], dict[str, Any]]  # runs in a worker; must be a module-level function
    analyze: Callable[[list[dict[str, Any]]], Analysis]
    figure: Callable[[list[dict[str, Any]], Path], None] | None = None
    # Curves worth browsing, written as TensorBoard event files under the work directory.
    tensorboard: Callable[[list[dict[str, Any]], Path], None] | None = None


def cell_key(cell: dict[str, Any]) -> str:
    return ",".join(f"{k}={cell[k]}" for k in sorted(cell))


def _init_worker() -> None:
    torch.set_num_threads(1)  # tiny models: a second thread per worker only adds contention


def _measure(claim_name: str, cell: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from albert_gpt.study.claims.registry import get_claim

    started = time.perf_counter()
    result = get_claim(claim_name).measure(cell)
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
    cells = claim.cells(size)
    cache = work_dir / claim.name / size
    cache.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
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
            futures = {pool.submit(_measure, claim.name, c): c for c in todo}
            for future in as_completed(futures):
                _keep(cache, done, future.result())
                bar.update()
    else:
        _init_worker()
        for cell in todo:
            _keep(cache, done, _measure(claim.name, cell))
            bar.update()
    bar.close()
    results = [done[cell_key(c)] for c in cells]
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{claim.name}.json"
    out.write_text(
        json.dumps(
            {
                "claim": claim.letter,
                "name": claim.name,
                "size": size,
                "cells": results,
                "wall_seconds_this_call": round(time.perf_counter() - started, 1),
                "cell_seconds_total": round(sum(r.get("seconds", 0.0) for r in results), 1),
                "machine": {
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "workers": workers,
                },
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    if claim.figure is not None:
        claim.figure(results, results_dir / f"{claim.name}.png")
    if claim.tensorboard is not None:
        claim.tensorboard(results, cache / "tb")
    return out


def _keep(cache: Path, done: dict[str, dict[str, Any]], measured: tuple[str, dict[str, Any]]) -> None:
    key, result = measured
    (cache / f"{key}.json").write_text(json.dumps(result), encoding="utf-8")
    done[key] = result


def load_results(claim: Claim, results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]] | None:
    path = results_dir / f"{claim.name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


# ---------------------------------------------------------------- docs/claims.md

_HEADER = """# The claims ledger

Every claim the LayerNorm article makes that this framework can test, tested on it. Each row
names the experiment (a config under `configs/claims/` and a grid of cells), the metric, and a
decision rule written down before the runs; the result is a mean with its 95% interval over
seeds (Student's t, n = number of seeds); the verdict is computed by code from the results file
(`docs/claims/NAME.json`), never typed. Where the measurement disagrees with the article, the
verdict says *contradicted*.

Reproduce one row with `albert-gpt study claim NAME` (default size: at most 10 minutes on 2 CPU
cores; `--size gpu` for the larger grid), or all of them with `albert-gpt study claim all`;
`albert-gpt study claim ledger` rewrites this file from the results files without running anything.
This file is generated: edit the claim modules under `albert_gpt/study/claims/`, not this page.
"""


def write_ledger(claims: list[Claim], results_dir: Path = RESULTS_DIR, path: Path = LEDGER_FILE) -> Path:
    """docs/claims.md from the claims' results files: a summary table, then a section per claim."""
    summary = ["| | claim | article | verdict | result (mean [95% CI]) |", "|---|---|---|---|---|"]
    sections = []
    for claim in claims:
        results = load_results(claim, results_dir)
        analysis = claim.analyze(results) if results else None
        if analysis is not None and analysis.verdict not in VERDICTS:
            raise ValueError(f"claim {claim.letter}: verdict {analysis.verdict!r} is not one of {VERDICTS}")
        verdict = analysis.verdict if analysis else "not run yet"
        headline = analysis.headline if analysis else "-"
        summary.append(
            f"| {claim.letter} | [{claim.title}](#{claim.letter}-{_anchor(claim.title)}) | "
            f"{claim.sections} | **{verdict}** | {headline.replace('|', '/')} |"
        )
        sections.append(_section(claim, analysis, results_dir))
    text = _HEADER + "\n" + "\n".join(summary) + "\n\n" + "\n\n".join(sections) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-").replace("--", "-")


def _section(claim: Claim, analysis: Analysis | None, results_dir: Path) -> str:
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
        f"**Decision rule** (fixed before the runs): {claim.rule}",
        "",
    ]
    if analysis is None:
        lines.append("**Result**: not run yet.")
        return "\n".join(lines)
    lines += ["**Result**:", "", analysis.table, "", f"**Verdict: {analysis.verdict}.** {analysis.reason}"]
    if (results_dir / f"{claim.name}.png").is_file():
        lines += ["", f"![claim {claim.letter}](claims/{claim.name}.png)"]
    return "\n".join(lines)
