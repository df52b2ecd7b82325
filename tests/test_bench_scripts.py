"""The benchmark scripts' own logic: the corpora scripts/bench_data.py builds have the shape they claim, and
scripts/vs_nanogpt.py pairs each run with its neighbour and takes ratios of the right runs, one table per
machine, and scripts/step_vs_nanogpt.py sorts a real profile by kind of work."""

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


@pytest.fixture(scope="module")
def step_vs_nanogpt():
    return load_script("step_vs_nanogpt")


def _result(date: str, isa: str, seconds: float) -> dict:
    runs = [{"mode": "400", "pair": 0, "program": "nanoGPT", "seconds": 2 * seconds, "val_loss": None,
             "busy_before": 0.02},
            {"mode": "400", "pair": 0, "program": "albert_gpt shipped", "seconds": seconds, "val_loss": None,
             "busy_before": 0.01}]
    return {"runs": runs, "date": date,
            "machine": {"cpus": 2, "processor": "x86_64", "cpu_model": "Some CPU", "torch_isa": isa,
                        "auto_dtype_bf16": isa == "AVX512"}}


def test_each_machine_gets_its_own_table_oldest_first(vs_nanogpt, tmp_path):
    import json

    for name, result in {"vs_nanogpt_b.json": _result("2026-12-01", "AVX512", 10.0),
                         "vs_nanogpt_a.json": _result("2026-12-07", "AVX2", 30.0)}.items():
        result["summary"] = vs_nanogpt.summarize(result["runs"])
        (tmp_path / name).write_text(json.dumps(result))
    doc = tmp_path / "performance.md"
    doc.write_text("before\n<!-- vs-nanogpt:start -->\nold table\n<!-- vs-nanogpt:end -->\nafter\n")
    vs_nanogpt.write_tables(tmp_path, doc)
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("<!-- vs-nanogpt:end -->\nafter\n")
    assert "old table" not in text
    older, newer = text.index("torch's AVX512 kernels"), text.index("torch's AVX2 kernels")
    assert older < newer  # by date, not by file name
    assert "the shipped config in bf16 autocast" in text[older:newer]
    assert "the shipped config in float32 (no fast bf16)" in text[newer:]
    row = "| 400 steps, evaluation off | albert_gpt shipped | 20.0 | 10.0 | 0.50 (0.50) | 2.00x"
    assert text.count(row) == 1
    assert "| 60.0 | 30.0 |" in text[newer:]
    assert "at most 2% of the CPU" in text


def test_machine_without_a_probe_is_described_by_what_it_records(vs_nanogpt):
    assert vs_nanogpt.describe_machine({"cpus": 2, "processor": "x86_64"}) == "2 cores, x86_64"


def test_warm_names_an_existing_variant(vs_nanogpt, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [
        "vs_nanogpt.py", "--nanogpt", str(tmp_path), "--text", str(tmp_path),
        "--out", str(tmp_path / "o.json"), "--variant", "compiled=--set run.compile=true",
        "--warm", "compild"])
    with pytest.raises(SystemExit, match=r"--warm: \['compild'\] is not a --variant name \(compiled\)"):
        vs_nanogpt.main()


def test_profile_families_split_a_real_step_by_kind_of_work(step_vs_nanogpt):
    import torch

    a = torch.randn(256, 256, requires_grad=True)
    norm = torch.nn.LayerNorm(256)

    def step() -> None:
        y = torch.nn.functional.gelu(norm(a @ a))
        y.sum().backward()

    split = step_vs_nanogpt.profile_families(step, 3)
    assert list(split) == step_vs_nanogpt.COLUMNS
    assert split["matmul"] > 0 and split["GELU"] > 0 and split["LayerNorm"] > 0
    assert split["attention"] == 0 and split["AdamW"] == 0

    # nanoGPT's AdamW on a CPU runs one tensor at a time (mul_, lerp_, addcdiv_, ...): still AdamW
    optimizer = torch.optim.AdamW([a], foreach=False)

    def step_with_optimizer() -> None:
        step()
        optimizer.step()

    split = step_vs_nanogpt.profile_families(step_with_optimizer, 3)
    assert split["AdamW"] > 0 and split["other"] >= 0
    assert step_vs_nanogpt.family("aten::_foreach_mul_") == "other"  # unless inside optimizer.step()
    assert step_vs_nanogpt.family("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert step_vs_nanogpt.family("aten::view") == "other"


def test_step_table_gives_nanogpt_over_albert(step_vs_nanogpt):
    split = dict.fromkeys(step_vs_nanogpt.COLUMNS, 1.0)
    rows = [{"program": "nanoGPT", "dtype": "float32", "step_ms": 80.0, "floor_ms": 30.0,
             "profile_ms": split},
            {"program": "albert_gpt", "dtype": "bfloat16", "step_ms": 40.0, "floor_ms": 12.0,
             "profile_ms": split}]
    table = step_vs_nanogpt.format_table({"rows": rows})
    assert "| nanoGPT | float32 | 80.0 | 1.0 | 1.0 | 1.0 | 1.0 | 1.0 | 1.0 | 30.0 | - |" in table
    assert "| albert_gpt | bfloat16 | 40.0 | 1.0 | 1.0 | 1.0 | 1.0 | 1.0 | 1.0 | 12.0 | 2.00x |" in table


def test_nanogpt_env_is_named_in_its_table_and_must_be_name_value(vs_nanogpt, tmp_path, monkeypatch):
    result = _result("2026-12-07", "AVX2", 30.0)
    result["summary"] = vs_nanogpt.summarize(result["runs"])
    result["nanogpt_env"] = {"MALLOC_MMAP_THRESHOLD_": "33554432"}
    assert vs_nanogpt.machine_section(result).splitlines()[0].endswith(
        "nanoGPT ran with `MALLOC_MMAP_THRESHOLD_=33554432`.")
    del result["nanogpt_env"]  # files from before the option: no sentence about it
    assert "nanoGPT ran with" not in vs_nanogpt.machine_section(result)
    monkeypatch.setattr(sys, "argv", [
        "vs_nanogpt.py", "--nanogpt", str(tmp_path), "--text", str(tmp_path),
        "--out", str(tmp_path / "o.json"), "--nanogpt-env", "MALLOC_MMAP_THRESHOLD_"])
    with pytest.raises(SystemExit, match=r"--nanogpt-env: \['MALLOC_MMAP_THRESHOLD_'\] is not NAME=VALUE"):
        vs_nanogpt.main()
