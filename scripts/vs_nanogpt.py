"""albert_gpt beside nanoGPT on nanoGPT's CPU recipe for tiny Shakespeare, run in interleaved rounds on
one machine: wall time and final validation loss of each, medians, and the ratio.

    python scripts/vs_nanogpt.py --nanogpt PATH/TO/nanoGPT --text tinyshakespeare.txt --rounds 2 \
        --variant fp32="--set run.dtype=float32" --out docs/perf/vs_nanogpt.json

nanoGPT is run as its README gives the CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12,
2000 iterations, no dropout, evaluation of 20 batches per split every 250 iterations, float32, eager);
its data is prepared from the same text with its own prepare.py. albert_gpt runs
configs/shakespeare_char_cpu.yaml on the same text with each --variant's overrides, each run with an
empty torch.compile cache; it evaluates the whole validation split 3 times (335k tokens, more
evaluation work than nanoGPT's 9 x 2 x 20 batches, 276k tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NANOGPT_ARGS = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=10",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]


def run_nanogpt(repo: Path, work: Path) -> dict:
    out = work / "nanogpt_out"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "train.py", *NANOGPT_ARGS, f"--out_dir={out}"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    vals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", done.stdout)
    step, _, val = vals[-1]
    return {"program": "nanoGPT", "seconds": seconds, "val_loss": float(val), "step": int(step)}


def run_albert(text: Path, work: Path, name: str, overrides: list[str]) -> dict:
    run_name = f"vs_nanogpt_{name}"
    command = [
        sys.executable,
        "-m",
        "albert_gpt",
        "train",
        str(ROOT / "configs" / "shakespeare_char_cpu.yaml"),
        "--set",
        f"data.path={text}",
        "--set",
        f"run.out_dir={work / 'runs'}",
        "--set",
        f"run.name={run_name}",
        "--set",
        "run.overwrite=true",
        "--set",
        f"data.cache_dir={work / 'cache'}",
        "--set",
        "log.progress=false",
        *overrides,
    ]
    # each run compiles from an empty inductor cache, as a first run on a machine would
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor_", dir=work)}
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    seconds = time.perf_counter() - started
    records = [
        json.loads(line) for line in (work / "runs" / run_name / "metrics.jsonl").read_text().splitlines()
    ]
    val = [r for r in records if r["tag"] == "val/loss"][-1]
    return {
        "program": f"albert_gpt {name}",
        "seconds": seconds,
        "val_loss": val["value"],
        "step": val["step"],
        "overrides": overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout")
    parser.add_argument("--text", required=True, type=Path, help="tiny Shakespeare (char-rnn's input.txt)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each runs every program)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='NAME="--set K=V ..."',
        help="an albert_gpt variant: a name and its overrides (repeatable)",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the runs and the summary")
    parser.add_argument("--write", action="store_true", help="rewrite the table in docs/performance.md")
    args = parser.parse_args()
    variants = {v.split("=", 1)[0]: v.split("=", 1)[1].split() for v in args.variant} or {"default": []}
    data = args.nanogpt / "data" / "shakespeare_char"
    shutil.copy(args.text, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="vs_nanogpt_"))
    # one untimed albert_gpt run would build the token cache; build it now so no timed run pays for it
    subprocess.run(
        [
            sys.executable,
            "-m",
            "albert_gpt",
            "prepare",
            str(ROOT / "configs" / "shakespeare_char_cpu.yaml"),
            "--set",
            f"data.path={args.text}",
            "--set",
            f"data.cache_dir={work / 'cache'}",
        ],
        check=True,
        capture_output=True,
    )
    runs = []
    for round_ in range(args.rounds):
        runs.append({**run_nanogpt(args.nanogpt, work), "round": round_})
        print(runs[-1], flush=True)
        for name, overrides in variants.items():
            runs.append({**run_albert(args.text.resolve(), work, name, overrides), "round": round_})
            print(runs[-1], flush=True)
    summary = {}
    for program in dict.fromkeys(r["program"] for r in runs):
        mine = [r for r in runs if r["program"] == program]
        summary[program] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "median_val_loss": statistics.median(r["val_loss"] for r in mine),
        }
    base = summary["nanoGPT"]["median_seconds"]
    for row in summary.values():
        row["time_ratio_to_nanogpt"] = row["median_seconds"] / base
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    if args.write:
        write_table(runs, summary)


def write_table(runs: list[dict], summary: dict) -> None:
    """The side-by-side table into docs/performance.md, between its vs-nanogpt markers."""
    lines = [
        "| program | settings | runs (s) | median wall time | time / nanoGPT's | median val loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for program, row in summary.items():
        mine = [r for r in runs if r["program"] == program]
        settings = " ".join(mine[0].get("overrides", [])) or (
            "float32, eager (its CPU recipe)" if program == "nanoGPT" else "the config as shipped"
        )
        times = ", ".join(f"{r['seconds']:.0f}" for r in mine)
        lines.append(
            f"| {program} | {settings} | {times} | {row['median_seconds']:.0f} s | "
            f"{row['time_ratio_to_nanogpt']:.2f} | {row['median_val_loss']:.4f} |"
        )
    doc_path = ROOT / "docs" / "performance.md"
    doc = doc_path.read_text(encoding="utf-8")
    start, end = "<!-- vs-nanogpt:start -->", "<!-- vs-nanogpt:end -->"
    head, rest = doc.split(start, 1)
    doc_path.write_text(
        f"{head}{start}\n" + "\n".join(lines) + f"\n{end}{rest.split(end, 1)[1]}", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
