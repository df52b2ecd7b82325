"""The benchmark scripts' own logic: the corpora scripts/bench_data.py builds have the shape they claim, and
scripts/vs_nanogpt.py pairs each run with its neighbour and takes ratios of the right runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_data():
    return load_script("bench_data")


@pytest.fixture(scope="module")
def vs_nanogpt():
    return load_script("vs_nanogpt")


def test_row_specs_give_size_files_shape_and_tokenizer(bench_data):
    args = type("Args", (), {"tokenizer": "bpe"})()
    assert bench_data.parse_row("200MB:nonewline") == (200_000_000, 1, "nonewline")
    assert bench_data.parse_row("500KBx2000") == (500_000, 2000, "lines")
    assert bench_data.parse_row("1GB@char") == (10**9, 1, "lines")
    assert bench_data.row_tokenizer("1GB@char", args) == "char"
    assert bench_data.row_tokenizer("1GB", args) == "bpe"
    with pytest.raises(SystemExit, match="cannot read"):
        bench_data.parse_row("1GB:sideways")
    with pytest.raises(SystemExit, match="not bpe or char"):
        bench_data.row_tokenizer("1GB@word", args)


@pytest.mark.parametrize("shape", ["lines", "nonewline", "nospace", "invalid"])
def test_corpora_have_the_shape_they_are_named_for(bench_data, tmp_path, shape):
    paras = ["First line of a paragraph.\nSecond line,\twith a tab.\n", "Another one: café 😀\n"]
    where = bench_data.build_corpus(tmp_path / shape, 100_000, 2, paras, shape)
    files = sorted(where.glob("*.txt"))
    data = b"".join(f.read_bytes() for f in files)
    assert len(files) == 2 and 100_000 <= len(data) < 100_000 + 200
    if shape == "nonewline":
        assert b"\n" not in data and b"\r" not in data and b" " in data
    if shape == "nospace":
        assert not any(c in data for c in b" \t\n\r")
    if shape == "invalid":
        assert 8 <= data.count(b"\xff") <= 12  # one per 10 kB
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
    else:
        data.decode("utf-8")


def test_vs_nanogpt_ratios_pair_each_run_with_its_neighbour(vs_nanogpt):
    runs = [
        {"mode": "full", "pair": 0, "program": "nanoGPT", "seconds": 60.0, "val_loss": 1.9},
        {"mode": "full", "pair": 0, "program": "albert_gpt shipped", "seconds": 30.0, "val_loss": 1.8},
        {"mode": "full", "pair": 1, "program": "albert_gpt shipped", "seconds": 45.0, "val_loss": 1.8},
        {"mode": "full", "pair": 1, "program": "nanoGPT", "seconds": 50.0, "val_loss": 1.9},
        {"mode": "full", "pair": 2, "program": "nanoGPT", "seconds": 100.0, "val_loss": 1.9},
        {"mode": "full", "pair": 2, "program": "albert_gpt shipped", "seconds": 40.0, "val_loss": 1.8},
        {"mode": "startup", "pair": 0, "program": "nanoGPT", "seconds": 2.0, "val_loss": None},
        {"mode": "startup", "pair": 0, "program": "albert_gpt shipped", "seconds": 3.0, "val_loss": None},
    ]
    summary = vs_nanogpt.summarize(runs)
    full = summary["full|albert_gpt shipped"]
    assert full["time_ratio"] == pytest.approx([0.5, 0.9, 0.4])
    assert full["time_ratio_median"] == pytest.approx(0.5)
    assert full["speedup_median"] == pytest.approx(2.0)
    assert summary["startup|albert_gpt shipped"]["time_ratio"] == pytest.approx([1.5])
    table = vs_nanogpt.format_table({"summary": summary})
    assert "| 0.50 / 0.90 / 0.40 (0.50) | 2.00x | 1.9000 / 1.8000 |" in table


def test_busy_fraction_is_a_share(vs_nanogpt):
    assert 0.0 <= vs_nanogpt.busy_fraction(0.2) <= 1.0
