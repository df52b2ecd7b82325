"""Multi-process training under torchrun on CPU (gloo), run as real subprocesses.

Two ranks with batch B against one process with batch 2B on the same windows (DDP and FSDP2),
rank-0-only writes, exact resume in two processes, one-process eval / generate of a two-process
checkpoint, and shared-parameter gradients under DDP and FSDP for every kind of sharing.
Run directly (`torchrun ... tests/test_distributed.py OUT_DIR`) this file is the gradient worker.
Shapes: B batch rows per rank, T context length.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from train_utils import tiny_config, write_config, write_corpus

from albert_gpt.checkpoint import find_latest, load_checkpoint, load_for_inference
from albert_gpt.cli import main
from albert_gpt.config import ModelConfig, RunConfig
from albert_gpt.errors import ConfigError
from albert_gpt.inference.evaluate import evaluate_tokens
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.training import dist_checkpoint, distributed
from albert_gpt.training.metrics import read_metrics
from albert_gpt.training.signals import StopRequest
from albert_gpt.training.trainer import train

STEPS, B = 10, 2
# Gradient accumulation, so no_sync is on the path; log every step for the whole loss curve.
SECTIONS = dict(
    model={"n_layers": 2, "n_groups": 1, "sharing": "attention"},  # attention used twice, FFNs once
    train={"batch_size": B, "grad_accum_steps": 2, "max_steps": STEPS, "checkpoint_interval": 5},
    eval={"interval": 5, "batches": 3, "batch_size": 4, "sample_tokens": 4},  # same windows as 1 x 2B
    log={"interval": 1},
)
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# (sharing, n_groups) with n_layers 4: all shared, unshared, attention shared, FFN shared.
VARIANTS = (("all", 1), ("all", 4), ("attention", 2), ("ffn", 1))


def _torchrun(cwd: Path, *args: str) -> None:
    """`torchrun --standalone --nproc_per_node 2 ARGS` (a free port, so parallel test runs never collide)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def _train_2proc(directory: Path, name: str, parallel: str) -> Path:
    _torchrun(directory, "-m", "albert_gpt", "train", str(directory / "config.yaml"),
              "--set", f"run.name={name}", "--set", f"run.parallel={parallel}")
    return directory / "runs" / name


def _curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    return [(r["step"], r["value"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["tag"] == tag]


def _assert_same_training(run_dir: Path, reference: Path, atol: float) -> None:
    for tag in ("train/loss", "val/loss"):
        got, want = _curve(run_dir, tag), _curve(reference, tag)
        assert [s for s, _ in got] == [s for s, _ in want] and got, tag
        assert max(abs(a - b) for (_, a), (_, b) in zip(got, want)) <= atol, (tag, got, want)
    weights, _, _ = load_checkpoint(find_latest(run_dir))
    expected, _, _ = load_checkpoint(find_latest(reference))
    assert weights.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], rtol=0, atol=atol, msg=name)


def _resume_copy_from_step_5(run_dir: Path, target: Path) -> Path:
    """A copy of a finished run whose latest checkpoint is step 5, as if it had stopped there."""
    shutil.copytree(run_dir, target)
    shutil.rmtree(target / "checkpoints" / f"step_{STEPS:08d}")
    (target / "checkpoints" / "best").unlink(missing_ok=True)
    (target / "checkpoints" / "latest").write_text("step_00000005\n")
    return target


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dist")
    write_config(directory, **SECTIONS)
    return directory


@pytest.fixture(scope="module")
def reference(workdir) -> Path:
    """One process, batch 2B: the run two ranks of batch B must reproduce."""
    cfg = tiny_config(workdir, **{**SECTIONS, "train": {**SECTIONS["train"], "batch_size": 2 * B}},
                      run={"name": "single"})
    return Path(train(cfg)["run_dir"])


@pytest.fixture(scope="module")
def ddp_run(workdir) -> Path:
    return _train_2proc(workdir, "ddp", "ddp")


@pytest.fixture(scope="module")
def fsdp_run(workdir) -> Path:
    return _train_2proc(workdir, "fsdp", "fsdp")


def test_two_ddp_ranks_match_one_process_with_double_batch(ddp_run, reference):
    """DDP, 2 ranks x B, gradient accumulation: loss curve, val loss, final weights equal 1 x 2B (1e-5)."""
    assert len(_curve(ddp_run, "train/loss")) == STEPS
    _assert_same_training(ddp_run, reference, atol=1e-5)


def test_two_ddp_ranks_stream_what_one_process_streams_with_double_batch(tmp_path):
    """data.streaming under DDP: each rank takes its rows of the global batch of the stream, so 2 ranks x B
    train as 1 x 2B does (1e-5), held-out slices and all."""
    lines = write_corpus(tmp_path / "text").read_text(encoding="utf-8").splitlines()
    corpus = tmp_path / "corpus.jsonl"  # one document a line: a stream of many items
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines), encoding="utf-8")
    stream = {"path": str(corpus), "streaming": True, "stream_holdout_tokens": 200, "shuffle_buffer": 8}
    sections = {**SECTIONS, "data": stream}
    write_config(tmp_path, **sections)
    single = {**sections, "train": {**SECTIONS["train"], "batch_size": 2 * B}}
    reference_run = Path(train(tiny_config(tmp_path, **single, run={"name": "single"}))["run_dir"])
    _assert_same_training(_train_2proc(tmp_path, "ddp", "ddp"), reference_run, atol=1e-5)


def test_only_rank_zero_writes_the_run_directory(ddp_run):
    """One event file, every metric once, and exactly the files of a one-process run."""
    assert len(list(ddp_run.glob("events.out.tfevents.*"))) == 1
    records = [(r["step"], r["tag"]) for r in read_metrics(ddp_run / "metrics.jsonl")]
    assert len(records) == len(set(records))
    assert sorted(p.name for p in ddp_run.iterdir() if not p.name.startswith("events.out.tfevents.")) == [
        ".lock", "checkpoints", "config.yaml", "data.json", "metrics.jsonl", "tokenizer.json"]
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == [
        "best", "latest", "step_00000005", "step_00000010"]


def test_two_process_checkpoint_evaluates_and_generates_in_one_process(ddp_run, reference, capsys):
    """`eval` and `generate` in one process give what the one-process run's checkpoint gives."""
    results = []
    for run_dir in (ddp_run, reference):
        assert main(["eval", str(run_dir), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
        assert main(["generate", str(run_dir), "--prompt", "the", "--max-new-tokens", "12",
                     "--temperature", "0"]) == 0
        results.append(capsys.readouterr().out)
    ddp_eval, ddp_text, ref_eval, ref_text = results
    assert ddp_eval["tokens"] == ref_eval["tokens"] > 0
    assert ddp_eval["loss"] == pytest.approx(ref_eval["loss"], abs=1e-5)
    assert ddp_text == ref_text and ddp_text.strip()


def test_two_fsdp_ranks_match_one_process_with_double_batch(fsdp_run, reference):
    """FSDP2 (fully_shard per unit + root) trains like one process with batch 2B (1e-5)."""
    _assert_same_training(fsdp_run, reference, atol=1e-5)


def test_fsdp_checkpoint_is_whole_and_loads_in_one_process(fsdp_run, reference):
    """The gathered FSDP checkpoint holds whole tensors and a one-process optimizer state."""
    cfg, model, _ = load_for_inference(fsdp_run)
    _, fsdp_state, _ = load_checkpoint(find_latest(fsdp_run))
    _, ref_state, _ = load_checkpoint(find_latest(reference))
    assert fsdp_state["world_size"] == 2 and fsdp_state["parallel"] == "fsdp"
    assert [g["params"] for g in fsdp_state["optimizer"]["param_groups"]] == \
        [g["params"] for g in ref_state["optimizer"]["param_groups"]]
    for key, state in ref_state["optimizer"]["state"].items():
        for field, value in state.items():
            torch.testing.assert_close(fsdp_state["optimizer"]["state"][key][field], value, rtol=0, atol=1e-5)
    tokens = torch.randint(0, cfg.model.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(tokens)[0].shape == (1, 8, cfg.model.vocab_size)


@pytest.mark.parametrize("fixture", ["ddp_run", "fsdp_run"])
def test_two_process_run_resumes_exactly_in_two_processes(fixture, request, tmp_path):
    """Resumed at step 5 in 2 processes, the run ends bit-identical to the uninterrupted one."""
    straight = request.getfixturevalue(fixture)
    resumed = _resume_copy_from_step_5(straight, tmp_path / "runs" / straight.name)
    _torchrun(tmp_path, "-m", "albert_gpt", "train", str(resumed), "--resume")
    w_a, s_a, _ = load_checkpoint(find_latest(straight))
    w_b, s_b, _ = load_checkpoint(find_latest(resumed))
    assert s_b["step"] == STEPS
    for name in w_a:
        assert torch.equal(w_a[name], w_b[name]), name
    for key, state in s_a["optimizer"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, s_b["optimizer"]["state"][key][field]), (key, field)
    assert _curve(resumed, "train/loss") == _curve(straight, "train/loss")


def test_shared_parameter_gradients_match_one_process(tmp_path):
    """DDP and FSDP with every sharing mode: accumulated gradients equal one process's on the whole batch.

    A block applied 4 times (and attention or FFN shared while the other sub-layer is not) must
    reduce once per backward: DDP would raise if a parameter were marked ready twice.
    """
    _torchrun(tmp_path, str(Path(__file__).resolve()), str(tmp_path))
    report = json.loads((tmp_path / "grads.json").read_text())
    assert sorted(report) == sorted(f"{p}/{s}/{g}" for p in ("ddp", "fsdp") for s, g in VARIANTS)
    for key, entry in report.items():
        assert entry["missing"] == [], key
        assert entry["max_diff"] < 1e-6, (key, entry)
    rng = json.loads((tmp_path / "rng.json").read_text())
    assert rng["gathered_match"] and not rng["same_dropout"]


def _grad_worker(out: Path) -> None:
    """Under torchrun: gradients of 2 micro-steps x 2 rows per rank vs one process on all 4 rows."""
    info = distributed.init_distributed(RunConfig(device="cpu"))
    rank = info.rank
    report = {}
    for parallel in ("ddp", "fsdp"):
        for sharing, groups in VARIANTS:
            torch.manual_seed(0)
            cfg = ModelConfig(n_layers=4, n_groups=groups, sharing=sharing, n_embd=16, n_heads=2,
                              block_size=8, vocab_size=11)
            model = AlbertGPT(cfg)
            reference = copy.deepcopy(model)
            wrapped = distributed.wrap_model(model, dataclasses.replace(info, parallel=parallel))
            generator = torch.Generator().manual_seed(1)
            data = torch.randint(0, 11, (2, 2 * info.world_size, 9), generator=generator)
            for micro in range(2):
                x, y = data[micro, :, :-1], data[micro, :, 1:]  # (2B, T) each
                rows = slice(2 * rank, 2 * rank + 2)
                with distributed.grad_sync(wrapped, sync=micro == 1):
                    (wrapped(x[rows], y[rows])[1] / 2).backward()
                (reference(x, y)[1] / 2).backward()
            params = dict(reference.named_parameters())
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            diffs = [(distributed.full_tensor(p.grad) - params[n].grad).abs().max().item()
                     for n, p in model.named_parameters() if p.grad is not None]
            report[f"{parallel}/{sharing}/{groups}"] = {"missing": missing, "max_diff": max(diffs)}
    # Per-rank dropout streams, and the checkpoint entry that lets each rank resume its own.
    distributed.seed_rank(0, info)
    masks: list = [None] * info.world_size
    torch.distributed.all_gather_object(masks, nn.functional.dropout(torch.ones(64), 0.5).tolist())
    state = {"torch": torch.get_rng_state()}
    gathered = dist_checkpoint.rank_train_state(state, info)["rng_ranks"]
    mine = torch.tensor(float(torch.equal(gathered[rank]["torch"], state["torch"])))
    matches = distributed.all_reduce_sum(mine).item()
    if rank == 0:
        (out / "grads.json").write_text(json.dumps(report))
        (out / "rng.json").write_text(json.dumps({
            "gathered_match": matches == info.world_size, "same_dropout": masks[0] == masks[1]}))
    distributed.shutdown(info)


# ---------------------------------------------------------------- in one process


def test_without_torchrun_it_is_one_process(monkeypatch):
    """No RANK / WORLD_SIZE: a single process, no wrapping, collectives return their input."""
    for name in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    info = distributed.init_distributed(RunConfig(device="cpu"))
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    model = nn.Linear(2, 2)
    assert distributed.wrap_model(model, info) is model
    value = torch.tensor([1.5, 2.0])
    assert torch.equal(distributed.all_reduce_sum(value), value)
    assert torch.equal(distributed.all_reduce_mean(value), value)
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    distributed.shutdown(info)


def test_incomplete_torchrun_environment_names_the_missing_variables(monkeypatch):
    """RANK set without WORLD_SIZE / LOCAL_RANK is refused in one line naming them."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match="LOCAL_RANK, WORLD_SIZE not set"):
        distributed.init_distributed(RunConfig(device="cpu"))
    monkeypatch.setenv("WORLD_SIZE", "two")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        distributed.init_distributed(RunConfig(device="cpu"))


def test_fsdp_refuses_float16_and_diagnostics(tmp_path):
    """FSDP shards gradients: fp16 loss scaling and per-depth diagnostics are refused, naming the key."""
    info = distributed.DistInfo(world_size=2, parallel="fsdp")
    with pytest.raises(ConfigError, match="log.diagnostics_interval"):
        distributed.check_parallel_config(tiny_config(tmp_path, log={"diagnostics_interval": 5}), info)
    fp16 = dataclasses.replace(tiny_config(tmp_path), run=RunConfig(device="cuda", dtype="float16"))
    with pytest.raises(ConfigError, match="run.dtype: float16"):
        distributed.check_parallel_config(fp16, info)
    distributed.check_parallel_config(fp16, dataclasses.replace(info, parallel="ddp"))


def test_each_rank_resumes_its_own_rng_state(caplog):
    """Rank r restores rng_ranks[r]; with another world size every rank takes rank 0's, with a warning."""
    saved = {"rng": "rank0", "rng_ranks": ["rank0", "rank1"], "world_size": 2}
    for rank in (0, 1):
        info = distributed.DistInfo(rank=rank, world_size=2, parallel="ddp")
        assert dist_checkpoint.rank_rng_state(saved, info) == f"rank{rank}"
    assert dist_checkpoint.rank_rng_state(saved, distributed.DistInfo()) == "rank0"
    assert "written by 2 processes and training resumes with 1" in caplog.text


def test_torchrun_echo_of_a_signal_is_not_a_second_request(monkeypatch):
    """Under torchrun the agent forwards the Ctrl-C its workers already got: that echo must not kill them."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # without the echo rule: os._exit, and this test dies
        assert stop.requested and stop.signal_name == "SIGTERM"


@pytest.mark.parametrize("sharing, groups", VARIANTS)
def test_fsdp_units_never_share_a_parameter(sharing, groups):
    """Every parameter belongs to at most one FSDP unit; fully shared blocks are units themselves."""
    cfg = ModelConfig(n_layers=4, n_groups=groups, sharing=sharing, n_embd=16, n_heads=2, vocab_size=11)
    model = AlbertGPT(cfg)
    units = distributed.shard_units(model)
    owned = [id(p) for unit in units for p in unit.parameters()]
    assert len(owned) == len(set(owned))
    if sharing == "all":
        assert units == list(model.blocks)
    else:
        assert len(units) == len({id(b.attn) for b in model.blocks} | {id(b.ffn) for b in model.blocks})


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_shares_add_up_to_one_process(world_size):
    """Disjoint shares: summed NLL and tokens equal one process's; every rank runs as many forward passes."""
    torch.manual_seed(0)
    model = AlbertGPT(ModelConfig(n_layers=2, n_embd=16, n_heads=2, block_size=8, vocab_size=11))
    tokens = torch.randint(0, 11, (70,)).numpy()
    whole = evaluate_tokens(model, tokens, block_size=8, batch_size=2, device="cpu", max_batches=4)
    calls: list[int] = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    shares = []
    for rank in range(world_size):
        calls.clear()
        shares.append(evaluate_tokens(model, tokens, block_size=8, batch_size=2, device="cpu", max_batches=4,
                                      rank=rank, world_size=world_size))
        shares[-1]["passes"] = len(calls)
    handle.remove()
    assert sum(s["tokens"] for s in shares) == whole["tokens"]
    assert sum(s["nll_sum"] for s in shares) == pytest.approx(whole["nll_sum"], rel=1e-12)
    assert len({s["passes"] for s in shares}) == 1


if __name__ == "__main__":
    _grad_worker(Path(sys.argv[1]))
    # Skip torch's C++ teardown, which sometimes aborts after a multi-process run (see __main__.py).
    sys.stdout.flush()
    os._exit(0)
