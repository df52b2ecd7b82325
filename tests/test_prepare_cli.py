"""`albert-gpt prepare`: the statistics it prints, its one-line errors, and the hub configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from albert_gpt.cli import main
from albert_gpt.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_config(tmp_path: Path, **data) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for i in range(30):
        (corpus / f"{i:02d}.txt").write_text(f"Document {i} says hello to the world, {i * 'again '}\n")
    raw = {
        "data": {"source": "files", "path": str(corpus), "cache_dir": str(tmp_path / "cache"), **data},
        "tokenizer": {"type": "bpe", "vocab_size": 300},
        "log": {"progress": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_prepare_prints_statistics_then_reuses_cache(tmp_path, capsys):
    """The first run prints documents, characters, bytes, tokens per split, vocabulary, bytes per
    token, cache path, time and tokens/s; the second run reports the cache reused."""
    config = write_config(tmp_path)
    assert main(["prepare", str(config)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tokenizer\s+bpe, vocabulary \d+ \(uint16 tokens\)", out)
    assert str(tmp_path / "cache") in out
    assert re.search(r"documents\s+characters\s+bytes\s+tokens\s+bytes/token", out)
    row = r"^(train|val|test)\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)$"
    rows = {m[0]: m[1:] for m in re.findall(row, out, flags=re.M)}
    assert set(rows) == {"train", "val", "test"}
    assert sum(int(r[0]) for r in rows.values()) == 30
    assert re.search(r"tokenization [\d.]+ s = [\d,]+ tokens/s", out)
    assert main(["prepare", str(config)]) == 0
    assert "cache reused, nothing tokenized" in capsys.readouterr().out


def test_prepare_missing_path_is_one_line(tmp_path, capsys):
    """A missing data.path: exit code 2 and one line on stderr naming the path."""
    config = write_config(tmp_path)
    missing = tmp_path / "nowhere"
    assert main(["prepare", str(config), "--set", f"data.path={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"albert-gpt prepare: error: data.path: no such file or directory: {missing}"


def test_prepare_strict_utf8_is_one_line(tmp_path, capsys):
    """Invalid UTF-8 with data.encoding_errors=strict: exit code 2, file named, nothing cached."""
    config = write_config(tmp_path, encoding_errors="strict")
    (tmp_path / "corpus" / "zz.txt").write_bytes(b"bad \xfe byte\n")
    assert main(["prepare", str(config)]) == 2
    err = capsys.readouterr().err
    assert "zz.txt: invalid UTF-8 at byte 4" in err and len(err.strip().splitlines()) == 1
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_prepare_reports_replaced_bytes(tmp_path, capsys):
    """With the default replace policy the count of replaced sequences is printed."""
    config = write_config(tmp_path)
    (tmp_path / "corpus" / "zz.txt").write_bytes(b"bad \xfe and \xff bytes\n")
    assert main(["prepare", str(config)]) == 0
    assert "invalid UTF-8 sequences replaced by U+FFFD: 2" in capsys.readouterr().out


@pytest.mark.parametrize("name, dataset", [("wikitext103.yaml", "wikitext"),
                                           ("tinystories.yaml", "roneneldan/TinyStories")])
def test_hub_configs_load(name, dataset):
    """The shipped hub configs pass validation and name their dataset (they need network to prepare)."""
    cfg = load_config(CONFIGS / name)
    assert cfg.data.source == "hub" and cfg.data.path == dataset and cfg.tokenizer.type == "bpe"
    assert "NEEDS NETWORK" in (CONFIGS / name).read_text(encoding="utf-8")


def test_prepare_piped_prints_no_blank_lines_from_the_bpe_trainer(tmp_path):
    """With its output going to a pipe, `albert-gpt prepare` (progress on, the default) prints the statistics
    from the first line: the BPE trainer's bars, drawn for a terminal, left three blank lines on stdout."""
    import subprocess
    import sys

    config = write_config(tmp_path)
    command = [sys.executable, "-m", "albert_gpt", "prepare", str(config), "--set", "log.progress=true"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("source "), repr(done.stdout[:40])
