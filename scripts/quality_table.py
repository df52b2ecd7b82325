"""The quality ablation of docs/performance.md, from the runs themselves: final validation loss of each
arm of configs/shakespeare_char_cpu.yaml, mean and 95% t interval over seeds, written to a JSON file and
into docs/performance.md between its quality-table markers (never typed by hand).

    python scripts/quality_table.py RUNS_DIR --json docs/perf/quality.json --write

Each run directory is named ARM_sSEED (e.g. shared_lr3e-3_pda_s1); its config.yaml says what it ran.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from albert_gpt.config import load_config
from albert_gpt.study.claims.stats import mean_interval, paired_difference
from albert_gpt.study.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- quality-table:start -->", "<!-- quality-table:end -->"


def collect(runs_dir: Path) -> list[dict]:
    rows = []
    for run in sorted(p for p in runs_dir.iterdir() if (p / "metrics.jsonl").is_file()):
        match = re.fullmatch(r"(.+)_s(\d+)", run.name)
        if not match:
            continue
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        val = [r for r in records if r["tag"] == "val/loss"]
        cfg = load_config(run / "config.yaml")
        rows.append(
            {
                "arm": match.group(1),
                "seed": int(match.group(2)),
                "step": val[-1]["step"],
                "val_loss": val[-1]["value"],
                "lr": cfg.train.lr,
                "n_groups": cfg.model.n_groups,
                "per_depth_affine": cfg.model.norm_per_depth_affine,
                "dtype": cfg.run.dtype,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    base = {r["seed"]: r["val_loss"] for r in rows if r["arm"] == arms[0]}
    out = []
    for arm in arms:
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        first = mine[0]
        paired = [r for r in mine if r["seed"] in base]
        diff = (
            "-"
            if arm == arms[0]
            else str(paired_difference([r["val_loss"] for r in paired], [base[r["seed"]] for r in paired]))
        )
        out.append(
            [
                arm,
                "shared (1 block)" if first["n_groups"] == 1 else f"unshared ({first['n_groups']} blocks)",
                f"{first['lr']:g}",
                "yes" if first["per_depth_affine"] else "no",
                ", ".join(str(r["seed"]) for r in mine),
                str(mean_interval([r["val_loss"] for r in mine])),
                diff,
            ]
        )
    return markdown_table(
        [
            "arm",
            "blocks",
            "peak lr",
            "per-depth LN gain/bias",
            "seeds",
            "val loss at step 2000, mean [95% t CI]",
            f"minus {arms[0]}, paired by seed",
        ],
        out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--json", type=Path, required=True, help="results file to write")
    parser.add_argument("--write", action="store_true", help="rewrite the table in docs/performance.md")
    parser.add_argument(
        "--order", nargs="*", default=[], help="arms in table order (the first is the baseline)"
    )
    args = parser.parse_args()
    rows = collect(args.runs_dir)
    if args.order:
        rows = sorted((r for r in rows if r["arm"] in args.order), key=lambda r: args.order.index(r["arm"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    text = table(rows)
    print(text)
    if args.write:
        doc = DOC.read_text(encoding="utf-8")
        head, rest = doc.split(START, 1)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")


if __name__ == "__main__":
    main()
