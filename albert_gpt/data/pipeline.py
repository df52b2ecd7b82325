"""The data pipeline: config -> source -> splits -> tokenizer -> token cache, reused when cached.

The cache key covers the source (with content hashes of local files), how held-out splits are
carved, the tokenizer spec and PIPELINE_VERSION; `cache_dir` does not change tokens and is left out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from albert_gpt.config import Config, TokenizerConfig
from albert_gpt.data import cache
from albert_gpt.data.cache import META, TOKENIZER, TokenSplit
from albert_gpt.data.documents import stream_items
from albert_gpt.data.packing import pack_split
from albert_gpt.data.sources import Document, SourceDocs, hash_file, load_source, source_fingerprint
from albert_gpt.data.splits import SPLITS, make_splits
from albert_gpt.data.tokenizer import (
    SampleTally,
    TextTokenizer,
    build_tokenizer,
    cut_rule,
    pretrained_file,
    training_sample,
)
from albert_gpt.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    tokenizer: TextTokenizer
    # keys: "train", "val", "test"; when streaming, "train" is only the head of the training stream
    # (the unigram reference's counts), val and test the held-out slices
    splits: dict[str, TokenSplit]
    cache_dir: Path  # this corpus's cache entry
    stats: dict[str, Any]
    stream: TrainStream | None = None  # data.streaming: where training windows come from


@dataclass
class TrainStream:
    documents: Iterable[Document]  # the training documents, re-iterable, read lazily
    skip_items: int  # stream items (pieces) at its head held out for val / test


def pipeline_spec(cfg: Config) -> dict[str, Any]:
    d = cfg.data
    spec = {
        "source": source_fingerprint(d),
        "held_out": {"val_fraction": d.val_fraction, "test_fraction": d.test_fraction},
        "tokenizer": tokenizer_fingerprint(cfg.tokenizer),
    }
    if d.streaming:  # an entry of the stream's head (tokenizer, held-out slices), not of the whole corpus
        spec["stream"] = {"holdout_tokens": d.stream_holdout_tokens}
    return spec


def tokenizer_fingerprint(t: TokenizerConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": t.type, "eot_token": t.eot_token}
    if t.type == "bpe":
        spec.update(vocab_size=t.vocab_size, min_frequency=t.min_frequency, train_max_bytes=t.train_max_bytes)
    elif t.type == "pretrained":
        spec["file_sha256"] = hash_file(pretrained_file(t))
    return spec


def prepare_data(cfg: Config, progress: bool = True) -> PreparedData:
    """Tokenized splits of the configured corpus, built on first use and reused after."""
    start = time.perf_counter()
    if cfg.data.source == "url":
        from albert_gpt.data.download import corpus_file

        # Fetched, or its local copy checked, first and every time: with the bar log.progress asks for,
        # and a mistyped data.path is an error even when the token cache exists.
        corpus_file(cfg.data, progress)
    root = Path(cfg.data.cache_dir)
    fp = cache.fingerprint(pipeline_spec(cfg))
    entry = root / fp
    meta = cache.read_entry(entry, fp)
    cached = meta is not None
    source = None
    if meta is None:
        log.info("building token cache %s", entry)
        source = load_source(cfg.data, cut_rule(cfg.tokenizer))
        build = _build_stream_head if cfg.data.streaming else _build
        with _progress_bars(progress, cfg.data.source), cache.building_entry(root, fp) as tmp:
            cache.write_json_atomic(tmp / META, build(cfg, source, tmp, fp, progress))
        meta = cache.read_entry(entry, fp)
        if meta is None:
            raise DataError(f"token cache {entry} is incomplete right after building it")
    tokenizer = TextTokenizer.load(entry / TOKENIZER, eot_token=meta["eot_token"])
    splits = {name: cache.open_split(entry, name, meta) for name in SPLITS}
    stream = None
    if cfg.data.streaming:
        source = source or load_source(cfg.data, cut_rule(cfg.tokenizer))
        stream = TrainStream(source.splits["train"], meta["stream"]["skip_items"])
    seconds = time.perf_counter() - start
    stats = {**meta["stats"], "cached": cached, "cache_path": str(entry), "seconds": seconds}
    return PreparedData(tokenizer, splits, entry, stats, stream)


# A run directory's record of where its token cache is (an absolute path), so evaluation finds its splits
# without the training data and from any working directory.
DATA_RECORD = "data.json"


def write_data_record(prepared: PreparedData, path: Path) -> None:
    record = {"cache_entry": str(Path(prepared.cache_dir).resolve())}
    cache.write_json_atomic(path, record)


def read_data_record(run_dir: Path) -> PreparedData | None:
    """The run's prepared splits from the cache entry its DATA_RECORD names; None when there is no record
    or the entry is gone or incomplete."""
    try:
        record = json.loads((Path(run_dir) / DATA_RECORD).read_text(encoding="utf-8"))
        return open_entry(Path(record["cache_entry"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_entry(entry: Path) -> PreparedData | None:
    """A complete cache entry opened by its path alone (no config, no access to the source); None when it
    is gone or incomplete. What `albert-gpt eval` reads a run's splits from, wherever it runs."""
    entry = Path(entry)
    try:
        fp = json.loads((entry / META).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    meta = cache.read_entry(entry, str(fp))
    if meta is None:
        return None
    tokenizer = TextTokenizer.load(entry / TOKENIZER, eot_token=meta["eot_token"])
    splits = {name: cache.open_split(entry, name, meta) for name in SPLITS}
    return PreparedData(tokenizer, splits, entry, {**meta["stats"], "cached": True, "cache_path": str(entry)})


def _build(cfg: Config, source: SourceDocs, out: Path, fp: str, progress: bool) -> dict[str, Any]:
    """Fill `out` with tokenizer.json and the split files; return the metadata to write last."""
    d = cfg.data
    for note in source.notes:
        log.info("%s", note)
    splits = make_splits(source, d.val_fraction, d.test_fraction)
    t0 = time.perf_counter()
    train_bytes = getattr(source.splits["train"], "total_bytes", None)
    if train_bytes is not None and splits.documents["train"] is not source.splits["train"]:
        train_bytes = round(train_bytes * (1.0 - d.val_fraction - d.test_fraction))  # about its share
    tally = SampleTally()
    tokenizer = build_tokenizer(cfg.tokenizer, splits.documents["train"], progress, train_bytes, tally)
    tokenizer.save(out / TOKENIZER)
    t1 = time.perf_counter()
    per_split = _pack_splits(splits.documents, tokenizer, out, not d.join_rows, progress, source.description)
    t2 = time.perf_counter()
    if source.invalid_utf8:
        log.warning("%s: %d invalid UTF-8 sequences replaced by U+FFFD", source.description,
                    source.invalid_utf8)
    if source.forced_cuts:
        log.warning("%s: %d pieces cut with no newline or space to cut at (tokens at those cuts may differ "
                    "from encoding the text whole)", source.description, source.forced_cuts)
    return _meta(cfg, source, splits.method, tokenizer, per_split, t1 - t0, t2 - t1, fp, tally)


def _pack_splits(documents: Mapping[str, Iterable[Any]], tokenizer: TextTokenizer, out: Path,
                 separate: bool, progress: bool, description: str) -> dict[str, dict[str, Any]]:
    dtype = cache.token_dtype(tokenizer.vocab_size)
    per_split = {}
    for name in SPLITS:
        counts = pack_split(documents[name], tokenizer, out / f"{name}.bin", dtype,
                            separate=separate, desc=f"tokenizing {name}", progress=progress)
        record = cache.written_record(out / f"{name}.bin", counts.sha256, counts.max_id)
        if record["max_id"] >= tokenizer.vocab_size:
            raise DataError(f"tokenizing {name}: id {record['max_id']} is outside the tokenizer's "
                            f"{tokenizer.vocab_size} ids (a tokenizer.json with gaps in its ids?)")
        per_split[name] = {"documents": counts.n_documents, "characters": counts.n_chars,
                           "bytes": counts.n_bytes, "tokens": counts.tokens, **record}
        if name == "train" and counts.tokens == 0:
            raise DataError(f"empty corpus: {description} has no text in its training split")
    return per_split


def _meta(cfg: Config, source: SourceDocs, method: str, tokenizer: TextTokenizer, per_split: dict[str, Any],
          tokenizer_seconds: float, tokenize_seconds: float, fp: str, tally: SampleTally | None = None,
          **extra: Any) -> dict[str, Any]:
    """meta.json: what the entry holds, and the statistics `albert-gpt prepare` prints."""
    dtype = cache.token_dtype(tokenizer.vocab_size)
    n_tokens = sum(s["tokens"] for s in per_split.values())
    stats = {
        "source": source.description, "split_method": method, "tokenizer": cfg.tokenizer.type,
        "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, "invalid_utf8": source.invalid_utf8,
        "forced_cuts": source.forced_cuts,
        "tokenizer_sample_bytes": tally.n_bytes if tally and cfg.tokenizer.type == "bpe" else None,
        "splits": per_split, "tokenizer_seconds": tokenizer_seconds, "tokenize_seconds": tokenize_seconds,
        "tokens_per_second": n_tokens / max(tokenize_seconds, 1e-9), "fingerprint": fp,
    }
    return {"fingerprint": fp, "pipeline_version": cache.PIPELINE_VERSION, "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "eot_token": tokenizer.eot_token,
            "splits": per_split, "stats": stats, **extra}


def _build_stream_head(cfg: Config, source: SourceDocs, out: Path, fp: str, progress: bool) -> dict[str, Any]:
    """The entry of a streamed corpus: the tokenizer (trained on the stream's first
    tokenizer.train_max_bytes), the held-out slices and the head of the training stream.

    val / test are the source's own splits' first data.stream_holdout_tokens tokens, else the first
    items of the training stream, which training then skips; "train" holds the next
    stream_holdout_tokens tokens, what training reads first (the unigram reference's counts).
    Everything is read from the head of the stream: the time taken does not grow with the corpus.
    """
    d = cfg.data
    t0 = time.perf_counter()
    train_docs = source.splits["train"]
    tally = SampleTally()
    head = training_sample(train_docs, cfg.tokenizer.train_max_bytes, None, tally)
    tokenizer = build_tokenizer(cfg.tokenizer, head, progress, sampled=True)
    tokenizer.save(out / TOKENIZER)
    t1 = time.perf_counter()
    n = d.stream_holdout_tokens
    train_items = stream_items(train_docs)
    skip = 0
    slices: dict[str, list[list[str]]] = {}
    wanted = {"val": d.val_fraction > 0, "test": d.test_fraction > 0}
    for name in ("val", "test"):
        if name in source.splits:
            slices[name] = _as_documents(_take(stream_items(source.splits[name]), tokenizer, n))
        elif wanted[name]:
            taken = _take(train_items, tokenizer, n)
            skip += len(taken)
            slices[name] = _as_documents(taken)
        else:
            slices[name] = []
    slices["train"] = _as_documents(_take(train_items, tokenizer, n))
    if not slices["train"]:
        raise DataError(f"{source.description}: nothing left to train on after the held-out slices "
                        f"({n:,} tokens each); lower data.stream_holdout_tokens")
    per_split = _pack_splits(slices, tokenizer, out, not d.join_rows, progress, source.description)
    t2 = time.perf_counter()
    carved = [name for name in ("val", "test") if name not in source.splits and wanted[name]]
    method = (f"streamed: {', '.join(carved) or 'nothing'} held out from the head of the stream "
              f"({n:,} tokens each, {skip:,} items skipped by training)")
    return _meta(cfg, source, method, tokenizer, per_split, t1 - t0, t2 - t1, fp, tally,
                 stream={"skip_items": skip})


def _take(items: Iterator[tuple[str, bool]], tokenizer: TextTokenizer, n_tokens: int
          ) -> list[tuple[str, bool]]:
    """Whole items from `items` until they hold at least n_tokens tokens (fewer when it ends).
    Packing encodes them again: a few hundred thousand tokens, once per corpus, kept for the one
    packing path (its counts and end-of-text placement)."""
    taken, count = [], 0
    while count < n_tokens:
        item = next(items, None)
        if item is None:
            break
        taken.append(item)
        count += len(tokenizer.encode_arrays([item[0]])[0]) + 1
    return taken


def _as_documents(items: list[tuple[str, bool]]) -> list[list[str]]:
    """Items regrouped as documents (lists of pieces): a new one at each item that starts a document."""
    docs: list[list[str]] = []
    for text, starts in items:
        if starts or not docs:
            docs.append([])
        docs[-1].append(text)
    return docs


def check_split_sizes(prepared: PreparedData, block_size: int,
                      splits: tuple[str, ...] = ("train", "val")) -> None:
    """Raise DataError for a split too short for one window of block_size + 1 tokens."""
    for name in splits:
        n = len(prepared.splits[name])
        if n < block_size + 1:
            raise DataError(
                f"split {name!r} has {n} tokens, fewer than block_size + 1 = {block_size + 1} "
                f"(lower model.block_size, or give the split more text)"
            )


def format_stats(prepared: PreparedData) -> str:
    s = prepared.stats
    lines = [
        f"source      {s['source']}",
        f"splits      {s['split_method']}",
        f"tokenizer   {s['tokenizer']}, vocabulary {s['vocab_size']:,} ({s['dtype']} tokens)"
        + (f", trained on {s['tokenizer_sample_bytes']:,} bytes of train" if s.get("tokenizer_sample_bytes")
           else ""),
        f"{'split':<6}{'documents':>12}{'characters':>15}{'bytes':>15}{'tokens':>14}{'bytes/token':>13}",
    ]
    for name in SPLITS:
        x = s["splits"][name]
        per = f"{x['bytes'] / x['tokens']:.3f}" if x["tokens"] else "-"
        lines.append(f"{name:<6}{x['documents']:>12,}{x['characters']:>15,}{x['bytes']:>15,}{x['tokens']:>14,}{per:>13}")
    if s["invalid_utf8"]:
        lines.append(f"invalid UTF-8 sequences replaced by U+FFFD: {s['invalid_utf8']:,}")
    if s.get("forced_cuts"):
        lines.append(f"pieces cut with no newline or space to cut at: {s['forced_cuts']:,} (tokens at "
                     "those cuts may differ from encoding the text whole)")
    lines.append(f"cache       {s['cache_path']}")
    if s["cached"]:
        lines.append(f"time        {s['seconds']:.2f} s (cache reused, nothing tokenized; "
                     f"when built: {s['tokens_per_second']:,.0f} tokens/s)")
    else:
        lines.append(f"time        {s['seconds']:.2f} s (tokenizer {s['tokenizer_seconds']:.2f} s, "
                     f"tokenization {s['tokenize_seconds']:.2f} s = {s['tokens_per_second']:,.0f} tokens/s)")
    return "\n".join(lines)


@contextlib.contextmanager
def _progress_bars(enabled: bool, source: str) -> Iterator[None]:
    """Turn datasets' tqdm bars off for the block when `enabled` is false, then restore them. Only a hub
    source reads through datasets: other sources do not import it (about 140 MB of resident memory)."""
    if source != "hub":
        yield
        return
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            datasets.disable_progress_bars()
        else:
            datasets.enable_progress_bars()
