"""README.md stays true: its config table is the generated one, and its commands exist."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

from albert_gpt.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _config_table_script():
    spec = importlib.util.spec_from_file_location("config_table", ROOT / "scripts" / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_config_table_is_the_generated_one():
    """The table between the config-table markers equals the one generated from the dataclasses."""
    script = _config_table_script()
    table = script.readme_table(README)
    assert table == script.markdown_table()
    assert table.count("\n| `") == len(script.key_table())  # one row per key


def test_setup_lines_use_what_exists():
    """The two set-up lines (tests, quickstart) pin the torch CI installs, name an existing extra,
    and end in a command that exists: pytest, or `albert-gpt train` on a shipped config."""
    setup = [line for line in _bash_lines() if line.startswith("python3 -m venv")]
    assert len(setup) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    ci_torch = re.search(r"pip install -q (torch==\S+)", ci).group(1)
    # tomllib is 3.11+ and the project supports 3.10: read the extras' names from their TOML table
    table = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = re.findall(r"^(\w+)\s*=", table, flags=re.M)
    assert "dev" in extras
    for line in setup:
        steps = [shlex.split(step) for step in line.split("&&")]
        assert ["pip", "install", ci_torch] in steps
        (install,) = [s for s in steps if s[:3] == ["pip", "install", "-e"]]
        extra = re.fullmatch(r"\.(?:\[([\w,]+)\])?", install[3])
        assert extra and (extra.group(1) is None or set(extra.group(1).split(",")) <= set(extras))
    test_line, quickstart = sorted(setup, key=lambda line: "pytest" not in line)
    assert test_line.endswith("python -m pytest -q")
    ci_install = re.search(r'pip install -q -e "([^"]+)"', ci).group(1)
    assert f'pip install -e "{ci_install}"' in test_line  # the README's test line installs what CI does
    last = shlex.split(quickstart.split("&&")[-1])
    assert last[:2] == ["albert-gpt", "train"] and (ROOT / last[2]).is_file()


def test_every_albert_gpt_command_in_the_readme_parses():
    """Each `albert-gpt ...` line of the README's bash blocks is accepted by the real argument parser."""
    parser = build_parser()
    commands = [shlex.split(line.split("&&")[-1], comments=True) for line in _bash_lines()
                if "albert-gpt " in line]
    commands = [c for c in commands if c and c[0] == "albert-gpt"]
    assert len(commands) >= 4
    for command in commands:
        args = parser.parse_args(command[1:])
        assert args.command == command[1]
        if args.command == "train" and not args.resume:
            assert (ROOT / args.config).is_file(), command


def test_where_things_are_names_every_package_folder():
    """Every folder of the package has its row in the README's "Where things are" table and a
    line in docs/design.md's layer picture, and no row names a folder that is gone."""
    section = README.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `albert_gpt/(\w+)/` \|", section, flags=re.M))
    folders = {p.parent.name for p in (ROOT / "albert_gpt").glob("*/__init__.py")}
    assert rows == folders
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    layers = design.split("## 2.", 1)[1].split("## 3.", 1)[0]
    for folder in folders:
        assert re.search(rf"^\s+\d\s+{folder}/", layers, flags=re.M), folder


def test_every_subcommand_has_a_one_line_help():
    """`albert-gpt --help` lists each subcommand with its one-line help, bench and study among them."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    assert {"info", "prepare", "train", "eval", "generate", "sweep", "report", "bench", "study"} <= set(helps)
    assert all(h and "\n" not in h for h in helps.values()), helps
    text = parser.format_help()
    for name, help_text in helps.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(help_text[:30])}", text, flags=re.M), name


def _all_parsers(parser):
    """The parser and every subcommand parser below it, with their command names."""
    yield "albert-gpt", parser
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                for inner, p in _all_parsers(sub):
                    yield f"{name} {inner}".replace(" albert-gpt", ""), p


def test_every_option_of_every_command_has_help():
    missing = [
        f"{name}: {'/'.join(a.option_strings) or a.dest}"
        for name, p in _all_parsers(build_parser())
        for a in p._actions
        if a.__class__.__name__ not in ("_HelpAction", "_SubParsersAction") and not a.help
    ]
    assert missing == []


def test_global_flags_work_after_the_subcommand_too(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["-v", "info", "c.yaml"]).verbose is True
    assert parser.parse_args(["info", "c.yaml", "-v"]).verbose is True
    assert parser.parse_args(["study", "claim", "a", "--verbose"]).verbose is True
    assert parser.parse_args(["info", "c.yaml"]).verbose is False


def test_info_needs_no_data(tmp_path, capsys):
    from albert_gpt.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  source: files\nmodel:\n  arch: lstm\n  n_layers: 2\n  n_groups: 2\n")
    assert main(["info", str(config)]) == 0  # no data.path, no corpus: only the model is counted
    assert "model   lstm: 2 layers" in capsys.readouterr().out
