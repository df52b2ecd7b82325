"""Checkpoints: atomic writes, verification, rotation, safe loading.

Layout under `RUN_DIR/checkpoints/`:

    step_00000500/   model.safetensors, state.pt, config.yaml, tokenizer.json, meta.json (written last)
    latest, best     one-line text files naming a step directory (replaced by rename, never symlinks)
    .tmp-*           a checkpoint being written (it carries albert_gpt's marker) or deleted; never read

`checkpoints/` must be a real folder inside the run directory: albert_gpt writes and rotates there,
and deletes only what its manifests (or markers) show it wrote (paths.py's deletion rule). A reader
holds a shared lock on the checkpoint it loads; rotation leaves a locked checkpoint for the next one.

A checkpoint directory appears under its final name only once complete (written as `.tmp-...`, then
renamed), and `meta.json` records the size and sha256 of every file, so a truncated or tampered
file is detected before anything is deserialized. `state.pt` is read with
`torch.load(weights_only=True)`: plain tensors, numbers, strings and containers, never objects.
Shapes: tensors here are whatever the model's state dict holds; nothing is reshaped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from albert_gpt.checkpoint.weights import load_weights, save_weights, unwrap_model
from albert_gpt.config import Config, dump_config, load_config
from albert_gpt.data.sources import hash_file
from albert_gpt.errors import CheckpointError, ConfigError
from albert_gpt.paths import (
    MARKER,
    UnsafePath,
    clear_folder,
    delete,
    folder_lock,
    marker_kind,
    write_atomic,
    write_marker,
)

log = logging.getLogger(__name__)

MODEL_FILE, STATE_FILE, CONFIG_FILE, TOKENIZER_FILE, META_FILE = (
    "model.safetensors", "state.pt", "config.yaml", "tokenizer.json", "meta.json",
)
CHECKPOINT_FILES = (MODEL_FILE, STATE_FILE, CONFIG_FILE, TOKENIZER_FILE, META_FILE)
_STEP_DIR = re.compile(r"^step_(\d+)$")

# Exact types: numpy scalars subclass float and int but pickle as numpy objects, which
# torch.load(weights_only=True) refuses.
_SCALARS = (int, float, bool, str, bytes, type(None))
_TORCH_VALUES = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse at save time what torch.load(weights_only=True) would refuse at resume time."""
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            _check_plain(key, f"{where}: key {key!r}")
            _check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif type(obj) not in _SCALARS and not isinstance(obj, _TORCH_VALUES):
        raise TypeError(f"{where} is a {type(obj).__name__}; a checkpoint state holds only tensors, "
                        "Python numbers, strings and lists/dicts of them")


def _refusal(exc: Exception) -> str:
    """The informative line of a torch.load failure (its message is mostly advice to load unsafely)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return line.split(". ")[0].rstrip(".")


# ---------------------------------------------------------------- files

def _fsync(path: Path) -> None:
    # Directories too: a rename is durable only once its directory entry is flushed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pointer(root: Path, pointer: str, name: str) -> None:
    write_atomic(root / pointer, name + "\n")
    _fsync(root)


def _read_pointer(root: Path, pointer: str) -> str | None:
    try:
        name = (root / pointer).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _STEP_DIR.match(name) else None


def _written_here(path: Path) -> bool:
    """Proof that albert_gpt wrote a checkpoint folder: its manifest names every file in it, or (one
    being written) it carries the checkpoint marker and only checkpoint files."""
    if path.is_symlink() or not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()} - {MARKER, META_FILE}
    try:
        listed = set(json.loads((path / META_FILE).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return marker_kind(path) == "checkpoint" and names <= set(CHECKPOINT_FILES)
    return names <= listed


def _remove_dir(path: Path, wait: bool = False) -> bool:
    """Delete a checkpoint folder under the deletion rule; False (and kept) while a reader holds it,
    unless `wait`. Renamed first, so a crash half way through leaves only a `.tmp-*` folder."""
    root = path.parent
    if path.is_symlink():
        delete(path, root, _written_here)  # the link alone
        return True
    with folder_lock(path, wait=wait) as free:
        if not free:
            log.info("kept %s for now: a reader is loading it (it goes at the next rotation)", path)
            return False
        if not _written_here(path):
            raise UnsafePath(f"refusing to delete {path}: its manifest does not name every file in it")
        doomed = path.with_name(f".tmp-delete-{path.name}-{os.getpid()}")
        path.rename(doomed)
        delete(doomed, root, _written_here)
    return True


def checkpoints_folder(run_dir: Path) -> Path:
    """RUN_DIR/checkpoints, which albert_gpt writes and rotates in: CheckpointError when it is a link."""
    root = Path(run_dir) / "checkpoints"
    if root.is_symlink():
        raise CheckpointError(f"{root} is a symbolic link (to {os.path.realpath(root)}); albert_gpt writes "
                              "and rotates checkpoints only in a real folder inside the run directory")
    return root


def clear_checkpoints(run_dir: Path) -> list[Path]:
    """Delete a run's checkpoints (run.overwrite): step folders and temporaries its manifests or markers
    show albert_gpt wrote, and the pointers; the folder goes too when nothing else is left. A link in its
    place is removed as a link. Returns what was kept because albert_gpt did not write it."""
    root = Path(run_dir) / "checkpoints"

    def written(entry: Path) -> bool:
        if entry.name in ("latest", "best") and entry.is_file():
            return _read_pointer(root, entry.name) is not None
        return _written_here(entry)

    return clear_folder(root, Path(run_dir), written)


def _sweep_stale(root: Path) -> None:
    """`.tmp-*` folders left by a process killed while writing or deleting (the run's lock says none is
    running): removed when albert_gpt's manifest or marker shows it wrote them, else left and named."""
    for stale in root.glob(".tmp-*"):
        try:
            delete(stale, root, _written_here if stale.is_dir() else lambda p: False)
        except (OSError, UnsafePath) as exc:
            log.warning("left %s in place: %s", stale, exc)


def read_manifest(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json (its manifest), without verifying the files against it."""
    return _read_meta(Path(path))


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete checkpoint ({META_FILE} is missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / META_FILE}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise CheckpointError(f"{path / META_FILE}: not a checkpoint manifest (no 'files' table)")
    return meta


# Files a user may edit (a run trained on a GPU says device: cuda; evaluating it elsewhere is fine): the
# manifest guards the weights, the training state and the tokenizer, and only requires these to exist.
# The model section of config.yaml is the exception: it says what the weights are, so the manifest
# records it ("model") and it must not change.
EDITABLE_FILES = (CONFIG_FILE,)
# Model keys that change neither the weights' shapes nor what they compute.
FREE_MODEL_KEYS = frozenset({"dropout", "init_std", "norm_impl"})


def model_record(cfg: Config) -> dict[str, Any]:
    """The model keys a checkpoint's weights depend on, as its manifest records them."""
    return {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in FREE_MODEL_KEYS}


def _check_model_record(path: Path, recorded: Any) -> None:
    if not isinstance(recorded, dict):
        return  # written before the manifest recorded the model
    try:
        current = model_record(load_config(path / CONFIG_FILE))
    except ConfigError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from None
    for key, value in recorded.items():
        if current.get(key) != value:
            raise CheckpointError(f"{path / CONFIG_FILE}: model.{key} is {current.get(key)} there but "
                                  f"{value} in the checkpoint's {META_FILE} (the weights are for {value}); "
                                  "the model keys of a checkpoint's config cannot be edited")


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file against meta.json (size, sha256; an EDITABLE_FILE only for being there); returns
    the meta or raises CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    meta = _read_meta(path)
    for required in (MODEL_FILE, STATE_FILE, CONFIG_FILE):
        if required not in meta["files"]:
            raise CheckpointError(f"{path / META_FILE}: lists no {required}")
    for name, expected in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if name in EDITABLE_FILES:
            continue
        try:
            size = file.stat().st_size
            if size != expected.get("bytes"):
                raise CheckpointError(f"{file}: {size} bytes, {expected.get('bytes')} recorded (truncated?)")
            if hash_file(file) != expected.get("sha256"):
                raise CheckpointError(f"{file}: sha256 does not match {META_FILE} (corrupted)")
        except OSError as exc:
            raise CheckpointError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    _check_model_record(path, meta.get("model"))
    return meta


# ---------------------------------------------------------------- save

def list_checkpoints(run_dir: Path) -> list[Path]:
    """Step directories under RUN_DIR/checkpoints, oldest first (unverified; `.tmp-*` excluded)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _val_loss(path: Path) -> float | None:
    try:
        value = json.loads((path / META_FILE).read_text(encoding="utf-8")).get("val_loss")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, train_state: dict, cfg: Config,
    tokenizer_path: Path | None, keep: int, val_loss: float | None,
    *, model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write RUN_DIR/checkpoints/step_{step:08d} atomically, move the pointers, rotate old ones.

    `train_state` holds everything but the weights (optimizer, scheduler, scaler, RNG from
    capture_rng_state(), step, tokens seen, sampler state) as plain values. `model_state`
    replaces `model.state_dict()` when the caller gathered it itself (e.g. from FSDP shards).
    Call it from one process only (rank 0): the directory names are not per-process.
    """
    _check_plain(train_state, "train_state")
    root = checkpoints_folder(run_dir)
    name = f"step_{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if model_state is None:
        model_state = unwrap_model(model).state_dict()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(root)
        tmp.mkdir()
        write_marker(tmp, "checkpoint")
        _write_files(tmp, step, model_state, train_state, cfg, tokenizer_path, val_loss)
        final = root / name
        if os.path.lexists(final):  # the same step saved again (e.g. the end of a run after an interval save)
            _remove_dir(final, wait=True)
        tmp.rename(final)
        _fsync(root)
        _update_best(root)
        _write_pointer(root, "latest", name)
    except UnsafePath as exc:
        raise CheckpointError(f"cannot write checkpoint {name}: {exc}") from None
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own folder, made above
        raise CheckpointError(_write_failure(root, name, exc, model_state, train_state)) from None
    _rotate(root, final, keep)
    return final


def _write_files(tmp: Path, step: int, model_state: dict[str, torch.Tensor], train_state: dict, cfg: Config,
                 tokenizer_path: Path | None, val_loss: float | None) -> None:
    """Every file of a checkpoint into `tmp`, the manifest (meta.json) last."""
    save_weights(model_state, tmp / MODEL_FILE)
    torch.save(train_state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(dump_config(cfg), encoding="utf-8")
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
    files = {}
    for file in sorted(tmp.iterdir()):
        _fsync(file)
        files[file.name] = {"bytes": file.stat().st_size, "sha256": hash_file(file)}
    if val_loss is not None and not math.isfinite(val_loss):
        val_loss = None  # JSON has no NaN, and a diverged evaluation is never the best
    meta = {"step": step, "val_loss": val_loss, "time": time.time(), "files": files,
            "model": model_record(cfg)}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    _fsync(tmp / META_FILE)
    _fsync(tmp)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_failure(root: Path, name: str, exc: Exception, model_state: dict, train_state: dict) -> str:
    """One line: what failed, why, and how much room a checkpoint needs against what is free."""
    needed = _tensor_bytes(model_state) + _tensor_bytes(train_state)
    try:
        free: int | None = shutil.disk_usage(root if root.exists() else root.parent).free
    except OSError:
        free = None
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif free is not None and free < needed:  # torch.save words a full disk as a failed position check
        reason = f"{os.strerror(errno.ENOSPC)} ({str(exc).splitlines()[0].strip()})"
    else:
        reason = str(exc).splitlines()[0]
    room = f"{free / 1e6:,.1f} MB free" if free is not None else "free space unknown"
    return f"cannot write checkpoint {name} in {root} ({reason}; about {needed / 1e6:,.1f} MB needed, {room})"


def _update_best(root: Path) -> None:
    scored = [(loss, p) for p in list_checkpoints(root.parent) if (loss := _val_loss(p)) is not None]
    if scored:
        best = min(scored, key=lambda item: (item[0], item[1].name))[1].name  # ties: the earlier one
        if _read_pointer(root, "best") != best:
            _write_pointer(root, "best", best)


def _step_of(path: Path) -> int:
    """The step of a checkpoint folder named as list_checkpoints lists them."""
    match = _STEP_DIR.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder")
    return int(match.group(1))


def _rotate(root: Path, newest: Path, keep: int) -> None:
    best = _read_pointer(root, "best")
    step = _step_of(newest)
    older: list[Path] = []
    later: list[Path] = []
    for path in list_checkpoints(root.parent):
        if path != newest and path.name != best:
            (later if _step_of(path) > step else older).append(path)
    # Later steps than the one just written belong to a continuation that was abandoned (the run
    # resumed from an earlier checkpoint); left in place they would shadow the new one on fallback.
    for path in later + older[: max(0, len(older) - (keep - 1))]:
        try:
            _remove_dir(path)
        except (OSError, UnsafePath) as exc:
            log.warning("kept %s: %s", path, exc)


# ---------------------------------------------------------------- find and load

def read_pointer(run_dir: Path, pointer: str) -> str | None:
    """The step directory name the `latest` or `best` pointer of a run names, if readable."""
    return _read_pointer(Path(run_dir) / "checkpoints", pointer)


def _best(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    name = _read_pointer(root, "best")
    return root / name if name else None


def find_latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, or, when that is missing or fails
    verification, the newest earlier one that verifies (with a warning). None when the run has no
    checkpoint at all; CheckpointError, naming what is wrong with the newest, when none verifies."""
    root = Path(run_dir) / "checkpoints"
    candidates = list_checkpoints(run_dir)
    if not candidates:
        return None
    name = _read_pointer(root, "latest")
    problems: list[str] = []
    if name is None:
        log.warning("%s is missing or unreadable; looking for the newest complete checkpoint",
                    root / "latest")
    else:
        try:
            verify_checkpoint(root / name)
            return root / name
        except CheckpointError as exc:
            problems.append(str(exc))
            log.warning("latest checkpoint is unusable: %s; falling back to the previous complete one", exc)
    for path in reversed(candidates):
        if path.name == name:
            continue
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            log.warning("skipping checkpoint: %s", exc)
            continue
        log.warning("using checkpoint %s", path)
        return path
    others = f" (and {len(problems) - 1} more checkpoint(s) fail too)" if len(problems) > 1 else ""
    raise CheckpointError(f"no checkpoint in {root} is complete: {problems[0]}{others}")


def resolve_checkpoint(run_dir: Path, name: str | None) -> Path:
    """The checkpoint `--checkpoint NAME` means: None -> best if present, else latest; `best`,
    `latest`, a step directory name (or a bare step number), or a path. Verified; else CheckpointError."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    if name is None and (run_dir / META_FILE).is_file():  # RUN_DIR is itself a checkpoint directory
        path: Path | None = run_dir
    elif name is None:
        path = _best(run_dir)
        if path is not None:
            try:
                verify_checkpoint(path)
                return path
            except CheckpointError as exc:
                log.warning("best checkpoint is unusable: %s; using the latest", exc)
        path = find_latest(run_dir)
    elif name == "latest":
        path = find_latest(run_dir)
    elif name == "best":
        path = _best(run_dir)
        if path is None:
            raise CheckpointError(f"{root / 'best'}: no best checkpoint recorded (no validation loss yet?)")
    elif name.isdigit():
        path = root / f"step_{int(name):08d}"
    elif (root / name).is_dir():
        path = root / name
    else:
        path = Path(name)
    if path is None or not path.is_dir():
        available = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
        what = name or "a checkpoint"
        raise CheckpointError(f"{what} not found in {root} (available: {available})")
    verify_checkpoint(path)
    return path


@contextlib.contextmanager
def reading_checkpoint(run_dir: Path, name: str | None) -> Iterator[Path]:
    """The checkpoint `name` means (see resolve_checkpoint, which verifies it), held with a shared lock for
    the block, so a run being trained keeps it until the reader is done: neither rotation nor a re-save of
    the same step touches a held checkpoint, so it needs no second verification. When rotation removed it
    between the choice and the lock, the choice is made again: the next complete checkpoint."""
    for _ in range(3):
        path = resolve_checkpoint(run_dir, name)
        with folder_lock(path, shared=True) as held:
            if held and path.is_dir():  # still in place now that it is locked
                yield path
                return
        log.info("%s was rotated away while it was being opened; choosing again", path)
    raise CheckpointError(f"{path}: removed by the run's rotation while it was being opened, three times; "
                          "try again")


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model_state, train_state, meta) of a checkpoint directory, after verifying its files."""
    path = Path(path)
    meta = verify_checkpoint(path)
    model_state = load_weights(path / MODEL_FILE, map_location)
    try:
        train_state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as exc:  # the unpickler raises several types; all mean "refused"
        raise CheckpointError(f"{path / STATE_FILE}: refused to load ({_refusal(exc)})") from None
    if not isinstance(train_state, dict):
        raise CheckpointError(f"{path / STATE_FILE}: expected a dict, found {type(train_state).__name__}")
    return model_state, train_state, meta
