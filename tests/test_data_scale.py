"""Corpora larger than memory: text files read in pieces give exactly the tokens of whole files, many small
files give the tokens of one big one, BPE trains on a capped sample, and training reads the token cache
through a memory map (its memory does not grow with the corpus)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, pre_tokenizers

from albert_gpt.config import config_from_dict
from albert_gpt.data import documents
from albert_gpt.data.batches import RandomWindowSampler
from albert_gpt.data.documents import DecodeCounts, TextFile, find_cut
from albert_gpt.data.pipeline import prepare_data
from albert_gpt.data.tokenizer import cut_rule, training_sample
from albert_gpt.errors import ConfigError

# Lines that put whitespace, punctuation and non-ASCII text on both sides of newlines: every kind of
# place a cut could go wrong under GPT-2's pre-tokenizer.
LINES = [
    "First Citizen:",
    "  indented line",
    "\tTab led.",
    "",
    "   ",
    "trailing space ",
    "café naïve 😀",
    "x",
    "'s contraction",
    "1234 5678",
    "--- punctuation ---",
    "\u3000ideographic space",
    "end.\r",
    "ALL CAPS",
    "mixed\u00a0nbsp",
]


def tricky_text(n_lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n".join(rng.choice(LINES) for _ in range(n_lines)) + "\n"


def config(tmp_path: Path, path: Path, tokenizer: dict, **data) -> object:
    return config_from_dict(
        {
            "data": {"source": "files", "path": str(path), "cache_dir": str(tmp_path / "cache"), **data},
            "tokenizer": tokenizer,
            "log": {"progress": False},
        }
    )


def all_tokens(prepared) -> dict[str, np.ndarray]:
    return {name: np.array(split.tokens) for name, split in prepared.splits.items()}


@pytest.mark.parametrize("tokenizer", [{"type": "char"}, {"type": "bpe", "vocab_size": 400}])
def test_pieces_give_the_tokens_of_whole_files(tmp_path, monkeypatch, tokenizer):
    """The same corpus prepared in 64-byte pieces and as whole files: the same tokenizer, the same tokens
    in every split (one big file, so val and test are cut by position, across pieces)."""
    path = tmp_path / "corpus.txt"
    path.write_text(tricky_text(3000), encoding="utf-8")
    whole = prepare_data(config(tmp_path / "whole", path, tokenizer), progress=False)
    monkeypatch.setattr(documents, "PIECE_BYTES", 64)
    pieces = list(
        TextFile(path, "replace", cut_rule(config(tmp_path, path, tokenizer).tokenizer), DecodeCounts())
    )
    assert len(pieces) > 100  # really read in pieces
    chunked = prepare_data(config(tmp_path / "chunked", path, tokenizer), progress=False)
    assert chunked.tokenizer.to_json() == whole.tokenizer.to_json()
    for name, tokens in all_tokens(whole).items():
        assert np.array_equal(all_tokens(chunked)[name], tokens), name
    for name, split in whole.stats["splits"].items():
        for key in ("documents", "characters", "bytes", "tokens", "sha256"):
            assert chunked.stats["splits"][name][key] == split[key], (name, key)


def test_every_allowed_cut_keeps_bpe_tokens(tmp_path):
    """Independent of the pipeline: for a byte-level BPE, encoding the text cut at each place find_cut allows
    gives the tokens of encoding it whole; a cut it refuses (before an indented line) splits a pre-token."""
    path = tmp_path / "c.txt"
    text = tricky_text(400, seed=1)
    path.write_text(text, encoding="utf-8")
    cfg = config(tmp_path, path, {"type": "bpe", "vocab_size": 300})
    tok = prepare_data(cfg, progress=False).tokenizer
    whole = tok.encode(text)
    raw = text.encode("utf-8")
    cuts, at = [], 0
    while (cut := find_cut(raw, at, "isolated_line")) > 0:
        cuts.append(cut)
        at = cut
    assert len(cuts) > 20
    for cut in cuts:
        left, right = raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")
        assert tok.encode(left) + tok.encode(right) == whole, cut
    unsafe = raw.index(b"e\n  indented") + 2
    assert unsafe not in cuts
    left, right = raw[:unsafe].decode("utf-8"), raw[unsafe:].decode("utf-8")
    words = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str
    assert [w for w, _ in words(left) + words(right)] != [w for w, _ in words(text)]


def test_a_pretrained_gpt2_style_tokenizer_is_cut_like_bpe_and_others_not_at_all(tmp_path):
    """cut_rule reads a tokenizer.json: GPT-2's byte-level pre-tokenizer allows isolated-line cuts; one with
    a prefix space (which would add a space at every piece) allows none."""
    path = tmp_path / "c.txt"
    path.write_text(tricky_text(200), encoding="utf-8")
    tok = prepare_data(config(tmp_path, path, {"type": "bpe", "vocab_size": 300}), progress=False).tokenizer
    saved = tmp_path / "tokenizer.json"
    tok.save(saved)
    pretrained = config(tmp_path, path, {"type": "pretrained", "path": str(saved)}).tokenizer
    assert cut_rule(pretrained) == "isolated_line"
    backend = Tokenizer.from_file(str(saved))
    backend.pre_tokenizer.add_prefix_space = True
    backend.save(str(saved))
    assert cut_rule(pretrained) == "none"


def test_thousand_small_files_give_the_tokens_of_one_file(tmp_path):
    """1,000 files and their concatenation as one file, same tokenizer: the same tokens but for the 999
    end-of-text tokens between the files' documents."""
    many = tmp_path / "many"
    many.mkdir()
    texts = [tricky_text(3, seed=i).replace("\n ", "\nx").strip() + "\n" for i in range(1000)]
    texts = [t if t[0].isprintable() and not t[0].isspace() else "a" + t for t in texts]
    for i, text in enumerate(texts):
        (many / f"part{i:04d}.txt").write_text(text, encoding="utf-8")
    one = tmp_path / "one.txt"
    one.write_text("".join(texts), encoding="utf-8")
    tok_source = prepare_data(config(tmp_path / "t", one, {"type": "bpe", "vocab_size": 400}), progress=False)
    tok_source.tokenizer.save(tmp_path / "tokenizer.json")
    pretrained = {"type": "pretrained", "path": str(tmp_path / "tokenizer.json")}
    split = {"val_fraction": 0.0, "test_fraction": 0.0}
    from_many = prepare_data(config(tmp_path / "a", many, pretrained, **split), progress=False)
    from_one = prepare_data(config(tmp_path / "b", one, pretrained, **split), progress=False)
    a, b = np.array(from_many.splits["train"].tokens), np.array(from_one.splits["train"].tokens)
    eot = from_many.tokenizer.eot_id
    assert from_many.splits["train"].n_documents == 1000 and np.count_nonzero(a == eot) == 999
    assert len(a) - 999 == len(b)
    assert np.array_equal(a[a != eot], b)


def test_bpe_sample_is_capped_and_spread_across_the_split():
    """training_sample keeps about max_bytes, from the whole split when its size is known, else its head."""
    docs = [f"document {i:04d} " * 20 for i in range(1000)]  # 280 bytes each, 280 kB in all
    size, total = len(docs[0]), sum(len(d) for d in docs)
    spread = list(training_sample(docs, 30_000, total))
    assert 30_000 <= sum(len(p) for p in spread) < 30_000 + size
    numbers = [int(p.split()[1]) for p in spread]
    assert numbers[0] < 20 and numbers[-1] > 980  # first and last tenth both sampled
    head = list(training_sample(docs, 30_000, None))
    assert [int(p.split()[1]) for p in head] == list(range(-(-30_000 // size)))
    assert list(training_sample(docs, 10**9, total)) == docs


def test_long_unbroken_runs_count_25_times_toward_the_sample_cap():
    """Text without whitespace (which the BPE trainer holds as distinct words, 25 bytes of memory a byte)
    counts LONG_RUN_WEIGHT times: a cap of 100 kB takes 4 kB of it, and all 100 kB of ordinary text; a run
    one character short of LONG_RUN counts as ordinary text."""
    from albert_gpt.data.tokenizer import LONG_RUN, LONG_RUN_WEIGHT, sample_cost

    dense = ["".join(random.Random(i).choice("abc(){}=;,.é") for _ in range(1000)) for i in range(200)]
    taken = list(training_sample(dense, 100_000, None))
    assert sum(len(p.encode()) for p in taken) <= 100_000 // LONG_RUN_WEIGHT + len(dense[0].encode())
    assert len(taken) == -(-100_000 // sample_cost(dense[0]))
    words = ["ab" * 10 + " " for _ in range(10_000)]  # 210 kB of 20-character words
    assert sum(len(p) for p in training_sample(words, 100_000, None)) >= 100_000
    assert sample_cost("x" * (LONG_RUN - 1)) == LONG_RUN - 1
    assert sample_cost("é" * LONG_RUN + " ab") == 2 * LONG_RUN + 3 + (LONG_RUN_WEIGHT - 1) * LONG_RUN



def test_the_summary_says_how_many_bytes_bpe_was_trained_on(tmp_path, monkeypatch):
    """A 60 kB file without whitespace under a 25 kB cap: BPE sees about 1 kB (25 times less) and the
    summary says so."""
    from albert_gpt.data.pipeline import format_stats

    monkeypatch.setattr(documents, "PIECE_BYTES", 256)
    monkeypatch.setattr(documents, "MAX_PIECE_BYTES", 1024)
    path = tmp_path / "dense.txt"
    path.write_text("".join(random.Random(5).choice("ab(){}=;,.x1") for _ in range(60_000)), encoding="utf-8")
    tokenizer = {"type": "bpe", "vocab_size": 300, "train_max_bytes": 25_000}
    prepared = prepare_data(config(tmp_path, path, tokenizer), progress=False)
    sampled = prepared.stats["tokenizer_sample_bytes"]
    assert 1000 <= sampled <= 1000 + 4 * 256
    assert f"trained on {sampled:,} bytes of train" in format_stats(prepared)


def test_bpe_trained_on_a_capped_sample_differs_only_when_the_corpus_is_larger(tmp_path, monkeypatch):
    """A cap above the corpus size trains the same BPE as no cap; a cap of a few pieces trains another."""
    monkeypatch.setattr(documents, "PIECE_BYTES", 64)
    path = tmp_path / "c.txt"
    path.write_text(tricky_text(2000), encoding="utf-8")
    size = path.stat().st_size
    full = prepare_data(config(tmp_path / "a", path, {"type": "bpe", "vocab_size": 320}), progress=False)
    roomy = prepare_data(
        config(tmp_path / "b", path, {"type": "bpe", "vocab_size": 320, "train_max_bytes": 10 * size}),
        progress=False,
    )
    small = prepare_data(
        config(tmp_path / "c", path, {"type": "bpe", "vocab_size": 320, "train_max_bytes": 300}),
        progress=False,
    )
    assert roomy.tokenizer.to_json() == full.tokenizer.to_json()
    assert small.tokenizer.to_json() != full.tokenizer.to_json()


def test_num_proc_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"data\.num_proc: removed; .*RAYON_NUM_THREADS"):
        config_from_dict({"data": {"num_proc": 4}})


def _anon_rss_kb() -> int:
    """Resident anonymous memory of this process (file-backed pages of a memory map are not counted:
    the kernel can drop them at any time)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    pytest.skip("no RssAnon in /proc/self/status")


def test_training_batches_read_the_cache_through_a_memory_map(tmp_path):
    """Drawing 500 batches from a 200 MB token file keeps this process's own memory (anonymous RSS) within
    a few MB, and the split is a read-only np.memmap: memory does not grow with the corpus."""
    path = tmp_path / "c.txt"
    path.write_text(tricky_text(500), encoding="utf-8")
    cfg = config(tmp_path, path, {"type": "char"})
    prepared = prepare_data(cfg, progress=False)
    train_file = prepared.cache_dir / "train.bin"
    rng = np.random.default_rng(0)
    with train_file.open("wb") as f:  # grow the split to 100 M tokens (200 MB) in place
        for _ in range(100):
            f.write(rng.integers(0, prepared.tokenizer.vocab_size, 1 << 20, dtype=np.uint16).tobytes())
    tokens = np.memmap(train_file, dtype=np.uint16, mode="r")
    assert len(tokens) == 100 << 20
    split = prepared.splits["train"]
    assert isinstance(split.tokens, np.memmap) and not split.tokens.flags.writeable
    sampler = RandomWindowSampler(tokens, 256, 64, seed=0)
    sampler.batch(0)
    before = _anon_rss_kb()
    for step in range(500):
        sampler.batch(step)
    assert _anon_rss_kb() - before < 20_000  # far below the 200 MB file


def one_long_line(n_words: int, seed: int = 0) -> str:
    """Words, digits, punctuation and non-ASCII separated by single and double spaces, no newline."""
    rng = random.Random(seed)
    words = ["First", "citizen:", "café", "naïve", "😀", "1234", "--", "'s", "x", "ALL", "(paren)", "end."]
    return "".join(rng.choice(words) + rng.choice([" ", " ", "  ", "\t"]) for _ in range(n_words))


@pytest.mark.parametrize("tokenizer", [{"type": "char"}, {"type": "bpe", "vocab_size": 400}])
def test_a_file_without_newlines_is_read_in_bounded_pieces_with_the_same_tokens(
    tmp_path, monkeypatch, tokenizer
):
    """One long line: pieces never exceed MAX_PIECE_BYTES, no cut is forced (char: any character boundary;
    BPE: before a single space between printable characters), and the tokens equal whole-file reading."""
    path = tmp_path / "one_line.txt"
    path.write_text(one_long_line(4000), encoding="utf-8")
    whole = prepare_data(config(tmp_path / "whole", path, tokenizer), progress=False)
    monkeypatch.setattr(documents, "PIECE_BYTES", 64)
    monkeypatch.setattr(documents, "MAX_PIECE_BYTES", 256)
    counts = DecodeCounts()
    raw = list(
        TextFile(path, "replace", cut_rule(config(tmp_path, path, tokenizer).tokenizer), counts).raw_pieces()
    )
    assert len(raw) > 50 and max(len(p) for p in raw) <= 256 and b"".join(raw) == path.read_bytes()
    assert counts.forced_total == 0
    chunked = prepare_data(config(tmp_path / "chunked", path, tokenizer), progress=False)
    assert chunked.stats["forced_cuts"] == 0
    for name, tokens in all_tokens(whole).items():
        assert np.array_equal(all_tokens(chunked)[name], tokens), name


def test_a_file_without_any_whitespace_is_cut_at_character_boundaries_and_says_so(tmp_path, monkeypatch):
    """No newline and no space (minified data): BPE pieces are cut at character boundaries (never inside a
    UTF-8 sequence), the forced cuts are counted, and the summary reports them."""
    from albert_gpt.data.pipeline import format_stats

    path = tmp_path / "dense.txt"
    path.write_text(
        "".join(random.Random(2).choice(["ab", "é", "😀", "{}", "x1"]) for _ in range(3000)), encoding="utf-8"
    )
    monkeypatch.setattr(documents, "PIECE_BYTES", 64)
    monkeypatch.setattr(documents, "MAX_PIECE_BYTES", 256)
    counts = DecodeCounts()
    raw = list(TextFile(path, "strict", "isolated_line", counts).raw_pieces())
    assert max(len(p) for p in raw) <= 256 and b"".join(raw) == path.read_bytes()
    assert all(p.decode("utf-8") for p in raw)  # every piece decodes alone: no character was split
    assert counts.forced_total == len(raw) - 1 > 10
    prepared = prepare_data(config(tmp_path, path, {"type": "bpe", "vocab_size": 300}), progress=False)
    assert prepared.stats["forced_cuts"] > 0
    assert "pieces cut with no newline or space to cut at" in format_stats(prepared)


def test_every_space_cut_keeps_bpe_tokens(tmp_path):
    """Independent of the pipeline, as for newline cuts: encoding a long line cut at each place find_space_cut
    allows gives the tokens of encoding it whole."""
    from albert_gpt.data.documents import find_space_cut

    path = tmp_path / "c.txt"
    text = one_long_line(600, seed=3)
    path.write_text(text, encoding="utf-8")
    tok = prepare_data(config(tmp_path, path, {"type": "bpe", "vocab_size": 300}), progress=False).tokenizer
    whole = tok.encode(text)
    raw = text.encode("utf-8")
    cuts, at = [], 1
    while (cut := find_space_cut(raw, at)) > 0:
        cuts.append(cut)
        at = cut + 1
    assert len(cuts) > 50
    for cut in cuts:
        assert tok.encode(raw[:cut].decode("utf-8")) + tok.encode(raw[cut:].decode("utf-8")) == whole, cut


PEAK_OF_PREPARE = """
import resource, sys
from albert_gpt.cli import main
code = main(["prepare", sys.argv[1]])
print("MODULES", " ".join(m for m in ("torch", "datasets") if m in sys.modules))
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def _prepare_in_a_fresh_process(tmp_path: Path, corpus: Path, name: str) -> tuple[int, str]:
    """(max resident KB, heavy modules imported) of `albert-gpt prepare` on `corpus`, in its own process."""
    import subprocess
    import sys

    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"data: {{source: files, path: {corpus}, cache_dir: {tmp_path / name}}}\n"
        "tokenizer: {type: bpe, vocab_size: 300, train_max_bytes: 1000000}\nlog: {progress: false}\n"
    )
    done = subprocess.run([sys.executable, "-c", PEAK_OF_PREPARE, str(cfg)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in done.stdout.splitlines())
    return int(lines["MAXRSS_KB"]), lines["MODULES"].strip()


def test_memory_of_prepare_does_not_grow_with_a_file_without_newlines(tmp_path):
    """One line of 4 MB and one of 16 MB: the larger peaks less than 150 MB higher (the batch encoder's
    threads make peaks vary by about 70 MB from run to run; before pieces were bounded, the whole line was
    one string, about 190 bytes of memory per byte of text: 2.3 GB more here), and preparing a files corpus
    imports neither torch nor datasets (about 300 MB)."""
    peaks = {}
    for mb in (4, 16):
        corpus = tmp_path / f"line{mb}.txt"
        with corpus.open("w", encoding="utf-8") as f:
            for seed in range(mb):
                f.write(one_long_line(140_000, seed=seed)[: 1 << 20] + " ")
        assert b"\n" not in corpus.read_bytes()
        peaks[mb], modules = _prepare_in_a_fresh_process(tmp_path, corpus, f"c{mb}")
        assert modules == ""
    assert peaks[16] - peaks[4] < 150 * 1024, peaks
