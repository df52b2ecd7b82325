"""A newcomer's first day: the words the tools print when something is not what they expect, and the
small facts a user reads (version, banner, the unigram comparison, the exported generation config)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import albert_gpt
from albert_gpt.cli import main
from albert_gpt.config import ModelConfig
from albert_gpt.training.trainer import against_unigram, describe_stack

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"albert-gpt {albert_gpt.__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{albert_gpt.__version__}"' in pyproject


@pytest.mark.parametrize(
    "model, words",
    [
        (dict(n_layers=6, n_groups=1), "6 layer applications of 1 shared block, post-LN"),
        (dict(n_layers=6, n_groups=6), "6 blocks, unshared, post-LN"),
        (
            dict(n_layers=6, n_groups=2, sharing="ffn", norm_placement="pre"),
            "6 layer applications of 2 shared blocks (sharing ffn only), pre-LN",
        ),
        (dict(arch="conv", n_layers=8, n_groups=8), "8 conv blocks, unshared, post-LN"),
        (dict(arch="lstm", n_layers=2, n_groups=2), "2 LSTM layers, unshared, layernorm in the cell"),
        (
            dict(n_layers=4, n_groups=1, norm_placement="none"),
            "4 layer applications of 1 shared block, no norm",
        ),
    ],
)
def test_the_banner_says_what_the_stack_is(model, words):
    assert describe_stack(ModelConfig(**model)) == words


def test_the_unigram_comparison_stays_true_above_the_unigram():
    assert against_unigram(39.71, 562.4) == "14.2x below the unigram's 562.4"
    assert against_unigram(1687.2, 562.4) == "3.0x above the unigram's 562.4"


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_eval_generate_and_export_say_what_a_wrong_path_is(tmp_path, capsys):
    config = tmp_path / "quickstart.yaml"
    config.write_text("run: {name: q}\n", encoding="utf-8")
    assert "is a file, not a run directory" in _error(capsys, "eval", str(config))
    assert f"albert-gpt train {config}" in _error(capsys, "generate", str(config))
    runs = tmp_path / "runs"
    for name in ("alpha", "beta"):
        (runs / name / "checkpoints").mkdir(parents=True)
    err = _error(capsys, "eval", str(runs))
    assert "is a folder of runs" in err and str(runs / "alpha") in err and str(runs / "beta") in err
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "config.json").write_text("{}", encoding="utf-8")
    (exported / "model.safetensors").write_bytes(b"")
    assert "exported Hugging Face folder" in _error(capsys, "eval", str(exported))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.yaml and no checkpoints/" in _error(capsys, "export", str(empty), str(tmp_path / "out"))
    assert "run directory not found" in _error(capsys, "eval", str(tmp_path / "missing"))


def test_exported_folders_are_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "exported/quickstart/config.json"], cwd=ROOT)
    assert ignored.returncode == 0


def test_the_cli_version_runs_without_torch():
    """`albert-gpt --version` and `--help` stay fast: nothing imports torch for them."""
    code = (
        "import sys; from albert_gpt.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_training_logged_to_a_file_has_lines_not_redrawn_bars(tmp_path):
    """log.progress on, stderr a pipe (a log file, CI): periodic log lines, no carriage returns or cursor
    moves from redrawn bars."""
    from train_utils import write_config

    config = write_config(tmp_path, log={"interval": 5, "progress": True})
    done = subprocess.run(
        [sys.executable, "-m", "albert_gpt", "train", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    assert "step 20/20  loss" in done.stderr and "step 10: val loss" in done.stderr


def test_hub_reachability_is_a_real_connection(tmp_path):
    import socket

    from albert_gpt.data.sources import hub_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert hub_reachable(f"http://127.0.0.1:{port}", timeout=2)
    assert not hub_reachable(f"http://127.0.0.1:{port}", timeout=2)  # closed now: refused
    assert not hub_reachable("not a url")


def test_an_unreachable_hub_switches_datasets_offline_for_the_call_only(monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    from albert_gpt.data import sources

    before = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: False)
    with sources.offline_when_unreachable() as switched:
        assert switched and datasets.config.HF_HUB_OFFLINE and constants.HF_HUB_OFFLINE
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == before
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: True)
    with sources.offline_when_unreachable() as switched:
        assert not switched and (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == before


def test_a_hub_dataset_that_cannot_be_had_offline_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from train_utils import write_config

    from albert_gpt.data import sources

    probes = []
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: probes.append(1) and False)
    config = write_config(tmp_path, data={"source": "hub", "path": "someone/no-such-dataset"})
    err = _error(capsys, "prepare", str(config))
    assert "the hub cannot be reached from here" in err and "data.path" in err
    assert len(probes) == 1  # one probe for the three splits
