"""Sweeps: a grid of configs, each cell a normal run directory, resumable, with a summary table.

A sweep file (YAML; the format is documented in docs/experiments.md):

    name: e2_stability            # the sweep folder: <out_dir>/<name>
    base: ../base_tiny.yaml        # a normal config, relative to this file
    out_dir: sweeps                # optional; `--out-dir` wins
    set: {train.max_steps: 200}    # overrides for every cell
    grid:                          # the cartesian product of the axes, in this order
      variant:                     # a named axis: label -> overrides
        post: {model.norm_placement: post}
        pre: {model.norm_placement: pre}
      train.lr: [1.0e-3, 3.0e-3]   # a key axis: values of one config key
      run.seed: [1, 2]
    exclude: [{variant: pre, train.lr: 3.0e-3}]    # drop cells matching every pair of an entry
    include: [{variant: pre, train.lr: 1.0e-2, run.seed: 1}]  # extra cells (every axis given)
    post_eval: {batches: 8, train_mode: true}      # optional measurements after training
    report: {rows: variant, cols: train.lr}        # optional: the report's pivot table

Every override goes through the same typed path as `--set`, so a bad key or value fails before
any cell runs, naming the cell. Cells run in-process through `train`, one after another.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from albert_gpt.config import Config, apply_overrides, load_config, read_yaml
from albert_gpt.errors import ConfigError, TrainingError
from albert_gpt.paths import write_atomic
from albert_gpt.training.metrics import METRICS_FILE, read_metrics
from albert_gpt.typed_values import check_path_name

log = logging.getLogger("albert_gpt")

RESULT_FILE = "result.json"
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
FINAL_STATUSES = ("trained", "plateau", "diverged")  # a cell with one of these is done
# "interrupted": stopped by a signal after a checkpoint (never classified); a re-run resumes it


class SweepInterrupted(Exception):
    """A signal stopped the sweep after the current cell's checkpoint; the same command resumes it."""

    def __init__(self, signum: int, cell: str) -> None:
        super().__init__(f"sweep stopped by signal {signum} in cell {cell} (after its checkpoint); run the "
                         "same command again to resume it")
        self.signum = signum
PLATEAU_NATS = 0.1  # the margin around the unigram loss
_SWEEP_KEYS = ("name", "base", "out_dir", "set", "grid", "include", "exclude", "post_eval", "report")
_SUBKEYS = {"post_eval": ("batches", "train_mode"), "report": ("rows", "cols", "value")}


@dataclass
class Cell:
    name: str  # the run directory name, e.g. "post,lr=0.003,seed=1"
    axes: dict[str, Any]  # axis -> value (a label for named axes)
    overrides: list[str]  # KEY=VALUE strings of this cell (after the sweep's `set`)


@dataclass
class Sweep:
    name: str
    path: Path
    base: Path | None
    out_dir: str
    common: list[str]  # KEY=VALUE: the sweep's `set`, then the command line's --set
    axes: list[str]
    cells: list[Cell]
    post_eval: dict[str, Any]
    report: dict[str, Any]

    def sweep_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# ---------------------------------------------------------------- the sweep file

def _pairs(where: str, mapping: Any) -> list[str]:
    """{key: value} -> ["key=value", ...], each checked against the config's keys and types."""
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {mapping!r}")
    items = [f"{key}={'null' if value is None else value}" for key, value in mapping.items()]
    try:
        apply_overrides({}, items)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return items


def _label(value: Any) -> str:
    text = format(value, "g") if isinstance(value, float) else str(value)
    return text.replace("/", "_").replace(" ", "_")


def _value_label(axis: str, value: Any) -> str:
    """The label of `value` on `axis`: a key axis shows the value as the config reads it
    (YAML reads 1e-3 as a string and 1.0e-3 as a float; both mean 0.001)."""
    if "." not in axis:
        return str(value)
    section, name = axis.split(".", 1)
    return _label(apply_overrides({}, [f"{axis}={'null' if value is None else value}"])[section][name])


def _axis_values(where: str, key: str, spec: Any) -> dict[str, list[str]]:
    """One axis as {label: overrides}."""
    if "." not in key:  # a named axis
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"{where}.{key}: a named axis maps labels to overrides, e.g. post: "
                              "{model.norm_placement: post}")
        return {str(label): _pairs(f"{where}.{key}.{label}", ov) for label, ov in spec.items()}
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{where}.{key}: expected a non-empty list of values")
    values: dict[str, list[str]] = {}
    for value in spec:
        item = _pairs(f"{where}.{key}", {key: value})  # first: it names the sweep file on a bad value
        values[_value_label(key, value)] = item
    return values


def _cell_name(axes: list[str], values: dict[str, str]) -> str:
    leaves = [a.rsplit(".", 1)[-1] for a in axes]
    parts = []
    for axis, leaf in zip(axes, leaves):
        if "." not in axis:
            parts.append(values[axis])
        else:  # the full key only where two axes share a last component
            parts.append(f"{leaf if leaves.count(leaf) == 1 else axis}={values[axis]}")
    return ",".join(parts)


def _matches(entry: dict[str, Any], values: dict[str, str]) -> bool:
    return all(values.get(axis) == _value_label(axis, value) for axis, value in entry.items())


def load_sweep(path: Path, overrides: list[str] | None = None, out_dir: str | None = None) -> Sweep:
    """Read and check a sweep file; expand its grid into cells."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    raw = read_yaml(path) or {}  # bounded and checked as a config file is
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - set(_SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]} (known: {', '.join(_SWEEP_KEYS)})")
    for key, known in _SUBKEYS.items():
        value = raw.get(key) or {}
        bad = [k for k in value if k not in known] if isinstance(value, dict) else [value]
        if bad:
            raise ConfigError(f"{path}: {key}: unknown key {bad[0]!r} (known: {', '.join(known)})")
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: `grid` must map at least one axis to its values")
    base = raw.get("base")
    base_path = (path.parent / base) if base else None
    if base_path is not None and not base_path.is_file():
        raise ConfigError(f"{path}: base config not found: {base_path}")

    axes = [str(a) for a in grid]
    options = {a: _axis_values(f"{path}: grid", a, grid[a]) for a in axes}
    chosen = [dict(zip(axes, combo)) for combo in itertools.product(*(options[a] for a in axes))]
    for n, entry in enumerate(raw.get("exclude") or []):
        if not isinstance(entry, dict) or any(a not in options for a in entry):
            raise ConfigError(f"{path}: exclude[{n}] must map grid axes ({', '.join(axes)}) to values")
        chosen = [values for values in chosen if not _matches(entry, values)]
    for n, entry in enumerate(raw.get("include") or []):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: include[{n}] must map every grid axis to a value")
        missing = [a for a in axes if a not in entry]
        if missing:
            raise ConfigError(f"{path}: include[{n}] gives no value for axis {missing[0]}")
        values = {a: _value_label(a, entry[a]) for a in axes}
        for a in axes:
            if values[a] in options[a]:
                continue
            if "." not in a:
                raise ConfigError(f"{path}: include[{n}]: {a} has no label {values[a]!r} in the grid")
            options[a][values[a]] = _pairs(f"{path}: include[{n}]", {a: entry[a]})  # a new value
        chosen.append(values)

    cells, names = [], set()
    for values in chosen:
        name = _cell_name(axes, values)
        check_path_name(f"{path}: cell name", name)  # it becomes the cell's run directory
        if name in names:
            continue
        names.add(name)
        cells.append(Cell(name=name, axes=values, overrides=[x for a in axes for x in options[a][values[a]]]))
    common = _pairs(f"{path}: set", raw.get("set")) + list(overrides or [])
    name = str(raw.get("name") or path.stem)
    check_path_name(f"{path}: name", name)  # it becomes the sweep's directory
    return Sweep(
        name=name, path=path, base=base_path,
        out_dir=out_dir or str(raw.get("out_dir") or "sweeps"), common=common, axes=axes, cells=cells,
        post_eval=dict(raw.get("post_eval") or {}), report=dict(raw.get("report") or {}),
    )


def cell_config(sweep: Sweep, cell: Cell) -> Config:
    """The full config of one cell: base, then `set`, then the cell's axes, then its run directory."""
    runs = sweep.sweep_dir() / "runs"
    # Progress bars of single runs under the sweep's own bar would garble the terminal.
    overrides = ["log.progress=false", *sweep.common, *cell.overrides,
                 f"run.name={cell.name}", f"run.out_dir={runs}"]
    try:
        return load_config(sweep.base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{sweep.path}: cell {cell.name}: {exc}") from None


# ---------------------------------------------------------------- classification

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize_run(run_dir: Path, error: str | None = None) -> dict[str, Any]:
    """Final / best losses and the status of a run directory, from its metrics.jsonl.

    diverged: a loss was non-finite (metrics.jsonl records those as null), a step was skipped
    for a non-finite loss or gradient, or the run stopped on too many of them (`error`).
    plateau: the final val loss is not more than PLATEAU_NATS below the unigram loss (so a run
    stuck *above* the unigram loss counts too). Else trained.
    """
    curves: dict[str, list[tuple[int, Any]]] = {}
    for record in read_metrics(Path(run_dir) / METRICS_FILE):
        curves.setdefault(record["tag"], []).append((record["step"], record["value"]))
    train = curves.get("train/loss", [])
    val = curves.get("val/loss", [])
    unigram_ppl = [v for _, v in curves.get("val/unigram_perplexity", []) if _finite(v)]
    skipped = [v for _, v in curves.get("train/skipped_steps", []) if _finite(v)]
    finite_val = [v for _, v in val if _finite(v)]
    result: dict[str, Any] = {
        "steps": max((s for s, _ in train + val), default=0),
        "final_train_loss": train[-1][1] if train else None,
        "final_val_loss": val[-1][1] if val else None,
        "best_val_loss": min(finite_val) if finite_val else None,
        "unigram_loss": math.log(unigram_ppl[-1]) if unigram_ppl else None,
        "skipped_steps": int(max(skipped)) if skipped else 0,
        "error": error,
    }
    nonfinite = any(not _finite(v) for _, v in train + val)
    if error is not None or nonfinite or result["skipped_steps"] > 0:
        result["status"] = "diverged"
    elif result["final_val_loss"] is None or result["unigram_loss"] is None:
        result["status"] = "failed"  # nothing to classify: the run ended before its first evaluation
    elif result["final_val_loss"] >= result["unigram_loss"] - PLATEAU_NATS:
        result["status"] = "plateau"
    else:
        result["status"] = "trained"
    return result


# ---------------------------------------------------------------- running

def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _param_counts(cfg: Config, run_dir: Path) -> dict[str, int]:
    from albert_gpt.study.info import model_info

    resolved = run_dir / "config.yaml"
    info = model_info(load_config(resolved) if resolved.is_file() else cfg)
    return {"params_unique": info["params_unique"], "params_applied": info["params_applied"]}


def run_cell(sweep: Sweep, cell: Cell, cfg: Config) -> dict[str, Any]:
    """Train one cell (from scratch) and write its result.json; errors of the run are recorded."""
    from albert_gpt.training.trainer import train

    run_dir = cfg.run_dir
    previous = read_result(run_dir)
    resume = previous is not None and previous.get("status") == "interrupted"  # continue from its checkpoint
    if run_dir.exists() and not resume:
        # A failed or half-done cell restarts from step 0: its partial metrics would otherwise mix two runs.
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, overwrite=True))
    started = time.perf_counter()
    try:
        varied = [o.split("=", 1)[0] for o in cell.overrides]  # first in TensorBoard's hparams table
        out = train(cfg, resume=resume, hparams_first=varied)
        if out.get("interrupted"):  # a partial run is never classified as trained or anything else
            result = {"status": "interrupted", "step": out["step"], "signal": out["signal"], "error": None}
        else:
            result = summarize_run(run_dir)
    except TrainingError as exc:  # too many non-finite steps: a result of the cell, not a crash
        result = summarize_run(run_dir, str(exc))
    except Exception as exc:  # noqa: BLE001 - one broken cell must not take the sweep down
        log.error("cell %s failed: %s: %s", cell.name, type(exc).__name__, exc)
        log.debug("%s", traceback.format_exc())
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    result.update(cell=cell.name, axes=cell.axes, overrides=cell.overrides,
                  wall_time_s=round(time.perf_counter() - started, 2))
    result.update(_param_counts(cfg, run_dir))
    if sweep.post_eval and result["status"] not in ("failed", "interrupted"):
        from albert_gpt.study.modes import measure_modes

        result.update(measure_modes(run_dir, **sweep.post_eval))
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / RESULT_FILE, result)
    return result


def write_summary(sweep: Sweep, results: list[dict[str, Any]]) -> None:
    """summary.json (everything) and summary.md (the table) in the sweep directory."""
    from albert_gpt.study.report import summary_table

    sweep_dir = sweep.sweep_dir()
    data = {
        "name": sweep.name, "sweep_file": str(sweep.path), "base": str(sweep.base) if sweep.base else None,
        "common": sweep.common, "axes": sweep.axes, "report": sweep.report, "cells": results,
    }
    _write_json(sweep_dir / SUMMARY_JSON, data)
    text = f"# Sweep {sweep.name}\n\n" + summary_table(data) + "\n"
    write_atomic(sweep_dir / SUMMARY_MD, text)


def run_sweep(sweep_yaml: Path, overrides: list[str] | None = None, out_dir: str | None = None,
              progress: bool = True) -> Path:
    """Run every cell of a sweep not yet finished; return the sweep directory.

    A cell whose result.json holds a final status (trained, plateau, diverged) is skipped; a
    failed or half-done cell runs again from scratch.
    """
    sweep = load_sweep(sweep_yaml, overrides, out_dir)
    configs = [cell_config(sweep, cell) for cell in sweep.cells]  # every cell checked before any runs
    sweep_dir = sweep.sweep_dir()
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    todo = []
    for cell, cfg in zip(sweep.cells, configs):
        done = read_result(cfg.run_dir)
        if done is not None and done.get("status") in FINAL_STATUSES:
            results.append(done)
        else:
            todo.append((cell, cfg))
    if len(results):
        log.info("sweep %s: %d of %d cells already finished", sweep.name, len(results), len(sweep.cells))
    bar = tqdm(total=len(sweep.cells), initial=len(results), desc=sweep.name, unit="cell",
               disable=not progress, dynamic_ncols=True)
    try:
        for cell, cfg in todo:
            bar.set_postfix_str(cell.name)
            results.append(run_cell(sweep, cell, cfg))
            write_summary(sweep, _in_grid_order(sweep, results))
            if results[-1]["status"] == "interrupted":
                raise SweepInterrupted(results[-1]["signal"], cell.name)
            bar.update(1)
    finally:
        bar.close()
    results = _in_grid_order(sweep, results)
    write_summary(sweep, results)
    counts = {s: sum(r["status"] == s for r in results) for s in (*FINAL_STATUSES, "failed", "interrupted")}
    log.info("sweep %s: %s; %s", sweep.name, ", ".join(f"{n} {s}" for s, n in counts.items() if n),
             sweep_dir / SUMMARY_MD)
    return sweep_dir


def _in_grid_order(sweep: Sweep, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {cell.name: i for i, cell in enumerate(sweep.cells)}
    return sorted((r for r in results if r.get("cell") in order), key=lambda r: order[r["cell"]])
