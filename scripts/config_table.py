"""Generate the README's table of config keys from the config dataclasses.

    python scripts/config_table.py          # print the table
    python scripts/config_table.py --write  # replace the table in README.md

tests/test_readme.py fails when README.md and the dataclasses disagree, so the table cannot drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from albert_gpt.config import key_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the markdown cell


def _default(text: str) -> str:
    """key_table's YAML rendering, except a multi-line YAML scalar becomes one JSON string."""
    return json.dumps(yaml.safe_load(text)) if "\n" in text else text


def markdown_table() -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, help in key_table():
        lines.append(f"| `{key}` | `{_cell(_default(default))}` | {_cell(help)} |")
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The table between the markers in README text."""
    if START not in text or END not in text:
        raise ValueError(f"README.md has no {START} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write_readme(path: Path = README) -> None:
    text = path.read_text(encoding="utf-8")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    path.write_text(f"{before}{START}\n{markdown_table()}\n{END}{after}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    if args.write:
        write_readme()
    else:
        print(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
