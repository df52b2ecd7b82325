"""Time training steps of a config: ms/step, tokens/s, FLOPs, MFU, peak memory, data wait.

    python scripts/bench.py configs/shakespeare_char_cpu.yaml \
        --set data.path=../shared/data/tinyshakespeare.txt --compare run.dtype=float32,bfloat16
    python scripts/bench.py configs/gpt2_small_shared.yaml --synthetic --set train.batch_size=32

Prints a table, then one JSON line (a list with one object per variant) for scripts to parse.
`--compare KEY=V1,V2` builds every variant in this process and interleaves their timed steps;
repeated `--compare` flags give every combination. `--variant "KEY=V KEY=V"` (repeatable) names
each variant whole instead, for pairs that are no product of axes:
`--variant run.dtype=float32 --variant "run.dtype=bfloat16 run.compile=true"`.
`--synthetic` skips the data pipeline (random tokens of the config's vocabulary size), so it
needs neither data nor `datasets`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from albert_gpt.errors import AlbertGPTError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--compare", action="append", default=[], metavar="KEY=V1,V2",
                   help="variants to interleave; the first value is the baseline of the ratios")
    p.add_argument("--variant", action="append", default=[], metavar="'KEY=V KEY=V'",
                   help="one variant, whole (instead of --compare); the first is the baseline")
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first (compilation)")
    p.add_argument("--synthetic", action="store_true", help="random tokens instead of the data pipeline")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from albert_gpt.benchmark import benchmark, format_table

    try:
        rows = benchmark(args.config, args.set, args.compare, args.steps, args.warmup, args.synthetic,
                         args.variant)
    except AlbertGPTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
