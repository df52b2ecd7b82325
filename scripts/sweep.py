"""Run a sweep; the same as `albert-gpt sweep`.

    python scripts/sweep.py configs/experiments/e2_stability.yaml [--set KEY=VALUE ...] [--out-dir DIR]
"""

import sys

from albert_gpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
