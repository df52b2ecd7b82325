"""Fault injection through the real command: every user mistake or hostile input ends with exit code 2,
one line naming the problem and the fix, no traceback, and nothing lost (docs/reliability.md lists
the cases). Each test plants one fault the way a user or a shared config would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_utils import tiny_raw, write_config

from albert_gpt.checkpoint import find_latest, list_checkpoints, read_pointer, verify_checkpoint
from albert_gpt.cli import main

# every test here also checks that a user's folder beside the work is byte for byte what it was
pytestmark = pytest.mark.usefixtures("bystander")


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run `albert-gpt ARGS` in this process; return (exit code, the last stderr line).

    A traceback would escape main() and fail the test; the error itself must be one line."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    return code, lines[-1] if lines else ""


def expect_error(capsys, command: str, *args: str, says: tuple[str, ...]) -> str:
    code, line = cli(capsys, command, *args)
    assert code == 2, line
    assert line.startswith(f"albert-gpt {command}: error: "), line
    for words in says:
        assert words in line, (words, line)
    return line


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _trained_run(tmp_path: Path, **train) -> Path:
    """A finished tiny run with checkpoints at steps 10 and 20; returns its run directory."""
    config = write_config(tmp_path, train=train)
    assert main(["train", str(config)]) == 0
    return tmp_path / "runs" / "tiny"


# ---------------------------------------------------------------- S1: run.name leaves out_dir


@pytest.mark.parametrize("name, problem", [
    ("../decoy", "contains a path separator"),
    ("/tmp/elsewhere", "contains a path separator"),
    ("", "is empty"),
    ("..", "is a relative path"),
    (".hidden", "starts with a dot"),
    ("a\tb", "contains a control character"),
    ("x" * 101, "has 101 characters"),
])
def test_run_name_must_be_one_plain_folder_name(tmp_path, capsys, name, problem):
    """`run.name=../decoy` with overwrite once deleted files beside out_dir; now it is refused before
    anything is touched, and the decoy's files survive."""
    decoy = tmp_path / "decoy"
    (decoy / "checkpoints").mkdir(parents=True)
    (decoy / "checkpoints" / "precious.txt").write_text("keep me")
    (decoy / "config.yaml").write_text("mine")
    config = write_config(tmp_path / "work", run={"out_dir": str(tmp_path / "work" / "runs")})
    expect_error(capsys, "train", str(config), "--set", f"run.name={name}", "--set", "run.overwrite=true",
                 says=("run.name", problem, "one plain folder name"))
    assert (decoy / "checkpoints" / "precious.txt").read_text() == "keep me"
    assert (decoy / "config.yaml").read_text() == "mine"


def test_a_run_directory_linked_outside_out_dir_is_refused(tmp_path, capsys):
    """A run directory that is a symbolic link out of out_dir is neither cleaned nor written."""
    decoy = tmp_path / "decoy"
    (decoy / "checkpoints").mkdir(parents=True)
    (decoy / "checkpoints" / "precious.txt").write_text("keep me")
    config = write_config(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(decoy, target_is_directory=True)
    expect_error(capsys, "train", str(config), "--set", "run.overwrite=true",
                 says=("symbolic link leading outside run.out_dir", "refusing"))
    assert (decoy / "checkpoints" / "precious.txt").read_text() == "keep me"


def test_overwrite_removes_a_linked_entry_as_a_link(tmp_path, capsys):
    """Inside a run directory, a `checkpoints` link pointing elsewhere is unlinked, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoints").symlink_to(outside, target_is_directory=True)
    config = write_config(tmp_path, train={"max_steps": 2, "checkpoint_interval": 0}, eval={"interval": 0})
    assert cli(capsys, "train", str(config), "--set", "run.overwrite=true")[0] == 0
    assert (outside / "precious.txt").read_text() == "keep me"
    assert not (run_dir / "checkpoints").is_symlink() and verify_checkpoint(find_latest(run_dir))


def test_sweep_names_follow_the_same_rule(tmp_path, capsys):
    """A sweep's name and its cells become directories: a name with a separator is refused."""
    base = write_config(tmp_path)
    sweep = _write(tmp_path / "sweep.yaml", {"name": "../escape", "base": str(base),
                                             "grid": {"lr": {"a": {"train.lr": 1e-3}}}})
    expect_error(capsys, "sweep", str(sweep), says=("name", "contains a path separator"))
    assert not (tmp_path / "escape").exists()
    sweep = _write(tmp_path / "sweep2.yaml", {"name": "ok", "base": str(base),
                                              "grid": {"lr": {"../../up": {"train.lr": 1e-3}}}})
    expect_error(capsys, "sweep", str(sweep), says=("cell name", "contains a path separator"))
    assert not (tmp_path / "up").exists()


# ---------------------------------------------------------------- B1-B4: the config itself


def test_binary_config_file(tmp_path, capsys):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"model:\n  n_layers: \xff\xfe\x00\x01\n")
    expect_error(capsys, "info", str(path), says=(str(path), "not UTF-8 text (byte 19)"))


@pytest.mark.parametrize("text, says", [
    ("model: 5\n", "model: expected a mapping of keys, got 5"),
    ("model: [1]\n", "model: expected a mapping of keys, got [1]"),
    ("model: &a [*a]\n", "model: expected a mapping of keys, got [[[[...]]]]"),
    ("run: &r\n  name: *r\n", "run.name: expected str, got {'name': {'name': {'name': {...}}}}"),
    ("1: 2\n", "unknown config key 1"),
    ("model:\n  7: 2\n", "unknown config key model.7"),
])
def test_section_that_is_not_a_mapping(tmp_path, capsys, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    expect_error(capsys, "info", str(path), says=(says,))


@pytest.mark.parametrize("override, says", [
    ("model.n_layers=1e9", "model.n_layers: 1000000000 is out of range (must be <= 4,096)"),
    ("model.block_size=99999999", "model.block_size: 99999999 is out of range"),
    ("model.n_embd=1000000", "model.n_embd: 1000000 is out of range"),
    ("train.batch_size=1e12", "train.batch_size: 1000000000000 is out of range"),
])
def test_absurd_sizes_are_refused_at_once(tmp_path, capsys, override, says):
    """`info` on 1e9 layers once ran forever, building a Python list per layer."""
    expect_error(capsys, "info", str(write_config(tmp_path)), "--set", override, says=(says,))


@pytest.mark.parametrize("text, says", [
    ("train:\n  lr: .nan\n", "train.lr: must be a finite number, got nan"),
    ("train:\n  lr: .inf\n", "train.lr: must be a finite number, got inf"),
    ("model:\n  dropout: .nan\n", "model.dropout: must be a finite number, got nan"),
    ("train:\n  grad_clip: -.inf\n", "train.grad_clip: must be a finite number, got -inf"),
])
def test_nan_and_inf_are_refused(tmp_path, capsys, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    expect_error(capsys, "info", str(path), says=(says,))
    expect_error(capsys, "info", str(write_config(tmp_path)), "--set",
                 says[: says.index(":")] + "=nan", says=("must be a finite number",))


# ---------------------------------------------------------------- B5: the token cache


def _cache_entry(tmp_path: Path) -> Path:
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    return entries[0]


@pytest.mark.parametrize("tamper", ["out_of_range", "valid_ids"])
def test_a_changed_token_cache_is_detected_and_rebuilt(tmp_path, capsys, caplog, tamper):
    """Token files overwritten after the build (ids beyond the vocabulary, or other valid ids) are
    noticed by their checksum and rebuilt: the data used is the pipeline's own again."""
    config = write_config(tmp_path)
    assert cli(capsys, "prepare", str(config))[0] == 0
    entry = _cache_entry(tmp_path)
    meta = json.loads((entry / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    original = np.fromfile(entry / "train.bin", dtype=dtype)
    vocab = meta["vocab_size"]
    planted = np.full_like(original, vocab + 5) if tamper == "out_of_range" else (original + 1) % vocab
    planted.tofile(entry / "train.bin")
    os.utime(entry / "train.bin", ns=(1, 1))  # a different modification time than the one recorded

    with caplog.at_level(logging.WARNING):
        assert cli(capsys, "prepare", str(config))[0] == 0
    assert "was changed after it was built (sha256 differs); rebuilding" in caplog.text
    assert np.array_equal(np.fromfile(_cache_entry(tmp_path) / "train.bin", dtype=dtype), original)


def test_token_cache_records_checksum_and_largest_id(tmp_path, capsys):
    config = write_config(tmp_path)
    assert cli(capsys, "prepare", str(config))[0] == 0
    entry = _cache_entry(tmp_path)
    meta = json.loads((entry / "meta.json").read_text())
    for name, split in meta["splits"].items():
        tokens = np.fromfile(entry / f"{name}.bin", dtype=meta["dtype"])
        assert split["max_id"] == int(tokens.max()) < meta["vocab_size"]
        import hashlib

        assert split["sha256"] == hashlib.sha256((entry / f"{name}.bin").read_bytes()).hexdigest()


# ---------------------------------------------------------------- B6: disk full


def test_disk_full_while_checkpointing_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch):
    """ENOSPC while the second checkpoint is written: one line with the path, the room needed,
    the last good checkpoint and the resume command; no `.tmp-*` left; `latest` unchanged."""
    import errno

    from albert_gpt.checkpoint import store

    real_save = store.save_weights
    calls = []

    def full_disk(state, file):
        calls.append(file)
        if len(calls) == 2:
            file.write_bytes(b"\0" * 100)  # a half-written file, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        real_save(state, file)

    monkeypatch.setattr(store, "save_weights", full_disk)
    config = write_config(tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    line = expect_error(capsys, "train", str(config), says=(
        "cannot write checkpoint step_00000020", "No space left on device", "MB needed", "MB free",
        "the last good checkpoint is", "step_00000010", f"albert-gpt train {run_dir} --resume"))
    assert "\n" not in line
    root = run_dir / "checkpoints"
    assert not list(root.glob(".tmp-*"))
    assert read_pointer(run_dir, "latest") == "step_00000010"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000010"]
    verify_checkpoint(root / "step_00000010")

    monkeypatch.setattr(store, "save_weights", real_save)
    assert cli(capsys, "train", str(run_dir), "--resume")[0] == 0  # the printed command works
    assert read_pointer(run_dir, "latest") == "step_00000020"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return done.returncode == 0


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """The same through a real full disk: a tmpfs too small for one checkpoint, the real command in a
    subprocess. Skipped (with the reason) where a tmpfs cannot be mounted."""
    mount = tmp_path / "small"
    if not _mount_tmpfs(mount, "160k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        raw = tiny_raw(tmp_path, run={"out_dir": str(mount)})
        config = _write(tmp_path / "config.yaml", raw)
        done = subprocess.run([sys.executable, "-m", "albert_gpt", "train", str(config)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("albert-gpt train: error: ") and "No space left on device" in last, last
        assert "--resume" in last
        assert not list((mount / "tiny" / "checkpoints").glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_metrics_logger_close_never_raises(tmp_path, caplog):
    """close() runs in the trainer's `finally`; a second ENOSPC there must not hide the first error."""
    import errno

    from albert_gpt.training.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, tensorboard=False)
    real_file = logger._file

    class FullDisk:
        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    logger._file = FullDisk()
    with caplog.at_level(logging.WARNING):
        logger.close()
    assert "could not finish writing metrics" in caplog.text and "No space left" in caplog.text
    real_file.close()


# ---------------------------------------------------------------- B7: unusable run directories


@pytest.mark.parametrize("case", ["proc", "out_dir_is_file", "run_dir_is_file", "long_component"])
def test_unusable_run_directory(tmp_path, capsys, case):
    out_dir = {"proc": "/proc/albert_gpt_runs", "long_component": str(tmp_path / ("d" * 300))}.get(
        case, str(tmp_path / "runs"))
    if case == "out_dir_is_file":
        (tmp_path / "runs").write_text("a file")
    if case == "run_dir_is_file":
        (tmp_path / "runs").mkdir()
        (tmp_path / "runs" / "tiny").write_text("a file")
    config = write_config(tmp_path, run={"out_dir": out_dir})
    says = ("run directory", "choose another") if case != "run_dir_is_file" else ("is a file",)
    expect_error(capsys, "train", str(config), says=says)


# ---------------------------------------------------------------- B8 and the minor cases


def test_missing_tokenizer_in_every_checkpoint_names_the_cause(tmp_path, capsys):
    """With tokenizer.json gone from the checkpoints, the last line says so (not "not found")."""
    run_dir = _trained_run(tmp_path)
    for path in list_checkpoints(run_dir):
        (path / "tokenizer.json").unlink()
    expect_error(capsys, "eval", str(run_dir), "--checkpoint", "latest",
                 says=("is complete", "tokenizer.json: missing"))
    expect_error(capsys, "train", str(run_dir), "--resume", says=("tokenizer.json: missing",))
    assert len(list_checkpoints(run_dir)) == 2  # refusing to resume deleted nothing


def test_eval_latest_says_when_it_fell_back(tmp_path, capsys):
    """`eval --checkpoint latest` with a damaged latest uses the previous one and says so; naming the
    damaged one explicitly is an error, not a fallback."""
    run_dir = _trained_run(tmp_path)
    damaged = run_dir / "checkpoints" / "step_00000020" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-10] + b"0123456789")
    assert main(["eval", str(run_dir), "--checkpoint", "latest", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == "step_00000010"
    assert result["note"] == ("latest names step_00000020, which failed verification; "
                              "used step_00000010 instead")
    expect_error(capsys, "eval", str(run_dir), "--checkpoint", "step_00000020",
                 says=("model.safetensors", "sha256 does not match"))


def test_prompt_with_unseen_characters_is_warned_about(tmp_path, capsys, caplog):
    run_dir = _trained_run(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert main(["generate", str(run_dir), "--prompt", "the cat ☃Z", "--max-new-tokens", "3"]) == 0
    assert "2 character(s) the tokenizer never saw in training ('Z', '☃')" in caplog.text


@pytest.mark.parametrize("grad_clip, advises", [(1.0, False), (0.0, True)])
def test_divergence_advice_matches_the_config(grad_clip, advises):
    from albert_gpt.errors import TrainingError
    from albert_gpt.training.step import NonFiniteGuard

    guard = NonFiniteGuard(limit=0, grad_clip=grad_clip)
    with pytest.raises(TrainingError) as info:
        guard.record(5, skipped=True, last_checkpoint=None)
    assert ("set train.grad_clip" in str(info.value)) == advises
    assert "Lower train.lr" in str(info.value)


# ---------------------------------------------------------------- what held before, kept


def test_python_yaml_tags_never_run(tmp_path, capsys):
    """A config carrying `!!python/object/apply` is refused by safe_load; the payload never runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"run:\n  name: !!python/object/apply:os.system ['touch {marker}']\n")
    expect_error(capsys, "info", str(path), says=(str(path), "line 2"))
    assert not marker.exists()


def test_a_cache_entry_finished_by_another_process_during_the_rename_is_kept(tmp_path, monkeypatch):
    """The race the test below can only hit by chance: another process renames its complete entry into
    place between our check and our rename (rename then fails with ENOTEMPTY). Ours gives way to theirs."""
    from train_utils import tiny_config

    from albert_gpt.data import cache
    from albert_gpt.data.pipeline import prepare_data

    cfg = tiny_config(tmp_path)
    theirs = prepare_data(cfg, progress=False).cache_dir  # "the other process" finished this entry
    built = json.loads((Path(theirs) / "meta.json").read_text())
    (Path(theirs) / "meta.json").rename(tmp_path / "meta.json")  # so ours is rebuilt ...
    real_lexists, calls = cache.os.path.lexists, []

    def lexists_then_finished(path):  # ... and the check sees no entry, as before the other finished
        if Path(path) == Path(theirs) and not calls:
            calls.append(path)
            (tmp_path / "meta.json").rename(Path(theirs) / "meta.json")
            return False
        return real_lexists(path)

    monkeypatch.setattr(cache.os.path, "lexists", lexists_then_finished)
    again = prepare_data(cfg, progress=False)
    assert calls and json.loads((Path(again.cache_dir) / "meta.json").read_text()) == built
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]


def test_two_concurrent_prepares_agree(tmp_path):
    """Two processes building the same token cache at once both succeed, on one entry."""
    config = write_config(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "albert_gpt", "prepare", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    entry = _cache_entry(tmp_path)
    assert json.loads((entry / "meta.json").read_text())["splits"]["train"]["tokens"] > 0
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
