"""`write_report(sweep_dir)`: report.md with tables and PNG plots from a sweep's runs.

Tables come from summary.json (written by the sweep); curves and per-depth diagnostics from
each run's metrics.jsonl. Plots need matplotlib (the `plots` extra); without it the report
holds the tables and says which plots it skipped.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from pathlib import Path
from typing import Any

from albert_gpt.errors import ConfigError
from albert_gpt.paths import write_atomic
from albert_gpt.training.metrics import METRICS_FILE, read_metrics

log = logging.getLogger("albert_gpt")

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
FIGURES = ("curves.png", "value_vs_column.png", "depth_profiles.png")
STATUS_LETTER = {"trained": "T", "plateau": "P", "diverged": "D", "failed": "F"}
_DEPTH_TAG = re.compile(r"^diag/depth_(\d+)/(.+)$")
# (result key, column title) of the summary table, in order; a column shows only if some cell has it.
COLUMNS = (
    ("status", "status"), ("final_train_loss", "final train"), ("final_val_loss", "final val"),
    ("best_val_loss", "best val"), ("unigram_loss", "unigram"), ("eval_train_loss", "train (eval mode)"),
    ("eval_val_loss", "val (eval mode)"), ("generalization_gap", "val - train"),
    ("val_loss_train_mode", "val (train mode)"), ("mode_gap", "train mode - eval mode"),
    ("skipped_steps", "skipped"), ("params_unique", "unique params"), ("params_applied", "applied params"),
    ("steps", "steps"), ("wall_time_s", "wall s"),
)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(summary: dict[str, Any]) -> str:
    """One row per cell: its axis values, status, losses and whatever else was measured."""
    cells, axes = summary["cells"], summary["axes"]
    columns = [(k, t) for k, t in COLUMNS if any(c.get(k) is not None for c in cells)]

    def shown(cell: dict[str, Any], key: str) -> Any:
        value = cell.get(key)
        return f"{value:.1f}" if key == "wall_time_s" and isinstance(value, (int, float)) else value

    rows = [[c["axes"].get(a) for a in axes] + [shown(c, k) for k, _ in columns] for c in cells]
    return markdown_table(list(axes) + [t for _, t in columns], rows)


def _as_list(value: Any, default: list[str]) -> list[str]:
    if value is None:
        return default
    return [value] if isinstance(value, str) else list(value)


def _ordered(cells: list[dict[str, Any]], axes: list[str]) -> list[str]:
    """Distinct combinations of `axes`, in the order the cells first show them."""
    seen: dict[str, None] = {}
    for c in cells:
        seen.setdefault(" / ".join(str(c["axes"][a]) for a in axes), None)
    return list(seen)


def _key(cell: dict[str, Any], axes: list[str]) -> str:
    return " / ".join(str(cell["axes"][a]) for a in axes)


def _aggregate(cells: list[dict[str, Any]], value: str) -> str:
    # A diverged run's last finite loss can be astronomically large; it would swamp the mean.
    numbers = [c[value] for c in cells if c.get("status") != "diverged" and _finite(c.get(value))]
    letters = "".join(STATUS_LETTER.get(str(c.get("status")), "?") for c in cells)
    if not numbers:
        return f"– {letters}"
    mean = statistics.fmean(numbers)
    spread = f" ±{statistics.pstdev(numbers):.3f}" if len(numbers) > 1 else ""
    return f"{mean:.3f}{spread} {letters}"


def pivot(summary: dict[str, Any]) -> tuple[list[str], list[str], list[str]] | None:
    """(row axes, column axes, value keys) of the pivot tables, or None for a one-axis sweep."""
    axes, opts = summary["axes"], summary.get("report") or {}
    if len(axes) < 2:
        return None
    rows = _as_list(opts.get("rows"), axes[:1])
    cols = _as_list(opts.get("cols"), [a for a in axes[1:2] if a not in rows])
    for axis in rows + cols:
        if axis not in axes:
            raise ConfigError(f"report.rows / report.cols: {axis} is not a grid axis ({', '.join(axes)})")
    return rows, cols, _as_list(opts.get("value"), ["final_val_loss"])


def pivot_table(summary: dict[str, Any], value: str) -> str:
    """rows x cols of `value`: mean ± std over the other axes, with status letters."""
    axes = pivot(summary)
    if axes is None:
        raise ValueError("a pivot table needs a sweep of at least two axes")
    rows, cols, _ = axes
    cells = summary["cells"]
    row_keys, col_keys = _ordered(cells, rows), _ordered(cells, cols)
    table = []
    for r in row_keys:
        line: list[Any] = [r]
        for c in col_keys:
            group = [x for x in cells if _key(x, rows) == r and _key(x, cols) == c]
            line.append(_aggregate(group, value) if group else "")
        table.append(line)
    return markdown_table([" / ".join(rows) + " \\ " + " / ".join(cols)] + col_keys, table)


# ---------------------------------------------------------------- plots

def _pyplot():
    """matplotlib.pyplot on a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _curves(run_dir: Path) -> dict[str, list[tuple[int, float | None]]]:
    curves: dict[str, list[tuple[int, float | None]]] = {}
    for record in read_metrics(run_dir / METRICS_FILE):
        curves.setdefault(record["tag"], []).append((record["step"], record["value"]))
    return curves


def depth_profile(curves: dict[str, list[tuple[int, float | None]]]) -> dict[str, list[float | None]]:
    """stat -> value per depth, at the last step that logged diagnostics."""
    last = max((pts[-1][0] for tag, pts in curves.items() if _DEPTH_TAG.match(tag)), default=None)
    if last is None:
        return {}
    found: dict[str, dict[int, float | None]] = {}
    for tag, pts in curves.items():
        m = _DEPTH_TAG.match(tag)
        if m:
            value = next((v for s, v in reversed(pts) if s == last), None)
            found.setdefault(m.group(2), {})[int(m.group(1))] = value
    return {stat: [by_depth.get(d) for d in range(max(by_depth) + 1)] for stat, by_depth in found.items()}


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72, bbox_inches="tight")


def plot_curves(plt: Any, summary: dict[str, Any], runs: Path, path: Path) -> None:
    """Train loss (lines) and val loss (dots) against step, one panel per row group, one colour
    per column value; the y axis stops a little above the unigram loss, so that a diverged run
    does not flatten every other curve."""
    rows, cols = (pivot(summary) or (summary["axes"][:1], [], None))[:2]
    cells = summary["cells"]
    groups = _ordered(cells, rows)
    colours = {c: f"C{i % 10}" for i, c in enumerate(_ordered(cells, cols))}
    n = len(groups)
    ncols = min(3, n)
    fig, axs = plt.subplots(math.ceil(n / ncols), ncols, figsize=(3.6 * ncols, 2.6 * math.ceil(n / ncols)),
                            squeeze=False, sharey=True)
    lowest = math.inf
    for ax, group in zip(axs.flat, groups):
        labelled: set[str] = set()
        for cell in (c for c in cells if _key(c, rows) == group):
            curves = _curves(runs / cell["cell"])
            col = _key(cell, cols) if cols else ""
            colour = colours.get(col, "C0")
            train = [(s, v) for s, v in curves.get("train/loss", []) if v is not None]
            val = [(s, v) for s, v in curves.get("val/loss", []) if v is not None]
            lowest = min([lowest] + [v for _, v in train + val])
            if train:
                ax.plot(*zip(*train), color=colour, lw=0.9, alpha=0.7,
                        label=None if col in labelled or not col else col)
                labelled.add(col)
            if val:
                ax.plot(*zip(*val), color=colour, marker=".", ms=4, ls="")
            if cell.get("unigram_loss") is not None:
                ax.axhline(cell["unigram_loss"], color="grey", ls=":", lw=0.8)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    tops = [c["unigram_loss"] + 0.5 for c in cells if c.get("unigram_loss") is not None]
    tops += [c["final_val_loss"] + 0.1 for c in cells
             if c.get("status") != "diverged" and _finite(c.get("final_val_loss"))]
    if tops and math.isfinite(lowest):
        axs[0][0].set_ylim(lowest - 0.05, max(tops))
    if cols:
        axs[0][0].legend(fontsize=6, title=" / ".join(cols), title_fontsize=6)
    for ax in list(axs.flat)[n:]:
        ax.set_visible(False)
    axs[0][0].set_ylabel("loss (nats): train lines, val dots;\ndotted: unigram", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _numeric(labels: list[str]) -> list[float] | None:
    try:
        return [float(x) for x in labels]
    except ValueError:
        return None


def plot_value_vs_column(plt: Any, summary: dict[str, Any], path: Path) -> bool:
    """The pivot's value against a numeric column axis (e.g. the learning rate), one line per row."""
    spec = pivot(summary)
    if spec is None or len(spec[1]) != 1 or spec[1][0] == "run.seed":  # seeds are numbers, not a scale
        return False
    rows, cols, values = spec
    value = values[0]
    cells = summary["cells"]
    xs = _numeric(_ordered(cells, cols))
    if xs is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, group in enumerate(_ordered(cells, rows)):
        points, failed = [], []
        for x, label in zip(xs, _ordered(cells, cols)):
            sel = [c for c in cells if _key(c, rows) == group and _key(c, cols) == label]
            good = [c[value] for c in sel if c.get("status") != "diverged" and c.get(value) is not None
                    and math.isfinite(c[value])]
            if good:
                points.append((x, statistics.fmean(good)))
            if any(c.get("status") == "diverged" for c in sel):
                failed.append(x)
        marker = "os^vD<>ph*"[i % 10]
        if points:
            ax.plot(*zip(*points), marker=marker, ms=4, lw=1.2, color=f"C{i}", label=group)
        if failed:
            ax.plot(failed, [1.0] * len(failed), marker="x", ls="", color=f"C{i}",
                    transform=ax.get_xaxis_transform(), clip_on=False)
    if max(xs) / max(min(xs), 1e-300) >= 10 and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(cols[0], fontsize=8)
    ax.set_ylabel(f"{value} (mean over other axes)", fontsize=8)
    ax.set_title("x at the top: a diverged cell", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


DEPTH_STATS = (("io_l2", "L2(in, out)"), ("io_angle_deg", "angle(in, out), degrees"),
               ("grad_norm_out", "grad norm at output"), ("attn_update_ratio", "attn update ratio"))


def plot_depth_profiles(plt: Any, summary: dict[str, Any], runs: Path, path: Path) -> bool:
    """ALBERT Figure 1 analogue and gradient norms: per-depth statistics, one line per row group."""
    rows = (pivot(summary) or (summary["axes"][:1],))[0]
    cells = summary["cells"]
    profiles: dict[str, list[dict[str, list[float | None]]]] = {}
    for cell in cells:
        prof = depth_profile(_curves(runs / cell["cell"]))
        if prof:
            profiles.setdefault(_key(cell, rows), []).append(prof)
    if not profiles:
        return False
    fig, axs = plt.subplots(1, len(DEPTH_STATS), figsize=(3.2 * len(DEPTH_STATS), 2.8))
    for ax, (stat, title) in zip(axs, DEPTH_STATS):
        for i, (group, profs) in enumerate(profiles.items()):
            series = [p[stat] for p in profs if stat in p]
            if not series:
                continue
            depth = range(max(len(s) for s in series))
            mean = [statistics.fmean([v for s in series if d < len(s) and (v := s[d]) is not None]
                                     or [math.nan]) for d in depth]
            ax.plot(list(depth), mean, marker="os^vD<>ph*"[i % 10], ms=3, lw=1, color=f"C{i}", label=group)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("depth (layer application)", fontsize=7)
        ax.tick_params(labelsize=7)
    axs[0].legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- the report

def load_summary(sweep_dir: Path) -> dict[str, Any]:
    import json

    path = Path(sweep_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep directory (no summary.json; run a sweep first)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_report(sweep_dir: Path) -> Path:
    """Write SWEEP_DIR/report.md (and SWEEP_DIR/figures/*.png when matplotlib is installed)."""
    sweep_dir = Path(sweep_dir)
    summary = load_summary(sweep_dir)
    cells = summary["cells"]
    counts = {s: sum(c.get("status") == s for c in cells) for s in STATUS_LETTER}
    wall = sum(c.get("wall_time_s") or 0.0 for c in cells)
    lines = [
        f"# Sweep report: {summary['name']}", "",
        f"- sweep file: `{summary.get('sweep_file')}`; base config: `{summary.get('base')}`",
        f"- common overrides: {', '.join(f'`{o}`' for o in summary.get('common', [])) or 'none'}",
        f"- grid axes: {', '.join(summary['axes'])}; {len(cells)} cells: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        f"- training wall time, all cells: {wall:.0f} s", "",
        "Status: **T** trained, **P** plateau (final val loss not more than 0.1 nats below the unigram "
        "loss), **D** diverged (a non-finite loss), **F** failed (an error; see result.json).", "",
    ]
    spec = pivot(summary)
    if spec is not None:
        rows, cols, values = spec
        for value in values:
            lines += [f"## {value} by {' / '.join(rows)} and {' / '.join(cols)}", "",
                      "Mean ± std over the other axes (diverged cells left out), then one status "
                      "letter per cell.", "",
                      pivot_table(summary, value), ""]
    lines += ["## All cells", "", summary_table(summary), ""]

    plt = _pyplot()
    if plt is None:
        lines += ["Plots skipped: matplotlib is not installed (`pip install 'albert_gpt[plots]'`).", ""]
    else:
        runs, figures = sweep_dir / "runs", sweep_dir / FIGURES_DIR
        for name in FIGURES:  # a plot that no longer applies must not linger from an earlier report
            (figures / name).unlink(missing_ok=True)
        lines += ["## Plots", ""]
        plot_curves(plt, summary, runs, figures / "curves.png")
        lines += ["![validation loss curves](figures/curves.png)", ""]
        if plot_value_vs_column(plt, summary, figures / "value_vs_column.png"):
            lines += ["![final value against the column axis](figures/value_vs_column.png)", ""]
        if plot_depth_profiles(plt, summary, runs, figures / "depth_profiles.png"):
            lines += ["Per-depth diagnostics at the last logged step (mean over cells of a row group):", "",
                      "![per-depth diagnostics](figures/depth_profiles.png)", ""]
    path = sweep_dir / REPORT_FILE
    write_atomic(path, "\n".join(lines))
    return path
