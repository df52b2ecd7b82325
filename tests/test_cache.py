"""The token cache: contents, reuse without re-tokenizing, atomic builds, split-size checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from albert_gpt.config import Config, config_from_dict
from albert_gpt.data import packing, pipeline
from albert_gpt.data.cache import META, token_dtype
from albert_gpt.data.pipeline import check_split_sizes, prepare_data
from albert_gpt.data.tokenizer import TextTokenizer
from albert_gpt.errors import DataError

WORDS = "the cat sat on a mat while rain fell over quiet hills and rivers ran to the sea".split()


def write_corpus(root: Path, n_docs: int = 40) -> list[str]:
    """n_docs .txt files of pseudo-random sentences (with some multi-byte text); returns them in order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n_docs):
        words = rng.choice(WORDS, size=int(rng.integers(20, 60)))
        text = " ".join(words) + (" — café 😀\n" if i % 3 == 0 else ".\n")
        (root / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
        docs.append(text)
    return docs


def make_cfg(tmp_path: Path, **sections: dict) -> Config:
    data = {"source": "files", "path": str(tmp_path / "corpus"), "cache_dir": str(tmp_path / "cache"),
            "val_fraction": 0.1, "test_fraction": 0.1, **sections.pop("data", {})}
    tokenizer = {"type": "bpe", "vocab_size": 300, **sections.pop("tokenizer", {})}
    return config_from_dict({"data": data, "tokenizer": tokenizer, **sections})


def test_splits_decode_to_documents_joined_by_eot(tmp_path):
    """Each split's tokens decode to its documents joined by the eot spelling; the header's
    counts (documents, characters, UTF-8 bytes without separators, tokens) match."""
    docs = write_corpus(tmp_path / "corpus")
    prepared = prepare_data(make_cfg(tmp_path), progress=False)
    tok = prepared.tokenizer
    seen = []
    for name, split in prepared.splits.items():
        text = tok.decode(split.tokens)
        parts = text.split(tok.eot_token)
        assert split.n_documents == len(parts) > 0, name
        assert split.n_bytes == sum(len(p.encode("utf-8")) for p in parts)
        assert split.n_chars == sum(len(p) for p in parts)
        assert prepared.stats["splits"][name]["tokens"] == len(split)
        seen += parts
    assert sorted(seen) == sorted(docs)
    assert prepared.splits["train"].tokens.dtype == np.uint16


def test_second_run_reuses_cache_without_tokenizing(tmp_path, monkeypatch):
    """The same config again reads the cache: nothing is encoded, the tokens are equal."""
    write_corpus(tmp_path / "corpus")
    cfg = make_cfg(tmp_path)
    first = prepare_data(cfg, progress=False)
    train_before = np.array(first.splits["train"].tokens)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(TextTokenizer, "encode_arrays", no_tokenizing)
    monkeypatch.setattr(TextTokenizer, "encode_batch", no_tokenizing)
    second = prepare_data(cfg, progress=False)
    assert second.stats["cached"] and not first.stats["cached"]
    assert second.cache_dir == first.cache_dir
    assert np.array_equal(second.splits["train"].tokens, train_before)


def test_fingerprint_follows_content_and_tokenizer(tmp_path):
    """Editing a file, the vocabulary size or BPE's training cap makes a new entry; the same config again
    does not."""
    write_corpus(tmp_path / "corpus")
    base = prepare_data(make_cfg(tmp_path), progress=False).cache_dir
    same = prepare_data(make_cfg(tmp_path), progress=False)
    assert same.cache_dir == base and same.stats["cached"]
    capped = make_cfg(tmp_path, tokenizer={"train_max_bytes": 1000})
    assert prepare_data(capped, progress=False).cache_dir != base
    assert prepare_data(make_cfg(tmp_path, tokenizer={"vocab_size": 280}), progress=False).cache_dir != base
    (tmp_path / "corpus" / "doc000.txt").write_text("changed text\n", encoding="utf-8")
    assert prepare_data(make_cfg(tmp_path), progress=False).cache_dir != base


def test_interrupted_build_leaves_nothing_complete(tmp_path, monkeypatch):
    """Ctrl-C while tokenizing the val split: no entry, no temporary directory; the next run builds."""
    write_corpus(tmp_path / "corpus")
    cfg = make_cfg(tmp_path)
    real = packing.pack_split

    def interrupted(documents, tokenizer, path, *args, **kwargs):
        if path.name == "val.bin":
            raise KeyboardInterrupt
        return real(documents, tokenizer, path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "pack_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(pipeline, "pack_split", real)
    assert not prepare_data(cfg, progress=False).stats["cached"]


def test_entry_without_header_is_rebuilt(tmp_path):
    """An entry whose meta.json is missing (written last) is incomplete and rebuilt, as is one
    whose token file has the wrong size."""
    write_corpus(tmp_path / "corpus")
    cfg = make_cfg(tmp_path)
    entry = prepare_data(cfg, progress=False).cache_dir
    (entry / META).unlink()
    rebuilt = prepare_data(cfg, progress=False)
    assert not rebuilt.stats["cached"] and (entry / META).is_file()
    with (entry / "train.bin").open("ab") as f:
        f.write(b"\0\0")
    assert not prepare_data(cfg, progress=False).stats["cached"]
    assert prepare_data(cfg, progress=False).stats["cached"]


def test_char_tokenizer_uses_train_characters_only(tmp_path):
    """char on one file: val is cut from the end by position; a character that occurs only
    there is stored as the unknown id; known text round-trips."""
    (tmp_path / "corpus").mkdir()
    text = "".join(f"line {i}: plain text, only here\n" for i in range(300)) + "only here: Ω\n"
    (tmp_path / "corpus" / "one.txt").write_text(text, encoding="utf-8")
    prepared = prepare_data(make_cfg(tmp_path, tokenizer={"type": "char"}), progress=False)
    tok, test = prepared.tokenizer, prepared.splits["test"]
    assert "Ω" not in tok.decode(prepared.splits["train"].tokens)
    assert test.tokens[-2] == tok.vocab_size - 1  # the unknown id, before the final newline
    whole = "".join(tok.decode(prepared.splits[s].tokens) for s in ("train", "val", "test"))
    assert whole == text.replace("Ω", "\ufffd")
    assert "by character position" in prepared.stats["split_method"]


def test_join_rows_puts_no_eot_between_documents(tmp_path):
    """data.join_rows: documents are pieces of one text, so no end-of-text token is inserted."""
    write_corpus(tmp_path / "corpus")
    prepared = prepare_data(make_cfg(tmp_path, data={"join_rows": True}), progress=False)
    assert prepared.tokenizer.eot_id not in np.asarray(prepared.splits["train"].tokens)


def test_large_vocabulary_uses_uint32(tmp_path):
    """Over 65536 ids the token files switch to uint32, and ids above 65535 survive the round trip."""
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    (tmp_path / "corpus").mkdir()
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 21000))  # CJK
    chars += "".join(chr(c) for c in range(0x20000, 0x20000 + 45000))  # CJK extension B (astral)
    (tmp_path / "corpus" / "wide.txt").write_text(chars + "\n" + chars[::-1] + "\n", encoding="utf-8")
    prepared = prepare_data(make_cfg(tmp_path, tokenizer={"type": "char"}), progress=False)
    train = prepared.splits["train"]
    assert prepared.tokenizer.vocab_size > 65536 and train.tokens.dtype == np.uint32
    assert int(np.max(train.tokens)) > 65535
    whole = "".join(prepared.tokenizer.decode(prepared.splits[s].tokens) for s in ("train", "val", "test"))
    assert whole == chars + "\n" + chars[::-1] + "\n"


def test_header_is_json_with_counts(tmp_path):
    """meta.json states vocabulary size, dtype, fingerprint and per-split token counts that match
    the files on disk."""
    write_corpus(tmp_path / "corpus")
    prepared = prepare_data(make_cfg(tmp_path), progress=False)
    meta = json.loads((prepared.cache_dir / META).read_text(encoding="utf-8"))
    assert meta["fingerprint"] == prepared.cache_dir.name
    assert meta["vocab_size"] == prepared.tokenizer.vocab_size == 300 and meta["dtype"] == "uint16"
    for name in ("train", "val", "test"):
        assert (prepared.cache_dir / f"{name}.bin").stat().st_size == 2 * meta["splits"][name]["tokens"]


def test_split_shorter_than_a_block_names_sizes(tmp_path):
    """check_split_sizes: a split with fewer than block_size + 1 tokens is a DataError naming the
    split, its size and the size needed."""
    write_corpus(tmp_path / "corpus")
    prepared = prepare_data(make_cfg(tmp_path), progress=False)
    n_val = len(prepared.splits["val"])
    check_split_sizes(prepared, block_size=n_val - 1)
    expected = rf"split 'val' has {n_val} tokens, fewer than block_size \+ 1 = {n_val + 1}"
    with pytest.raises(DataError, match=expected):
        check_split_sizes(prepared, block_size=n_val)


def test_empty_held_out_split_when_fraction_is_zero(tmp_path):
    """test_fraction 0: the test split exists with no tokens (and no file mapping problem)."""
    write_corpus(tmp_path / "corpus")
    prepared = prepare_data(make_cfg(tmp_path, data={"test_fraction": 0.0}), progress=False)
    assert len(prepared.splits["test"]) == 0 and prepared.splits["test"].n_documents == 0
    assert len(prepared.splits["val"]) > 0


def test_unusable_cache_dir(tmp_path):
    """A cache_dir that cannot be created (a file is in the way): DataError naming data.cache_dir."""
    write_corpus(tmp_path / "corpus")
    (tmp_path / "blocker").write_text("a file, not a folder")
    cfg = make_cfg(tmp_path, data={"cache_dir": str(tmp_path / "blocker" / "cache")})
    with pytest.raises(DataError, match="data.cache_dir .*blocker/cache: cannot create"):
        prepare_data(cfg, progress=False)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_split_record_reads_the_largest_id_and_hash_in_one_chunked_pass(tmp_path, dtype):
    """Across several 4 MiB chunks (the largest id in a later one), and for an empty file."""
    import hashlib

    from albert_gpt.data.cache import split_record

    tokens = np.random.default_rng(0).integers(0, 1000, size=5_000_000, dtype=np.int64).astype(dtype)
    tokens[4_321_987] = 54_321
    path = tmp_path / "train.bin"
    path.write_bytes(tokens.tobytes())
    record = split_record(path, np.dtype(dtype))
    assert record["max_id"] == 54_321 and record["file_bytes"] == tokens.nbytes
    assert record["sha256"] == hashlib.sha256(tokens.tobytes()).hexdigest()
    empty = tmp_path / "val.bin"
    empty.write_bytes(b"")
    assert split_record(empty, np.dtype(dtype))["max_id"] == -1


def test_the_hash_and_largest_id_taken_while_writing_equal_a_read_back(tmp_path):
    """meta.json's sha256 and max_id come from pack_split as it writes; reading each token file back with
    split_record (and hashlib on its bytes) gives the same record."""
    import hashlib

    from albert_gpt.data.cache import split_record

    write_corpus(tmp_path / "corpus")
    prepared = prepare_data(make_cfg(tmp_path), progress=False)
    meta = json.loads((prepared.cache_dir / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    for name, split in meta["splits"].items():
        path = prepared.cache_dir / f"{name}.bin"
        assert split["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        recorded = {k: split[k] for k in ("sha256", "max_id", "file_bytes", "mtime_ns")}
        assert recorded == split_record(path, dtype)
        tokens = np.fromfile(path, dtype=dtype)
        assert split["max_id"] == (int(tokens.max()) if len(tokens) else -1)
