"""The benchmark's arithmetic and plumbing: FLOP counts, MFU, memory accounting, interleaving, fallbacks.

Nothing here asserts a speed; the machine's load decides those.
Shapes: V vocabulary, H hidden size, L layer applications, T context length.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from albert_gpt import runtime
from albert_gpt.config import RunConfig, load_config
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.counting import flops_per_token
from albert_gpt.study import benchmark

ROOT = Path(__file__).resolve().parent.parent
V, H, HEADS, L, T = 40, 16, 2, 3, 8


def _config(tmp_path: Path, *extra: str):
    overrides = [
        f"model.vocab_size={V}", f"model.n_embd={H}", f"model.n_heads={HEADS}", f"model.n_layers={L}",
        f"model.block_size={T}", "model.n_groups=1", "train.batch_size=2", "run.device=cpu",
        "run.dtype=float32", f"data.cache_dir={tmp_path / 'cache'}",
    ]
    return load_config(None, overrides + list(extra))


def _write_tiny_config(tmp_path: Path) -> Path:
    """The tiny model as a YAML file, for the script-level entry points."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"run: {{device: cpu, dtype: float32}}\n"
        f"model: {{n_layers: {L}, n_embd: {H}, n_heads: {HEADS}, block_size: {T}, vocab_size: {V}}}\n"
        f"train: {{batch_size: 2}}\n", encoding="utf-8")
    return config


def _variant(tmp_path: Path, *extra: str) -> benchmark.Variant:
    cfg = _config(tmp_path, *extra)
    tokens = benchmark.synthetic_tokens(V, seed=0)
    return benchmark.build_variant("v", cfg, tokens, V)


def _hand_block_params() -> int:
    """One post-LN block: qkv and output projections, the two FFN linears, two affine LayerNorms."""
    attn = (H * 3 * H + 3 * H) + (H * H + H)
    ffn = (H * 4 * H + 4 * H) + (4 * H * H + H)
    norms = 2 * (2 * H)
    return attn + ffn + norms


def test_flops_per_token_equals_hand_count(tmp_path):
    """6 * N_applied (tied embedding once, every block application counted, positions excluded) + 12 L H T."""
    n_applied = V * H + L * _hand_block_params()
    hand = 6 * n_applied + 12 * L * H * T
    assert _variant(tmp_path).flops_per_token == hand


def test_mfu_uses_applied_not_unique_parameters(tmp_path):
    """A shared and an unshared model of one shape: different unique parameters, same FLOPs and MFU."""
    shared = _variant(tmp_path, "model.n_groups=1")
    unshared = _variant(tmp_path, "model.n_groups=3")
    unique = [sum(p.numel() for p in v.model.parameters()) for v in (shared, unshared)]
    assert unique[1] - unique[0] == 2 * _hand_block_params()
    rows = []
    for v in (shared, unshared):
        v.step_s, v.data_s = [0.01] * 3, [0.0] * 3  # the same step time for both
        rows.append(benchmark.summarize(v, peak_flops=1e9, peak_source="test"))
    assert rows[0]["flops_per_token"] == rows[1]["flops_per_token"]
    tokens_per_sec = 2 * T / 0.01
    expected = rows[0]["flops_per_token"] * tokens_per_sec / 1e9
    assert rows[0]["mfu"] == pytest.approx(expected)
    assert rows[1]["mfu"] == pytest.approx(expected)


def test_mfu_formula():
    """MFU is achieved FLOP/s (FLOPs per token x tokens per second) over the peak."""
    assert benchmark.mfu(1_000, 500.0, 1e6) == pytest.approx(0.5)


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("Tesla T4", None),
])
def test_gpu_peak_by_device_name(name, peak):
    """Known data-center GPUs get their data-sheet bf16 peak; others are left to a measured matmul."""
    assert benchmark.gpu_peak(name) == peak


def test_cpu_peak_is_measured_for_the_dtype():
    """On CPU the peak comes from a matmul timed in the dtype in use, and says so."""
    peak, source = benchmark.device_peak(torch.device("cpu"), torch.bfloat16)
    assert peak > 0
    assert "measured bfloat16 matmul" in source


def test_peak_matmul_grows_until_it_takes_long_enough_and_no_further():
    """A slow dtype (bf16 on a CPU without bf16 instructions takes minutes at 2048) stops at a size that
    takes min_seconds; a fast one grows to the cap, and the cap holds."""
    cpu = torch.device("cpu")
    assert benchmark.peak_size(cpu, torch.float32, n=1024, min_seconds=0.0) == 256
    assert benchmark.peak_size(cpu, torch.float32, n=1024, min_seconds=float("inf")) == 1024
    assert benchmark.peak_size(cpu, torch.float32, n=128, min_seconds=float("inf")) == 128


def test_each_variant_gets_the_peak_of_its_own_thread_count(tmp_path, monkeypatch):
    """The CPU peak is measured with the variant's run.threads, not whichever variant ran last."""
    config = _write_tiny_config(tmp_path)
    seen = []
    def fake_peak(device: torch.device, dtype: torch.dtype) -> float:
        seen.append(torch.get_num_threads())
        return 1e9

    monkeypatch.setattr(benchmark, "matmul_peak", fake_peak)
    before = torch.get_num_threads()
    try:
        rows = benchmark.benchmark(str(config), [], [], 1, 1, True, ["run.threads=2", "run.threads=1"])
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1]
    assert "cpu with 2 threads" in rows[0]["peak_source"]
    assert "cpu with 1 thread:" in rows[1]["peak_source"]


def test_auto_dtype_falls_back_to_float32_without_fast_bf16(monkeypatch):
    """run.dtype auto picks bf16 on a CPU with bf16 instructions, float32 on one without."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.resolve_dtype(RunConfig(dtype="auto"), cpu) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.resolve_dtype(RunConfig(dtype="auto"), cpu) == torch.float32


def test_fallback_variant_trains_in_float32(tmp_path, monkeypatch):
    """Without bf16 support an auto-dtype benchmark runs plain float32 steps (no autocast) that learn."""
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    v = _variant(tmp_path, "run.dtype=auto", "train.lr=1e-2", "train.warmup_steps=0")
    assert v.dtype == torch.float32
    x, y = v.sampler.batch(0)
    before = v.model(x, y)[1].item()
    for _ in range(5):
        v.step()
    after = v.model(x, y)[1].item()
    assert v.model.tok_emb.weight.dtype == torch.float32
    assert after < before


def test_parse_compare_gives_every_combination_first_value_first():
    """Repeated --compare flags multiply; the first combination is the baseline."""
    specs = benchmark.parse_compare(["run.dtype=float32,bfloat16", "run.compile=false,true"])
    assert [s[1] for s in specs] == [
        ["run.dtype=float32", "run.compile=false"], ["run.dtype=float32", "run.compile=true"],
        ["run.dtype=bfloat16", "run.compile=false"], ["run.dtype=bfloat16", "run.compile=true"],
    ]
    assert benchmark.parse_compare([]) == [("config", [])]


def test_parse_compare_rejects_a_spec_without_values():
    """A --compare without KEY=VALUES is a one-line error naming the spec."""
    with pytest.raises(ConfigError, match="run.dtype"):
        benchmark.parse_compare(["run.dtype"])


def test_parse_variants_keeps_each_spec_whole_in_order():
    """--variant names one variant per flag (no product); an empty spec is the config as it is."""
    specs = benchmark.parse_variants(["run.dtype=float32", "run.dtype=bfloat16  run.compile=true", ""])
    assert specs == [
        ("run.dtype=float32", ["run.dtype=float32"]),
        ("run.dtype=bfloat16 run.compile=true", ["run.dtype=bfloat16", "run.compile=true"]),
        ("config", []),
    ]
    with pytest.raises(ConfigError, match="'run.compile' is not KEY=VALUE"):
        benchmark.parse_variants(["run.dtype=bfloat16 run.compile"])


def test_compare_and_variant_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--compare and --variant"):
        benchmark.benchmark(str(tmp_path / "unread.yaml"), [], ["run.dtype=float32,bfloat16"], 1, 0, True,
                            ["run.dtype=float32"])


def test_variants_run_as_named(tmp_path):
    """Each --variant is built with exactly its overrides: labels, batch sizes and sharing follow them."""
    config = _write_tiny_config(tmp_path)
    rows = benchmark.benchmark(str(config), [], [], 1, 1, True,
                               ["model.n_groups=1", "model.n_groups=3 train.batch_size=3"])
    assert [r["variant"] for r in rows] == ["model.n_groups=1", "model.n_groups=3 train.batch_size=3"]
    assert [r["tokens_per_step"] for r in rows] == [2 * T, 3 * T]
    assert rows[1]["memory_ratio"] > 1.0


def test_timed_steps_are_interleaved(tmp_path):
    """After timed round i every variant has exactly i + 1 timed steps: round-robin, not one after another."""
    variants = [_variant(tmp_path, "model.n_groups=1"), _variant(tmp_path, "model.n_groups=3")]
    counts = []
    benchmark.run_benchmark(variants, steps=3, warmup=1,
                            on_step=lambda i: counts.append([len(v.step_s) for v in variants]))
    assert counts == [[1, 1], [2, 2], [3, 3]]
    assert all(v.steps_done == 4 for v in variants)  # warm-up steps are taken but not timed


def test_cpu_memory_counts_weights_gradients_optimizer_state_and_activations(tmp_path):
    """The counted CPU peak is weights + gradients + AdamW's two moments + saved activations."""
    v = _variant(tmp_path)
    v.step()  # AdamW creates its state on the first step
    weights = sum(p.numel() * 4 for p in v.model.parameters())  # the tied head is the embedding: once
    state = sum(t.numel() * t.element_size() for s in v.optimizer.state.values() for t in s.values())
    assert state >= 2 * weights  # exp_avg and exp_avg_sq per weight, plus step counters
    activations = benchmark.measure_saved_activations(v)
    assert activations > 2 * T * H * 4  # at least the embeddings' output and one layer's input
    assert benchmark.cpu_peak_bytes(v) == 2 * weights + state + activations


def test_bench_command_synthetic_without_datasets(tmp_path):
    """`albert-gpt bench --synthetic --compare` prints a table and a JSON line, writes the same rows
    to --json-out, and never imports `datasets`."""
    config = _write_tiny_config(tmp_path)
    json_out = tmp_path / "bench.json"
    code = (
        "import sys\n"
        "from albert_gpt.cli import main\n"
        f"rc = main(['bench', {str(config)!r}, '--synthetic', '--steps', '2', '--warmup', '1', "
        f"'--compare', 'model.n_groups=1,3', '--json-out', {str(json_out)!r}])\n"
        "print('datasets imported:', 'datasets' in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "datasets imported: False"
    rows = json.loads(lines[-2])
    assert [r["variant"] for r in rows] == ["model.n_groups=1", "model.n_groups=3"]
    assert rows[0]["flops_per_token"] == rows[1]["flops_per_token"]
    assert rows[1]["memory_ratio"] > 1.0  # two more blocks of weights, gradients and AdamW state
    assert rows[0]["speedup"] == 1.0
    assert "model.n_groups=3" in out.stdout.splitlines()[2]
    assert json.loads(json_out.read_text()) == rows
    import torch

    for row, value in zip(rows, ("1", "3")):  # what ran, on what: enough to reproduce the row
        assert row["torch_version"] == torch.__version__ and row["machine"]["torch"] == torch.__version__
        assert row["machine"]["logical_cpus"] == os.cpu_count() and row["machine"]["cpu"]
        # torch's names for the vector instructions its kernels use; a CPU without AVX512 has no bf16 ones
        isas = {"DEFAULT", "NO AVX", "AVX2", "AVX512", "VSX", "Z VECTOR", "SVE256"}
        assert row["machine"]["cpu_isa"] in isas
        if row["machine"]["cpu_isa"] in {"DEFAULT", "NO AVX", "AVX2"}:
            assert row["machine"]["cpu_bf16"] is False
        assert row["settings"]["overrides"] == [f"model.n_groups={value}"]
        assert row["settings"]["config"] == str(config) and row["settings"]["steps"] == 2


def test_bench_command_refuses_bad_step_counts(tmp_path, capsys):
    """--steps 0 is one line naming the flags, exit 2, before any model is built."""
    from albert_gpt.cli import main

    assert main(["bench", str(_write_tiny_config(tmp_path)), "--synthetic", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("albert-gpt bench: error: --steps must be >= 1") and "\n" not in err


def test_benchmark_on_real_data_pipeline(tmp_path):
    """Without --synthetic the batches come from prepare_data: the char vocabulary of the corpus."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40, encoding="utf-8")
    cfg_path = tmp_path / "real.yaml"
    cfg_path.write_text(
        f"run: {{device: cpu, dtype: float32}}\n"
        f"data: {{source: files, path: {corpus}, cache_dir: {tmp_path / 'cache'}}}\n"
        f"tokenizer: {{type: char}}\n"
        f"model: {{n_layers: 2, n_embd: {H}, n_heads: {HEADS}, block_size: {T}}}\n"
        f"train: {{batch_size: 2}}\n", encoding="utf-8")
    rows = benchmark.benchmark(str(cfg_path), [], [], steps=2, warmup=1, synthetic=False)
    (row,) = rows
    assert row["tokens_per_step"] == 2 * T
    assert 0.0 <= row["data_wait_share"] < 1.0
    from albert_gpt.data.pipeline import prepare_data

    cfg = load_config(cfg_path)
    vocab = prepare_data(cfg, progress=False).tokenizer.vocab_size
    assert vocab < 64  # the corpus's characters, not a BPE size
    assert row["flops_per_token"] == flops_per_token(dataclasses.replace(cfg.model, vocab_size=vocab))


def test_gpu_bench_script_smoke_run_on_cpu(tmp_path):
    """scripts/bench_gpu.sh end to end on a small CPU shape: a table per batch size, then the memory pair."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "BENCH_DEVICE": "cpu",
           "BENCH_BATCHES": "2 3", "BENCH_COMPILE": "false",
           "BENCH_SET": "model.n_embd=32 model.n_heads=2 model.block_size=16 model.vocab_size=300 "
                        "model.pad_vocab_multiple=8",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "bench_gpu.sh")], capture_output=True, text=True,
                         env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    for batch in (2, 3):
        (row,) = json.loads((tmp_path / f"batch{batch}.txt").read_text().splitlines()[-1])
        assert row["batch_size"] == batch and row["compile"] is False and row["dtype"] == "bfloat16"
        assert row["tokens_per_step"] == batch * 16
    shared, unshared = json.loads((tmp_path / "memory.txt").read_text().splitlines()[-1])
    assert (shared["variant"], unshared["variant"]) == ("model.n_groups=1", "model.n_groups=12")
    assert unshared["memory_ratio"] > 1.0
    summary = (tmp_path / "summary.txt").read_text()
    assert "== batch 2, compile false" in summary and "== batch 3, compile false" in summary
