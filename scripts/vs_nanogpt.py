"""albert_gpt beside nanoGPT on nanoGPT's CPU recipe for tiny Shakespeare, from a cold start, in adjacent
pairs on one idle machine: wall time of each whole process, the ratio per pair and its median.

    python scripts/vs_nanogpt.py --nanogpt PATH/TO/nanoGPT --text tinyshakespeare.txt --pairs 2 \
        --out docs/perf/vs_nanogpt_avx2.json --write     # one file per machine

Three modes, each reported on its own (--modes picks):

  full      nanoGPT's README CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations,
            no dropout, 20 batches of each split evaluated every 250 iterations, float32, eager) against
            configs/shakespeare_char_cpu.yaml as shipped (run.dtype auto: bf16 autocast where the CPU has
            it; the whole validation split evaluated at 700, 1400 and 2000: 335k tokens, more than
            nanoGPT's 9 x 2 x 20 batches, 276k)
  400       400 optimizer steps with evaluation as good as off (nanoGPT evaluates one batch at iteration 0;
            albert_gpt one batch at the end, no text sample, no intermediate checkpoint)
  startup   one step: imports, data, model and the first step, the fixed cost of a process

Cold start: each run is a new process, and an albert_gpt variant that compiles gets an empty inductor cache
(TORCHINDUCTOR_CACHE_DIR), as on a first run. Data preparation is done once before timing for both (nanoGPT's
prepare.py; `albert-gpt prepare`). Pairs are adjacent, with the order swapped every other pair, and before
each run the machine must be idle: the share of CPU time used by other processes over 2 s (from
/proc/stat) must be under --max-busy, else the script waits (and records what it measured).

--nanogpt-env NAME=VALUE sets an environment variable for nanoGPT's runs alone (a malloc tunable, say).

--variant NAME="--set K=V ..." adds albert_gpt variants (each runs in every pair beside nanoGPT); without
one, the shipped config runs. --warm NAME keeps that variant's inductor cache for the whole script and fills
it with one untimed run of each mode first: torch.compile's cost paid once per machine, as on a machine's
second and later runs (its rows are marked "warm cache").

Each machine keeps its own results file (--out; the CPU's name, core count, the instruction set torch uses and
whether the shipped `run.dtype: auto` picks bf16 are recorded in it), and --write renders one table per file
matching docs/perf/vs_nanogpt*.json, since only ratios of runs on one machine can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shakespeare_char_cpu.yaml"
NANOGPT_RECIPE = [  # its README's CPU line
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
    "--log_interval=10", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
    "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
]
# nanoGPT's loop runs max_iters + 1 iterations and evaluates whenever iter_num % eval_interval == 0
NANOGPT_MODES = {
    "full": [],
    "400": ["--max_iters=399", "--eval_interval=1000000", "--eval_iters=1"],
    "startup": ["--max_iters=0", "--eval_interval=1000000", "--eval_iters=1"],
}
ALBERT_MODES = {
    "full": [],
    "400": ["train.max_steps=400", "eval.interval=0", "eval.batches=1", "eval.sample_tokens=0",
            "train.checkpoint_interval=0"],
    "startup": ["train.max_steps=1", "eval.interval=0", "eval.batches=1", "eval.sample_tokens=0",
                "train.checkpoint_interval=0"],
}
MODE_TITLES = {"full": "full recipe (2000 steps with evaluations)", "400": "400 steps, evaluation off",
               "startup": "1 step (start-up)"}


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(seconds: float = 2.0) -> float:
    """The share of all cores' time spent busy over `seconds` (this script sleeps meanwhile)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_until_idle(max_busy: float, patience_s: float) -> float:
    """Wait (up to patience_s) until the machine is idle; return the busy share last measured."""
    deadline = time.monotonic() + patience_s
    while (busy := busy_fraction()) > max_busy and time.monotonic() < deadline:
        print(f"  machine busy ({busy:.0%} of the CPU); waiting", flush=True)
        time.sleep(10)
    return busy


def run_nanogpt(repo: Path, work: Path, mode: str, env: dict[str, str] | None = None) -> dict:
    out = work / "nanogpt_out"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    command = [sys.executable, "train.py", *NANOGPT_RECIPE, *NANOGPT_MODES[mode], f"--out_dir={out}"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nanoGPT failed ({mode}):\n{done.stderr[-2000:]}")
    vals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", done.stdout)
    iters = re.findall(r"iter (\d+): loss", done.stdout)
    return {"program": "nanoGPT", "seconds": seconds, "val_loss": float(vals[-1][2]) if vals else None,
            "last_iter": int(iters[-1]) if iters else None}


def run_albert(text: Path, work: Path, name: str, overrides: list[str], mode: str,
               inductor_cache: Path | None = None) -> dict:
    """One albert_gpt run; `inductor_cache` None gives it an empty torch.compile cache (a cold start)."""
    run_name = f"vs_nanogpt_{name}_{mode}"
    sets = [f"data.path={text}", f"run.out_dir={work / 'runs'}", f"run.name={run_name}", "run.overwrite=true",
            f"data.cache_dir={work / 'cache'}", "log.progress=false", *ALBERT_MODES[mode]]
    command = [sys.executable, "-m", "albert_gpt", "train", str(CONFIG)]
    for s in sets:
        command += ["--set", s]
    command += overrides
    cache = inductor_cache or tempfile.mkdtemp(prefix="inductor_", dir=work)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"albert_gpt failed ({name}, {mode}):\n{done.stderr[-2000:]}")
    metrics = (work / "runs" / run_name / "metrics.jsonl").read_text().splitlines()
    vals = [r for r in map(json.loads, metrics) if r["tag"] == "val/loss"]
    return {"program": f"albert_gpt {name}", "seconds": seconds,
            "val_loss": vals[-1]["value"] if vals else None, "last_step": vals[-1]["step"] if vals else None,
            "overrides": overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout")
    parser.add_argument("--text", required=True, type=Path, help="tiny Shakespeare (char-rnn's input.txt)")
    parser.add_argument("--pairs", type=int, default=2, help="adjacent pairs per mode")
    parser.add_argument("--modes", default="full,400,startup", help="comma-separated: full, 400, startup")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="--set K=V ..."',
                        help="an albert_gpt variant: a name and its overrides (repeatable)")
    parser.add_argument("--warm", action="append", default=[], metavar="NAME",
                        help="a variant whose inductor cache is filled by an untimed run first (repeatable)")
    parser.add_argument("--nanogpt-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for nanoGPT's runs only, e.g. a malloc tunable "
                             "(repeatable; recorded in the results)")
    parser.add_argument("--max-busy", type=float, default=0.10,
                        help="the most CPU share other processes may use before a run (over 2 s)")
    parser.add_argument("--patience", type=float, default=600.0, help="seconds to wait for an idle machine")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the runs and the summary")
    parser.add_argument("--write", action="store_true", help="rewrite the table in docs/performance.md")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in NANOGPT_MODES]:
        raise SystemExit(f"--modes: unknown {unknown} (full, 400, startup)")
    variants = {v.split("=", 1)[0]: v.split("=", 1)[1].split() for v in args.variant} or {"shipped": []}
    if unknown := [w for w in args.warm if w not in variants]:
        raise SystemExit(f"--warm: {unknown} is not a --variant name ({', '.join(variants)})")
    if bad := [e for e in args.nanogpt_env if "=" not in e]:
        raise SystemExit(f"--nanogpt-env: {bad} is not NAME=VALUE")
    nanogpt_env = dict(e.split("=", 1) for e in args.nanogpt_env)
    machine = machine_info()  # first: a probe that fails should fail before an hour of runs
    data = args.nanogpt / "data" / "shakespeare_char"
    shutil.copy(args.text, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    work = Path(tempfile.mkdtemp(prefix="vs_nanogpt_"))
    subprocess.run([sys.executable, "-m", "albert_gpt", "prepare", str(CONFIG),
                    "--set", f"data.path={args.text.resolve()}", "--set", f"data.cache_dir={work / 'cache'}"],
                   check=True, capture_output=True)
    caches = {name: work / f"inductor_{name}" for name in args.warm}  # kept for the whole script
    runs = []
    for mode in modes:
        for name, cache in caches.items():  # untimed: fills the cache, as a machine's first run would
            run_albert(args.text.resolve(), work, name, variants[name], mode, cache)
        for pair in range(args.pairs):
            programs = [("nanoGPT", None), *variants.items()]
            if pair % 2:
                programs.reverse()  # order swapped every other pair
            for name, overrides in programs:
                busy = wait_until_idle(args.max_busy, args.patience)
                if name == "nanoGPT":
                    run = run_nanogpt(args.nanogpt, work, mode, nanogpt_env)
                else:
                    run = run_albert(args.text.resolve(), work, name, overrides or [], mode, caches.get(name))
                    if name in caches:
                        run["program"] += " (warm cache)"
                runs.append({**run, "mode": mode, "pair": pair, "busy_before": round(busy, 3)})
                print(runs[-1], flush=True)
    result = {"runs": runs, "summary": summarize(runs), "date": time.strftime("%Y-%m-%d"),
              "time": time.strftime("%H:%M"), "machine": machine, "nanogpt_env": nanogpt_env}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(format_table(result))
    if args.write:
        write_tables()


def machine_info() -> dict:
    """What decides the comparison on this machine: cores, the CPU, the vector instructions torch's kernels
    use, and whether the shipped config's `run.dtype: auto` trains in bf16 here."""
    probe = ("import json, torch; from albert_gpt.runtime import cpu_has_fast_bf16; print(json.dumps("
             "{'isa': torch.backends.cpu.get_cpu_capability(), 'bf16': cpu_has_fast_bf16()}))")
    found = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                      text=True).stdout)
    model = ""
    if Path("/proc/cpuinfo").exists():
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = names[0].strip() if names else ""
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "cpu_model": model, "torch_isa": found["isa"], "auto_dtype_bf16": found["bf16"]}


def describe_machine(machine: dict) -> str:
    """A results file's machine entry in words: '2 cores, AMD EPYC, torch's AVX2 kernels, ...'."""
    parts = [f"{machine['cpus']} cores", machine.get("cpu_model") or machine["processor"]]
    if "torch_isa" in machine:
        parts.append(f"torch's {machine['torch_isa']} kernels")
    if "auto_dtype_bf16" in machine:
        parts.append("the shipped config in bf16 autocast" if machine["auto_dtype_bf16"]
                     else "the shipped config in float32 (no fast bf16)")
    if machine.get("note"):
        parts.append(machine["note"])
    return ", ".join(parts)


def summarize(runs: list[dict]) -> dict:
    """Per mode and albert_gpt program: its time over nanoGPT's in each pair, and the medians."""
    summary: dict = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        nano = {r["pair"]: r for r in runs if r["mode"] == mode and r["program"] == "nanoGPT"}
        programs = [r["program"] for r in runs if r["mode"] == mode and r["program"] != "nanoGPT"]
        for program in dict.fromkeys(programs):
            mine = {r["pair"]: r for r in runs if r["mode"] == mode and r["program"] == program}
            ratios = [mine[p]["seconds"] / nano[p]["seconds"] for p in sorted(mine)]
            summary[f"{mode}|{program}"] = {
                "mode": mode, "program": program,
                "nanogpt_s": [nano[p]["seconds"] for p in sorted(mine)],
                "albert_s": [mine[p]["seconds"] for p in sorted(mine)],
                "time_ratio": ratios, "time_ratio_median": statistics.median(ratios),
                "speedup_median": statistics.median(1 / r for r in ratios),
                "nanogpt_val_loss": [nano[p]["val_loss"] for p in sorted(mine)],
                "albert_val_loss": [mine[p]["val_loss"] for p in sorted(mine)],
            }
    return summary


def format_table(result: dict) -> str:
    lines = ["| run | program | nanoGPT, s per pair | albert_gpt, s per pair | time ratio per pair (median) "
             "| nanoGPT's time / albert_gpt's (median) | val loss: nanoGPT / albert_gpt |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["summary"].values():
        losses = "-"
        if row["mode"] == "full":
            losses = (f"{statistics.median(row['nanogpt_val_loss']):.4f} / "
                      f"{statistics.median(row['albert_val_loss']):.4f}")
        lines.append(
            f"| {MODE_TITLES[row['mode']]} | {row['program']} "
            f"| {' / '.join(f'{s:.1f}' for s in row['nanogpt_s'])} "
            f"| {' / '.join(f'{s:.1f}' for s in row['albert_s'])} "
            f"| {' / '.join(f'{x:.2f}' for x in row['time_ratio'])} ({row['time_ratio_median']:.2f}) "
            f"| {row['speedup_median']:.2f}x | {losses} |")
    return "\n".join(lines)


def machine_section(result: dict) -> str:
    """One machine's caption and table."""
    busiest = max(r["busy_before"] for r in result["runs"])
    caption = (f"**{describe_machine(result['machine'])}**, {result['date']}: adjacent pairs (order swapped "
               f"every other pair), each run a new process; other load before any run at most {busiest:.0%} "
               "of the CPU.")
    if env := result.get("nanogpt_env"):
        caption += " nanoGPT ran with " + ", ".join(f"`{k}={v}`" for k, v in env.items()) + "."
    return f"{caption}\n\n{format_table(result)}"


def write_tables(results_dir: Path = ROOT / "docs" / "perf",
                 doc_path: Path = ROOT / "docs" / "performance.md") -> None:
    """Every machine's table (docs/perf/vs_nanogpt*.json, oldest first) into docs/performance.md, between
    its vs-nanogpt markers."""
    files = sorted(results_dir.glob("vs_nanogpt*.json"))
    results = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    results.sort(key=lambda r: (r["date"], r.get("time", "")))
    body = "\n\n".join(machine_section(r) for r in results)
    doc = doc_path.read_text(encoding="utf-8")
    start, end = "<!-- vs-nanogpt:start -->", "<!-- vs-nanogpt:end -->"
    head, rest = doc.split(start, 1)
    intro = "Measured by `scripts/vs_nanogpt.py`, one table per results file, each naming its machine."
    doc_path.write_text(f"{head}{start}\n{intro}\n\n{body}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")


if __name__ == "__main__":
    main()
