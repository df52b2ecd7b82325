"""The claims ledger's verdicts, first edition against second, generated from git and the results files.

    python scripts/ledger_changes.py           # print the table
    python scripts/ledger_changes.py --write   # replace the table in docs/experiments.md

The first edition's verdicts are read from docs/claims.md as it stood at FIRST_EDITION (the last commit
before the second edition); the second edition's are computed now from docs/claims/*.json under the
current rules, with whether each results file stands as pre-registered (its rule's hash and a clean
measuring commit).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_gpt.study.claims.ledger import judged_row, load_record  # noqa: E402
from albert_gpt.study.claims.registry import all_claims  # noqa: E402

FIRST_EDITION = "fe761aa"
DOC = ROOT / "docs" / "experiments.md"
BEGIN, END = "<!-- ledger-changes:begin -->", "<!-- ledger-changes:end -->"


def first_edition_verdicts() -> dict[str, str]:
    text = subprocess.run(["git", "show", f"{FIRST_EDITION}:docs/claims.md"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    return {m[1]: m[2] for m in re.finditer(r"^\| (\w+) \| .*? \| \*\*(.+?)\*\* \|", text, flags=re.M)}


def table() -> str:
    before = first_edition_verdicts()
    rows = ["| row | claim | first edition | second edition | results file |", "|---|---|---|---|---|"]
    for claim in all_claims():
        record = load_record(claim, ROOT / "docs" / "claims")
        shown = judged_row(claim, record)[0]
        verdict, _, status = shown.partition(" (unverified: ")
        where = "measured under the committed rule" if not status else "not re-measured yet"
        if record is None:
            where = "not run yet"
        elif not status:
            where += f" ({str(record.get('commit', ''))[:7]})"
        rows.append(f"| {claim.letter} | {claim.title} | {before.get(claim.letter, '-')} | "
                    f"{verdict if not status else '-'} | {where} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/experiments.md in place")
    generated = table()
    if not parser.parse_args().write:
        print(generated)
        return
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + generated + "\n" + text[end:], encoding="utf-8")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
