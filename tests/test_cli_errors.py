"""The CLI turns user mistakes into one line on stderr and exit code 2, never a traceback."""

import subprocess
import sys

import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "albert_gpt", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


CASES = [
    ("model:\n  n_layer: 4\n", [], "unknown config key model.n_layer (did you mean model.n_layers?)"),
    (
        "model:\n  n_embd: 100\n  n_heads: 3\n",
        [],
        "model.n_embd (100) must be divisible by model.n_heads (3)",
    ),
    ("model:\n  n_layers: 6\n  n_groups: 4\n", [], "model.n_groups (4) must divide model.n_layers (6)"),
    (
        "model:\n  n_embd: 64\n  n_heads: 4\n  embedding_dim: 96\n",
        [],
        "model.embedding_dim (96) must be <= model.n_embd (64)",
    ),
    ("model:\n  norm: weightnorm\n", [], "model.norm: unknown value 'weightnorm'"),
    ("model:\n  norm_placement: middle\n", [], "model.norm_placement: unknown value 'middle'"),
    ("model:\n  sharing: heads\n", [], "model.sharing: unknown value 'heads'"),
    ("model:\n  dropout: 2\n", [], "model.dropout: 2.0 is out of range (must be <= 0.999)"),
    ("model:\n  n_layers: six\n", [], "model.n_layers: expected int, got 'six'"),
    ("", ["--set", "train.lr=fast"], "train.lr: expected float, got 'fast'"),
    ("", ["--set", "trian.lr=1"], "unknown config key trian (did you mean train?)"),
    ("model:\n\tn_layers: 4\n", [], "bad.yaml line 2: found character '\\t' that cannot start any token"),
]


@pytest.mark.parametrize("text, extra, message", CASES)
def test_bad_config_gives_one_line_and_exit_code_2(tmp_path, text, extra, message):
    """`albert-gpt info` on an invalid config prints one error line naming the key and exits with 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_cli("info", str(path), *extra)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("albert-gpt info: error: ")
    assert message in lines[0]
    assert result.stdout == ""


def test_missing_config_file(tmp_path):
    """A config path that does not exist is reported in one line with exit code 2."""
    result = run_cli("info", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"albert-gpt info: error: config file not found: {tmp_path / 'missing.yaml'}"
    )


def test_directory_without_config(tmp_path):
    """A directory that is not a run directory is reported in one line with exit code 2."""
    result = run_cli("info", str(tmp_path))
    assert result.returncode == 2
    assert "without a config.yaml" in result.stderr and "Traceback" not in result.stderr
