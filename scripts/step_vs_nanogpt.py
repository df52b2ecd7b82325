"""One training step of nanoGPT's CPU-recipe model beside one of albert_gpt's shipped CPU config, in one
process, interleaved, with torch.profiler's split of each step by kind of work: where the time goes, and how
much of it is matrix multiplication that no fusion can remove.

    python scripts/step_vs_nanogpt.py --nanogpt PATH/TO/nanoGPT --steps 60 \
        --out docs/perf/step_vs_nanogpt_avx2.json --write

nanoGPT's model and optimizer come from its checkout (model.GPT, GPT.configure_optimizers), built as its
README's CPU recipe builds them (4 layers, 4 heads, 128 wide, context 64, batch 12, no bias, no dropout,
float32 on a CPU, foreach AdamW), and its step is its train.py's: forward, backward, clip to 1.0, step, zero
the gradients. albert_gpt's is `training.step.train_step` on `configs/shakespeare_char_cpu.yaml` as built by
`albert-gpt bench` (dtype auto). Batches are random tokens (the cost does not depend on what they say) from
nanoGPT's 65-character vocabulary, for both, so the two do the same arithmetic.

The "matmul floor" column is the step's FLOPs (6 x applied parameters + attention, per token) at this
machine's measured matmul peak in the step's dtype: a step can beat another of the same FLOPs and precision
by at most the other's time over that floor.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shakespeare_char_cpu.yaml"
NANOGPT_VOCAB = 65  # the characters of tiny Shakespeare, as nanoGPT's prepare.py counts them
FAMILIES = {  # torch.profiler op name -> the kind of work it is
    "aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul", "aten::baddbmm": "matmul",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "aten::_softmax": "attention", "aten::_softmax_backward_data": "attention",
    "aten::masked_fill": "attention",
    "aten::gelu": "GELU", "aten::gelu_backward": "GELU",
    "aten::native_layer_norm": "LayerNorm", "aten::native_layer_norm_backward": "LayerNorm",
}
COLUMNS = ["matmul", "attention", "GELU", "LayerNorm", "AdamW", "other"]


def family(op: str) -> str:
    return FAMILIES.get(op, "other")


def nanogpt_step_fn(repo: Path, shape: Any, batch: int):
    """nanoGPT's train.py step on a model of albert_gpt's config's shape (`shape`: its ModelConfig; the
    CPU recipe's 4 layers, 4 heads, 128 wide, context 64); returns (step function, FLOPs per step)."""
    import torch

    sys.path.insert(0, str(repo))
    from model import GPT, GPTConfig  # nanoGPT's own module, from its checkout

    torch.manual_seed(1337)
    block = shape.block_size
    model = GPT(GPTConfig(block_size=block, vocab_size=NANOGPT_VOCAB, n_layer=shape.n_layers,
                          n_head=shape.n_heads, n_embd=shape.n_embd, dropout=0.0, bias=False))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    tokens = torch.randint(0, NANOGPT_VOCAB, (100_000,))

    def step() -> None:
        ix = torch.randint(len(tokens) - block - 1, (batch,))
        x = torch.stack([tokens[i : i + block] for i in ix])
        y = torch.stack([tokens[i + 1 : i + 1 + block] for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Its own count leaves out the position embedding (a lookup, no matmul); the tied head counts once.
    flops_per_token = 6 * model.get_num_params() + 12 * shape.n_layers * shape.n_embd * block
    return step, flops_per_token * batch * block


def albert_variant(sets: list[str]):
    from albert_gpt.config import load_config
    from albert_gpt.study.benchmark import build_variant, load_tokens

    cfg = load_config(str(CONFIG), [f"model.vocab_size={NANOGPT_VOCAB}", *sets])
    tokens, vocab = load_tokens(cfg, synthetic=True)
    return build_variant("albert_gpt", cfg, tokens, vocab)


def profile_families(step, n: int) -> dict[str, float]:
    """Self CPU time per step (ms), summed by kind of work, over n profiled steps.

    AdamW is the whole of `optimizer.step()` (the profiler's "Optimizer.step#..." range), whatever kernels it
    runs: fused, foreach or, as nanoGPT's on a CPU, one tensor at a time. Those kernels are element-wise,
    so their time is taken out of "other"."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    totals: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        if event.key.startswith("Optimizer.step#"):  # the range's own time, and its kernels' moved from other
            totals["AdamW"] += event.cpu_time_total / 1e3 / n
            totals["other"] -= (event.cpu_time_total - event.self_cpu_time_total) / 1e3 / n
        else:
            totals[family(event.key)] += event.self_cpu_time_total / 1e3 / n
    return {name: totals.get(name, 0.0) for name in COLUMNS}


def measure(repo: Path, steps: int, warmup: int, profiled: int, sets: list[str]) -> dict:
    import torch

    from albert_gpt.study.benchmark import matmul_peak

    variant = albert_variant(sets)
    nano_step, nano_flops = nanogpt_step_fn(repo, variant.cfg.model, variant.cfg.train.batch_size)
    programs = {
        "nanoGPT": {"step": nano_step, "dtype": torch.float32, "flops": nano_flops},
        "albert_gpt": {"step": variant.step, "dtype": variant.dtype,
                       "flops": variant.flops_per_token * variant.tokens_per_step},
    }
    for _ in range(warmup):
        for p in programs.values():
            p["step"]()
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(steps):  # round-robin: a background load slows both alike
        for name, p in programs.items():
            start = time.perf_counter()
            p["step"]()
            times[name].append(time.perf_counter() - start)
    dtypes = {p["dtype"] for p in programs.values()}
    peaks = {dtype: matmul_peak(torch.device("cpu"), dtype) for dtype in dtypes}  # one per dtype
    rows = []
    for name, p in programs.items():
        peak = peaks[p["dtype"]]
        rows.append({
            "program": name, "dtype": str(p["dtype"]).removeprefix("torch."),
            "step_ms": statistics.median(times[name]) * 1e3, "steps": steps,
            "flops_per_step": p["flops"], "matmul_peak_flops": peak,
            "floor_ms": p["flops"] / peak * 1e3,
            "profile_ms": profile_families(p["step"], profiled),
        })
    return {"rows": rows, "threads": torch.get_num_threads()}


def format_table(result: dict) -> str:
    lines = ["| program | dtype | step, median (ms) | " + " | ".join(COLUMNS) + " | matmul floor (ms) "
             "| nanoGPT's step / albert_gpt's |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " | ---: | ---: |"]
    nano = next(r for r in result["rows"] if r["program"] == "nanoGPT")
    for r in result["rows"]:
        ratio = "-" if r is nano else f"{nano['step_ms'] / r['step_ms']:.2f}x"
        split = " | ".join(f"{r['profile_ms'][c]:.1f}" for c in COLUMNS)
        lines.append(f"| {r['program']} | {r['dtype']} | {r['step_ms']:.1f} | {split} | {r['floor_ms']:.1f} "
                     f"| {ratio} |")
    return "\n".join(lines)


def write_tables(results_dir: Path = ROOT / "docs" / "perf",
                 doc_path: Path = ROOT / "docs" / "performance.md") -> None:
    """Every machine's table (docs/perf/step_vs_nanogpt*.json) into docs/performance.md, between its
    markers."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from vs_nanogpt import describe_machine

    files = sorted(results_dir.glob("step_vs_nanogpt*.json"))
    results = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    results.sort(key=lambda r: (r["date"], r.get("time", "")))
    body = "\n\n".join(
        f"**{describe_machine(r['machine'])}**, {r['date']}, {r['result']['threads']} threads, "
        f"{r['result']['rows'][0]['steps']} interleaved steps each:\n\n{format_table(r['result'])}"
        for r in results)
    doc = doc_path.read_text(encoding="utf-8")
    start, end = "<!-- step-vs-nanogpt:start -->", "<!-- step-vs-nanogpt:end -->"
    head, rest = doc.split(start, 1)
    intro = ("Measured by `scripts/step_vs_nanogpt.py`; the split by kind of work is the profiler's self CPU "
             "time per step (it adds some overhead of its own), one table per machine.")
    doc_path.write_text(f"{head}{start}\n{intro}\n\n{body}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each, interleaved")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each first")
    parser.add_argument("--profiled", type=int, default=20, help="steps of each under the profiler")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of albert_gpt's config (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for this machine's result")
    parser.add_argument("--write", action="store_true", help="rewrite the tables in docs/performance.md")
    args = parser.parse_args()
    if not (args.nanogpt / "model.py").exists():
        raise SystemExit(f"--nanogpt: {args.nanogpt} has no model.py (a nanoGPT checkout is needed)")
    sys.path.insert(0, str(ROOT / "scripts"))
    from vs_nanogpt import machine_info

    result = {"result": measure(args.nanogpt, args.steps, args.warmup, args.profiled, args.set),
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M"),
              "overrides": args.set}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(format_table(result["result"]))
    if args.write:
        write_tables()


if __name__ == "__main__":
    main()
