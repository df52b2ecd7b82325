"""Corpus sources (builtin, files, hub) and train/val/test splitting, on data each test writes."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pytest

from albert_gpt.config import DataConfig
from albert_gpt.data.documents import pieces_of
from albert_gpt.data.sources import SourceDocs, builtin_documents, list_files, load_source
from albert_gpt.data.splits import make_splits, split_by_position, unit_position, unit_positions
from albert_gpt.errors import DataError


def source(tmp_path: Path, **data) -> dict[str, list[str]]:
    """Documents of every split the source defines, as lists."""
    loaded = load_source(DataConfig(cache_dir=str(tmp_path / "cache"), **data))
    return {name: ["".join(pieces_of(d)) for d in docs] for name, docs in loaded.splits.items()}


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep datasets' Arrow cache in the test's folder and every hub lookup offline."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf_datasets"


# ---------------------------------------------------------------- builtin

def test_builtin_is_pydoc_topics_in_name_order():
    """The builtin corpus is one document per pydoc topic, ordered by topic name, ~465 KB."""
    from pydoc_data.topics import topics

    docs = builtin_documents()
    assert docs == [topics[k] for k in sorted(topics)]
    assert sum(len(d) for d in docs) > 100_000


def test_builtin_max_documents(tmp_path):
    """data.max_documents keeps the first N documents."""
    docs = source(tmp_path, source="builtin", max_documents=5)["train"]
    assert docs == builtin_documents()[:5]


# ---------------------------------------------------------------- files

def test_directory_reads_supported_files_in_path_order(tmp_path):
    """A directory yields its .txt/.md files sorted by path, skipping hidden and other files."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("second", encoding="utf-8")
    (root / "a.md").write_text("# first", encoding="utf-8")
    (root / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (root / "notes.csv").write_text("x,y", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    assert source(tmp_path, source="files", path=str(root))["train"] == ["# first", "second", "third"]


def test_glob_selects_matching_files(tmp_path):
    """A glob reads only the files it matches."""
    for name, text in [("x1.txt", "one"), ("x2.txt", "two"), ("y.txt", "other")]:
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert source(tmp_path, source="files", path=str(tmp_path / "x*.txt"))["train"] == ["one", "two"]


def test_jsonl_text_field(tmp_path):
    """Each .jsonl line is one document taken from data.text_field; blank lines are skipped."""
    path = tmp_path / "docs.jsonl"
    path.write_text(
        json.dumps({"body": "alpha\u2028beta", "id": 1}) + "\n\n" + json.dumps({"body": "gamma"}) + "\n",
        encoding="utf-8",
    )
    assert source(tmp_path, source="files", path=str(path), text_field="body")["train"] == [
        "alpha\u2028beta", "gamma",
    ]


def test_parquet_through_datasets(tmp_path):
    """.parquet rows are documents, read through datasets into the cache's hf folder."""
    path = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"text": ["row one", "row two"], "n": [1, 2]}).to_parquet(str(path))
    assert source(tmp_path, source="files", path=str(path))["train"] == ["row one", "row two"]


@pytest.mark.parametrize("line, message", [
    ('{"text": "fine"}\n{"text": "broken"\n', ":2: malformed JSON"),
    ('{"text": "fine"}\n{"body": "x"}\n', ":2: no 'text' field"),
    ('{"text": 3}\n', ":1: field 'text' is int"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    """A malformed line, a missing or non-string text field: DataError with file and line."""
    path = tmp_path / "bad.jsonl"
    path.write_text(line, encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl" + message):
        source(tmp_path, source="files", path=str(path))


@pytest.mark.parametrize("spec, message", [
    ("missing.txt", "no such file or directory"),
    ("nothing*.txt", "no files match"),
])
def test_missing_path(tmp_path, spec, message):
    """A path or glob that names no file is a one-line DataError quoting it."""
    with pytest.raises(DataError, match=message) as info:
        source(tmp_path, source="files", path=str(tmp_path / spec))
    assert spec in str(info.value) and "\n" not in str(info.value)


def test_unsupported_file_type(tmp_path):
    """Naming a file of an unsupported type explicitly is an error, not a silent skip."""
    (tmp_path / "table.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type"):
        list_files(str(tmp_path / "table.csv"))


def test_empty_corpus(tmp_path):
    """Files with no text at all: DataError saying the corpus is empty."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_bytes(b"")
    (tmp_path / "c" / "b.txt").write_bytes(b"\xef\xbb\xbf")  # only a byte-order mark
    with pytest.raises(DataError, match="empty corpus"):
        source(tmp_path, source="files", path=str(tmp_path / "c"))


def test_byte_order_mark_is_stripped(tmp_path):
    """A UTF-8 byte-order mark at the start of a file is not part of the text."""
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert source(tmp_path, source="files", path=str(path))["train"] == ["hello"]


def test_invalid_utf8_replaced_and_counted(tmp_path):
    """encoding_errors=replace: each invalid sequence becomes U+FFFD and is counted; a U+FFFD
    written validly in the file is kept and not counted."""
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok \xff here \xc3 and valid \xef\xbf\xbd end")
    loaded = load_source(DataConfig(source="files", path=str(path)))
    assert ["".join(d) for d in loaded.splits["train"]] == ["ok \ufffd here \ufffd and valid \ufffd end"]
    assert loaded.invalid_utf8 == 2


def test_invalid_utf8_strict_refuses(tmp_path):
    """encoding_errors=strict: DataError naming the file, byte offset and line."""
    path = tmp_path / "bad.txt"
    path.write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(DataError, match=r"bad.txt: invalid UTF-8 at byte 14 \(line 2\)"):
        source(tmp_path, source="files", path=str(path), encoding_errors="strict")


# ---------------------------------------------------------------- hub

def saved_dataset_dict(tmp_path: Path, splits: dict[str, list[str]]) -> Path:
    path = tmp_path / "saved"
    parts = {k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def test_hub_save_to_disk_uses_own_splits(tmp_path, hf_cache):
    """A save_to_disk directory as data.path: its train/validation/test splits are used as they are."""
    path = saved_dataset_dict(tmp_path, {"train": ["t1", "", "t2"], "validation": ["v1"], "test": ["x1"]})
    got = source(tmp_path, source="hub", path=str(path))
    assert got == {"train": ["t1", "t2"], "val": ["v1"], "test": ["x1"]}


def test_hub_missing_split_is_a_clear_error(tmp_path, hf_cache):
    """Asking for a split the dataset lacks names it, lists the available ones, and says how to carve."""
    path = saved_dataset_dict(tmp_path, {"train": ["t1"], "validation": ["v1"]})
    with pytest.raises(DataError, match=r"no split 'test' \(available: train, validation\).*data.test_split"):
        source(tmp_path, source="hub", path=str(path))


def test_hub_local_data_files_through_load_dataset(tmp_path, hf_cache):
    """A directory of data files goes through datasets.load_dataset; max_documents applies per split."""
    root = tmp_path / "jsonl"
    root.mkdir()
    (root / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    (root / "validation.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    got = source(tmp_path, source="hub", path=str(root), test_split=None, max_documents=3)
    assert got == {"train": ["doc 0", "doc 1", "doc 2"], "val": ["held out"]}


def test_hub_streaming_matches_download(tmp_path, hf_cache):
    """streaming: true yields the same documents lazily, and can be iterated twice."""
    root = tmp_path / "jsonl"
    root.mkdir()
    (root / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(4)))
    loaded = load_source(DataConfig(source="hub", path=str(root), val_split=None, test_split=None,
                                    streaming=True))
    train = loaded.splits["train"]
    assert not isinstance(train, list)
    assert list(train) == list(train) == [f"doc {i}" for i in range(4)]


def test_hub_missing_text_column(tmp_path, hf_cache):
    """A dataset without data.text_field names the column it has."""
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["x"]})}).save_to_disk(str(path))
    with pytest.raises(DataError, match=r"no column 'text' \(data.text_field; columns: body\)"):
        source(tmp_path, source="hub", path=str(path), val_split=None, test_split=None)


def test_hub_without_network_fails_fast(tmp_path, hf_cache, monkeypatch):
    """A hub name with no network (offline mode): a DataError saying it needs network or a local copy."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="needs network access.*local copy") as info:
        source(tmp_path, source="hub", path="albert-gpt-test/no-such-dataset", config="x")
    assert "no-such-dataset" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- splits

def test_document_rule_is_fixed_and_near_the_fractions():
    """Documents are held out by position alone: the same on every call, within 2 documents of
    each fraction, disjoint, and together they are the whole corpus in order."""
    docs = [f"doc {i}\n" for i in range(1000)]
    first = make_splits(SourceDocs({"train": docs}, "test"), 0.1, 0.05)
    second = make_splits(SourceDocs({"train": list(docs)}, "test"), 0.1, 0.05)
    parts = {k: list(v) for k, v in first.documents.items()}
    assert parts == {k: list(v) for k, v in second.documents.items()}
    assert abs(len(parts["val"]) - 100) <= 2 and abs(len(parts["test"]) - 50) <= 2
    assert sorted(parts["train"] + parts["val"] + parts["test"], key=lambda d: int(d.split()[1])) == docs
    assert "by document" in first.method


def test_document_rule_on_a_stream_equals_the_list():
    """A stream (no length) is carved by the same rule as a list."""
    docs = [f"d{i}" for i in range(200)]

    class Stream:
        def __iter__(self):
            return iter(docs)

    listed = make_splits(SourceDocs({"train": docs}, "list"), 0.05, 0.05).documents
    streamed = make_splits(SourceDocs({"train": Stream()}, "stream"), 0.05, 0.05).documents
    assert {k: list(v) for k, v in listed.items()} == {k: list(v) for k, v in streamed.items()}


def test_unit_positions_scalar_and_vector_agree():
    """The vectorised position rule (used to count) equals the scalar one (used to iterate)."""
    idx = np.arange(0, 5000, 7)
    assert np.allclose(unit_positions(5000)[idx], [unit_position(int(i)) for i in idx], atol=0)


def test_few_documents_cut_by_character_position_at_line_starts():
    """One document: train, val, test are consecutive pieces, cut at line starts, about the
    requested share of characters, and they join back to the text."""
    text = "".join(f"line number {i:04d}\n" for i in range(1000))  # 17 characters a line
    pieces = split_by_position([text], [("val", 0.1), ("test", 0.05)])
    train, val, test = pieces["train"][0], pieces["val"][0], pieces["test"][0]
    assert train + val + test == text
    assert val.startswith("line number") and test.startswith("line number")
    assert abs(len(val) - 0.1 * len(text)) <= 17 and abs(len(test) - 0.05 * len(text)) <= 17


def test_source_splits_only_missing_one_carved():
    """With the source's own validation split, only test is carved from train."""
    docs = [f"d{i}" for i in range(100)]
    result = make_splits(SourceDocs({"train": docs, "val": ["v"]}, "x"), 0.3, 0.1).documents
    assert list(result["val"]) == ["v"]
    n_train, n_test = len(list(result["train"])), len(list(result["test"]))
    assert 8 <= n_test <= 12 and n_train + n_test == 100


def test_a_text_without_line_breaks_still_gets_its_held_out_splits():
    """One long line: no line start after the cuts, so they fall mid-line at the requested shares, the
    pieces still join back to the text, and the split method says how it was cut."""
    text = "word " * 20_000  # 100,000 characters, no newline
    mid: list[str] = []
    pieces = split_by_position([text], [("val", 0.1), ("test", 0.05)], mid)
    train, val, test = pieces["train"][0], pieces["val"][0], pieces["test"][0]
    assert train + val + test == text and mid == ["val", "test"]
    assert len(val) == 10_000 and len(test) == 5_000
    method = make_splits(SourceDocs({"train": [text]}, "x"), 0.1, 0.05).method
    assert "val and test mid-line (no line break after the cut)" in method
    lines = "".join(f"line {i:05d}\n" for i in range(5000))  # with line breaks: no mid-line cut
    assert "mid-line" not in make_splits(SourceDocs({"train": [lines]}, "x"), 0.1, 0.05).method


def test_a_one_line_file_prepares_a_validation_split(tmp_path):
    from train_utils import tiny_config

    from albert_gpt.data.pipeline import prepare_data

    corpus = tmp_path / "one_line.txt"
    corpus.write_text("the cat sat on the mat and the dog ran " * 2000, encoding="utf-8")  # no newline
    cfg = tiny_config(tmp_path, data={"path": str(corpus)})
    prepared = prepare_data(cfg, progress=False)
    sizes = {name: len(split.tokens) for name, split in prepared.splits.items()}
    assert sizes["val"] > 0.08 * sum(sizes.values()) and sizes["test"] > 0.08 * sum(sizes.values())
