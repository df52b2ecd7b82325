"""Reliability, second round (docs/reliability.md, cases R1-R8): nothing deleted that albert_gpt did not
write, one trainer per run, bounded downloads, evaluations that cannot be silently wrong, bounded config
input, one-line errors, litter swept. Each test runs the real command and checks the exit code, the one
line, and that a bystander folder outside run.out_dir is byte for byte what it was.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import digest as _digest
from test_faults_cli import cli, expect_error
from train_utils import tiny_raw, write_config

from albert_gpt.checkpoint import list_checkpoints, reading_checkpoint, verify_checkpoint
from albert_gpt.cli import main
from albert_gpt.paths import MARKER

ROOT = Path(__file__).resolve().parents[1]


def _trained(tmp_path: Path, **sections) -> Path:
    config = write_config(tmp_path, **sections)
    assert main(["train", str(config)]) == 0
    return tmp_path / "runs" / "tiny"


@pytest.fixture
def run(tmp_path):
    return _trained(tmp_path)


# ---------------------------------------------------------------- R1: export --overwrite


def test_export_overwrite_never_deletes_the_run_its_runs_folder_or_the_working_directory(
        run, tmp_path, capsys, monkeypatch, bystander):
    before = _digest(run)
    expect_error(capsys, "export", str(run), str(run), "--overwrite", says=("is or contains the run",))
    expect_error(capsys, "export", str(run), str(run.parent), "--overwrite", says=("is or contains the run",))
    assert _digest(run) == before
    work = tmp_path / "work"
    work.mkdir()
    (work / "draft.md").write_text("unsaved")
    monkeypatch.chdir(work)
    expect_error(capsys, "export", str(run), ".", "--overwrite", says=("working directory",))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    expect_error(capsys, "export", str(run), ".", says=("working directory",))  # empty: still not replaced
    assert empty.is_dir() and list(empty.iterdir()) == []
    monkeypatch.chdir(work)
    expect_error(capsys, "export", str(run), str(tmp_path / "bystander"), "--overwrite",
                 says=("was not written by albert-gpt export",))
    assert (work / "draft.md").read_text() == "unsaved" and _digest(run) == before


def test_export_overwrite_replaces_an_earlier_export_readable_by_all(run, tmp_path, capsys, bystander):
    out = tmp_path / "exported"
    assert cli(capsys, "export", str(run), str(out))[0] == 0
    assert (out / MARKER).is_file()
    (out / "model.safetensors").write_bytes(b"stale")
    assert cli(capsys, "export", str(run), str(out), "--overwrite")[0] == 0
    assert (out / "model.safetensors").read_bytes() != b"stale"
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    (out / "my_notes.txt").write_text("added by the user")  # an export with a file export never writes
    expect_error(capsys, "export", str(run), str(out), "--overwrite",
                 says=("was not written by albert-gpt export",))
    assert (out / "my_notes.txt").is_file()
    link = tmp_path / "link"
    link.symlink_to(out)
    expect_error(capsys, "export", str(run), str(link), "--overwrite", says=("is a symbolic link",))


# ---------------------------------------------------------------- R2: links


def test_a_run_named_by_a_folder_that_links_outside_out_dir_is_refused(tmp_path, capsys, bystander):
    target = _trained(tmp_path / "elsewhere")
    (target / "checkpoints" / "user.txt").write_text("mine")
    before = _digest(target)
    runs = tmp_path / "work" / "runs"
    runs.mkdir(parents=True)
    (runs / "c").symlink_to(target)
    expect_error(capsys, "train", str(runs / "c"), "--set", "run.overwrite=true",
                 says=("symbolic link leading outside run.out_dir",))
    assert _digest(target) == before


def test_resume_through_a_checkpoints_link_is_refused_and_deletes_nothing(run, tmp_path, capsys):
    outside = tmp_path / "outside"
    shutil.move(run / "checkpoints", outside)
    (outside / ".tmp-precious").write_text("mine")
    (outside / "step_00000099").mkdir()
    (outside / "step_00000099" / "mine.txt").write_text("mine")
    (run / "checkpoints").symlink_to(outside)
    before = _digest(outside)
    expect_error(capsys, "train", str(run), "--resume", "--set", "train.max_steps=40",
                 says=("checkpoints is a symbolic link", "real folder"))
    assert _digest(outside) == before


def test_planted_temporary_links_are_never_followed(run, tmp_path, capsys, bystander):
    victim = bystander / "config.yaml"
    for name in ("config.yaml.tmp", "metrics.jsonl.tmp", "tokenizer.json.tmp", "data.json.tmp"):
        (run / name).symlink_to(victim)
    (run / "checkpoints" / ".tmp-latest").symlink_to(victim)
    assert cli(capsys, "train", str(run), "--resume", "--set", "train.max_steps=30")[0] == 0
    assert verify_checkpoint(run / "checkpoints" / "step_00000030")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)  # the resume's truncation replaces the link, not its target
    assert cli(capsys, "train", str(run), "--resume", "--set", "train.max_steps=40")[0] == 0
    assert not (run / "metrics.jsonl").is_symlink()
    assert max(json.loads(line)["step"] for line in (run / "metrics.jsonl").open()) == 40


def test_rotation_and_overwrite_keep_what_albert_gpt_did_not_write(run, capsys):
    checkpoints = run / "checkpoints"
    (checkpoints / "step_00000099").mkdir()  # a user's folder by a checkpoint's name: no manifest
    (checkpoints / "step_00000099" / "mine.txt").write_text("mine")
    (checkpoints / ".tmp-user").mkdir()
    (checkpoints / ".tmp-user" / "mine.txt").write_text("mine")
    (run / "my_plot.png").write_bytes(b"png")  # beside the event files
    (run / "events.out.tfevents.mine").mkdir()  # a folder by an event file's name: not the writer's
    legacy = run / "tb"  # a run from before event files moved into RUN_DIR
    legacy.mkdir()
    (legacy / "events.out.tfevents.1.host.1.0").write_bytes(b"old")
    assert cli(capsys, "train", str(run), "--resume", "--set", "train.max_steps=40")[0] == 0
    assert (checkpoints / "step_00000099" / "mine.txt").is_file()
    assert (checkpoints / ".tmp-user" / "mine.txt").is_file()
    config = run.parent.parent / "config.yaml"
    assert cli(capsys, "train", str(config), "--set", "run.overwrite=true")[0] == 0
    assert (checkpoints / "step_00000099" / "mine.txt").read_text() == "mine"
    assert (run / "my_plot.png").read_bytes() == b"png"
    assert (run / "events.out.tfevents.mine").is_dir() and not legacy.exists()
    events = [p for p in run.glob("events.out.tfevents.*") if p.is_file()]
    assert len(events) == 1  # the overwritten run's own, written again
    assert [p.name for p in list_checkpoints(run) if p.name != "step_00000099"] == [
        "step_00000010", "step_00000020"]


# ---------------------------------------------------------------- R3: one trainer per run


def _albert(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "albert_gpt", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_second_trainer_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(tmp_path, capsys):
    config = write_config(tmp_path, train={"max_steps": 100_000, "checkpoint_interval": 0},
                          eval={"interval": 0, "batches": 1, "sample_tokens": 0})
    first = _albert("train", str(config))
    lock = tmp_path / "runs" / "tiny" / ".lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().startswith("pid")) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        line = expect_error(capsys, "train", str(config), "--resume",
                            says=("is being trained by", f"pid {first.pid}"))
        assert "wait for it" in line
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    # the killed process's lock died with it
    again = cli(capsys, "train", str(config), "--set", "run.overwrite=true", "--set", "train.max_steps=10")
    assert again[0] == 0


def test_a_checkpoint_being_read_outlives_rotation(run, capsys):
    """An evaluation holds the checkpoint it reads: rotation leaves it for the next rotation."""
    with reading_checkpoint(run, "step_00000010") as held:
        assert cli(capsys, "train", str(run), "--resume", "--set", "train.max_steps=40",
                   "--set", "train.keep_checkpoints=1")[0] == 0
        assert held.is_dir() and verify_checkpoint(held)
    assert cli(capsys, "train", str(run), "--resume", "--set", "train.max_steps=50",
               "--set", "train.keep_checkpoints=1")[0] == 0
    assert not (run / "checkpoints" / "step_00000010").exists()


# ---------------------------------------------------------------- R4: downloads


class _Server:
    """A loopback HTTP server whose one page is written by `body(handler)`."""

    def __init__(self, body) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the standard library's name)
                try:
                    body(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/corpus.txt"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _cut_in_half(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "20000")
    handler.end_headers()
    handler.wfile.write(b"the cat sat.\n" * 769)  # 9,997 bytes, then the connection closes


def _endless(handler) -> None:
    handler.send_response(200)
    handler.end_headers()
    while True:
        handler.wfile.write(b"the cat sat on the mat.\n" * 4096)


def _drip(handler) -> None:
    handler.send_response(200)
    handler.end_headers()
    for _ in range(600):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(0.2)


def _url_config(tmp_path: Path, url: str, **data) -> Path:
    raw = tiny_raw(tmp_path, data={"source": "url", "url": url, "path": None, **data})
    path = tmp_path / "url.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("body, data, says", [
    (_cut_in_half, {}, ("cut short", "9,997 of the 20,000 bytes")),
    (_endless, {"download_max_bytes": 1_000_000}, ("more than data.download_max_bytes (1,000,000)",)),
    (_drip, {"download_timeout_s": 2}, ("not finished within data.download_timeout_s (2 s",)),
])
def test_a_bad_download_is_refused_and_nothing_is_left(tmp_path, capsys, bystander, body, data, says):
    server = _Server(body)
    try:  # the message proves which bound stopped it (the drip alone would finish, exit 0, after 120 s)
        expect_error(capsys, "prepare", str(_url_config(tmp_path, server.url, **data)), says=says)
    finally:
        server.close()
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_sigterm_during_a_download_removes_the_partial_file_and_the_bar_obeys_log_progress(tmp_path):
    server = _Server(_drip)
    try:
        config = _url_config(tmp_path, server.url)
        proc = _albert("prepare", str(config))
        downloads = tmp_path / "cache" / "downloads"
        deadline = time.monotonic() + 60
        while not (downloads.is_dir() and any(downloads.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        server.close()
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith("albert-gpt prepare: error: download stopped by SIGTERM")
    assert "downloading" not in err  # log.progress: false in the tiny config: no bar
    assert list(downloads.iterdir()) == []


def test_a_killed_download_s_file_is_swept_at_the_next_start(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    corpus = tmp_path / "www" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("the cat sat on the mat.\n" * 400)
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    litter = downloads / f".url-0123456789abcdef-corpus.txt.tmp-{dead.pid}-0badf00d"
    litter.write_bytes(b"half a download")
    mine = downloads / "notes.tmp-1-xyz"
    mine.write_text("not albert_gpt's name")
    assert cli(capsys, "prepare", str(_url_config(tmp_path, corpus.as_uri())))[0] == 0
    assert not litter.exists() and mine.exists()


# ---------------------------------------------------------------- R5: evaluations never silently wrong


def test_eval_refuses_a_token_cache_of_another_tokenizer(run, tmp_path, capsys):
    other = _trained(tmp_path / "other", tokenizer={"type": "bpe", "vocab_size": 300})
    (run / "data.json").write_text((other / "data.json").read_text())
    expect_error(capsys, "eval", str(run), says=("was made with another tokenizer", "--text"))


def test_a_checkpoint_s_model_keys_cannot_be_edited(run, capsys):
    for step in list_checkpoints(run):
        config = step / "config.yaml"
        config.write_text(config.read_text().replace("n_layers: 2", "n_layers: 4"))
    expect_error(capsys, "eval", str(run), "--checkpoint", "step_00000020",
                 says=("model.n_layers is 4 there but 2", "cannot be edited"))
    expect_error(capsys, "eval", str(run), says=("no checkpoint", "model.n_layers"))
    config = run / "checkpoints" / "step_00000020" / "config.yaml"
    text = config.read_text().replace("n_layers: 4", "n_layers: 2")
    config.write_text(text.replace("device: cpu", "device: auto"))
    assert cli(capsys, "eval", str(run), "--checkpoint", "step_00000020")[0] == 0  # other keys stay editable


# ---------------------------------------------------------------- R6: config input bounded


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"  # 9^10 strings once expanded, 700 bytes on disk
    text = "\n".join(["anchors:"] + ["  " + line for line in lines]) + "\nrun:\n  name: [*a9, *a9]\n"
    path.write_text(text)
    expect_error(capsys, "info", str(path), says=("more than 100,000 values",))  # counted, never expanded


def test_oversized_input_is_refused_before_it_is_parsed(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("run:\n  name: x\n" + "# padding\n" * 200_000)
    expect_error(capsys, "info", str(big), says=("bytes; a config file is at most 1,048,576 bytes",))
    digits = tmp_path / "digits.yaml"
    digits.write_text("run:\n  seed: " + "9" * 5000 + "\n")
    expect_error(capsys, "info", str(digits), says=(str(digits),))
    expect_error(capsys, "info", "--set", "run.seed=" + "9" * 5000, str(write_config(tmp_path)),
                 says=("run.seed: a number of 5,000 digits is out of range",))
    expect_error(capsys, "info", str(write_config(tmp_path)), "--set", "run.seed=99999999999999999999",
                 says=("run.seed", "out of range (must be <= 4,294,967,295)"))
    expect_error(capsys, "info", str(write_config(tmp_path)), "--set", "model.n_layers=" + "1" * 40,
                 says=("model.n_layers: a number of 40 digits",))


# ---------------------------------------------------------------- R7: one line, not a traceback


def _unreadable(path: Path, monkeypatch) -> None:
    """`path` cannot be opened for reading: chmod 000, or (as root, whom modes do not stop) an
    injected EACCES at the same call."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    original = Path.open

    def refusing(self, *args, **kwargs):
        if Path(os.path.abspath(self)) == Path(os.path.abspath(path)):
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing)


def test_an_unreadable_data_file_is_one_line(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path)
    _unreadable(tmp_path / "corpus.txt", monkeypatch)
    expect_error(capsys, "prepare", str(config), says=("corpus.txt: cannot read it (Permission denied)",))


def test_an_unreadable_file_in_the_latest_checkpoint_falls_back_to_the_previous(run, capsys, monkeypatch):
    _unreadable(run / "checkpoints" / "step_00000020" / "model.safetensors", monkeypatch)
    code, _ = cli(capsys, "eval", str(run), "--checkpoint", "latest", "--json")
    assert code == 0
    code, line = cli(capsys, "eval", str(run), "--checkpoint", "step_00000020")
    assert code == 2 and "model.safetensors: cannot read it (Permission denied)" in line


def test_a_cache_entry_that_links_to_a_folder_without_meta_is_replaced_as_a_link(tmp_path, capsys, bystander):
    config = write_config(tmp_path)
    assert cli(capsys, "prepare", str(config))[0] == 0
    cache = tmp_path / "cache"
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".") and p.name != "downloads"]
    shutil.rmtree(entry)
    entry.symlink_to(bystander / "notes")
    assert cli(capsys, "prepare", str(config))[0] == 0
    assert not entry.is_symlink() and (entry / "meta.json").is_file()


def test_a_run_folder_that_takes_no_event_file_is_one_line(run, capsys, monkeypatch):
    """The event files go into RUN_DIR itself; when no new file can be made there (a full disk here: the
    tests run as root, whom a read-only mode does not stop), one line instead of the writer thread's
    traceback."""
    import errno

    from albert_gpt.training import metrics

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(metrics, "check_writable", full)
    expect_error(capsys, "train", str(run), "--resume", "--set", "train.max_steps=30",
                 says=("cannot write metrics in", "No space left on device"))


# ---------------------------------------------------------------- R8: litter


def test_a_killed_prepare_s_folder_is_swept_and_a_user_s_is_not(tmp_path, capsys):
    config = write_config(tmp_path)
    cache = tmp_path / "cache"
    litter = cache / ".0123456789abcdef0123.tmp-99999-0badf00d"
    litter.mkdir(parents=True)
    (litter / MARKER).write_text(json.dumps({"kind": "cache-build"}))
    (litter / "train.bin").write_bytes(bytes(1000))
    mine = cache / ".notes.tmp-1-mine"
    mine.mkdir()
    (mine / "train.bin").write_bytes(b"mine")
    assert cli(capsys, "prepare", str(config))[0] == 0
    assert not litter.exists() and (mine / "train.bin").read_bytes() == b"mine"


def test_the_lock_file_is_never_followed(tmp_path, capsys, bystander):
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / ".lock").symlink_to(bystander / "config.yaml")
    expect_error(capsys, "train", str(write_config(tmp_path)), says=("cannot lock the run directory",))



def test_no_logged_step_is_lost_when_a_run_is_killed_after_a_checkpoint(tmp_path):
    """metrics.jsonl is flushed at every checkpoint (not only after an evaluation): kill -9 just after
    the checkpoint of step 20 leaves every train/loss record up to step 20 on disk."""
    config = write_config(tmp_path, train={"max_steps": 100_000, "checkpoint_interval": 20},
                          eval={"interval": 0, "batches": 1, "sample_tokens": 0}, log={"interval": 5})
    proc = _albert("train", str(config))
    latest = tmp_path / "runs" / "tiny" / "checkpoints" / "latest"
    try:
        deadline = time.monotonic() + 120
        while not (latest.is_file() and latest.read_text().strip() >= "step_00000020"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no handler, no flush at exit
    finally:
        proc.kill()
        proc.communicate()
    step = int(latest.read_text().strip().removeprefix("step_"))
    records = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "metrics.jsonl").open()]
    logged = sorted({r["step"] for r in records if r["tag"] == "train/loss"})
    assert logged[: step // 5] == list(range(5, step + 1, 5))
