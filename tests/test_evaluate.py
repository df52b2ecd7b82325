"""Perplexity evaluation: window plans, token weighting, uniform and hand-computed references."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from albert_gpt.checkpoint import load_for_inference
from albert_gpt.cli import main
from albert_gpt.config import ModelConfig, config_from_dict
from albert_gpt.data.pipeline import prepare_data
from albert_gpt.errors import ConfigError, DataError
from albert_gpt.inference.evaluate import evaluate_tokens, format_eval, window_plan
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.training.trainer import train


class Bigram(nn.Module):
    """Next-token logits from a table indexed by the current token: a model with known outputs."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table, freeze=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, tracer=None):
        return self.table(idx), None  # (B, T, V)


def scored_positions(plan: list[tuple[int, int, int]]) -> Counter:
    counts: Counter = Counter()
    for start, end, score_from in plan:
        assert end - start <= 9, "a window holds at most block_size + 1 tokens"
        counts.update(range(max(start + 1, score_from), end))
    return counts


@pytest.mark.parametrize("n_tokens", [2, 3, 9, 10, 17, 50, 51])
@pytest.mark.parametrize("stride", [1, 3, 7, 8])
def test_window_plan_scores_every_position_once(n_tokens: int, stride: int) -> None:
    """Every target position 1..N-1 is scored exactly once, whatever the stride."""
    plan = window_plan(n_tokens, block_size=8, stride=stride)
    counts = scored_positions(plan)
    assert sorted(counts) == list(range(1, n_tokens))
    assert set(counts.values()) == {1}


def test_window_plan_sliding_context() -> None:
    """The first window scores all its targets; later ones only the last `stride`, after full context."""
    plan = window_plan(20, block_size=8, stride=3)
    assert plan[0] == (0, 9, 1)
    assert plan[1] == (3, 12, 9)  # targets 4..11 predicted, 9..11 new
    for start, _, score_from in plan[1:]:
        assert score_from - start - 1 >= 8 - 3  # tokens of context before the first scored target
    assert plan[-1][1] == 20


def test_window_plan_default_is_non_overlapping() -> None:
    """stride None or == block_size: windows of block_size + 1 tokens sharing one boundary token; the
    last one, cut short by the end, reaches back for a full context and scores only its new targets."""
    expected = [(0, 5, 1), (4, 9, 5), (6, 11, 9)]
    assert window_plan(11, block_size=4) == expected
    assert window_plan(11, block_size=4, stride=4) == expected


@pytest.mark.parametrize("stride", [0, -1, 9])
def test_window_plan_rejects_bad_stride(stride: int) -> None:
    """A stride outside 1..block_size is a one-line ConfigError naming the bound."""
    with pytest.raises(ConfigError, match=r"stride must be between 1 and block_size \(8\)"):
        window_plan(100, block_size=8, stride=stride)


def test_window_plan_rejects_too_short_split() -> None:
    """A split of one token has nothing to predict."""
    with pytest.raises(DataError, match="at least 2 tokens"):
        window_plan(1, block_size=8)


def test_uniform_logits_give_perplexity_vocab_size() -> None:
    """Constant logits mean a uniform distribution: perplexity equals the vocabulary size."""
    vocab = 37
    model = Bigram(torch.zeros(vocab, vocab))
    tokens = np.random.default_rng(0).integers(0, vocab, size=203).astype(np.uint16)
    result = evaluate_tokens(model, tokens, block_size=16, batch_size=4, device="cpu")
    assert result["tokens"] == 202
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert result["bits_per_byte"] is None


def test_zeroed_albert_gpt_has_perplexity_vocab_size() -> None:
    """A real AlbertGPT whose tied head is zeroed outputs all-zero logits: perplexity = vocab size."""
    torch.manual_seed(0)
    model = AlbertGPT(ModelConfig(n_layers=2, n_embd=16, n_heads=2, block_size=8, vocab_size=50,
                                  pad_vocab_multiple=64))
    with torch.no_grad():
        model.tok_emb.weight.zero_()
    tokens = np.random.default_rng(4).integers(0, 50, size=41).astype(np.uint16)
    result = evaluate_tokens(model, tokens, block_size=8, batch_size=2, device="cpu", stride=3)
    assert result["tokens"] == 40
    assert result["perplexity"] == pytest.approx(50, rel=1e-5)


def trained_periodic_model() -> tuple[AlbertGPT, np.ndarray]:
    """A tiny model trained on a repeated random phrase, where longer context makes prediction easier.

    Tokens repeat within the 20-token phrase (vocabulary 8), so the first targets of a window,
    seen with one or two tokens of context, are ambiguous, and later ones are not.
    """
    torch.manual_seed(0)
    phrase = np.random.default_rng(0).integers(0, 8, size=20)
    tokens = np.tile(phrase, 40).astype(np.uint16)
    model = AlbertGPT(ModelConfig(n_layers=1, n_embd=32, n_heads=2, block_size=16, vocab_size=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(tokens) - 17, (16,), generator=generator).tolist()
        data = torch.stack([torch.from_numpy(tokens[s:s + 17].astype(np.int64)) for s in starts])  # (B, T+1)
        _, loss = model(data[:, :-1], data[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, tokens


def test_sliding_window_never_worse_on_a_trained_model() -> None:
    """A stride below block_size gives more context per scored token: perplexity <= non-overlapping."""
    model, tokens = trained_periodic_model()
    plain = evaluate_tokens(model, tokens, block_size=16, batch_size=64, device="cpu")
    assert plain["loss"] < 0.5, "the model should have learned the phrase"
    for stride in (8, 4, 1):
        sliding = evaluate_tokens(model, tokens, block_size=16, batch_size=64, device="cpu", stride=stride)
        assert sliding["tokens"] == plain["tokens"] == len(tokens) - 1
        assert sliding["perplexity"] <= plain["perplexity"]


def hand_nll(table: list[list[float]], ids: list[int]) -> float:
    """Sum of -log p(next | current) written out with math.exp/log, no torch."""
    total = 0.0
    for cur, nxt in zip(ids[:-1], ids[1:]):
        row = table[cur]
        total += math.log(sum(math.exp(v) for v in row)) - row[nxt]
    return total


def test_bits_per_byte_by_hand() -> None:
    """bits/byte = total NLL / ln 2 / UTF-8 bytes, checked on a short text with a byte vocabulary."""
    text = "abba cab"
    ids = list(text.encode("utf-8"))
    table = [[0.0] * 256 for _ in range(256)]
    table[ord("a")][ord("b")] = 2.0
    table[ord("b")][ord("a")] = 1.0
    table[ord("b")][ord("b")] = 0.5
    table[ord(" ")][ord("c")] = 3.0
    model = Bigram(torch.tensor(table))
    tokens = np.array(ids, dtype=np.uint16)
    result = evaluate_tokens(model, tokens, block_size=3, batch_size=2, device="cpu", n_bytes=len(text))
    expected = hand_nll(table, ids)
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(expected / (len(ids) - 1), rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(expected / math.log(2) / 8, rel=1e-6)


def test_loss_is_token_weighted_not_mean_of_batch_means() -> None:
    """With a short last batch, the mean of batch means is biased; the token-weighted loss is exact."""
    torch.manual_seed(0)
    vocab = 11
    table = torch.randn(vocab, vocab) * 3
    model = Bigram(table)
    tokens = np.random.default_rng(1).integers(0, vocab, size=26).astype(np.int64)
    block_size, batch_size = 4, 2
    # windows of 5, 5, 5, 5, 5, 5 (targets 1..24) and a last one of 2 tokens: batches of 2, 2, 2, 1
    batch_means = []
    windows = window_plan(len(tokens), block_size)
    for i in range(0, 6, 2):
        pair = windows[i:i + 2]
        window_means = [hand_nll(table.tolist(), list(tokens[s:e])) / (e - s - 1) for s, e, _ in pair]
        batch_means.append(np.mean(window_means))
    batch_means.append(hand_nll(table.tolist(), list(tokens[24:26])))
    exact = hand_nll(table.tolist(), list(tokens)) / (len(tokens) - 1)
    result = evaluate_tokens(model, tokens, block_size, batch_size, device="cpu")
    assert result["tokens"] == 25
    assert result["loss"] == pytest.approx(exact, rel=1e-6)
    assert abs(float(np.mean(batch_means)) - exact) > 1e-3


def test_stride_equal_block_size_is_the_default_evaluation() -> None:
    """stride == block_size gives exactly the non-overlapping result."""
    torch.manual_seed(0)
    model = Bigram(torch.randn(13, 13))
    tokens = np.random.default_rng(2).integers(0, 13, size=100).astype(np.uint32)
    default = evaluate_tokens(model, tokens, block_size=8, batch_size=3, device="cpu")
    same = evaluate_tokens(model, tokens, block_size=8, batch_size=3, device="cpu", stride=8)
    assert default == same


def test_max_batches_scores_a_fixed_prefix() -> None:
    """max_batches scores only the first batches of the plan; bits/byte is scaled to the split."""
    torch.manual_seed(0)
    table = torch.randn(7, 7)
    model = Bigram(table)
    tokens = np.random.default_rng(3).integers(0, 7, size=200).astype(np.int64)
    result = evaluate_tokens(model, tokens, block_size=8, batch_size=4, device="cpu", max_batches=2,
                             n_bytes=500)
    assert result["tokens"] == 2 * 4 * 8
    prefix = list(tokens[: 2 * 4 * 8 + 1])
    loss = hand_nll(table.tolist(), prefix) / (2 * 4 * 8)
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    # bits per byte of a subset: its loss at the whole split's 199 predicted tokens per 500 bytes
    assert result["bits_per_byte"] == pytest.approx(loss * 199 / math.log(2) / 500, rel=1e-6)


def test_evaluation_restores_train_mode() -> None:
    """The model is evaluated in eval mode and handed back in the mode it came in."""
    seen = []

    class Probe(Bigram):
        def forward(self, idx, targets=None, tracer=None):
            seen.append(self.training)
            return super().forward(idx, targets)

    model = Probe(torch.zeros(5, 5))
    model.train()
    evaluate_tokens(model, np.arange(20) % 5, block_size=4, batch_size=2, device="cpu")
    assert seen and not any(seen)
    assert model.training


def test_format_eval_lists_the_numbers() -> None:
    """The human-readable summary shows perplexity and bits per byte."""
    text = format_eval({"loss": 1.0, "perplexity": math.e, "bits_per_byte": 1.25, "tokens": 1000,
                        "split": "val", "stride": 64, "checkpoint": None})
    assert "2.718" in text and "1.2500" in text and "1,000" in text and "val" in text


# ---------------------------------------------------------------- end to end on a trained run

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory written by the trainer: a tiny char-level model trained for a few steps."""
    root = tmp_path_factory.mktemp("eval_run")
    corpus = root / "corpus.txt"
    docs = [f"entry {i}: the quick brown fox jumps over the lazy dog, café {i % 7}." for i in range(200)]
    corpus.write_text("\n\n".join(docs), encoding="utf-8")
    cfg = config_from_dict({
        "run": {"name": "tiny", "out_dir": str(root / "runs"), "device": "cpu", "dtype": "float32"},
        "model": {"n_layers": 2, "n_embd": 32, "n_heads": 2, "block_size": 16},
        "data": {"source": "files", "path": str(corpus), "cache_dir": str(root / "cache")},
        "tokenizer": {"type": "char"},
        "train": {"batch_size": 8, "max_steps": 10, "warmup_steps": 2, "checkpoint_interval": 5},
        "eval": {"interval": 0, "batches": 2, "sample_tokens": 0},
        "log": {"progress": False, "tensorboard": False},
    })
    train(cfg)
    return cfg.run_dir


def reference_nll(model: AlbertGPT, tokens: np.ndarray, block_size: int) -> tuple[float, int]:
    """Total NLL over non-overlapping windows, one window at a time with log_softmax; a last window cut
    short by the end of the text reads a full block_size of context and scores only its new tokens."""
    ids = torch.from_numpy(tokens.astype(np.int64))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block_size):
            end = min(start + block_size + 1, len(ids))
            window = ids[max(0, end - block_size - 1):end]
            new = end - start - 1  # targets at positions start+1 .. end-1
            logits, _ = model(window[None, :-1])  # (1, T, V)
            logp = torch.log_softmax(logits[0].double(), dim=-1)[-new:]
            total -= logp.gather(1, window[1:][-new:, None]).sum().item()
            count += new
    return total, count


def test_cli_eval_json_matches_a_reference_computation(run_dir: Path, capsys) -> None:
    """`albert-gpt eval RUN_DIR --json` prints the token-weighted loss, perplexity and bits/byte of val."""
    assert main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    cfg, model, _ = load_for_inference(run_dir)
    val = prepare_data(cfg, progress=False).splits["val"]
    total, count = reference_nll(model, np.asarray(val.tokens), cfg.model.block_size)
    assert result["tokens"] == count == len(val) - 1
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / val.n_bytes, rel=1e-5)
    assert (result["split"], result["stride"], result["checkpoint"], result["step"]) == (
        "val", 16, "step_00000010", 10
    )


def test_cli_eval_stride_and_checkpoint(run_dir: Path, capsys) -> None:
    """--stride scores every test token once; --checkpoint picks an earlier step."""
    args = ["--split", "test", "--stride", "4", "--checkpoint", "5", "--json"]
    assert main(["eval", str(run_dir), *args]) == 0
    result = json.loads(capsys.readouterr().out)
    cfg, _, _ = load_for_inference(run_dir)
    assert result["tokens"] == len(prepare_data(cfg, progress=False).splits["test"]) - 1
    assert (result["stride"], result["checkpoint"], result["step"]) == (4, "step_00000005", 5)


def test_cli_eval_human_output(run_dir: Path, capsys) -> None:
    """Without --json the result is a readable table."""
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits per byte" in out and "step_00000010" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stride", "0"], "--stride must be between 1 and block_size (16), got 0"),
        (["--stride", "17"], "--stride must be between 1 and block_size (16), got 17"),
        (["--checkpoint", "step_00000999"], "step_00000999 not found"),
    ],
)
def test_cli_eval_bad_arguments_one_line(run_dir: Path, capsys, args: list[str], message: str) -> None:
    """A bad stride or checkpoint is one line on stderr and exit code 2."""
    assert main(["eval", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_eval_missing_run_dir(tmp_path: Path, capsys) -> None:
    """A path that is not a run directory is reported by name."""
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert f"run directory not found: {tmp_path / 'nope'}" in capsys.readouterr().err


# ---------------------------------------------------------------- portable runs, any text


def _trained_run(tmp_path):
    from train_utils import tiny_config

    from albert_gpt.training.trainer import train

    cfg = tiny_config(tmp_path, train={"max_steps": 4})
    train(cfg)
    return cfg


def test_eval_of_a_text_file_is_the_hand_computed_nll_of_eot_plus_its_tokens(tmp_path):
    from albert_gpt.checkpoint import load_for_inference
    from albert_gpt.inference.evaluate import evaluate_run

    cfg = _trained_run(tmp_path)
    text_file = tmp_path / "other.txt"
    text = "the red dog sat on a big log.\n" * 3
    text_file.write_text(text, encoding="utf-8")
    result = evaluate_run(cfg.run_dir, text=text_file, progress=False, device="cpu", dtype="float32")
    _, model, tokenizer = load_for_inference(cfg.run_dir)
    ids = np.array([tokenizer.eot_id, *tokenizer.encode(text)])
    nll, n = reference_nll(model, ids, cfg.model.block_size)
    assert result["tokens"] == n == len(tokenizer.encode(text))
    assert result["loss"] == pytest.approx(nll / n, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-6)
    assert result["split"] == "text" and result["device"] == "cpu"


def test_a_run_trained_for_cuda_evaluates_here_without_its_training_data(tmp_path, monkeypatch):
    """The config says cuda (edited, as a GPU run's would): the manifest does not object, eval and generate
    default to this machine's device, and the split comes from the recorded cache: no corpus, any cwd."""
    from albert_gpt.cli import main

    cfg = _trained_run(tmp_path)
    for config in [cfg.run_dir / "config.yaml", *cfg.run_dir.glob("checkpoints/step_*/config.yaml")]:
        config.write_text(config.read_text().replace("device: cpu", "device: cuda"))
    (tmp_path / "corpus.txt").unlink()  # the training data is gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    if not torch.cuda.is_available():
        assert main(["eval", str(cfg.run_dir), "--json"]) == 0
        assert main(["generate", str(cfg.run_dir), "--max-new-tokens", "3"]) == 0
        assert main(["eval", str(cfg.run_dir), "--device", "cuda"]) == 2  # asked for, and not here: one line


def test_eval_text_errors_are_one_line(tmp_path, capsys):
    from albert_gpt.cli import main

    cfg = _trained_run(tmp_path)
    assert main(["eval", str(cfg.run_dir), "--text", str(tmp_path / "missing.txt")]) == 2
    assert "--text: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    assert main(["eval", str(cfg.run_dir), "--text", str(bad)]) == 2
    assert "not UTF-8 text (byte 3)" in capsys.readouterr().err
