"""Corpus sources: where documents come from (`data.source`: builtin, files, hub or url).

A source returns the splits it defines ("train", and "val"/"test" when it has them) as
re-iterable collections of document strings; `splits.py` carves the missing ones from "train".
Empty documents are dropped everywhere, so no two end-of-text tokens are ever adjacent.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albert_gpt.config import DataConfig
from albert_gpt.data.documents import DecodeCounts, FileDocuments, TextFile
from albert_gpt.errors import DataError

SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
Document = str | TextFile  # a row's text, or a text file read in pieces (documents.pieces_of)
_SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")  # written by datasets' save_to_disk


@dataclass
class SourceDocs:
    splits: Mapping[str, Iterable[Document]]  # "train" always; "val" / "test" when the source defines them
    description: str
    notes: list[str] = field(default_factory=list)
    counts: DecodeCounts = field(default_factory=DecodeCounts)

    @property
    def invalid_utf8(self) -> int:
        """Sequences replaced by U+FFFD in the files read so far (complete once every document was read)."""
        return self.counts.total

    @property
    def forced_cuts(self) -> int:
        """Pieces cut where no exact cut was found, in the files read so far."""
        return self.counts.forced_total


def document_count(docs: Iterable[Document]) -> int | None:
    """Number of documents (None for a stream); local files are counted in one pass the first time."""
    if isinstance(docs, list):
        return len(docs)
    return getattr(docs, "length", None)


def load_source(data: DataConfig, rule: str = "line") -> SourceDocs:
    """Open the documents of `data.source`; local files are read lazily, text files in pieces cut by
    `rule` (documents.CUT_RULES: where the tokenizer allows a cut)."""
    if data.source == "builtin":
        documents = _limit(builtin_documents(), data.max_documents)
        return _nonempty(SourceDocs({"train": documents}, _describe(data)))
    if data.source == "files":
        if not data.path:
            raise DataError("data.path is required when data.source is files (a file, directory or glob)")
        return _nonempty(_read_files(list_files(data.path), data, rule))
    if data.source == "url":
        from albert_gpt.data.download import corpus_file

        return _nonempty(_read_files([corpus_file(data)], data, rule))
    if not data.path:
        raise DataError("data.path is required when data.source is hub (a hub name or a local copy)")
    return _hub(data)


def builtin_documents() -> list[str]:
    """Python's reference documentation topics, one document each, ordered by topic name."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def list_files(spec: str) -> list[Path]:
    """The files named by `data.path`: one file, every supported file under a directory, or a glob."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"data.path: no {' / '.join(SUFFIXES)} files under {spec}")
        return files
    if path.is_file():
        files = [path]
    elif any(char in spec for char in "*?["):
        matches = glob.glob(os.path.expanduser(spec), recursive=True)
        files = sorted(Path(p) for p in matches if Path(p).is_file())
        if not files:
            raise DataError(f"data.path: no files match {spec}")
    else:
        raise DataError(f"data.path: no such file or directory: {spec}")
    for f in files:
        if f.suffix.lower() not in SUFFIXES:
            raise DataError(f"data.path: {f}: unsupported file type (supported: {', '.join(SUFFIXES)})")
    return files


def source_fingerprint(data: DataConfig) -> dict[str, Any]:
    """Everything about the source that changes the documents read, for the cache key."""
    spec: dict[str, Any] = {
        "source": data.source, "max_documents": data.max_documents, "text_field": data.text_field,
        "join_rows": data.join_rows, "encoding_errors": data.encoding_errors,
    }
    if data.source == "builtin":
        spec["content"] = _hash_texts(builtin_documents())
    elif data.source == "files" and data.streaming:
        # a stream starts without reading the corpus through: files are known by size and modification
        # time, not by a hash of their whole content
        spec["files"] = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns]
                         for f in list_files(data.path or "")]
    elif data.source == "files":
        spec["files"] = [[str(f.resolve()), _hash_corpus_file(f)] for f in list_files(data.path or "")]
    elif data.source == "url":
        from albert_gpt.data.download import corpus_file

        # the content, wherever it came from (a download or a local copy): one cache entry per file
        spec["sha256"] = data.sha256 or hash_file(corpus_file(data))
    else:
        ident = data.path or ""
        spec.update(dataset=ident, config=data.config,
                    splits=[data.split, data.val_split, data.test_split])
        local = Path(ident).expanduser()
        if local.is_dir():
            spec["dataset"] = str(local.resolve())
            spec["files"] = [[str(f.relative_to(local)), _hash_corpus_file(f)]
                             for f in sorted(local.rglob("*")) if f.is_file()]
    return spec


# ---------------------------------------------------------------- files

def _read_files(files: list[Path], data: DataConfig, rule: str) -> SourceDocs:
    documents = FileDocuments(files, data.text_field, data.encoding_errors, rule, data.max_documents)
    return SourceDocs({"train": documents}, _describe(data, len(files)), counts=documents.counts)


# ---------------------------------------------------------------- hub

class HubColumn:
    """The text column of a `datasets` split, re-iterable, read in batches (streams stay lazy)."""

    def __init__(self, ds: Any, text_field: str, where: str, length: int | None) -> None:
        self._ds, self._field, self._where, self.length = ds, text_field, where, length

    def __iter__(self) -> Iterator[str]:
        for batch in self._ds.iter(batch_size=1000):
            for text in batch[self._field]:
                if not isinstance(text, str):
                    kind = type(text).__name__
                    raise DataError(f"{self._where}: a {self._field!r} value is {kind}, not a string")
                if text:
                    yield text


def _hub(data: DataConfig) -> SourceDocs:
    import datasets

    ident = data.path or ""
    wanted = {"train": data.split, "val": data.val_split, "test": data.test_split}
    local = Path(ident).expanduser()
    notes = []
    if local.is_dir() and any((local / m).is_file() for m in _SAVED_DATASET_MARKERS):
        saved = datasets.load_from_disk(str(local))
        if isinstance(saved, datasets.Dataset):
            notes.append("a single saved Dataset is the whole corpus: val/test carved from it")
            found = {"train": saved}
        else:
            found = {key: _saved_split(saved, ident, key, split) for key, split in wanted.items() if split}
    else:
        with offline_when_unreachable() as offline:  # one probe for every split
            found = {key: _load_hub_split(ident, data, key, split, offline)
                     for key, split in wanted.items() if split}
    splits = {key: _column(ds, data, f"{ident} [{key}]") for key, ds in found.items()}
    return SourceDocs(splits, _describe(data), notes=notes)


def _saved_split(saved: Any, ident: str, key: str, split: str) -> Any:
    if split not in saved:
        raise DataError(
            f"{ident}: no split {split!r} (available: {', '.join(saved)}); set data.{_split_key(key)} to one "
            "of them, or null to carve it from the training split"
        )
    return saved[split]


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT, else huggingface.co) accepts a connection within
    `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(endpoint or constants.ENDPOINT)
    if not url.hostname:
        return False
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_when_unreachable() -> Iterator[bool]:
    """Offline mode for `datasets` and `huggingface_hub` while the hub cannot be reached: a cached dataset
    then loads at once and a missing one fails at once, instead of after datasets' retries (~25 s).
    Yields whether it switched offline mode on."""
    import datasets.config
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE or hub_reachable():
        yield False
        return
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _load_hub_split(ident: str, data: DataConfig, key: str, split: str, offline: bool) -> Any:
    """One split by hub name; `offline`: offline mode is on because the hub cannot be reached."""
    import datasets

    try:
        return datasets.load_dataset(ident, data.config, split=split, streaming=data.streaming)
    except ValueError as exc:
        if "split" not in str(exc).lower():
            raise DataError(f"hub dataset {ident!r}: {_first_line(exc)}") from None
        raise DataError(
            f"hub dataset {ident!r}: no split {split!r} ({_first_line(exc)}); set data.{_split_key(key)} "
            "to an existing split, or null to carve it from the training split"
        ) from None
    except Exception as exc:  # offline, unknown name, gated: datasets raises a different type for each
        where = f"{ident!r}" + (f" (config {data.config!r})" if data.config else "")
        if offline:
            raise DataError(
                f"could not load hub dataset {where}: the hub cannot be reached from here and the dataset "
                "is not in the local datasets cache; set data.path to a local copy (a save_to_disk directory "
                "or data files), or load it once with network access"
            ) from None
        raise DataError(
            f"could not load hub dataset {where}: {_first_line(exc)}; loading from the hub needs network "
            "access, offline set data.path to a local copy (a save_to_disk directory or data files)"
        ) from None


def _column(ds: Any, data: DataConfig, where: str) -> HubColumn:
    names = ds.column_names
    if names is not None and data.text_field not in names:
        listed = ", ".join(names)
        raise DataError(f"{where}: no column {data.text_field!r} (data.text_field; columns: {listed})")
    ds = ds.select_columns([data.text_field])
    length = None
    if hasattr(ds, "__len__"):  # a map-style Dataset; streams have no length
        length = len(ds)
        if data.max_documents is not None and data.max_documents < length:
            length = data.max_documents
            ds = ds.select(range(length))
    elif data.max_documents is not None:
        ds = ds.take(data.max_documents)
    return HubColumn(ds, data.text_field, where, length)


# ---------------------------------------------------------------- helpers

def _limit(documents: list[str], max_documents: int | None) -> list[str]:
    documents = [d for d in documents if d]
    return documents if max_documents is None else documents[:max_documents]


def _nonempty(source: SourceDocs) -> SourceDocs:
    if not any(True for _ in source.splits["train"]):
        raise DataError(f"empty corpus: {source.description} contains no text")
    return source


def _describe(data: DataConfig, n_files: int | None = None) -> str:
    if data.source == "builtin":
        return "builtin (Python reference documentation, pydoc_data.topics)"
    if data.source == "files":
        return f"files: {data.path} ({n_files} file{'s' if n_files != 1 else ''})"
    if data.source == "url":
        return f"url: {data.url}"
    return f"hub: {data.path}" + (f" / {data.config}" if data.config else "")


def _split_key(key: str) -> str:
    return {"train": "split", "val": "val_split", "test": "test_split"}[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _hash_corpus_file(path: Path) -> str:
    try:
        return hash_file(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_texts(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
