"""Checkpoints (albert_gpt/training/checkpoint.py, weights.py, rng.py): real safetensors files,
real torch.load(weights_only=True), real subprocesses killed with SIGKILL.

Shapes: V vocabulary, E embedding width of the tiny tied model below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from albert_gpt.checkpoint import (
    capture_rng_state,
    check_compatible,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
    verify_checkpoint,
)
from albert_gpt.checkpoint.weights import load_strict
from albert_gpt.config import Config, config_from_dict
from albert_gpt.errors import CheckpointError

V, E = 11, 8


class TiedLM(nn.Module):
    """Embedding -> Linear -> head tied to the embedding (the tie AlbertGPT has)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, E)
        self.mix = nn.Linear(E, E)
        self.head = nn.Linear(E, V, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(idx))))


def _cfg(**model) -> Config:
    return config_from_dict({"model": {"n_layers": 2, "n_embd": 16, "n_heads": 2, "block_size": 8, **model}})


def _tokenizer_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": "stand-in, copied byte for byte"}), encoding="utf-8")
    return path


def _save(run_dir: Path, step: int, model: nn.Module | None = None, keep: int = 10,
          val_loss: float | None = None, **state) -> Path:
    model = TiedLM() if model is None else model
    return save_checkpoint(run_dir, step, model, {"step": step, **state}, _cfg(), None, keep, val_loss)


def _steps(run_dir: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in list_checkpoints(run_dir)]


def _pointer(run_dir: Path, name: str) -> str:
    return (run_dir / "checkpoints" / name).read_text().strip()


def test_round_trip_model_optimizer_and_rng(tmp_path):
    """Weights, AdamW state and every RNG come back exactly; after restore the next draws match."""
    torch.manual_seed(0)
    model = TiedLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(torch.randint(0, V, (4, 5))).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    random.seed(1)
    np.random.seed(2)
    rng = capture_rng_state()
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    train_state = {"optimizer": opt.state_dict(), "rng": rng, "step": 3, "tokens_seen": 60}
    path = save_checkpoint(tmp_path, 3, model, train_state, _cfg(), _tokenizer_file(tmp_path), 2, 1.5)

    for p in model.parameters():  # disturb everything that was saved
        p.data.add_(1.0)
    random.random(), np.random.rand(5), torch.rand(5)

    model_state, loaded, meta = load_checkpoint(path)
    fresh = TiedLM()
    load_strict(fresh, model_state, path)
    for (name, a), b in zip(fresh.state_dict().items(), [t - 1.0 for t in model.state_dict().values()]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(loaded["optimizer"])
    for key, s in opt.state_dict()["state"].items():
        assert torch.equal(fresh_opt.state_dict()["state"][key]["exp_avg"], s["exp_avg"])
        assert torch.equal(fresh_opt.state_dict()["state"][key]["exp_avg_sq"], s["exp_avg_sq"])
    assert loaded["tokens_seen"] == 60 and meta["step"] == 3 and meta["val_loss"] == 1.5
    assert (path / "tokenizer.json").read_bytes() == (tmp_path / "tokenizer.json").read_bytes()

    restore_rng_state(loaded["rng"])
    assert random.random() == expected[0]
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])


def test_tied_weights_stored_once_and_stay_tied(tmp_path):
    """The tied head is one tensor in the file, and a reloaded model keeps the tie (same Parameter)."""
    model = TiedLM()
    path = _save(tmp_path, 1, model)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    assert len(stored & {"emb.weight", "head.weight"}) == 1

    state, _, _ = load_checkpoint(path)
    assert state["emb.weight"] is state["head.weight"]
    fresh = TiedLM()
    load_strict(fresh, state, path)
    assert fresh.head.weight is fresh.emb.weight
    assert torch.equal(fresh.head.weight, model.emb.weight)
    with torch.no_grad():
        fresh.emb.weight.add_(1.0)
    assert torch.equal(fresh.head.weight, fresh.emb.weight)


def test_compiled_and_wrapped_models_save_plain_names(tmp_path):
    """A torch.compile'd DataParallel model saves without `_orig_mod.` / `module.` prefixes."""
    model = TiedLM()
    wrapped = torch.compile(nn.DataParallel(model))
    assert any(k.startswith("_orig_mod.module.") for k in wrapped.state_dict())
    assert unwrap_model(wrapped) is model
    state, _, _ = load_checkpoint(_save(tmp_path, 1, wrapped))
    assert set(state) == set(model.state_dict())


def test_rotation_keeps_last_and_best(tmp_path):
    """keep=2 leaves the two newest plus the best by val loss; a new best releases the old one."""
    for step, loss in zip(range(100, 700, 100), [3.0, 2.0, 2.5, 2.6, 2.7, 2.8]):
        _save(tmp_path, step, keep=2, val_loss=loss)
    assert _steps(tmp_path) == [200, 500, 600]
    assert _pointer(tmp_path, "best") == "step_00000200"
    assert _pointer(tmp_path, "latest") == "step_00000600"

    _save(tmp_path, 700, keep=2, val_loss=1.0)
    assert _steps(tmp_path) == [600, 700]
    assert _pointer(tmp_path, "best") == "step_00000700"


def test_saving_a_step_again_replaces_it(tmp_path):
    """The end-of-run save at a step already saved replaces that checkpoint with a complete one."""
    _save(tmp_path, 5, marker=1)
    path = _save(tmp_path, 5, marker=2)
    assert _steps(tmp_path) == [5]
    assert load_checkpoint(path)[1]["marker"] == 2


def test_resuming_earlier_drops_the_abandoned_later_steps(tmp_path):
    """Saving step 300 after a resume from 200 removes the stale step 400 the run had left behind."""
    for step in (200, 400):
        _save(tmp_path, step)
    _save(tmp_path, 300)
    assert _steps(tmp_path) == [200, 300]
    assert find_latest(tmp_path).name == "step_00000300"


def _truncate_weights(path: Path) -> None:
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _garbage_state(path: Path) -> None:
    file = path / "state.pt"
    file.write_bytes(b"\x00garbage" * 10)


def _drop_meta(path: Path) -> None:
    (path / "meta.json").unlink()


@pytest.mark.parametrize("damage", [_truncate_weights, _garbage_state, _drop_meta])
def test_corrupted_latest_falls_back_with_warning(tmp_path, caplog, damage):
    """A truncated, overwritten or manifest-less latest checkpoint is reported and the previous one used."""
    _save(tmp_path, 1)
    damage(_save(tmp_path, 2))
    with caplog.at_level(logging.WARNING):
        path = find_latest(tmp_path)
    assert path is not None and path.name == "step_00000001"
    assert "step_00000002" in caplog.text
    assert load_checkpoint(path)[1]["step"] == 1


def test_damaged_checkpoint_is_refused_on_direct_load(tmp_path):
    """Loading a damaged checkpoint by path raises CheckpointError naming the file and the reason."""
    path = _save(tmp_path, 1)
    _truncate_weights(path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, \d+ recorded"):
        load_checkpoint(path)


def test_missing_latest_pointer_uses_newest_complete(tmp_path, caplog):
    """Without the `latest` file the newest verifying checkpoint is used, with a warning."""
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "checkpoints" / "latest").unlink()
    with caplog.at_level(logging.WARNING):
        assert find_latest(tmp_path).name == "step_00000002"
    assert "latest" in caplog.text


def test_tmp_directories_are_ignored_and_cleaned(tmp_path):
    """A `.tmp-*` directory (a save cut short) is never chosen, even with a newer step; the next save
    removes it."""
    complete = _save(tmp_path, 1)
    partial = tmp_path / "checkpoints" / ".tmp-step_00000009"
    partial.mkdir()
    for file in complete.iterdir():  # even a copy that would verify is not a checkpoint yet
        (partial / file.name).write_bytes(file.read_bytes())
    assert find_latest(tmp_path) == complete
    assert _steps(tmp_path) == [1]
    _save(tmp_path, 2)
    assert not partial.exists()


def test_no_checkpoint_gives_none_and_clear_error(tmp_path):
    """An empty run directory has no latest checkpoint, and resolving one names the folder."""
    assert find_latest(tmp_path) is None
    with pytest.raises(CheckpointError, match="not found in .*checkpoints .available: none"):
        resolve_checkpoint(tmp_path, None)


def test_resolve_checkpoint_names(tmp_path):
    """None -> best, then `latest`, `best`, a directory name, a bare step and a path each pick theirs."""
    _save(tmp_path, 10, val_loss=1.0)
    _save(tmp_path, 20, val_loss=2.0)
    root = tmp_path / "checkpoints"
    assert resolve_checkpoint(tmp_path, None) == root / "step_00000010"
    assert resolve_checkpoint(tmp_path, "best") == root / "step_00000010"
    assert resolve_checkpoint(tmp_path, "latest") == root / "step_00000020"
    assert resolve_checkpoint(tmp_path, "step_00000020") == root / "step_00000020"
    assert resolve_checkpoint(tmp_path, "10") == root / "step_00000010"
    assert resolve_checkpoint(tmp_path, str(root / "step_00000020")) == root / "step_00000020"
    with pytest.raises(CheckpointError, match="step_00000030 not found.*available: step_00000010, step_0+20"):
        resolve_checkpoint(tmp_path, "step_00000030")


def test_no_val_loss_means_latest_by_default(tmp_path):
    """Without any validation loss there is no `best`, and the default checkpoint is the latest."""
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    assert not (tmp_path / "checkpoints" / "best").exists()
    assert resolve_checkpoint(tmp_path, None).name == "step_00000002"
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        resolve_checkpoint(tmp_path, "best")


class _Payload:
    """Unpickling this calls open(marker, "w"): code execution, visible as a new file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, obj: object) -> None:
    """Replace state.pt with `obj` and re-sign meta.json, as a crafted checkpoint would."""
    torch.save(obj, path / "state.pt")
    meta = json.loads((path / "meta.json").read_text())
    data = (path / "state.pt").read_bytes()
    meta["files"]["state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "meta.json").write_text(json.dumps(meta))


def test_malicious_pickle_is_refused(tmp_path):
    """A state.pt whose unpickling would run code is refused with CheckpointError; the code never runs."""
    path = _save(tmp_path, 1)
    marker = tmp_path / "pwned"
    _plant(path, {"step": 1, "evil": _Payload(marker)})
    verify_checkpoint(path)  # the manifest matches: only the loader stands in the way
    refused = r"state\.pt: refused to load \(Unsupported global: .*open"
    with pytest.raises(CheckpointError, match=refused) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert not marker.exists()
    # Control: the payload is live, an unsafe load does run it.
    torch.load(path / "state.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("value", [torch.Generator(), np.float64(0.5)], ids=["generator", "numpy-scalar"])
def test_save_refuses_state_torch_load_would_refuse(tmp_path, value):
    """An object torch.load(weights_only=True) would refuse (even a numpy float) is refused at save
    time, naming where it sits; nothing is written."""
    with pytest.raises(TypeError, match=rf"train_state\['sampler'\]\['x'\] is a {type(value).__name__}"):
        _save(tmp_path, 1, sampler={"x": value})
    assert list_checkpoints(tmp_path) == []


def test_check_compatible_names_first_mismatch():
    """A model shape change is named key by key; dropout and an unset vocab size are not mismatches."""
    with pytest.raises(CheckpointError) as err:
        check_compatible(_cfg(n_embd=64, n_heads=4), _cfg(n_embd=32, n_heads=4))
    assert str(err.value) == (
        "checkpoint does not match the config: model.n_embd is 64 in the checkpoint, 32 in the config"
    )
    check_compatible(_cfg(dropout=0.1, vocab_size=50), _cfg(dropout=0.0))
    check_compatible(_cfg(embedding_dim=16), _cfg())
    with pytest.raises(CheckpointError, match="model.vocab_size is 50 in the checkpoint, 60 in the config"):
        check_compatible(_cfg(vocab_size=50), _cfg(vocab_size=60))


_WRITER = """
import sys
from pathlib import Path
import torch
from torch import nn
from albert_gpt.config import config_from_dict
from albert_gpt.checkpoint import find_latest, load_checkpoint, save_checkpoint

run_dir = Path(sys.argv[1])
cfg = config_from_dict({})
model = nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512))  # ~4 MB of weights
latest = find_latest(run_dir)
step = load_checkpoint(latest)[1]["step"] if latest else 0
print("ready", flush=True)
while True:
    step += 1
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)  # weights that say which step wrote them
    state = {"step": step, "moments": torch.full((2, 512, 1024), float(step))}
    save_checkpoint(run_dir, step, model, state, cfg, None, keep=2, val_loss=1.0 / step)
"""


def test_sigkill_while_writing_leaves_a_loadable_latest(tmp_path):
    """Killing a process at random moments of a save loop always leaves find_latest a consistent
    checkpoint."""
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    run_dir = tmp_path / "run"
    rng = random.Random(0)
    last_step = 0
    for _ in range(4):
        cmd = [sys.executable, str(script), str(run_dir)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 60
            while not (run_dir / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        path = find_latest(run_dir)
        assert path is not None
        model_state, train_state, meta = load_checkpoint(path)
        step = train_state["step"]
        assert meta["step"] == step == int(path.name.split("_")[1]) and step >= last_step
        assert all(torch.all(t == step) for t in model_state.values())
        assert torch.all(train_state["moments"] == step)
        last_step = step


def test_partially_shared_albert_gpt_round_trip(tmp_path):
    """AlbertGPT sharing only attention stores the shared sub-layer once; a reload keeps it shared
    and computes the same logits."""
    from albert_gpt.modeling.model import AlbertGPT

    cfg = _cfg(n_layers=2, n_groups=1, sharing="attention", vocab_size=V)
    model = AlbertGPT(cfg.model)
    path = save_checkpoint(tmp_path, 1, model, {"step": 1}, cfg, None, 2, None)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    assert "blocks.0.attn.qkv.weight" in stored and "blocks.1.attn.qkv.weight" not in stored
    assert "blocks.1.ffn.fc.weight" in stored

    fresh = AlbertGPT(cfg.model)
    load_strict(fresh, load_checkpoint(path)[0], path)
    assert fresh.blocks[0].attn is fresh.blocks[1].attn
    idx = torch.randint(0, V, (2, 8))
    torch.testing.assert_close(fresh.eval()(idx)[0], model.eval()(idx)[0], rtol=0, atol=0)


def test_shape_mismatch_is_named_on_load(tmp_path):
    """Weights saved from a wider model name the first tensor whose shape does not fit."""
    from albert_gpt.modeling.model import AlbertGPT

    path = save_checkpoint(tmp_path, 1, AlbertGPT(_cfg(vocab_size=V).model), {}, _cfg(), None, 2, None)
    narrow = AlbertGPT(_cfg(n_embd=8, vocab_size=V).model)
    expected = r"tok_emb.weight has shape \(11, 16\), the model expects \(11, 8\)"
    with pytest.raises(CheckpointError, match=expected):
        load_strict(narrow, load_checkpoint(path)[0], path / "model.safetensors")


def test_load_for_inference_rebuilds_model_and_tokenizer(tmp_path):
    """A run's checkpoint (saved from a compiled model) comes back as config, eval-mode model with the
    same logits, and a tokenizer that encodes as the saved one did."""
    from albert_gpt.checkpoint import load_for_inference
    from albert_gpt.data.tokenizer import build_tokenizer
    from albert_gpt.modeling.model import AlbertGPT

    text = "the quick brown fox jumps over the lazy dog"
    cfg = _cfg()
    tokenizer = build_tokenizer(dataclasses.replace(cfg.tokenizer, type="char"), [text], progress=False)
    tokenizer.save(tmp_path / "tokenizer.json")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
    model = AlbertGPT(cfg.model)
    save_checkpoint(tmp_path, 4, torch.compile(model), {"step": 4}, cfg, tmp_path / "tokenizer.json", 2, 0.5)

    loaded_cfg, loaded, loaded_tok = load_for_inference(tmp_path)
    assert loaded_cfg == cfg
    assert not loaded.training
    ids = loaded_tok.encode("the lazy fox")
    assert ids == tokenizer.encode("the lazy fox") and loaded_tok.decode(ids) == "the lazy fox"
    idx = torch.tensor([ids[:8]])
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0], rtol=0, atol=0)


def test_checkpoint_with_old_norm_names_still_loads(tmp_path):
    """Weights saved before the rename (blocks.N.norm1 / norm2) load into attn_norm / ffn_norm, and
    a genuinely unknown key is still refused."""
    from albert_gpt.checkpoint import load_for_inference
    from albert_gpt.checkpoint.weights import load_weights, save_weights
    from albert_gpt.data.tokenizer import build_tokenizer
    from albert_gpt.modeling.model import AlbertGPT

    tokenizer = build_tokenizer(dataclasses.replace(_cfg().tokenizer, type="char"), ["abcdefghijk"],
                                progress=False)
    tokenizer.save(tmp_path / "tokenizer.json")
    cfg = _cfg(n_layers=2, n_groups=2, vocab_size=tokenizer.vocab_size)
    model = AlbertGPT(cfg.model)
    with torch.no_grad():  # non-default gamma / beta, so a norm left at its init would show
        for name, p in model.named_parameters():
            if "_norm." in name:
                p.copy_(torch.randn_like(p))
    path = save_checkpoint(tmp_path, 3, model, {"step": 3}, cfg, tmp_path / "tokenizer.json", 2, None)
    old = {k.replace(".attn_norm.", ".norm1.").replace(".ffn_norm.", ".norm2."): v
           for k, v in model.state_dict().items()}
    assert "blocks.1.norm2.bias" in old and not any("attn_norm" in k for k in old)
    save_weights(old, path / "model.safetensors")
    meta = json.loads((path / "meta.json").read_text())  # re-record the rewritten file, as an old run had it
    meta["files"]["model.safetensors"] = {"bytes": (path / "model.safetensors").stat().st_size,
                                          "sha256": hashlib.sha256((path / "model.safetensors").read_bytes())
                                          .hexdigest()}
    (path / "meta.json").write_text(json.dumps(meta))

    _, loaded, _ = load_for_inference(tmp_path, "latest")
    idx = torch.randint(0, tokenizer.vocab_size, (2, 8))
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0], rtol=0, atol=0)
    assert set(load_weights(path / "model.safetensors")) == set(model.state_dict())

    save_weights({**old, "blocks.0.norm3.weight": torch.ones(1)}, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected blocks.0.norm3.weight"):
        load_strict(AlbertGPT(cfg.model), load_weights(path / "model.safetensors"), path)
