"""Tokenizers (`tokenizer.type`): byte-level BPE trained here, a character vocabulary, or a
pretrained `tokenizer.json`, behind one `TextTokenizer` interface.

The end-of-text token is only ever inserted by id between documents: text that happens to
contain its spelling is encoded as ordinary text, so a corpus cannot fake a document boundary.
Decoding renders it as its spelling, so decode(encode(text)) == text holds for byte-level BPE
on any text, and for `char` on any text whose characters occur in the training split.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from albert_gpt.config import TokenizerConfig
from albert_gpt.data.documents import pieces_of
from albert_gpt.data.sources import Document
from albert_gpt.errors import DataError
from albert_gpt.paths import write_atomic

CHAR_FORMAT = "albert_gpt.char_tokenizer"  # the private format of earlier runs, still read
DEFAULT_EOT = "<|endoftext|>"
UNKNOWN_CHAR = "\ufffd"  # what the unknown-character id decodes to
UNKNOWN_TOKEN = "<|unk|>"  # its spelling in the tokenizers JSON (U+FFFD may be a real character there)
ONE_CHARACTER = r"[\s\S]"  # the char tokenizer's pre-tokenizer: every code point alone


class CharVocab:
    """Ids 0..n-1 for the sorted characters of the training split, n for end-of-text, n+1 for
    any character seen only outside it (nanoGPT's shakespeare_char takes its vocabulary from the
    whole text; taking it from train alone keeps val/test unseen, at the cost of that one id)."""

    def __init__(self, chars: Iterable[str], eot_token: str) -> None:
        self.chars = sorted(set(chars))
        self.eot_token = eot_token
        self.eot_id, self.unk_id = len(self.chars), len(self.chars) + 1
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)  # sorted code points
        self._table = [*self.chars, eot_token, UNKNOWN_CHAR]

    @property
    def vocab_size(self) -> int:
        return len(self._table)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """(n,) int64 ids: one vectorised lookup, UTF-32 gives the code points, searchsorted their rank."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        if not len(self._codes):
            return np.full(len(codes), self.unk_id, dtype=np.int64)
        rank = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        return np.where(self._codes[rank] == codes, rank, self.unk_id)

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join([self._table[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or not 0 <= i < len(self._table))
            raise DataError(f"token id {bad} is outside the vocabulary of {len(self._table)}") from None

    def to_tokenizer(self) -> Tokenizer:
        """The same vocabulary as a standard `tokenizers` tokenizer (a WordLevel model over single
        characters), which encodes and decodes exactly as this class does (tested on a whole corpus):
        `Tokenizer.from_file` and Hugging Face's AutoTokenizer load it."""
        vocab = {c: i for i, c in enumerate([*self.chars, self.eot_token, UNKNOWN_TOKEN])}
        backend = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN_TOKEN))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(ONE_CHARACTER), "isolated")
        backend.decoder = decoders.Sequence([decoders.Replace(UNKNOWN_TOKEN, UNKNOWN_CHAR), decoders.Fuse()])
        backend.add_special_tokens([self.eot_token])
        return backend

    @staticmethod
    def from_spec(spec: dict) -> CharVocab | None:
        """The CharVocab a tokenizer.json describes, when it is one `to_tokenizer` wrote (or the earlier
        private format); None for any other tokenizer."""
        if spec.get("format") == CHAR_FORMAT:
            return CharVocab(spec["chars"], spec["eot_token"])
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if model.get("type") != "WordLevel" or model.get("unk_token") != UNKNOWN_TOKEN:
            return None
        if pre.get("type") != "Split" or (pre.get("pattern") or {}).get("Regex") != ONE_CHARACTER:
            return None
        table = sorted(model["vocab"], key=model["vocab"].get)  # tokens in id order
        if len(table) < 2 or table[-1] != UNKNOWN_TOKEN:
            return None
        return CharVocab(table[:-2], table[-2])


class TextTokenizer:
    """encode / decode / vocab_size / eot_id over a `tokenizers.Tokenizer` or a CharVocab."""

    def __init__(self, backend: Tokenizer | CharVocab, eot_token: str) -> None:
        self._backend = backend
        self.eot_token = eot_token
        if isinstance(backend, CharVocab):
            self.kind, self.eot_id = "char", backend.eot_id
        else:
            backend.encode_special_tokens = True  # see the module docstring; not saved in the JSON
            eot_id = backend.token_to_id(eot_token)
            if eot_id is None:
                raise DataError(
                    f"tokenizer has no token {eot_token!r} (set tokenizer.eot_token to its end-of-text token)"
                )
            self.kind, self.eot_id = "tokenizers", eot_id

    @property
    def vocab_size(self) -> int:
        if isinstance(self._backend, CharVocab):
            return self._backend.vocab_size
        return self._backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if isinstance(self._backend, CharVocab):
            return self._backend.encode(text)
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if isinstance(self._backend, CharVocab):
            return [self._backend.encode(t) for t in texts]
        # encode_batch_fast (tokenizers >= 0.21) skips computing character offsets we never read
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        encodings = encode(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """encode_batch as (n,) int64 arrays (what packing writes)."""
        if isinstance(self._backend, CharVocab):
            return [self._backend.encode_array(t) for t in texts]
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of `text` this tokenizer maps to its unknown id (a char vocabulary
        knows only the training split's characters; byte-level BPE knows every string)."""
        if not isinstance(self._backend, CharVocab):
            return []
        known = set(self._backend.chars)
        return sorted({c for c in text if c not in known})

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if isinstance(self._backend, CharVocab):
            return self._backend.decode(ids)
        return self._backend.decode(ids, skip_special_tokens=False)

    def to_json(self) -> str:
        """A standard tokenizer.json; the char vocabulary is written as the equivalent WordLevel tokenizer.
        (`encode_special_tokens` is not part of that format: `load` sets it again.)"""
        if isinstance(self._backend, CharVocab):
            return self._backend.to_tokenizer().to_str()
        return self._backend.to_str()

    def save(self, path: str | Path) -> None:
        """Write atomically; a `tokenizers` backend is written as a standard tokenizer.json."""
        write_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path, eot_token: str | None = None) -> TextTokenizer:
        """Read a tokenizer.json written by `save` (or by `tokenizers`).

        The end-of-text token of a `tokenizers` file is `eot_token` when given, else
        <|endoftext|> when the vocabulary has it, else its only special token.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not a tokenizer.json (line {exc.lineno}: {exc.msg})") from None
        chars = CharVocab.from_spec(spec) if isinstance(spec, dict) else None
        if chars is not None:  # kept as a CharVocab: its vectorised encoder is the fast path
            return cls(chars, chars.eot_token)
        try:
            backend = Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception for a schema mismatch
            raise DataError(f"{path}: not a tokenizer.json readable by tokenizers ({exc})") from None
        return cls(backend, eot_token or _guess_eot(backend, spec, path))

    # `tokenizers` pickles through its JSON, which drops encode_special_tokens; rebuild through
    # __init__ so a copy in another process (a DataLoader worker, a spawned job) encodes exactly as this one
    def __getstate__(self) -> dict:
        return {"json": self.to_json(), "eot_token": self.eot_token, "char": self.kind == "char"}

    def __setstate__(self, state: dict) -> None:
        backend: Tokenizer | CharVocab | None = None
        if state["char"]:
            backend = CharVocab.from_spec(json.loads(state["json"]))
        if backend is None:
            backend = Tokenizer.from_str(state["json"])
        TextTokenizer.__init__(self, backend, state["eot_token"])


def _guess_eot(backend: Tokenizer, spec: dict, path: Path) -> str:
    if backend.token_to_id(DEFAULT_EOT) is not None:
        return DEFAULT_EOT
    specials = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
    if len(specials) == 1:
        return specials[0]
    raise DataError(
        f"{path}: cannot tell which token ends a text (special tokens: {specials}); pass eot_token"
    )


@dataclass
class SampleTally:
    """What BPE was trained on: UTF-8 bytes and their cost toward tokenizer.train_max_bytes."""

    n_bytes: int = 0
    cost: int = 0


def build_tokenizer(cfg: TokenizerConfig, train_documents: Iterable[Document], progress: bool,
                    train_bytes: int | None = None, tally: SampleTally | None = None,
                    sampled: bool = False) -> TextTokenizer:
    """Train on the training split only (bpe, char), or read `tokenizer.path` (pretrained).
    `train_bytes`: the split's size when known, so BPE's sample is spread across it; `tally` is
    filled with what the sample held; `sampled`: the documents already are training_sample's output
    (a stream's head), so BPE trains on them as they are."""
    if cfg.type == "pretrained":
        return load_pretrained(cfg)
    if cfg.type == "char":
        chars: set[str] = set()
        for doc in train_documents:
            for piece in pieces_of(doc):
                chars.update(piece)
        return TextTokenizer(CharVocab(chars, cfg.eot_token), cfg.eot_token)
    if sampled:
        sample: Iterable[str] = (piece for doc in train_documents for piece in pieces_of(doc))
    else:
        sample = training_sample(train_documents, cfg.train_max_bytes, train_bytes, tally)
    return TextTokenizer(_train_bpe(cfg, sample, progress), cfg.eot_token)


# A run of this many characters without whitespace is held by the BPE trainer as words that are mostly
# distinct (minified data, a file without spaces, ids and hashes glued together), about 25 bytes of the
# trainer's memory per byte, against about 2 for ordinary text: each such byte counts LONG_RUN_WEIGHT times
# toward tokenizer.train_max_bytes, so the trainer's memory stays bounded on any text (docs/performance.md).
LONG_RUN = 64
LONG_RUN_WEIGHT = 25


def sample_cost(piece: str, size: int | None = None) -> int:
    """What a piece counts toward tokenizer.train_max_bytes: its UTF-8 bytes (`size`, when known), plus
    LONG_RUN_WEIGHT - 1 per character inside a run of at least LONG_RUN non-whitespace characters."""
    size = len(piece.encode("utf-8", "surrogatepass")) if size is None else size
    long_runs = sum(len(word) for word in piece.split() if len(word) >= LONG_RUN)
    return size + (LONG_RUN_WEIGHT - 1) * long_runs


def training_sample(documents: Iterable[Document], max_bytes: int, total_bytes: int | None,
                    tally: SampleTally | None = None) -> Iterator[str]:
    """Document pieces whose costs (sample_cost: bytes, long unbroken runs weighted) add up to at most about
    `max_bytes` (a piece is never cut): all of them when the split is smaller; else, when its size is
    known, pieces spread evenly across it (each taken while the cost taken lags max_bytes / total of the
    cost seen); else the first ones. Text of long runs therefore ends the sample early, in the split's
    first part. `tally`, when given, adds up what was taken."""
    tally = tally if tally is not None else SampleTally()
    share = 1.0 if not total_bytes or total_bytes <= max_bytes else max_bytes / total_bytes
    seen = taken = 0
    for doc in documents:
        for piece in pieces_of(doc):
            size = len(piece.encode("utf-8", "surrogatepass"))
            cost = sample_cost(piece, size)
            seen += cost
            if taken < seen * share:
                taken += cost
                tally.n_bytes += size
                tally.cost += cost
                yield piece
            if taken >= max_bytes:
                return


def cut_rule(cfg: TokenizerConfig) -> str:
    """Where this tokenizer lets a text file be cut into pieces without changing its tokens
    (documents.CUT_RULES)."""
    if cfg.type == "char":
        return "line"
    if cfg.type == "bpe":
        return "isolated_line"
    spec = json.loads(pretrained_file(cfg).read_text(encoding="utf-8"))
    if CharVocab.from_spec(spec) is not None:
        return "line"
    pre = spec.get("pre_tokenizer") or {}
    gpt2_like = (spec.get("normalizer") is None and pre.get("type") == "ByteLevel"
                 and pre.get("use_regex", True) and not pre.get("add_prefix_space", False))
    return "isolated_line" if gpt2_like else "none"


def _train_bpe(cfg: TokenizerConfig, texts: Iterable[str], progress: bool) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    # byte-level: every string maps to bytes the base alphabet covers, so nothing is unknown
    # and decoding is exact; no prefix space, so "a" at a document start stays "a"
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=[cfg.eot_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # the trainer's own bars are for a terminal: redirected, they leave blank lines on stdout
        show_progress=progress and sys.stdout.isatty() and sys.stderr.isatty(),
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def pretrained_file(cfg: TokenizerConfig) -> Path:
    """The tokenizer.json `tokenizer.path` names: a local file, or a hub model's tokenizer.json (fetched
    once into the Hugging Face cache; offline, read from that cache)."""
    path = Path(cfg.path or "").expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return path / "tokenizer.json"
    name = cfg.path or ""
    if path.exists() or name.count("/") > 1 or not name or name.startswith((".", "/", "~")):
        raise DataError(f"tokenizer.path: no such file: {cfg.path} (a tokenizer.json or a hub name: gpt2)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=name, filename="tokenizer.json"))
    except Exception as exc:  # offline without a cached copy, unknown repo, gated: each its own type
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"tokenizer.path {name!r}: not a local file, and the hub has no tokenizer.json for it here "
            f"({reason}); give a path to a tokenizer.json, or run once with network access"
        ) from None


def load_pretrained(cfg: TokenizerConfig) -> TextTokenizer:
    path = pretrained_file(cfg)
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        message = f"tokenizer.path {path}: not a tokenizer.json readable by tokenizers ({exc})"
        raise DataError(message) from None
    if backend.token_to_id(cfg.eot_token) is None:
        raise DataError(
            f"tokenizer.path {path}: no token {cfg.eot_token!r} "
            "(set tokenizer.eot_token to its end-of-text token)"
        )
    return TextTokenizer(backend, cfg.eot_token)
