"""Text generation: seeded sampling, end-of-text, prompt handling and UTF-8-safe streaming."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch

from albert_gpt.checkpoint import load_for_inference
from albert_gpt.cli import main
from albert_gpt.config import ModelConfig, TokenizerConfig, config_from_dict
from albert_gpt.data.tokenizer import build_tokenizer
from albert_gpt.inference.generate import StreamDecoder, generate_text
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.training.trainer import train

CORPUS = [
    "the cat sat on the mat. the dog sat on the log.",
    "déjà vu: naïve café, größer als 日本語 ✓ ok",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


@pytest.fixture(scope="module")
def bpe():
    """A real byte-level BPE, small enough that accented and CJK characters span several tokens."""
    cfg = TokenizerConfig(type="bpe", vocab_size=300, min_frequency=2)
    return build_tokenizer(cfg, CORPUS, progress=False)


@pytest.fixture(scope="module")
def chars():
    return build_tokenizer(TokenizerConfig(type="char"), CORPUS, progress=False)


def tiny_model(vocab_size: int, block_size: int = 16, seed: int = 0) -> AlbertGPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layers=2, n_embd=16, n_heads=2, block_size=block_size, vocab_size=vocab_size)
    return AlbertGPT(cfg).eval()


def test_stream_decoder_never_prints_half_characters(bpe) -> None:
    """Ids arriving one at a time: the stream holds back split UTF-8 and ends equal to a one-shot decode."""
    text = CORPUS[1]
    ids = bpe.encode(text)
    partial = [bpe.decode(ids[:k]) for k in range(1, len(ids) + 1)]
    assert any(p.endswith("\ufffd") for p in partial), "the test needs a character split across tokens"
    writes: list[str] = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            writes.append(s)
            return super().write(s)

    out = Recorder()
    decoder = StreamDecoder(bpe, out)
    for token_id in ids:
        decoder.push(token_id)
    assert decoder.finish() == text
    assert out.getvalue() == text
    assert all("\ufffd" not in w for w in writes)


def test_stream_decoder_flushes_a_genuinely_cut_character(bpe) -> None:
    """A generation that ends mid-character still prints the replacement character at the end."""
    ids = bpe.encode("✓")
    assert len(ids) > 1
    out = io.StringIO()
    decoder = StreamDecoder(bpe, out)
    decoder.push(ids[0])
    assert out.getvalue() == ""
    assert decoder.finish() == out.getvalue() == bpe.decode(ids[:1])


def test_same_seed_same_text_other_seed_other_text(bpe) -> None:
    """Sampling is a pure function of the seed."""
    model = tiny_model(bpe.vocab_size)
    first = generate_text(model, bpe, "the cat", 30, temperature=1.0, seed=7)
    again = generate_text(model, bpe, "the cat", 30, temperature=1.0, seed=7)
    other = generate_text(model, bpe, "the cat", 30, temperature=1.0, seed=8)
    assert first == again
    assert first != other


def test_streamed_text_equals_returned_text(bpe) -> None:
    """What is printed while generating is exactly the returned continuation."""
    model = tiny_model(bpe.vocab_size)
    out = io.StringIO()
    text = generate_text(model, bpe, "naïve", 40, temperature=1.0, seed=3, stream=out)
    assert out.getvalue() == text
    assert len(text) > 0


def test_top_k_one_equals_greedy(chars) -> None:
    """top_k=1 leaves only the argmax, whatever the temperature: the same text as temperature 0."""
    model = tiny_model(chars.vocab_size)
    greedy = generate_text(model, chars, "the", 20, temperature=0.0, seed=1)
    top1 = generate_text(model, chars, "the", 20, temperature=1.5, top_k=1, seed=2)
    assert top1 == greedy


def eot_heavy_model(tokenizer) -> AlbertGPT:
    """Every position outputs the same vector b; the tied head scores eot at ln(V - 1), all else 0.

    So each sampled token is end-of-text with probability exactly 1/2.
    """
    model = tiny_model(tokenizer.vocab_size, seed=1)
    last_norm = model.blocks[model.schedule[-1]].ffn_norm
    with torch.no_grad():
        b = torch.ones(16) / 4.0  # |b|^2 = 1
        last_norm.weight.zero_()
        last_norm.bias.copy_(b)
        model.tok_emb.weight.zero_()
        model.tok_emb.weight[tokenizer.eot_id] = b * torch.log(torch.tensor(tokenizer.vocab_size - 1.0))
    return model


def test_generation_stops_at_end_of_text(chars) -> None:
    """Generation ends at the eot token, which is not part of the returned text."""
    model = eot_heavy_model(chars)
    prompt_ids = chars.encode("the")
    generator = torch.Generator().manual_seed(3)
    ids = model.generate(torch.tensor([prompt_ids]), 60, generator=generator, eot_id=chars.eot_id)[0].tolist()
    new = ids[len(prompt_ids):]
    assert new[-1] == chars.eot_id and 1 < len(new) < 60  # this seed samples a few tokens first
    text = generate_text(model, chars, "the", 60, temperature=1.0, seed=3)
    assert text == chars.decode(new[:-1])
    assert chars.eot_token not in text


def test_empty_prompt_starts_from_end_of_text(chars) -> None:
    """An empty prompt conditions on the eot token, as at the start of a document."""
    model = tiny_model(chars.vocab_size)
    generator = torch.Generator().manual_seed(11)
    ids = model.generate(torch.tensor([[chars.eot_id]]), 12, generator=generator)[0, 1:].tolist()
    expected = chars.decode(ids[: ids.index(chars.eot_id)] if chars.eot_id in ids else ids)
    assert generate_text(model, chars, "", 12, temperature=1.0, seed=11) == expected


def test_long_prompt_is_cropped_from_the_left_with_a_notice(chars, caplog) -> None:
    """A prompt longer than block_size keeps its last block_size tokens and says so."""
    model = tiny_model(chars.vocab_size, block_size=8)
    prompt = "the cat sat on the mat"
    with caplog.at_level(logging.WARNING, logger="albert_gpt.inference.generate"):
        cropped = generate_text(model, chars, prompt, 10, temperature=1.0, seed=4)
    assert "longer than the context of 8" in caplog.text
    assert cropped == generate_text(model, chars, prompt[-8:], 10, temperature=1.0, seed=4)


# ---------------------------------------------------------------- end to end on a trained run

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory written by the trainer: a tiny byte-level BPE model trained for a few steps."""
    root = tmp_path_factory.mktemp("generate_run")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS * 30), encoding="utf-8")
    cfg = config_from_dict({
        "run": {"name": "tiny", "out_dir": str(root / "runs"), "device": "cpu", "dtype": "float32"},
        "model": {"n_layers": 2, "n_embd": 32, "n_heads": 2, "block_size": 16},
        "data": {"source": "files", "path": str(corpus), "cache_dir": str(root / "cache"),
                 "val_fraction": 0.1, "test_fraction": 0.1},
        "tokenizer": {"type": "bpe", "vocab_size": 300},
        "train": {"batch_size": 4, "max_steps": 5, "warmup_steps": 1},
        "eval": {"interval": 0, "batches": 1, "sample_tokens": 0},
        "log": {"progress": False, "tensorboard": False},
    })
    train(cfg)
    return cfg.run_dir


def run_generate(run_dir: Path, capsys, *args: str) -> str:
    assert main(["generate", str(run_dir), *args]) == 0
    return capsys.readouterr().out


def test_cli_generate_prints_prompt_and_seeded_continuation(run_dir: Path, capsys) -> None:
    """`albert-gpt generate` prints the prompt, then the continuation; the seed fixes the text."""
    args = ("--prompt", "the cat", "--max-new-tokens", "24", "--temperature", "1.0", "--top-p", "0.95")
    first = run_generate(run_dir, capsys, *args, "--seed", "5")
    assert first == run_generate(run_dir, capsys, *args, "--seed", "5")
    assert first != run_generate(run_dir, capsys, *args, "--seed", "6")
    _, model, tokenizer = load_for_inference(run_dir)
    continuation = generate_text(model, tokenizer, "the cat", 24, temperature=1.0, top_p=0.95, seed=5)
    assert first == "the cat" + continuation + "\n"


def test_cli_generate_greedy_with_top_k(run_dir: Path, capsys) -> None:
    """--top-k 1 and --temperature 0 print the same greedy text."""
    greedy = run_generate(run_dir, capsys, "--prompt", "déjà", "--temperature", "0", "--max-new-tokens", "10")
    top1 = run_generate(run_dir, capsys, "--prompt", "déjà", "--top-k", "1", "--max-new-tokens", "10")
    assert greedy == top1 and greedy.startswith("déjà")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--top-k", "0"], "--top-k must be >= 1, got 0"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
        (["--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
        (["--checkpoint", "nope"], "nope not found"),
    ],
)
def test_cli_generate_bad_arguments_one_line(run_dir: Path, capsys, args: list[str], message: str) -> None:
    """Bad sampling settings or a missing checkpoint: one line on stderr, exit code 2."""
    assert main(["generate", str(run_dir), "--prompt", "a", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
